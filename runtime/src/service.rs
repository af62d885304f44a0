//! The long-running mode, `cortex serve`: the dispatcher fed by a queue
//! watcher, hot reload of components and configuration, Prometheus metrics
//! and health endpoints, systemd readiness, and a graceful shutdown.
//!
//! Watch events are hints: any change in `events/queue/` wakes the
//! dispatcher, which re-lists the queue; so does a one-second safety-net
//! timer, so an overflowed or lost notification delays an event by at most
//! that. Reloads compile off the hot path and swap a whole handler map: new
//! events go to the new version while in-flight ones finish on the old.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use notify::{EventKind, RecursiveMode, Watcher};

use crate::config::BackendKind;
use crate::config::Config;
use crate::dispatch::{self, Dispatcher, Mode};
use crate::fsio;
use crate::layout::Layout;
use crate::lock::{Recover, RecoverRw};
use crate::queue::{FsQueue, now_rfc3339};
use crate::records::{ServiceStatus, Serving};
use crate::sandbox::Loaded;
use crate::store::Store;

pub mod http;
mod reload;
pub use reload::{ReloadLog, ReloadResult, Reloaded, ReloadedHandler};
use reload::{Reloader, reload_loop};

/// Changes to a component or the config are gathered this long before a
/// reload, so a file written in several steps is read once, whole.
const DEBOUNCE: Duration = Duration::from_millis(100);

