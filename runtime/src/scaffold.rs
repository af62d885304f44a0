//! `cortex handler new`: a working handler folder in Rust, Python or
//! JavaScript — source, a Makefile that builds the component and tests it,
//! the WIT world, and a fixture event with its expectation — plus the
//! `cortex.toml` block that enables it.
//!
//! The templates live in `runtime/templates/` and are compiled into the
//! binary, so a scaffold matches the runtime that made it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::event::{CATALOGUE, is_valid_type_name};

/// The world every handler targets, as the runtime links it.
pub const WIT: &str = include_str!("../../wit/cortex-events.wit");

/// The `wasi:keyvalue` package the world imports, as `wit/deps/` holds it.
const WIT_DEPS: &[(&str, &str)] = &[
    ("wit/deps/keyvalue/atomic.wit", include_str!("../../wit/deps/keyvalue/atomic.wit")),
    ("wit/deps/keyvalue/batch.wit", include_str!("../../wit/deps/keyvalue/batch.wit")),
    ("wit/deps/keyvalue/store.wit", include_str!("../../wit/deps/keyvalue/store.wit")),
    ("wit/deps/keyvalue/world.wit", include_str!("../../wit/deps/keyvalue/world.wit")),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

/// (path in the scaffold, template text) per language.
fn templates(lang: Lang) -> &'static [(&'static str, &'static str)] {
    match lang {
        Lang::Rust => &[
            ("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
            ("src/lib.rs", include_str!("../templates/rust/src/lib.rs")),
            ("Makefile", include_str!("../templates/rust/Makefile")),
        ],
        Lang::Python => &[
            ("app.py", include_str!("../templates/python/app.py")),
            ("Makefile", include_str!("../templates/python/Makefile")),
        ],
        Lang::Js => &[
            ("handler.js", include_str!("../templates/js/handler.js")),
            ("package.json", include_str!("../templates/js/package.json")),
            ("Makefile", include_str!("../templates/js/Makefile")),
        ],
    }
}

/// What `new` made.
#[derive(Debug)]
pub struct Scaffold {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    /// The `cortex.toml` table to add.
    pub config: String,
}

/// Writes a handler folder for `name` into `dir` (which must not exist or be empty).
///
/// # Errors
/// When the name or a pattern is invalid, the directory is not empty, or a
/// file cannot be written.
pub fn new(name: &str, lang: Lang, events: &[String], dir: &Path) -> Result<Scaffold> {
    let valid_name = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !valid_name {
        bail!(
            "handler name {name:?}: use lowercase letters, digits and '-', starting with a letter (e.g. on-invoice-paid)"
        );
    }
    let events: Vec<String> = if events.is_empty() { vec!["*".into()] } else { events.to_vec() };
    for p in &events {
        let as_type = p.replace('*', "x");
        if p != "*" && !is_valid_type_name(&as_type) {
            bail!("--events {p:?}: expected an event type such as worker.completed, or a glob such as 'worker.*'");
        }
    }
    if dir.exists() && std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} exists and is not empty: choose another --dir (nothing was written)", dir.display());
    }

    // A type to show in the forward_as example that the handler would not
    // receive itself (forwarding to a type it handles would loop).
    let forward = ["task.created", "learning.pattern_detected", "worker.completed"]
        .into_iter()
        .find(|t| !events.iter().any(|p| crate::pattern::glob_match(p, t)))
        .unwrap_or("learning.pattern_detected")
        .to_string();
    let quoted =
        |open: &str, close: &str| events.iter().map(|e| format!("{open}{e}{close}")).collect::<Vec<_>>().join(", ");
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{events_rust}}", &quoted("\"", "\".into()"))
            .replace("{{events_py}}", &quoted("\"", "\""))
            .replace("{{events_js}}", &quoted("\"", "\""))
            .replace("{{forward_example}}", &forward)
    };

    let sample_type = sample_type(&events);
    let event = json!({
        "event_id": "evt_20251201_120000_sample",
        "event_type": sample_type,
        "timestamp": "2025-12-01T12:00:00-06:00",
        "source": "worker-001",
        "correlation_id": "task-123",
        "metadata": {"priority": "medium", "master": "security-master"},
        "payload": {"worker_id": "worker-001", "task_id": "task-123", "status": "completed"},
    });
    let expect = json!({
        "handler": {"name": name, "version": "0.1.0", "events": events},
        "runs": [{
            "event_type": sample_type,
            "outcome": "ok",
            "summary": format!("handled {sample_type} evt_20251201_120000_sample (3 payload fields)"),
            "emitted": [],
            "files": {},
            "logs": [{"level": "info", "message": format!("handling {sample_type} evt_20251201_120000_sample (attempt 1)")}],
        }],
    });
    let readme = format!(
        "# {name}\n\nA Cortex event handler ({lang}). `make test` builds `{name}.wasm` and runs \
         `fixtures/example.json` through `cortex handler test`, comparing with \
         `fixtures/example.expect.json`.\n\n\
         - Add fixtures: `cortex handler test {name}.wasm --event fixtures/NEW.json --write-expect fixtures/NEW.expect.json`,\n  \
         then edit the expectation down to what must hold.\n\
         - Give it files: `--grant state/{short}:rw` here, and `grants = [{{ dir = \"state/{short}\", mode = \"rw\" }}]` in cortex.toml.\n\
         - `wit/cortex-events.wit` is the world the runtime links; HANDLERS.md in the Cortex repository explains every field.\n",
        lang = match lang {
            Lang::Rust => "Rust",
            Lang::Python => "Python, built with componentize-py",
            Lang::Js => "JavaScript, built with componentize-js",
        },
        short = name.trim_start_matches("on-"),
    );

    let mut files = Vec::new();
    let mut write = |rel: &str, text: &str| -> Result<()> {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("failed to create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("failed to write {}", path.display()))?;
        files.push(path);
        Ok(())
    };
    for (rel, text) in templates(lang) {
        write(rel, &fill(text))?;
    }
    write("wit/cortex-events.wit", WIT)?;
    for (rel, text) in WIT_DEPS {
        write(rel, text)?;
    }
    write("fixtures/example.json", &(serde_json::to_string_pretty(&event)? + "\n"))?;
    write("fixtures/example.expect.json", &(serde_json::to_string_pretty(&expect)? + "\n"))?;
    write("README.md", &readme)?;
    write(".gitignore", "*.wasm\n*.wasm.tmp\ntarget/\nnode_modules/\n.venv/\n__pycache__/\n")?;

    let memory = if lang == Lang::Rust { "" } else { "limits = { memory_mb = 128 }\n" };
    let config = format!(
        "[handlers.{name}]\ncomponent = \"handlers/{name}.wasm\"\nevents = [{}]\n{memory}# grants = [{{ dir = \"state/{}\", mode = \"rw\" }}]\n# [handlers.{name}.settings]\n# forward_as = \"{forward}\"\n",
        quoted("\"", "\""),
        name.trim_start_matches("on-"),
    );
    Ok(Scaffold { dir: dir.to_path_buf(), files, config })
}

