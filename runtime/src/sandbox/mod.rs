//! The sandbox: one wasmtime engine, the compiled-component cache, and the
//! per-event invocation of a handler component.
//!
//! A component is compiled (or loaded from `<root>/cache/`) and linked once
//! per version into an `InstancePre`; every event then gets a fresh `Store`
//! and instance with its own WASI context: the handler's filesystem grants as
//! preopens, captured and capped stdout/stderr, clocks and random, and
//! nothing else (no sockets, no environment, no arguments). Limits are
//! enforced by the engine: an epoch deadline (carried across waiting host
//! calls by `deadline`), an optional fuel budget, a memory cap over all of
//! an instance's memories (`limiter`), a bounded wasm stack, and caps on
//! what the guest may do to files (`quota`).
//!
//! A 0.2.0 handler also gets `wasi:keyvalue` (`keyvalue`) over the buckets
//! its config grants: its writes are buffered in a [`crate::kv::Txn`] and
//! handed back in [`Invocation::changes`] when it succeeds, for the
//! dispatcher to commit with the event's settlement.
//!
//! Handlers built against either `cortex:events` world load (`world`):
//! 0.2.0, whose errors say whether a retry can help (an error that says it
//! cannot is a [`Fault`] of kind `refused`), and 0.1.0, whose errors are all
//! retried as before.
//!
//! This module is the only place that names `wasmtime` types in its API's
//! insides; the rest of the runtime sees [`Sandbox`], [`Loaded`] and
//! [`Invocation`].

mod deadline;
mod fault;
mod host;
mod keyvalue;
mod limiter;
mod load;
mod quota;
mod world;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::config::{Access, Grant, HandlerConfig, HandlerLimits};
use crate::event::{Event, Validator};
use crate::fsio;
use crate::kv;
use crate::lock::Recover;
pub use crate::records::FaultKind;

pub use fault::{Fault, MAX_MESSAGE};
use fault::{cap, classify};
use host::{CallContext, State};
pub use host::{LogLevel, LogLine};
pub use world::World;
use world::{Linkers, Pre, wit};

/// The tracing target of progress lines (a first compile) that commands
/// which log only warnings still show.
pub const PROGRESS: &str = "cortex::progress";

/// Environment variable naming a compiled-component cache directory to use
/// instead of `<root>/cache/` (shared by several roots, or by tests).
pub const CACHE_ENV: &str = "CORTEX_CACHE";

/// Engine epoch tick: deadlines are counted in these.
const TICK: Duration = Duration::from_millis(2);
/// Wasm stack a handler may use before it traps with a stack overflow.
const MAX_WASM_STACK: usize = 1 << 20;

/// What a handler says it is (its `describe` export).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Info {
    pub name: String,
    pub version: String,
    pub events: Vec<String>,
    /// The event types it declares it may emit (none under 0.1.0).
    pub emits: Vec<String>,
    /// The payload contract of each handled type it documents (none under
    /// 0.1.0).
    pub contracts: Vec<Contract>,
}

/// The payload contract of one handled event type.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Contract {
    pub event_type: String,
    /// A JSON Schema, as the handler wrote it (not checked by the host).
    pub schema: String,
}

/// A component compiled and linked, ready to instantiate per event.
pub struct Loaded {
    pub name: String,
    pub path: PathBuf,
    pub sha256: String,
    pub info: Info,
    pub config: HandlerConfig,
    /// The settings as the handler's `config(key)` returns them, computed
    /// once per component version rather than per event.
    settings: Arc<BTreeMap<String, String>>,
    /// Whether the compiled code came from the on-disk cache.
    pub from_cache: bool,
    pub load_time: Duration,
    pre: Pre,
}

impl Loaded {
    /// The `cortex:events` version the component was built against.
    pub fn world(&self) -> World {
        self.pre.world()
    }
}

