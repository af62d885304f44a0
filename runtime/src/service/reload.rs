//! Hot reload for `cortex serve`: the watcher's wake-ups are gathered for
//! a short debounce, then the changed components and `cortex.toml` are
//! compiled and checked off the hot path and swapped in as a whole handler
//! map (new events go to the new version, in-flight ones finish on the old);
//! a version that does not load is refused and the old one keeps serving.
//! Each reload that did something (or was refused) is kept in a short
//! [`ReloadLog`] for the dashboard's `/api/reloads`.

use serde::{Deserialize, Serialize};

use super::*;

pub(super) fn reload_loop(reloader: &Reloader, rx: &mpsc::Receiver<()>, stop: &AtomicBool, listen: Option<SocketAddr>) {
    loop {
        match rx.recv() {
            Ok(()) => {}
            Err(_) => return,
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        // Gather the burst of events one replacement makes.
        loop {
            match rx.recv_timeout(DEBOUNCE) {
                Ok(()) => continue,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        reloader.reload();
        if let Err(e) = reloader.publish(&Options { listen }) {
            tracing::warn!(error = %format!("{e:#}"), "could not write the service status file");
        }
    }
}

/// How many reloads the [`ReloadLog`] keeps.
const KEPT: usize = 100;

/// How a reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReloadResult {
    /// The versions serving when the service started.
    Started,
    /// Everything that changed was swapped in.
    Ok,
    /// Some handlers were swapped in, others did not load (they keep their
    /// previous version, or wait if they had none).
    Partial,
    /// Nothing was swapped: the running configuration keeps serving.
    Refused,
}

/// One handler in a reload: the version it now serves, or why it did not load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadedHandler {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One reload, as `/api/reloads` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reloaded {
    /// When (RFC 3339).
    pub at: String,
    pub result: ReloadResult,
    pub config_changed: bool,
    /// The handlers swapped in or that failed (at start: every one serving).
    pub handlers: Vec<ReloadedHandler>,
    /// Why it was refused.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl Reloaded {
    fn refused(reason: String) -> Reloaded {
        Reloaded {
            at: now_rfc3339(),
            result: ReloadResult::Refused,
            config_changed: false,
            handlers: Vec::new(),
            reason,
        }
    }
}

/// The latest reloads, newest last, at most [`KEPT`].
#[derive(Debug, Default)]
pub struct ReloadLog {
    entries: Mutex<std::collections::VecDeque<Reloaded>>,
}

impl ReloadLog {
    fn push(&self, r: Reloaded) {
        let mut entries = self.entries.locked();
        if entries.len() == KEPT {
            entries.pop_front();
        }
        entries.push_back(r);
    }

    /// What it holds, oldest first.
    pub fn list(&self) -> Vec<Reloaded> {
        self.entries.locked().iter().cloned().collect()
    }
}

/// Swaps in new component versions and configurations when they load.
pub(super) struct Reloader {
    pub(super) log: Arc<ReloadLog>,
    layout: Layout,
    dispatcher: Arc<Dispatcher>,
    /// The config text now serving, to tell config changes from component ones.
    active_config: Mutex<(String, Arc<Config>)>,
}

impl Reloader {
    pub(super) fn new(layout: Layout, dispatcher: Arc<Dispatcher>, config: Arc<Config>) -> Reloader {
        let text = std::fs::read_to_string(layout.config()).unwrap_or_default();
        let r = Reloader { log: Arc::default(), layout, dispatcher, active_config: Mutex::new((text, config)) };
        r.record_active();
        let handlers = r.current().values().map(|l| serving(l)).collect();
        r.log.push(Reloaded { handlers, result: ReloadResult::Started, ..Reloaded::refused(String::new()) });
        r
    }

    /// The files whose change triggers a reload.
    pub(super) fn watched(&self) -> Vec<PathBuf> {
        let config = self.active_config.locked().1.clone();
        let sandbox = self.dispatcher.sandbox();
        let mut files = vec![self.layout.config()];
        files.extend(config.handlers.values().map(|h| sandbox.component_path(h)));
        files
    }

    fn current(&self) -> Arc<BTreeMap<String, Arc<Loaded>>> {
        self.dispatcher.handlers().read_locked().clone()
    }

    fn record_active(&self) {
        let current = self.current();
        self.dispatcher
            .metrics()
            .set_active(current.values().map(|l| (l.name.as_str(), l.sha256.as_str(), l.info.version.as_str())));
    }

    /// Re-reads the config and every component; swaps in what changed and
    /// loads. A new config is taken whole or not at all; a broken component
    /// leaves its handler on the version it was serving.
    fn reload(&self) {
        if let Some(r) = self.try_reload() {
            self.log.push(r);
        }
    }

    /// [`Reloader::reload`], saying what it did (`None`: nothing changed).
    fn try_reload(&self) -> Option<Reloaded> {
        let metrics = self.dispatcher.metrics();
        let text = match std::fs::read_to_string(self.layout.config()) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "reload refused: cannot read cortex.toml; keeping the running configuration");
                metrics.reload(false);
                return Some(Reloaded::refused(format!("cannot read cortex.toml: {e}")));
            }
        };
        let (active_text, active_config) = self.active_config.locked().clone();
        let config_changed = text != active_text;
        let config = if config_changed {
            match Config::parse(&text) {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "reload refused: cortex.toml is invalid; keeping the running configuration");
                    metrics.reload(false);
                    return Some(Reloaded::refused(format!("cortex.toml is invalid: {e:#}")));
                }
            }
        } else {
            active_config.clone()
        };
        if config_changed && config.needs_fuel() != self.any_fuel() {
            tracing::error!("reload refused: turning fuel metering on or off needs a restart");
            metrics.reload(false);
            return Some(Reloaded::refused("turning fuel metering on or off needs a restart".into()));
        }
        let sandbox = self.dispatcher.sandbox();
        let current = self.current();
        let mut next = BTreeMap::new();
        let mut broken = BTreeMap::new();
        let (mut swapped, mut failed) = (Vec::new(), Vec::new());
        for (name, h) in &config.handlers {
            let path = sandbox.component_path(h);
            let bytes = std::fs::read(&path);
            let sha = bytes.as_ref().ok().map(|b| crate::sandbox::sha256_hex(b));
            if let Some(old) = current.get(name)
                && Some(&old.sha256) == sha.as_ref()
                && old.config == *h
            {
                next.insert(name.clone(), old.clone());
                continue;
            }
            let loaded = bytes
                .with_context(|| format!("failed to read component {} of handler {name}", path.display()))
                .and_then(|b| sandbox.load_bytes(name, h, &path, &b))
                .and_then(|l| dispatch::declared(&l, config.dispatch.describe_mismatch).map(|()| l));
            match loaded {
                Ok(l) => {
                    tracing::info!(handler = %name, sha256 = %l.sha256, version = %l.info.version, was = %current.get(name).map_or_else(|| "(new)".to_string(), |o| format!("{} v{}", o.sha256, o.info.version)), load_ms = crate::text::millis(l.load_time), "handler reloaded");
                    swapped.push(name.clone());
                    next.insert(name.clone(), Arc::new(l));
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    match current.get(name) {
                        Some(old) => {
                            tracing::error!(handler = %name, error = %why, "reload failed; the handler keeps serving its previous version");
                            next.insert(name.clone(), old.clone());
                        }
                        None => {
                            tracing::error!(handler = %name, error = %why, "handler does not load; its events wait in the queue until it does");
                            broken.insert(name.clone(), why.clone());
                        }
                    }
                    failed.push(ReloadedHandler { name: name.clone(), version: None, sha256: sha, error: Some(why) });
                }
            }
        }
        // A handler serving a version loaded under the old config cannot
        // keep it under a new one: take the new config whole or not at all.
        let stranded: Vec<&String> = failed.iter().map(|f| &f.name).filter(|n| current.contains_key(*n)).collect();
        if config_changed && !stranded.is_empty() {
            tracing::error!(handlers = ?stranded, "reload refused: the new cortex.toml names handlers that do not load; keeping the running configuration");
            metrics.reload(false);
            let reason = format!("the new cortex.toml names handlers that do not load: {stranded:?}");
            return Some(Reloaded { handlers: failed, ..Reloaded::refused(reason) });
        }
        for _ in &failed {
            metrics.reload(false);
        }
        let broken_slot = self.dispatcher.broken();
        let broken_changed = broken_slot.read_locked().keys().ne(broken.keys());
        if swapped.is_empty() && !config_changed && !broken_changed {
            return (!failed.is_empty()).then(|| Reloaded { handlers: failed, ..Reloaded::refused(String::new()) });
        }
        let mut handlers: Vec<ReloadedHandler> =
            swapped.iter().filter_map(|n| next.get(n)).map(|l| serving(l)).collect();
        let result = if failed.is_empty() { ReloadResult::Ok } else { ReloadResult::Partial };
        handlers.extend(failed);
        *self.dispatcher.handlers().write_locked() = Arc::new(next);
        // Only now that the loaded ones serve may their waiting events run.
        metrics.set_broken(broken.keys().map(String::as_str));
        *broken_slot.write_locked() = broken;
        *self.dispatcher.config_slot().write_locked() = config.clone();
        if config_changed {
            tracing::info!(changed = %config_changes(&active_config, &config), "cortex.toml reloaded");
        }
        *self.active_config.locked() = (text, config);
        metrics.reload(true);
        self.record_active();
        Some(Reloaded { at: now_rfc3339(), result, config_changed, handlers, reason: String::new() })
    }

    fn any_fuel(&self) -> bool {
        self.active_config.locked().1.needs_fuel()
    }

    /// Writes `run/services/<pid>.json`: pid, address and the versions serving.
    pub(super) fn publish(&self, options: &Options) -> Result<()> {
        let handlers = self
            .current()
            .values()
            .map(|l| {
                let serving = Serving {
                    sha256: l.sha256.clone(),
                    version: l.info.version.clone(),
                    component: l.path.display().to_string(),
                };
                (l.name.clone(), serving)
            })
            .collect();
        let doc = ServiceStatus {
            pid: std::process::id(),
            listen: options.listen.map(|a| a.to_string()),
            updated_at: now_rfc3339(),
            handlers,
            not_loading: self.dispatcher.broken().read_locked().clone(),
        };
        let path = status_file(&self.layout);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
        }
        fsio::write_durably(&self.layout.tmp(), &path, serde_json::to_string_pretty(&doc)?.as_bytes())
    }
}

