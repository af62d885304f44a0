//! Cortex: sandboxed, hot-swappable WebAssembly event handlers over a
//! durable filesystem queue.
//!
//! Producers build [`event::Event`]s and hand them to a [`queue::Queue`],
//! which logs them to the per-category [`journal`] and queues them durably.
//! A dispatcher claims queued events, routes them by type to handlers, and
//! settles each claim: archived, retried with backoff, or dead-lettered.
//!
//! # Layout
//! - [`event`]: the envelope, ids, the type catalogue, validation.
//! - [`cloudevents`]: CloudEvents 1.0 to and from the envelope (ingest, export, webhooks).
//! - [`config`]: `cortex.toml`, checked.
//! - [`layout`]: where each file of a coordination root lives; `init`.
//! - [`fsio`]: crash-safe file primitives (temp + fsync + rename, `syncfs`).
//! - [`journal`]: the category JSONL logs.
//! - [`kv`]: handler state (`wasi:keyvalue` buckets in `<root>/kv/state.db`),
//!   committed with each event's settlement (a lane reads its pending writes
//!   through `kv::overlay`); `cortex state` reads and repairs it.
//! - [`records`]: every record written and read back (archive line, dead
//!   letter, delivery history, service status, replay and retry marks), one
//!   type each, and the failure kinds they record.
//! - [`archive`]: reading archive days, plain or compressed, through one door;
//!   compressing old days into zstd segments with a seek index (`archive/`).
//! - [`queue`]: the durable queue behind the [`queue::Queue`] trait, a
//!   `queue/` file per job (names, claiming, group commit, recovery, archive).
//! - [`store`]: the storage trait, the only door to storage, with the Redis
//!   backend (`store/redis/`) beside the filesystem's [`queue`]; handler
//!   leases for several hosts on one store (`store/lease`).
//! - [`lock`]: mutexes and rwlocks that stay usable after a panic (the one place that says why).
//! - [`metrics`]: Prometheus counters, histograms and gauges.
//! - [`producer`]: emit one event, a batch or CloudEvents (the seed's event logger).
//! - [`pattern`]: type globs (`worker.*`), the one matcher; depends on nothing.
//! - [`route`]: event type patterns to handlers.
//! - [`dispatch`]: claim → route → run handlers → archive, retry or dead-letter;
//!   one `Mode` for one-shot and service runs, a `dispatch/` file per job
//!   (claim loop, lanes, committer, verdict, and the handler lease a lane
//!   holds on a shared store).
//! - [`sandbox`]: the wasmtime engine, component cache and per-event instances;
//!   both `cortex:events` worlds (0.2.0 and 0.1.0), and `wasi:keyvalue` over a
//!   [`kv::Txn`] for 0.2.0 handlers.
//! - [`handlers`]: what a handler's `describe()` declares (emits, payload
//!   contracts), checked against the config and shown by `cortex handlers`.
//! - [`replay`]: `cortex replay`: select archived events, dry-run, requeue or run directly
//!   (`cortex export` writes a selection out, as CloudEvents or envelopes).
//! - [`dlq`]: `cortex dlq`: list, show, retry and purge dead letters.
//! - [`harness`]: `cortex handler test`: one component against fixture events in a
//!   throwaway root, its typed report compared with an expectation.
//! - [`schedule`]: `[schedules]`: timer events that `cortex serve` queues once per tick.
//! - [`service`]: `cortex serve`: watcher, hot reload, metrics, shutdown, schedules;
//!   `service/http/` the listener's routes by job: `auth` (tokens, scopes),
//!   probes and metrics, `ingest` (`POST /v1/events` through [`producer`]), and
//!   the live dashboard (`dashboard` page, `api` JSON, `stream` SSE fed by
//!   [`dispatch::Observe`]).
//! - [`status`]: what `cortex status` reports.
//! - [`trace`]: `cortex trace`: the causal tree of an event or a correlation,
//!   from `caused_by` across queue, claims, dead letters and archive.
//! - [`inventory`]: what `cortex handlers list|check` reports: each handler and whether it loads.
//! - [`harness`]: `cortex handler test`: one component against fixture events in a throwaway root.
//! - [`scaffold`]: `cortex handlers new`: a handler folder to start from.
//! - [`text`]: guest and producer text escaped for terminals and log lines.
//! - [`webhooks`]: outbound webhooks, signed per Standard Webhooks: the outbox
//!   written in the settling group commit, the deliverer `cortex serve` runs
//!   (per-endpoint concurrency, backoff, circuit breaker, `410 Gone`), metrics;
//!   `cortex webhooks` lists and re-enables endpoints.
//!
//! The `cortex` binary (`main.rs`: parse, tracing, exit codes; `cli/`: one
//! file per command) only parses flags and prints what these modules return.

pub mod archive;
pub mod cloudevents;
pub mod config;
pub mod dispatch;
pub mod dlq;
pub mod event;
pub mod fsio;
pub mod handlers;
pub mod harness;
pub mod inventory;
pub mod journal;
pub mod kv;
pub mod layout;
pub mod lock;
pub mod metrics;
pub mod pattern;
pub mod producer;
pub mod queue;
pub mod records;
pub mod replay;
pub mod route;
pub mod sandbox;
pub mod scaffold;
pub mod schedule;
pub mod service;
pub mod status;
pub mod store;
pub mod text;
pub mod trace;
pub mod webhooks;

/// The commented `cortex.toml` that `cortex init` writes.
pub const DEFAULT_CONFIG: &str = include_str!("default-cortex.toml");