/// What one invocation did.
#[derive(Debug)]
pub struct Invocation {
    /// The outcome summary, or why it failed.
    pub result: Result<String, Fault>,
    /// Follow-up events, validated; only to be queued if `result` is `Ok`.
    pub emitted: Vec<Event>,
    pub logs: Vec<LogLine>,
    pub stdout: String,
    pub stderr: String,
    pub duration: Duration,
    /// The key-value writes it buffered, to be committed with the event's
    /// settlement; `None` unless `result` is `Ok` and it wrote something
    /// (a failed or trapped invocation's buffer is dropped here).
    pub changes: Option<kv::Changes>,
}

/// The engine and linker shared by every handler of a root.
pub struct Sandbox {
    engine: Engine,
    linkers: Linkers,
    root: PathBuf,
    cache_dir: PathBuf,
    validator: Arc<Validator>,
    fuel: bool,
    ticker_stop: Arc<AtomicBool>,
    /// The key-value backend, opened when a handler with `keyvalue` grants
    /// first runs (a root without them never gets a database).
    state: Mutex<Option<Arc<dyn kv::Backend>>>,
    /// Where [`Sandbox::state`] comes from when set: the store's backend.
    store: Option<Arc<dyn crate::store::Store>>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl Sandbox {
    /// An engine for handlers under `root`, with the pooling allocator,
    /// epoch interruption and (when `fuel` is set) fuel metering.
    ///
    /// # Errors
    /// When the engine cannot be configured.
    pub fn new(root: &Path, validator: Validator, fuel: bool) -> Result<Sandbox> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.max_wasm_stack(MAX_WASM_STACK);
        config.consume_fuel(fuel);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(256);
        pool.total_core_instances(1024);
        pool.total_memories(512);
        pool.total_tables(1024);
        pool.max_memory_size(4 << 30);
        // One component may not take more than its share of the pool; its
        // memories together are capped by limits.memory_mb (`limiter`).
        pool.max_core_instances_per_component(limiter::MAX_CORE_INSTANCES);
        pool.max_memories_per_component(limiter::MAX_MEMORIES);
        pool.max_tables_per_component(limiter::MAX_TABLES);
        // Reset small memories and tables in place instead of returning them
        // to the kernel: that avoids a TLB shootdown across cores per event,
        // which otherwise dominates the cost of a fresh instance.
        pool.linear_memory_keep_resident(8 << 20);
        pool.table_keep_resident(1 << 20);
        pool.decommit_batch_size(64);
        // With PAGEMAP_SCAN (Linux 6.7+) only the pages an instance dirtied
        // are reset, instead of memset over the whole resident region.
        pool.pagemap_scan(wasmtime::Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(anyhow_err).context("failed to create the wasm engine")?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(anyhow_err).context("failed to link WASI")?;
        // wasi:filesystem/types again, through the file quotas, and
        // wasi:io/poll again, bounded by the deadline.
        linker.allow_shadowing(true);
        wasmtime_wasi::p2::bindings::sync::filesystem::types::add_to_linker::<State, quota::QuotaFsData>(
            &mut linker,
            |s| quota::QuotaFs {
                inner: wasmtime_wasi::filesystem::WasiFilesystemCtxView {
                    ctx: s.wasi.filesystem(),
                    table: &mut s.table,
                },
                quota: &mut s.quota,
            },
        )
        .map_err(anyhow_err)
        .context("failed to link the filesystem quotas")?;
        wasmtime_wasi::p2::bindings::sync::io::poll::add_to_linker::<State, deadline::DeadlinedData>(
            &mut linker,
            |s| deadline::Deadlined { table: &mut s.table, deadline: s.deadline },
        )
        .map_err(anyhow_err)
        .context("failed to link the deadline on wasi:io/poll")?;
        linker.allow_shadowing(false);
        let linkers = Linkers::new(&linker).map_err(anyhow_err).context("failed to link the cortex host functions")?;

        raise_fd_limit();

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (weak, stop) = (engine.weak(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("cortex-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })
            .context("failed to start the deadline ticker")?;

        Ok(Sandbox {
            engine,
            linkers,
            root: root.to_path_buf(),
            cache_dir: std::env::var_os(CACHE_ENV)
                .map_or_else(|| crate::layout::Layout::new(root).cache(), PathBuf::from),
            validator: Arc::new(validator),
            fuel,
            ticker_stop,
            state: Mutex::new(None),
            store: None,
        })
    }

    /// Keeps compiled components in `dir` instead of `<root>/cache/`: a
    /// throwaway root (`cortex handler test`) still reuses earlier compiles.
    #[must_use]
    pub fn with_cache_dir(mut self, dir: PathBuf) -> Sandbox {
        self.cache_dir = dir;
        self
    }

    pub fn validator(&self) -> &Validator {
        &self.validator
    }

    /// Uses `backend` for handler state instead of `<root>/kv/state.db`.
    #[must_use]
    pub fn with_state(self, backend: Arc<dyn kv::Backend>) -> Sandbox {
        *self.state.locked() = Some(backend);
        self
    }

    /// Takes handler state from `store` (opened on first use): the store a
    /// dispatcher settles in, which other hosts may share.
    #[must_use]
    pub fn with_store(mut self, store: Arc<dyn crate::store::Store>) -> Sandbox {
        self.store = Some(store);
        self
    }

    /// The key-value backend handlers' state lives in, opened on first use
    /// (the store's, or `<root>/kv/state.db`); the dispatcher commits to
    /// the same one.
    ///
    /// # Errors
    /// When the database cannot be opened.
    pub fn state(&self) -> Result<Arc<dyn kv::Backend>> {
        let mut slot = self.state.locked();
        if let Some(b) = slot.as_ref() {
            return Ok(b.clone());
        }
        let backend: Arc<dyn kv::Backend> = match &self.store {
            Some(store) => store.state()?,
            None => Arc::new(kv::sqlite::SqliteBackend::open(&crate::layout::Layout::new(&self.root).kv_db())?),
        };
        *slot = Some(backend.clone());
        Ok(backend)
    }

    /// The key-value backend if a database exists (or one was given),
    /// without creating one.
    ///
    /// # Errors
    /// When the database exists but cannot be opened.
    pub fn existing_state(&self) -> Result<Option<Arc<dyn kv::Backend>>> {
        let open = self.state.locked().is_some();
        if open || crate::layout::Layout::new(&self.root).kv_db().is_file() {
            return self.state().map(Some);
        }
        Ok(None)
    }

    /// Where a handler's component lives (relative paths are under the root).
    pub fn component_path(&self, config: &HandlerConfig) -> PathBuf {
        config.component_path(&self.root)
    }

    fn store(
        &self,
        loaded: &Loaded,
        trigger: &Event,
        limits: &HandlerLimits,
        overlay: Option<&Arc<kv::overlay::Overlay>>,
    ) -> Result<Store<State>> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        // Invocations run on the dispatcher's own threads, never on an async
        // executor: do file I/O inline instead of a thread hop per call.
        wasi.allow_blocking_current_thread(true);
        let stdout = MemoryOutputPipe::new(limits.output_bytes);
        let stderr = MemoryOutputPipe::new(limits.output_bytes);
        wasi.stdout(stdout.clone()).stderr(stderr.clone());
        for grant in &loaded.config.grants {
            self.preopen(&mut wasi, grant).with_context(|| format!("handler {}: grant {}", loaded.name, grant.dir))?;
        }
        let txn = if loaded.config.kv_grants().is_empty() {
            None
        } else {
            let generation =
                crate::records::ReplayMark::of(trigger).map_or(0, |m| u32::try_from(m.count).unwrap_or(u32::MAX));
            let mark = kv::Mark { event_id: trigger.event_id.clone(), handler: loaded.name.clone(), generation };
            let txn = kv::Txn::new(self.state()?, loaded.config.kv_grants(), loaded.config.limits.kv(), mark);
            Some(match overlay {
                Some(o) => txn.with_overlay(o.clone()),
                None => txn,
            })
        };
        let state = State {
            kv: txn,
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: limiter::Limiter::new(limits.memory_mb),
            call: CallContext::new(
                &loaded.name,
                loaded.settings.clone(),
                trigger,
                self.validator.clone(),
                limits.max_emits,
                &loaded.config,
            ),
            stdout,
            stderr,
            quota: quota::Quota::new(limits),
            // A deadline too far to represent is no deadline.
            deadline: Instant::now()
                .checked_add(Duration::from_millis(limits.deadline_ms))
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1 << 32)),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(limits.deadline_ms.div_ceil(TICK.as_millis() as u64) + 1);
        if let Some(fuel) = limits.fuel {
            store.set_fuel(fuel).map_err(anyhow_err)?;
        } else if self.fuel {
            store.set_fuel(u64::MAX).map_err(anyhow_err)?;
        }
        Ok(store)
    }

    /// Hands the guest its grant: the directory is opened (and missing parts
    /// created) from the root one component at a time without following a
    /// symlink, so a link a handler planted on the path — to `/etc`, or into
    /// another handler's grant — is refused, not preopened. wasmtime-wasi
    /// only takes a path, so it gets `/proc/self/fd/N` of the directory
    /// already opened: exactly that inode, whatever the path names by then.
    fn preopen(&self, wasi: &mut WasiCtxBuilder, grant: &Grant) -> Result<()> {
        let dir = fsio::beneath::open_dir(&self.root, Path::new(&grant.dir), fsio::beneath::Create::Yes)?;
        let guest = format!("/{}", grant.dir.trim_matches('/'));
        let perms = match grant.mode {
            Access::Ro => FsPerms::ReadOnly,
            Access::Rw => FsPerms::ReadWrite,
        };
        // `dir` stays open until wasmtime-wasi has opened its own descriptor.
        wasi.preopened_dir(fsio::beneath::proc_path(&dir), &guest, perms).map_err(anyhow_err)?;
        drop(dir);
        Ok(())
    }

    /// Runs `handle` on one event in a fresh instance.
    pub fn invoke(&self, loaded: &Loaded, event: &Event, attempt: u32) -> Invocation {
        self.invoke_in(loaded, event, attempt, None)
    }

    /// Runs `handle` on one event in a fresh instance, its key-value reads
    /// going through `overlay`: the pending changes of the lane it runs in.
    pub fn invoke_in(
        &self,
        loaded: &Loaded,
        event: &Event,
        attempt: u32,
        overlay: Option<&Arc<kv::overlay::Overlay>>,
    ) -> Invocation {
        let start = Instant::now();
        let limits = &loaded.config.limits;
        let mut store = match self.store(loaded, event, limits, overlay) {
            Ok(s) => s,
            Err(e) => {
                return Invocation {
                    result: Err(Fault::new(FaultKind::Instantiate, format!("{e:#}"))),
                    emitted: Vec::new(),
                    logs: Vec::new(),
                    stdout: String::new(),
                    stderr: String::new(),
                    duration: start.elapsed(),
                    changes: None,
                };
            }
        };
        let input = to_wit(event, attempt);
        let result = match loaded.pre.instantiate(&mut store) {
            Err(e) => Err(classify(&e, limits, FaultKind::Instantiate)),
            Ok(instance) => match instance.handle(&mut store, &input) {
                Ok(Ok(summary)) => Ok(cap(summary)),
                Ok(Err(e)) if e.retryable => Err(Fault::new(FaultKind::Error, cap(e.message))),
                Ok(Err(e)) => Err(Fault::new(FaultKind::Refused, cap(format!("not retryable: {}", e.message)))),
                Err(e) => Err(classify(&e, limits, FaultKind::Trap)),
            },
        };
        let state = store.into_data();
        let text = |p: &MemoryOutputPipe| String::from_utf8_lossy(&p.contents()).into_owned();
        let (stdout, stderr) = (text(&state.stdout), text(&state.stderr));
        // A guest whose writes were refused at the cap usually panics on the
        // failed write: report the cap, not a bare trap.
        let flooded = state.stdout.contents().len() >= limits.output_bytes
            || state.stderr.contents().len() >= limits.output_bytes;
        let result = match result {
            Err(f) if flooded && f.kind == FaultKind::Trap => Err(Fault {
                kind: FaultKind::OutputLimit,
                message: format!(
                    "wrote more than {} bytes to stdout/stderr (limits.output_bytes) and trapped when further writes were refused: {}",
                    limits.output_bytes, f.message
                ),
                detail: f.detail,
            }),
            Err(f) if state.quota.bytes_exceeded() && matches!(f.kind, FaultKind::Trap | FaultKind::Error) => {
                Err(Fault {
                    kind: FaultKind::WriteLimit,
                    message: format!(
                        "wrote more than {} bytes to files under its grants (limits.write_bytes; a write past the end of a file counts the gap too); further writes were refused with ENOSPC: {}",
                        limits.write_bytes, f.message
                    ),
                    detail: f.detail,
                })
            }
            Err(f) if state.quota.new_files_exceeded() && matches!(f.kind, FaultKind::Trap | FaultKind::Error) => {
                Err(Fault {
                    kind: FaultKind::WriteLimit,
                    message: format!(
                        "created more than {} files, directories and links under its grants (limits.max_new_files); further ones were refused with ENOSPC: {}",
                        limits.max_new_files, f.message
                    ),
                    detail: f.detail,
                })
            }
            Err(f) if state.quota.open_files_exceeded() && matches!(f.kind, FaultKind::Trap | FaultKind::Error) => {
                Err(Fault {
                    kind: FaultKind::FdLimit,
                    message: format!(
                        "held more than {} files and directories open at once (limits.max_open_files); further opens were refused: {}",
                        limits.max_open_files, f.message
                    ),
                    detail: f.detail,
                })
            }
            other => other,
        };
        // A state read the backend failed (a Redis server unreachable) is
        // not the handler's doing: retry the event, whatever the guest made
        // of the error (it may have refused, or gone on without the value).
        let result = match state.kv.as_ref().and_then(|t| t.unavailable()) {
            Some(why) => Err(Fault {
                kind: FaultKind::Error,
                message: format!(
                    "the state backend failed a read during the invocation ({why}); nothing it wrote is kept and the event is retried"
                ),
                detail: result.err().map(|f| f.message).unwrap_or_default(),
            }),
            None => result,
        };
        let mut call = state.call;
        call.finish_logs();
        let changes = match (&result, state.kv) {
            (Ok(_), Some(txn)) if !txn.is_empty() => Some(txn.into_changes()),
            _ => None,
        };
        Invocation {
            result,
            emitted: call.emitted,
            logs: call.logs,
            stdout,
            stderr,
            duration: start.elapsed(),
            changes,
        }
    }
}

/// Raises the soft limit on open file descriptors to the hard limit, as
/// servers do: guests hold descriptors too (at most `limits.max_open_files`
/// plus their grants per invocation), and the host's own (queue, journal,
/// sockets) must still open once they do.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::debug!("could not raise the open-file limit to {}", lim.rlim_max);
            }
        }
    }
}