/// A loaded handler as a reload lists it.
fn serving(l: &Loaded) -> ReloadedHandler {
    ReloadedHandler {
        name: l.name.clone(),
        version: Some(l.info.version.clone()),
        sha256: Some(l.sha256.clone()),
        error: None,
    }
}

/// What differs between two configs, for the reload log line: the
/// top-level sections that changed, and the handlers and schedules added,
/// removed or changed, by name, e.g. `handlers added: b; handlers changed: a; limits`.
fn config_changes(old: &Config, new: &Config) -> String {
    fn keyed<T: PartialEq>(what: &str, old: &BTreeMap<String, T>, new: &BTreeMap<String, T>, out: &mut Vec<String>) {
        let names = |f: &dyn Fn(&String) -> bool, m: &BTreeMap<String, T>| -> Vec<String> {
            m.keys().filter(|k| f(k)).map(|k| crate::text::escape(k).into_owned()).collect()
        };
        for (verb, list) in [
            ("added", names(&|k| !old.contains_key(k), new)),
            ("removed", names(&|k| !new.contains_key(k), old)),
            ("changed", names(&|k| new.get(k).is_some_and(|n| n != &old[k]), old)),
        ] {
            if !list.is_empty() {
                out.push(format!("{what} {verb}: {}", list.join(", ")));
            }
        }
    }
    let mut out = Vec::new();
    keyed("handlers", &old.handlers, &new.handlers, &mut out);
    keyed("schedules", &old.schedules, &new.schedules, &mut out);
    for (section, changed) in [
        ("events", old.events != new.events),
        ("limits", old.limits != new.limits),
        ("dispatch", old.dispatch != new.dispatch),
        ("archive", old.archive != new.archive),
    ] {
        if changed {
            out.push(section.to_string());
        }
    }
    if out.is_empty() { "nothing that takes effect (comments or layout)".to_string() } else { out.join("; ") }
}