/// A catalogue type the patterns accept, for the sample fixture.
fn sample_type(patterns: &[String]) -> String {
    for p in patterns {
        if let Some((t, _)) = CATALOGUE.iter().find(|(t, _)| crate::pattern::glob_match(p, t)) {
            return (*t).to_string();
        }
        if !p.contains('*') {
            return p.clone();
        }
    }
    "worker.completed".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_types_come_from_the_patterns() {
        assert_eq!(sample_type(&["task.*".into()]), "task.created");
        assert_eq!(sample_type(&["invoice.paid".into()]), "invoice.paid");
        assert_eq!(sample_type(&["*".into()]), "worker.started");
    }

    #[test]
    fn bad_names_patterns_and_busy_dirs_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in ["On-x", "1x", "x_y", "x-", ""] {
            assert!(new(bad, Lang::Rust, &[], &tmp.path().join("a")).is_err(), "{bad}");
        }
        assert!(new("ok", Lang::Rust, &["no dots".into()], &tmp.path().join("b")).is_err());
        std::fs::write(tmp.path().join("busy"), "").unwrap();
        let e = new("ok", Lang::Js, &[], tmp.path()).unwrap_err().to_string();
        assert!(e.contains("is not empty"), "{e}");
        let s = new("on-thing", Lang::Python, &["worker.*".into()], &tmp.path().join("c")).unwrap();
        assert!(s.config.contains("events = [\"worker.*\"]"), "{}", s.config);
        let app = std::fs::read_to_string(tmp.path().join("c/app.py")).unwrap();
        assert!(app.contains("EVENTS = [\"worker.*\"]") && app.contains("name=\"on-thing\""));
    }
}
