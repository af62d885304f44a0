//! The configured handlers as `cortex handlers list` and `cortex handlers
//! check` show them: each one loaded in a sandbox of the root (as `dispatch`
//! would load it), with its component, hash, declared events, grants, and
//! the version a running `cortex serve` serves. Built once as typed rows;
//! the binary prints them as text or JSON.

use anyhow::Result;
use serde::Serialize;

use crate::config::{Access, Config};
use crate::layout::Layout;
use crate::sandbox::{Sandbox, sha256_file};

/// One handler of `cortex.toml` and whether it loads. Fields are in name
/// order, as the JSON of `handlers list --json` has always listed them.
#[derive(Debug, Clone, Serialize)]
pub struct HandlerRow {
    /// The component path, under the root unless absolute.
    pub component: String,
    /// The payload contracts it publishes (0.2 `describe()`), if it loads:
    /// `[{event_type, schema}]` with each schema parsed when it is JSON.
    pub contracts: Option<serde_json::Value>,
    /// The event types the component declares in `describe()`, if it loads.
    pub declared_events: Option<Vec<String>>,
    /// The event types it declares it emits, if it loads.
    pub emits: Option<serde_json::Value>,
    /// Why it does not load (or does not declare what it is routed).
    pub error: Option<String>,
    /// The event patterns `cortex.toml` routes to it.
    pub events: Vec<String>,
    /// `DIR:ro` or `DIR:rw`.
    pub grants: Vec<String>,
    pub loads: bool,
    pub name: String,
    /// What `handlers check` refuses in its declarations: emits the
    /// validator or its `emits` setting would refuse, contracts that are not
    /// JSON Schema objects.
    pub problems: Vec<String>,
    /// The sha256 a running `cortex serve` on this root serves, if any.
    pub serving_sha256: Option<String>,
    /// The component file's sha256, if it can be read.
    pub sha256: Option<String>,
    /// Grants of the runtime's own directories, allowed by `unsafe_allow`.
    pub unsafe_grants: Vec<String>,
    /// The version the component declares, if it loads.
    pub version: Option<String>,
    /// Its declared emits and contracts as `handlers list --verbose` prints
    /// them (the JSON has them as `emits` and `contracts`).
    #[serde(skip)]
    pub details: Vec<String>,
}

/// Loads every handler of `config` in a sandbox of the root and describes it.
///
/// # Errors
/// When the sandbox cannot be started; a handler that does not load is a
/// row with `loads: false`, not an error.
pub fn list(layout: &Layout, config: &Config) -> Result<Vec<HandlerRow>> {
    let sandbox = Sandbox::new(layout.root(), config.validator(), config.needs_fuel())?;
    let serving = crate::service::running(layout);
    let mut rows = Vec::new();
    for (name, h) in &config.handlers {
        let path = h.component_path(layout.root());
        let (loads, sha256, info, error) = match sandbox.load(name, h) {
            Ok(l) => match crate::dispatch::declared(&l, config.dispatch.describe_mismatch) {
                Ok(()) => (true, Some(l.sha256.clone()), Some(l.info.clone()), None),
                Err(e) => (false, Some(l.sha256.clone()), Some(l.info.clone()), Some(format!("{e:#}"))),
            },
            Err(e) => (false, sha256_file(&path).ok(), None, Some(format!("{e:#}"))),
        };
        let problems = info.as_ref().map_or_else(Vec::new, |i| {
            let mut p = crate::handlers::emit_problems(name, i, h, &config.validator());
            p.extend(crate::handlers::contract_problems(name, i));
            p
        });
        let declared = info.as_ref().map(crate::handlers::declarations_json);
        rows.push(HandlerRow {
            component: path.display().to_string(),
            contracts: declared.as_ref().map(|d| d["contracts"].clone()),
            declared_events: info.as_ref().map(|i| i.events.clone()),
            emits: declared.as_ref().map(|d| d["emits"].clone()),
            error,
            events: h.events.clone(),
            grants: h
                .grants
                .iter()
                .map(|g| format!("{}:{}", g.dir, if g.mode == Access::Rw { "rw" } else { "ro" }))
                .collect(),
            loads,
            name: name.clone(),
            problems,
            serving_sha256: serving.iter().find_map(|s| s.handlers.get(name).map(|h| h.sha256.clone())),
            sha256,
            unsafe_grants: h
                .grants
                .iter()
                .filter(|g| g.unsafe_allow && g.is_reserved())
                .map(|g| g.dir.clone())
                .collect(),
            details: info.as_ref().map(crate::handlers::declaration_lines).unwrap_or_default(),
            version: info.map(|i| i.version),
        });
    }
    Ok(rows)
}