pub struct Options {
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None` for off.
    pub listen: Option<SocketAddr>,
}

/// Where each running service says what it serves: `run/services/`, one
/// `<pid>.json` per process, so several services on one root never
/// clobber each other's record.
pub fn status_dir(layout: &Layout) -> PathBuf {
    layout.services()
}

/// This process's record in [`status_dir`].
pub fn status_file(layout: &Layout) -> PathBuf {
    layout.service_status(std::process::id())
}

/// Runs the service until `shutdown` completes, then stops claiming, lets
/// in-flight handlers finish, settles them and returns.
///
/// # Errors
/// When the root, its config or a handler cannot be loaded at start, or the
/// listen address cannot be bound. After start, failures are logged and
/// counted, not fatal.
pub async fn run(layout: Layout, options: Options, shutdown: impl Future<Output = ()>) -> Result<()> {
    let started = Instant::now();
    let config = Arc::new(Config::load(layout.root())?);
    // Who may use the listener, resolved before anything starts: a
    // public bind without a token refuses to start.
    let auth = options.listen.map(|addr| http::Auth::new(&config.http, addr)).transpose()?;
    // Outbound webhooks (filesystem backend only): secrets are read now, so
    // a missing one stops the start with its variable named; deliveries run
    // on this runtime, off the dispatch thread (see crate::webhooks).
    let (queue, fs): (Arc<dyn Store>, Option<Arc<FsQueue>>) = match config.backend.resolve()? {
        BackendKind::Filesystem => {
            let fs = Arc::new(crate::store::open_fs(&layout, &config)?);
            (fs.clone(), Some(fs))
        }
        BackendKind::Redis { .. } => (crate::store::open(&layout, &config)?, None),
    };
    let deliverer = fs.is_some().then(|| crate::webhooks::Deliverer::new(layout.clone(), &config)).transpose()?;
    // Loading runs guest code (`describe`), whose WASI calls block on a
    // runtime of their own: never on this one's threads.
    let dispatcher = {
        let (queue, root, config) = (queue.clone(), layout.root().to_path_buf(), config.clone());
        let prepared = tokio::task::spawn_blocking(move || dispatch::prepare(queue, &root, config));
        Arc::new(prepared.await.context("loading the handlers panicked")??)
    };
    let metrics = dispatcher.metrics();
    // The live stream and per-handler window of the dashboard, fed by the
    // committer (never blocking it).
    let feed = Arc::new(http::stream::Feed::new(metrics.clone())?);
    dispatcher.observe(feed.clone());
    let reloader = Arc::new(Reloader::new(layout.clone(), dispatcher.clone(), config));
    reloader.publish(&options)?;

    // Wake-ups for the dispatcher; reload requests for the reloader.
    let (wake_tx, wake_rx) = mpsc::channel::<()>();
    let (reload_tx, reload_rx) = mpsc::channel::<()>();
    let _watcher = watch(&layout, &reloader.watched(), wake_tx.clone(), reload_tx.clone())?;

    let stop = Arc::new(AtomicBool::new(false));
    // Events queued on other hosts wake the dispatcher too.
    queue.watch(wake_tx.clone(), stop.clone())?;
    let dispatch_thread = {
        let (dispatcher, stop) = (dispatcher.clone(), stop.clone());
        std::thread::Builder::new().name("cortex-dispatch".into()).spawn(move || {
            // A store that fails for longer than its retries (a Redis
            // server down) ends a dispatch run; the service starts another
            // with backoff rather than serving nothing until restarted.
            let mut backoff = Duration::from_millis(100);
            loop {
                let result = dispatcher.run(Mode::Service { wake: &wake_rx }, &|| stop.load(Ordering::Relaxed));
                match result {
                    Err(e) if !stop.load(Ordering::Relaxed) => {
                        tracing::error!(error = %format!("{e:#}"), "dispatcher stopped; starting it again in {backoff:?} (its unsettled claims are recovered after their lease)");
                        dispatcher.queue().abandon();
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                    result => {
                        if let Err(e) = &result {
                            tracing::error!(error = %format!("{e:#}"), "dispatcher stopped");
                        }
                        return result;
                    }
                }
            }
        })?
    };
    let schedule_thread = {
        let (layout, dispatcher, stop) = (layout.clone(), dispatcher.clone(), stop.clone());
        std::thread::Builder::new().name("cortex-schedule".into()).spawn(move || {
            schedule_loop(&layout, &dispatcher, &stop);
        })?
    };
    let presence_thread = {
        let (queue, stop) = (queue.clone(), stop.clone());
        std::thread::Builder::new().name("cortex-presence".into()).spawn(move || presence_loop(&*queue, &stop))?
    };
    let reload_thread = {
        let (reloader, stop, options_listen) = (reloader.clone(), stop.clone(), options.listen);
        std::thread::Builder::new().name("cortex-reload".into()).spawn(move || {
            reload_loop(&reloader, &reload_rx, &stop, options_listen);
        })?
    };

    let webhooks = match (deliverer, fs) {
        (Some(d), Some(fs)) => Some(tokio::spawn(d.run(dispatcher.config_slot(), fs, metrics.clone(), stop.clone()))),
        _ => None,
    };

    let ready = Arc::new(AtomicBool::new(false));
    let server = match options.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("failed to listen on {addr} (use --listen ADDR or --listen off)"))?;
            let ctx = Arc::new(http::Ctx {
                layout: layout.clone(),
                queue: queue.clone(),
                dispatcher: dispatcher.clone(),
                metrics: metrics.clone(),
                ready: ready.clone(),
                broken: dispatcher.broken(),
                auth: auth.clone().context("the listener's auth was resolved at start")?,
                reloads: reloader.log.clone(),
                feed: feed.clone(),
            });
            let app = http::app(ctx);
            Some(tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "metrics server stopped");
                }
            }))
        }
        None => None,
    };

    ready.store(true, Ordering::Relaxed);
    sd_notify("READY=1");
    tracing::info!(
        root = %layout.root().display(),
        listen = %options.listen.map_or_else(|| "off".to_string(), |a| a.to_string()),
        ready_ms = crate::text::millis(started.elapsed()),
        "cortex serving"
    );

    // SIGHUP: reload config and components now.
    #[cfg(unix)]
    {
        let reload_tx = reload_tx.clone();
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading");
                    let _ = reload_tx.send(());
                }
            });
        }
    }

    shutdown.await;
    tracing::info!("shutting down: no new claims; waiting for in-flight handlers");
    sd_notify("STOPPING=1");
    ready.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let _ = wake_tx.send(());
    let _ = reload_tx.send(());
    let summary = tokio::task::spawn_blocking(move || dispatch_thread.join())
        .await
        .context("the dispatcher thread panicked")?
        .map_err(|_| anyhow::anyhow!("the dispatcher thread panicked"))??;
    let _ = reload_thread.join();
    let _ = schedule_thread.join();
    let _ = presence_thread.join();
    // Attempts in flight are dropped; their records are sent again later.
    if let Some(w) = webhooks {
        let _ = w.await;
    }
    if let Some(server) = server {
        server.abort();
    }
    let _ = std::fs::remove_file(status_file(&layout));
    tracing::info!(claimed = summary.claimed, handled = summary.handled, "stopped");
    Ok(())
}

/// Watches the queue (wake-ups) and the config and components (reloads).
fn watch(
    layout: &Layout,
    watched: &[PathBuf],
    wake: mpsc::Sender<()>,
    reload: mpsc::Sender<()>,
) -> Result<notify::RecommendedWatcher> {
    let queue_dir = layout.queue();
    let watched_files: Vec<PathBuf> = watched.to_vec();
    // Any component in a watched directory, not only those configured at
    // start: a handler added by a config reload is reloaded when its
    // component arrives or changes.
    let mut watched_dirs: Vec<PathBuf> = watched.iter().filter_map(|p| p.parent().map(Path::to_path_buf)).collect();
    watched_dirs.sort();
    watched_dirs.dedup();
    let component_dirs = watched_dirs.clone();
    let is_component = move |p: &Path| {
        p.extension().is_some_and(|e| e == "wasm") && p.parent().is_some_and(|d| component_dirs.iter().any(|c| c == d))
    };
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
        Ok(event) => {
            if event.need_rescan() {
                let _ = wake.send(());
                let _ = reload.send(());
                return;
            }
            if matches!(event.kind, EventKind::Access(_)) {
                return;
            }
            if event.paths.iter().any(|p| p.parent() == Some(queue_dir.as_path())) {
                let _ = wake.send(());
            }
            if event.paths.iter().any(|p| watched_files.iter().any(|w| w == p) || is_component(p)) {
                let _ = reload.send(());
            }
        }
        // An error may mean lost events: rescan everything.
        Err(_) => {
            let _ = wake.send(());
            let _ = reload.send(());
        }
    })
    .context("failed to start the file watcher")?;
    watcher
        .watch(&layout.queue(), RecursiveMode::NonRecursive)
        .with_context(|| format!("failed to watch {}", layout.queue().display()))?;
    for dir in &watched_dirs {
        // A missing directory is reported when its handler loads, not here.
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch for component changes");
        }
    }
    Ok(watcher)
}

/// Queues the events of `[schedules]` as their ticks come, with the live
/// config (a reload's new schedules apply from their next tick).
fn schedule_loop(layout: &Layout, dispatcher: &Dispatcher, stop: &AtomicBool) {
    const POLL: Duration = Duration::from_millis(200);
    let mut next_check = Instant::now();
    let mut had_schedules = true;
    let mut checked: Option<(Arc<Config>, Vec<crate::schedule::Schedule>, crate::event::Validator)> = None;
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() < next_check {
            std::thread::sleep(POLL);
            continue;
        }
        next_check = Instant::now() + Duration::from_secs(1);
        let config = dispatcher.config_slot().read_locked().clone();
        // Nothing to fire, and nothing recorded to forget: no lock to take.
        if config.schedules.is_empty() && !had_schedules {
            continue;
        }
        had_schedules = !config.schedules.is_empty();
        // Parsed once per configuration, not once a second.
        if !checked.as_ref().is_some_and(|(c, ..)| Arc::ptr_eq(c, &config)) {
            match crate::schedule::schedules(&config) {
                Ok(schedules) => checked = Some((config.clone(), schedules, config.validator())),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "schedules could not be read; trying again in a second");
                    continue;
                }
            }
        }
        let Some((_, schedules, validator)) = checked.as_ref() else { continue };
        let fired = (|| -> Result<Vec<(String, String)>> {
            let now = chrono::Utc::now().timestamp();
            let pending = crate::schedule::due(layout, schedules, validator, now)?;
            // Only the ticks no host has queued yet: on a shared store every
            // host's scheduler fires the same ticks, with the same ids.
            let added = dispatcher.queue().enqueue_new(&pending.events).context("failed to queue scheduled events")?;
            let fired = pending
                .events
                .iter()
                .zip(added)
                .filter_map(|(e, added)| {
                    if !added {
                        tracing::debug!(event_id = %e.event_id, "schedule tick already queued or handled (by another host, or before a restart)");
                    }
                    added.then(|| (e.event_id.clone(), e.payload.get("schedule").and_then(|v| v.as_str()).unwrap_or("").into()))
                })
                .collect();
            pending.commit()?;
            Ok(fired)
        })();
        match fired {
            Ok(fired) => {
                for (event_id, schedule) in fired {
                    tracing::info!(%schedule, %event_id, "schedule fired");
                }
            }
            Err(e) => tracing::error!(error = %format!("{e:#}"), "schedules could not fire; trying again in a second"),
        }
    }
}

/// Says this service serves the store, every [`hosts::EVERY`] until
/// `stop`, then that it no longer does (see [`crate::store::Store::announce`]).
fn presence_loop(store: &dyn Store, stop: &AtomicBool) {
    use crate::store::redis::hosts;
    let who = hosts::this_process();
    let mut last: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        if last.is_none_or(|at| at.elapsed() >= hosts::EVERY) {
            if let Err(e) = store.announce(&who, true) {
                tracing::warn!(error = %format!("{e:#}"), "could not say this service is alive; trying again in {:?}", hosts::EVERY);
            }
            last = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if let Err(e) = store.announce(&who, false) {
        tracing::warn!(error = %format!("{e:#}"), "could not take this service off the list; it drops off within {:?}", hosts::TTL);
    }
}

/// Tells systemd (`Type=notify`) about readiness and shutdown, when it
/// started us with a `NOTIFY_SOCKET`.
fn sd_notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let socket = socket.to_string_lossy().into_owned();
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot notify systemd");
            return;
        }
    };
    let sent = if let Some(abstract_name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), &socket)
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, socket = %socket, "cannot notify systemd");
    }
}

/// The services running on this root, each as its `run/services/<pid>.json`
/// says (pid, listen address, the versions serving, handlers not loading),
/// in pid order. A record whose process is gone (killed, so it could not
/// remove it) is removed here; one that does not read is left out.
pub fn running(layout: &Layout) -> Vec<ServiceStatus> {
    let dir = status_dir(layout);
    let mut out: Vec<(i32, ServiceStatus)> = Vec::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let Some(pid) = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks that the process exists.
        if unsafe { libc::kill(pid, 0) } != 0 {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        if let Some(doc) = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
            out.push((pid, doc));
        }
    }
    out.sort_by_key(|(pid, _)| *pid);
    out.into_iter().map(|(_, doc)| doc).collect()
}