fn to_wit(e: &Event, attempt: u32) -> wit::Event {
    let priority = match e.priority() {
        crate::event::Priority::Critical => wit::Priority::Critical,
        crate::event::Priority::High => wit::Priority::High,
        crate::event::Priority::Medium => wit::Priority::Medium,
        crate::event::Priority::Low => wit::Priority::Low,
    };
    wit::Event {
        event_id: e.event_id.clone(),
        event_type: e.event_type.clone(),
        timestamp: e.timestamp.clone(),
        source: e.source.clone(),
        correlation_id: e.correlation_id.clone(),
        master: e.metadata.master.clone(),
        priority,
        tags: e.metadata.tags.clone(),
        metadata: serde_json::Value::Object(e.metadata.extra.clone()).to_string(),
        payload: serde_json::Value::Object(e.payload.clone()).to_string(),
        attempt,
    }
}

/// wasmtime has its own error type; this keeps it inside the sandbox.
fn anyhow_err(e: wasmtime::Error) -> anyhow::Error {
    let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    anyhow::anyhow!("{}", chain.join(": "))
}

/// The sha256 of `bytes`, as lowercase hex: a component's identity, and the
/// one digest function of the crate.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a file, hex.
///
/// # Errors
/// When the file cannot be read.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
    Ok(sha256_hex(&bytes))
}

/// Settings as strings, as handlers see them.
fn settings_of(config: &HandlerConfig) -> BTreeMap<String, String> {
    config.settings.keys().filter_map(|k| config.setting(k).map(|v| (k.clone(), v))).collect()
}
