//! The flags of `cortex handler test` and how they meet a root's
//! `cortex.toml`: with `--handler NAME` the run starts from that handler's
//! grants, key-value buckets, settings and limits, and the flags add to and
//! override them; the root's custom types and event size limit apply
//! whenever it has a config.
//! The binary parses [`Flags`], calls [`Flags::setup`] and [`super::run`],
//! and prints; every decision about what to run is made here.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::records::report::HarnessReport;

use super::{GrantSpec, Request, parse_setting};
use crate::config::{CONFIG_FILE, Config, HandlerLimits};
use crate::event::{DEFAULT_MAX_EVENT_BYTES, Validator};
use crate::layout::Layout;
use crate::sandbox::CACHE_ENV;

// The field docs are the help texts of `cortex handler test`.
/// What `cortex handler test` was given.
#[derive(Debug, Clone, clap::Args)]
pub struct Flags {
    /// The handler component (.wasm).
    pub component: PathBuf,
    /// An event file (one JSON event, or JSONL); repeat for several, run in
    /// order in the same sandbox.
    #[arg(long = "event", value_name = "FILE", required = true, num_args = 1..)]
    pub events: Vec<PathBuf>,
    /// A grant as the handler sees it, e.g. state/cost:rw; DIR=HOST_DIR:rw
    /// starts it from a copy of HOST_DIR (the original is never written).
    #[arg(long = "grant", value_name = "DIR[=HOST_DIR]:ro|rw")]
    pub grants: Vec<GrantSpec>,
    /// Start the sandbox root from a copy of this directory (files under
    /// the grants' paths, e.g. DIR/state/cost/totals.json).
    #[arg(long, value_name = "DIR")]
    pub seed: Option<PathBuf>,
    /// A key-value bucket the handler may read and write (wasi:keyvalue);
    /// repeat for several. The state starts empty in the throwaway root.
    #[arg(long = "keyvalue", value_name = "BUCKET", value_parser = parse_bucket)]
    pub keyvalue: Vec<String>,
    /// A key-value bucket the handler may only read; repeat for several.
    #[arg(long = "keyvalue-read", value_name = "BUCKET", value_parser = parse_bucket)]
    pub keyvalue_read: Vec<String>,
    /// A setting for the handler's config(key); the value is read as TOML
    /// (numbers, booleans, { inline = tables }) or else taken as a string.
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_setting)]
    pub settings: Vec<(String, toml::Value)>,
    /// Start from this handler's grants, buckets, settings and limits in the
    /// root's cortex.toml (flags add to and override them).
    #[arg(long, value_name = "NAME")]
    pub handler: Option<String>,
    /// An event type to accept besides the catalogue and the root's
    /// [events] custom_types (for the handler's emits).
    #[arg(long = "custom-type", value_name = "TYPE")]
    pub custom_types: Vec<String>,
    /// Expected report (a JSON subset of --json's output): exit 1 on any difference.
    #[arg(long, value_name = "FILE")]
    pub expect: Option<PathBuf>,
    /// Write what this run did, without what varies between runs, as an
    /// expectation file to edit and then pass to --expect.
    #[arg(long, value_name = "FILE", conflicts_with = "expect")]
    pub write_expect: Option<PathBuf>,
    /// The delivery number the handler sees.
    #[arg(long, default_value_t = 1)]
    pub attempt: u32,
    /// limits.memory_mb for this run.
    #[arg(long)]
    pub memory_mb: Option<u64>,
    /// limits.deadline_ms for this run.
    #[arg(long)]
    pub deadline_ms: Option<u64>,
    /// Keep the sandbox root in this (new or empty) directory.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
}

/// A run planned from [`Flags`] and the root: the [`Request`], and what is
/// needed afterwards to judge and explain its report.
pub struct Setup {
    pub request: Request,
    pub expect: Option<PathBuf>,
    pub write_expect: Option<PathBuf>,
    /// The root's config, when it has one (or `--handler` asked for it).
    config: Option<Config>,
    /// Neither `--handler` nor `--grant` nor `--keyvalue`: the run guessed
    /// that the component needs nothing from a root.
    guessing: bool,
    component_stem: Option<OsString>,
}

