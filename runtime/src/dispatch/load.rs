//! Loading a config's handlers for a dispatcher: each handler's component
//! through the sandbox, checked against what its `describe()` declares
//! (`dispatch.describe_mismatch`). A handler that does not load does not
//! stop the others; it is reported, and its events wait in the queue.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};

use super::Dispatcher;
use crate::config::Config;
use crate::queue::Queue;
use crate::sandbox::{Loaded, Sandbox};
use crate::store::Store;

/// Loads every handler of a config. One that does not load (its component
/// is missing or broken, or its `describe()` traps or times out) does not
/// stop the others: it is returned in the second map with the reason.
pub fn load_all(sandbox: &Sandbox, config: &Config) -> (BTreeMap<String, Arc<Loaded>>, BTreeMap<String, String>) {
    let mut out = BTreeMap::new();
    let mut broken = BTreeMap::new();
    for (name, h) in &config.handlers {
        match sandbox.load(name, h).and_then(|l| declared(&l, config.dispatch.describe_mismatch).map(|()| l)) {
            Ok(l) => {
                let load_ms = crate::text::millis(l.load_time);
                if l.from_cache {
                    tracing::debug!(handler = %name, load_ms, "handler loaded from the compiled cache");
                } else {
                    tracing::info!(handler = %name, load_ms, sha256 = %l.sha256, "handler compiled (cached for the next start)");
                }
                out.insert(name.clone(), Arc::new(l));
            }
            Err(e) => {
                let why = format!("{e:#}");
                tracing::error!(handler = %name, error = %why, "handler failed to load; its events wait in the queue until it loads (fix it, run `make handlers`, or remove it from cortex.toml)");
                broken.insert(name.clone(), why);
            }
        }
    }
    (out, broken)
}

/// The event patterns a handler's config routes to it that its component's
/// `describe()` does not declare (a wrong component swapped in, or a config
/// that grew without the handler).
pub fn undeclared(loaded: &Loaded) -> Vec<String> {
    let declared = &loaded.info.events;
    loaded
        .config
        .events
        .iter()
        .filter(|p| !declared.iter().any(|d| d == *p || crate::pattern::glob_match(d, p)))
        .cloned()
        .collect()
}

/// Applies `dispatch.describe_mismatch` to a loaded handler.
///
/// # Errors
/// Naming the undeclared patterns, when the mode is `refuse`.
pub fn declared(loaded: &Loaded, mode: crate::config::Mismatch) -> Result<()> {
    let missing = undeclared(loaded);
    if missing.is_empty() {
        return Ok(());
    }
    let what = format!(
        "handler {}: cortex.toml routes {} to it, but its component {} declares only {} in describe()",
        loaded.name,
        missing.join(", "),
        loaded.path.display(),
        if loaded.info.events.is_empty() { "nothing".into() } else { loaded.info.events.join(", ") }
    );
    match mode {
        crate::config::Mismatch::Refuse => Err(anyhow!(
            "{what}: refused (is it the right component? dispatch.describe_mismatch = \"warn\" loads it anyway)"
        )),
        crate::config::Mismatch::Warn => {
            tracing::warn!("{what}; loading it anyway (dispatch.describe_mismatch = \"warn\")");
            Ok(())
        }
    }
}

/// Loads the handlers of a config into a ready dispatcher. A handler that
/// does not load is reported in [`Dispatcher::broken`]; the others serve.
///
/// # Errors
/// When the sandbox cannot be started.
pub fn prepare(store: Arc<dyn Store>, root: &std::path::Path, config: Arc<Config>) -> Result<Dispatcher> {
    let sandbox = Arc::new(
        Sandbox::new(root, config.validator(), config.needs_fuel())
            .context("failed to start the sandbox")?
            .with_store(store.clone()),
    );
    let queue: Arc<dyn Queue> = store;
    let (handlers, broken) = load_all(&sandbox, &config);
    Ok(Dispatcher::new(queue, sandbox, config, handlers, broken))
}
