//! The coordination directory: where every file of a root lives (one
//! method per path; nothing else joins paths under a root), and `init`.
//!
//! ```text
//! <root>/cortex.toml                 configuration
//! <root>/events/queue/               pending events, one JSON file each
//! <root>/events/claimed/             events a dispatcher is working on (leased)
//! <root>/events/attempts/            delivery records of events that failed before
//! <root>/events/archive/YYYY-MM-DD.jsonl  processed events with their outcome, by
//!                                    the event's date; kept [archive] retention_days
//!                                    after the file's last append
//! <root>/events/archive/YYYY-MM-DD.jsonl.zst  days older than [archive]
//!                                    compress_after_days, compressed (see `archive`)
//! <root>/events/dead-letter/         events that failed for good, with forensics
//! <root>/events/tmp/                 files being written; renamed into place when whole
//! <root>/events/outbox/<endpoint>/   webhook deliveries not yet made, one JSON file each
//! <root>/events/<category>-events.jsonl
//! <root>/state/                      handler state kept in files (grants)
//! <root>/kv/state.db                 handler state in key-value buckets (SQLite, WAL)
//! <root>/handlers/                   components named by cortex.toml
//! <root>/cache/                      compiled components
//! <root>/run/services/<pid>.json      what each running `cortex serve` serves
//! <root>/run/schedules.json           the last tick each schedule fired
//! ```
//! All of it must sit on one filesystem: durability rests on renames.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::config::{CONFIG_FILE, Config};

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }
    pub fn events(&self) -> PathBuf {
        self.root.join("events")
    }
    pub fn queue(&self) -> PathBuf {
        self.root.join("events/queue")
    }
    pub fn claimed(&self) -> PathBuf {
        self.root.join("events/claimed")
    }
    pub fn attempts(&self) -> PathBuf {
        self.root.join("events/attempts")
    }
    pub fn archive(&self) -> PathBuf {
        self.root.join(Layout::archive_rel())
    }
    /// The archive relative to the root, for opening it from a root handle.
    pub fn archive_rel() -> &'static Path {
        Path::new("events/archive")
    }
    pub fn dead_letter(&self) -> PathBuf {
        self.root.join("events/dead-letter")
    }
    /// `<root>/events/outbox/`: webhook deliveries, a directory per endpoint.
    pub fn outbox(&self) -> PathBuf {
        self.root.join("events/outbox")
    }
    /// `<root>/events/outbox/<endpoint>/`.
    pub fn outbox_endpoint(&self, endpoint: &str) -> PathBuf {
        self.outbox().join(endpoint)
    }
    pub fn tmp(&self) -> PathBuf {
        self.root.join("events/tmp")
    }
    pub fn state(&self) -> PathBuf {
        self.root.join("state")
    }
    /// `<root>/kv/state.db`: handler state (key-value buckets, see
    /// [`crate::kv`]).
    pub fn kv_db(&self) -> PathBuf {
        self.root.join("kv/state.db")
    }
    pub fn handlers(&self) -> PathBuf {
        self.root.join("handlers")
    }
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }
    /// `<root>/run/`: what running processes publish (services, schedules).
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }
    /// `<root>/run/services/`: one `<pid>.json` per running `cortex serve`.
    pub fn services(&self) -> PathBuf {
        self.root.join("run/services")
    }
    /// `<root>/run/services/<pid>.json`: what the service `pid` serves.
    pub fn service_status(&self, pid: u32) -> PathBuf {
        self.services().join(format!("{pid}.json"))
    }
    /// `<root>/run/schedules.json`: the last tick each schedule fired.
    pub fn schedules_fired(&self) -> PathBuf {
        self.root.join("run/schedules.json")
    }
    /// `<root>/run/schedules.lock`: held while schedules fire.
    pub fn schedules_lock(&self) -> PathBuf {
        self.root.join("run/schedules.lock")
    }
    /// `<root>/events/<stem>-events.jsonl`
    pub fn log(&self, stem: &str) -> PathBuf {
        self.root.join(format!("events/{stem}-events.jsonl"))
    }

    /// Directories `init` creates, in creation order.
    pub fn dirs(&self) -> Vec<PathBuf> {
        vec![
            self.queue(),
            self.claimed(),
            self.attempts(),
            self.archive(),
            self.dead_letter(),
            self.tmp(),
            self.state(),
            self.handlers(),
            self.cache(),
        ]
    }

    /// Fails unless the layout's directories exist (a root that was never
    /// initialised, or was damaged, gets the `cortex init` hint).
    ///
    /// # Errors
    /// Naming the first missing directory.
    pub fn require(&self) -> Result<()> {
        for dir in [self.queue(), self.tmp(), self.claimed()] {
            if !dir.is_dir() {
                anyhow::bail!(
                    "{} is missing from the coordination root; run `cortex init --root {}`",
                    dir.display(),
                    self.root.display()
                );
            }
        }
        Ok(())
    }
}

/// What `init` did.
#[derive(Debug, Default)]
pub struct InitReport {
    pub created: Vec<PathBuf>,
}

/// Creates the layout and, if absent, a commented default `cortex.toml`
/// holding `config_text`. Existing files are never touched, so running it
/// twice changes nothing.
///
/// # Errors
/// When a directory or the config cannot be created.
pub fn init(layout: &Layout, config_text: &str) -> Result<InitReport> {
    let mut report = InitReport::default();
    if !layout.root().exists() {
        report.created.push(layout.root().to_path_buf());
    }
    std::fs::create_dir_all(layout.root())
        .with_context(|| format!("failed to create coordination root {}", layout.root().display()))?;
    for dir in layout.dirs() {
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
            report.created.push(dir);
        }
    }
    let config = layout.config();
    if !config.exists() {
        crate::fsio::write_durably(&layout.tmp(), &config, config_text.as_bytes())
            .with_context(|| format!("failed to write {}", config.display()))?;
        report.created.push(config);
    }
    Ok(report)
}

/// What [`install_components`] did.
#[derive(Debug, Default)]
pub struct Installed {
    /// Components copied into place.
    pub copied: Vec<PathBuf>,
    /// Components the config names that are neither in place nor in the source.
    pub missing: Vec<PathBuf>,
}

/// Copies each component `config` names that is not in place yet from the
/// directory `source` (same file name), as `init` does for the built-in
/// handlers. Components already in place are never touched.
///
/// # Errors
/// When a component cannot be copied.
pub fn install_components(layout: &Layout, config: &Config, source: Option<&Path>) -> Result<Installed> {
    let mut installed = Installed::default();
    for h in config.handlers.values() {
        let target = h.component_path(layout.root());
        if target.exists() {
            continue;
        }
        let found = source.zip(target.file_name()).map(|(dir, f)| dir.join(f)).filter(|p| p.is_file());
        match found {
            Some(from) => {
                std::fs::copy(&from, &target)
                    .with_context(|| format!("failed to copy {} to {}", from.display(), target.display()))?;
                installed.copied.push(target);
            }
            None => installed.missing.push(target),
        }
    }
    Ok(installed)
}