impl Flags {
    /// The run these flags ask for in the root of `layout`.
    ///
    /// # Errors
    /// When the root's `cortex.toml` does not load, or has no handler named
    /// by `--handler`.
    pub fn setup(self, layout: &Layout) -> Result<Setup> {
        let config =
            if layout.config().is_file() || self.handler.is_some() { Some(Config::load(layout.root())?) } else { None };
        let mut validator_types = config.as_ref().map(|c| c.events.custom_types.clone()).unwrap_or_default();
        validator_types.extend(self.custom_types);
        let max_bytes = config.as_ref().map_or(DEFAULT_MAX_EVENT_BYTES, |c| c.limits.max_event_bytes);
        let mut grants: Vec<GrantSpec> = Vec::new();
        let mut settings = BTreeMap::new();
        let mut limits = HandlerLimits::default();
        let (mut keyvalue, mut keyvalue_read) = (Vec::new(), Vec::new());
        if let (Some(name), Some(config)) = (&self.handler, &config) {
            let h = config
                .handlers
                .get(name)
                .with_context(|| format!("no handler {name:?} in {}", layout.root().join(CONFIG_FILE).display()))?;
            grants = h.grants.iter().map(|g| GrantSpec { dir: g.dir.clone(), mode: g.mode, seed: None }).collect();
            settings = h.settings.clone();
            limits = h.limits.clone();
            keyvalue = h.keyvalue.clone();
            keyvalue_read = h.keyvalue_read.clone();
        }
        let guessing = self.handler.is_none()
            && self.grants.is_empty()
            && self.keyvalue.is_empty()
            && self.keyvalue_read.is_empty();
        for b in self.keyvalue {
            keyvalue_read.retain(|old| *old != b);
            if !keyvalue.contains(&b) {
                keyvalue.push(b);
            }
        }
        for b in self.keyvalue_read {
            if !keyvalue.contains(&b) && !keyvalue_read.contains(&b) {
                keyvalue_read.push(b);
            }
        }
        let component_stem = self.component.file_stem().map(|s| s.to_os_string());
        for g in self.grants {
            grants.retain(|old| old.dir != g.dir);
            grants.push(g);
        }
        settings.extend(self.settings);
        if let Some(mb) = self.memory_mb {
            limits.memory_mb = mb;
        }
        if let Some(ms) = self.deadline_ms {
            limits.deadline_ms = ms;
        }
        let request = Request {
            component: self.component,
            events: self.events,
            grants,
            keyvalue,
            keyvalue_read,
            seed: self.seed,
            settings,
            limits,
            validator: Validator::new(validator_types, max_bytes),
            // A handler of this root: its compiled cache, so a component that
            // `serve` or `dispatch` compiled is not compiled again.
            cache_dir: match (&self.handler, std::env::var_os(CACHE_ENV)) {
                (Some(_), None) => layout.cache(),
                _ => user_cache_dir(),
            },
            attempt: self.attempt,
            keep: self.keep,
            name: self.handler,
        };
        Ok(Setup { request, expect: self.expect, write_expect: self.write_expect, config, guessing, component_stem })
    }
}

impl Setup {
    /// The root's handler table this component probably is, when a run
    /// without `--handler` and `--grant` failed: such a handler fails for
    /// want of the directories and settings its table gives it.
    pub fn table_hint(&self, report: &HarnessReport) -> Option<&str> {
        let config = self.config.as_ref().filter(|_| self.guessing && report.failed() > 0)?;
        config.handlers.iter().find_map(|(name, h)| {
            let same_file = h.component.file_stem().is_some_and(|s| Some(s) == self.component_stem.as_deref());
            (same_file || report.handler.name == *name).then_some(name.as_str())
        })
    }
}

/// Parses `--keyvalue BUCKET`: a bucket name as in a handler's table.
fn parse_bucket(s: &str) -> Result<String, String> {
    crate::kv::check_bucket(s).map(|()| s.to_string()).map_err(|e| format!("{e:#}"))
}

/// Writes the [`super::expectation`] of a report to `path`.
///
/// # Errors
/// When the file cannot be written.
pub fn write_expectation(path: &Path, report: &HarnessReport) -> Result<()> {
    let text = serde_json::to_string_pretty(&super::expectation(report))? + "\n";
    std::fs::write(path, text).with_context(|| format!("failed to write {}", path.display()))
}

/// The [`super::differences`] between the expectation file `path` and a report.
///
/// # Errors
/// When the file cannot be read or is not JSON.
pub fn differences_from(path: &Path, report: &HarnessReport) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))?;
    let expected: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    Ok(super::differences(&expected, &report.to_value()))
}

/// Where compiled components are cached outside a root: $CORTEX_CACHE, else
/// $XDG_CACHE_HOME/cortex/compiled, else ~/.cache/cortex/compiled.
pub fn user_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(CACHE_ENV) {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("cortex/compiled")
}
