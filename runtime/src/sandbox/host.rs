//! What a handler instance can reach: the store state, WASI, and the
//! `emit` / `log` / `config` host functions of the `handler` world (its
//! `wasi:keyvalue` imports are in `keyvalue`).

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::wit;
use super::world::v02::HandlerImports;
use crate::config::HandlerConfig;
use crate::event::{Event, Priority, Validator};
use crate::text::Escaped;

/// Log lines kept and forwarded to the host's log per invocation; the rest
/// are counted and dropped, never forwarded.
const MAX_LOG_LINES: usize = 1000;
/// Bytes of log messages kept and forwarded per invocation (the line cap
/// alone would still let 1000 lines of 4 KiB through).
const MAX_LOG_BYTES: usize = 256 * 1024;
/// Longest log line kept, in bytes.
const MAX_LOG_LINE: usize = 4096;

/// A line a handler logged.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

/// The level of a handler's log line (the WIT `level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// The level's name, as records and reports write it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// What the handler's config lets it put in the envelope of what it emits.
struct EmitPolicy {
    emits: Option<Vec<String>>,
    max_priority: Priority,
    may_set_source: bool,
    may_set_master: bool,
}

/// Per-invocation context behind the host functions.
pub struct CallContext {
    handler: String,
    settings: Arc<std::collections::BTreeMap<String, String>>,
    trigger_id: String,
    trigger_type: String,
    trigger_correlation: Option<String>,
    trigger_master: Option<String>,
    trigger_hops: u64,
    validator: Arc<Validator>,
    max_emits: usize,
    policy: EmitPolicy,
    /// Events the handler emitted, validated, in order.
    pub emitted: Vec<Event>,
    pub logs: Vec<LogLine>,
    log_bytes: usize,
    dropped_logs: usize,
    dropped_log_bytes: usize,
}

impl CallContext {
    pub fn new(
        handler: &str,
        settings: Arc<std::collections::BTreeMap<String, String>>,
        trigger: &Event,
        validator: Arc<Validator>,
        max_emits: usize,
        config: &HandlerConfig,
    ) -> CallContext {
        CallContext {
            handler: handler.to_string(),
            settings,
            trigger_id: trigger.event_id.clone(),
            trigger_type: trigger.event_type.clone(),
            trigger_correlation: trigger.correlation_id.clone().filter(|c| !c.is_empty()),
            trigger_master: trigger.metadata.master.clone(),
            trigger_hops: trigger.hops(),
            validator,
            max_emits,
            policy: EmitPolicy {
                emits: config.emits.clone(),
                max_priority: config.max_priority,
                may_set_source: config.may_set_source,
                may_set_master: config.may_set_master,
            },
            emitted: Vec::new(),
            logs: Vec::new(),
            log_bytes: 0,
            dropped_logs: 0,
            dropped_log_bytes: 0,
        }
    }

    /// Why the handler's config does not let it emit this, if it does not.
    fn refusal(&self, new: &wit::NewEvent, priority: Option<Priority>) -> Option<String> {
        let (name, policy) = (&self.handler, &self.policy);
        if let Some(patterns) = &policy.emits
            && !patterns.iter().any(|p| crate::pattern::glob_match(p, &new.event_type))
        {
            return Some(format!(
                "emit refused: event type {:?} is not in handlers.{name}.emits ({})",
                new.event_type,
                patterns.join(", ")
            ));
        }
        if let Some(source) = &new.source
            && source != name
            && !policy.may_set_source
        {
            return Some(format!(
                "emit refused: source {} is not this handler's name; leave it unset (it defaults to {name:?}) or set handlers.{name}.may_set_source = true",
                crate::text::quote(source)
            ));
        }
        if let Some(master) = &new.master
            && Some(master) != self.trigger_master.as_ref()
            && !policy.may_set_master
        {
            return Some(format!(
                "emit refused: master {master:?} is not the triggering event's ({}); set handlers.{name}.may_set_master = true to allow it",
                self.trigger_master.as_deref().map_or("none".to_string(), |m| format!("{m:?}"))
            ));
        }
        if let Some(p) = priority
            && p < policy.max_priority
        {
            return Some(format!(
                "emit refused: priority {p} is above this handler's max_priority {} (handlers.{name}.max_priority)",
                policy.max_priority
            ));
        }
        None
    }

    fn emit(&mut self, new: wit::NewEvent) -> Result<String, String> {
        if self.emitted.len() >= self.max_emits {
            return Err(format!(
                "emit refused: this invocation already emitted {} events, the limit (limits.max_emits)",
                self.max_emits
            ));
        }
        let priority = new.priority.map(|p| match p {
            wit::Priority::Critical => Priority::Critical,
            wit::Priority::High => Priority::High,
            wit::Priority::Medium => Priority::Medium,
            wit::Priority::Low => Priority::Low,
        });
        if let Some(why) = self.refusal(&new, priority) {
            return Err(why);
        }
        let payload = match serde_json::from_str::<Value>(&new.payload) {
            Ok(Value::Object(m)) => m,
            Ok(other) => return Err(format!("payload: expected a JSON object, found {}", crate::event::kind(&other))),
            Err(e) => return Err(format!("payload: malformed JSON: {e}")),
        };
        let mut value = crate::event::NewEvent {
            event_type: new.event_type,
            source: new.source.unwrap_or_else(|| self.handler.clone()),
            payload,
            // A chain stays traceable: the trigger's correlation id, or the
            // trigger itself when it had none.
            correlation_id: new
                .correlation_id
                .filter(|c| !c.is_empty())
                .or_else(|| self.trigger_correlation.clone())
                .or_else(|| Some(self.trigger_id.clone())),
            priority,
            master: new.master,
            tags: new.tags,
        }
        .into_value();
        // Set by the host alone (the guest's new-event has no metadata), so
        // the dispatcher can trust the hop count to cut event loops.
        let mut caused_by = Map::new();
        caused_by.insert("event_id".into(), Value::String(self.trigger_id.clone()));
        caused_by.insert("event_type".into(), Value::String(self.trigger_type.clone()));
        caused_by.insert("handler".into(), Value::String(self.handler.clone()));
        caused_by.insert("hops".into(), Value::from(self.trigger_hops.saturating_add(1)));
        value["metadata"]["caused_by"] = Value::Object(caused_by);
        match self.validator.validate(value) {
            Ok(event) => {
                let id = event.event_id.clone();
                self.emitted.push(event);
                Ok(id)
            }
            Err(invalid) => Err(format!("emit refused: {invalid}")),
        }
    }

    fn log(&mut self, level: wit::Level, mut message: String) {
        // Past the caps a line is only counted: a flood costs the host a
        // copy of each line, never a write to its log.
        if self.logs.len() >= MAX_LOG_LINES || self.log_bytes >= MAX_LOG_BYTES {
            self.dropped_logs += 1;
            self.dropped_log_bytes = self.dropped_log_bytes.saturating_add(message.len());
            return;
        }
        let name = match level {
            wit::Level::Trace => LogLevel::Trace,
            wit::Level::Debug => LogLevel::Debug,
            wit::Level::Info => LogLevel::Info,
            wit::Level::Warn => LogLevel::Warn,
            wit::Level::Error => LogLevel::Error,
        };
        let limit = MAX_LOG_LINE.min(MAX_LOG_BYTES - self.log_bytes);
        if message.len() > limit {
            message.truncate(message.floor_char_boundary(limit));
            message.push('…');
        }
        self.log_bytes += message.len();
        let (handler, event, text) = (&self.handler, &self.trigger_id, Escaped(&message));
        match level {
            wit::Level::Trace => tracing::trace!(handler, event, "{text}"),
            wit::Level::Debug => tracing::debug!(handler, event, "{text}"),
            wit::Level::Info => tracing::info!(handler, event, "{text}"),
            wit::Level::Warn => tracing::warn!(handler, event, "{text}"),
            wit::Level::Error => tracing::error!(handler, event, "{text}"),
        }
        self.logs.push(LogLine { level: name, message });
    }

    /// Ends the invocation's logging: when lines were dropped over the caps,
    /// says so once, in the host's log and as the handler's last kept line.
    pub fn finish_logs(&mut self) {
        if self.dropped_logs == 0 {
            return;
        }
        let message = format!(
            "{} more log lines ({} bytes) were dropped: over the per-invocation cap of {MAX_LOG_LINES} lines or {} KiB",
            self.dropped_logs,
            self.dropped_log_bytes,
            MAX_LOG_BYTES >> 10
        );
        tracing::warn!(handler = %self.handler, event = %self.trigger_id, "{message}");
        self.logs.push(LogLine { level: LogLevel::Warn, message });
    }
}

/// The state of one store: one handler instance handling one event.
pub struct State {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limits: super::limiter::Limiter,
    pub call: CallContext,
    pub stdout: MemoryOutputPipe,
    pub stderr: MemoryOutputPipe,
    /// What this invocation may still do to files under its grants.
    pub quota: super::quota::Quota,
    /// When the invocation's wall-clock deadline passes, for host calls
    /// that wait (the epoch deadline covers the guest's own code).
    pub deadline: std::time::Instant,
    /// The invocation's view of its key-value buckets (`keyvalue`); none
    /// for a handler granted no bucket.
    pub kv: Option<crate::kv::Txn>,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl wit::Host for State {}

impl HandlerImports for State {
    fn emit(&mut self, event: wit::NewEvent) -> Result<String, String> {
        self.call.emit(event)
    }

    fn log(&mut self, level: wit::Level, message: String) {
        self.call.log(level, message);
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.call.settings.get(&key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(config: &str) -> CallContext {
        let config = crate::config::Config::parse(&format!("[handlers.h]\ncomponent='h.wasm'\nevents=['*']\n{config}"))
            .expect("test config parses");
        let trigger = Validator::default()
            .validate(serde_json::json!({"event_id": "evt_20251201_120000_abc123", "event_type": "task.failed",
                "timestamp": "2025-12-01T12:00:00Z", "source": "s", "metadata": {"master": "m"}}))
            .expect("test trigger validates");
        CallContext::new("h", Arc::default(), &trigger, Arc::new(Validator::default()), 10, &config.handlers["h"])
    }

    fn new_event(event_type: &str) -> wit::NewEvent {
        wit::NewEvent {
            event_type: event_type.into(),
            payload: "{}".into(),
            source: None,
            correlation_id: None,
            priority: None,
            master: None,
            tags: Vec::new(),
        }
    }

    #[test]
    fn logs_are_capped_in_lines_and_bytes_and_the_drop_is_told_once() {
        let mut call = context("");
        for _ in 0..100_000 {
            call.log(wit::Level::Info, "x".repeat(4096));
        }
        call.finish_logs();
        let kept: usize = call.logs.iter().map(|l| l.message.len()).sum();
        assert!(kept <= MAX_LOG_BYTES + 4096, "{kept} bytes kept");
        let last = &call.logs.last().expect("a line").message;
        assert!(last.starts_with(&format!("{} more log lines", 100_000 - (call.logs.len() - 1))), "{last}");
        let mut call = context("");
        for _ in 0..5000 {
            call.log(wit::Level::Info, "short".into());
        }
        call.finish_logs();
        assert_eq!(call.logs.len(), MAX_LOG_LINES + 1);
    }

    #[test]
    fn emits_stay_within_the_handlers_config() {
        let mut call = context("emits = ['task.*']");
        let mut e = new_event("task.created");
        e.source = Some("h".into());
        e.master = Some("m".into());
        e.priority = Some(wit::Priority::High);
        let id = call.emit(e).expect("its own name, the trigger's master, high: allowed");
        let emitted = &call.emitted[0];
        assert_eq!((emitted.event_id.as_str(), emitted.source.as_str()), (id.as_str(), "h"));
        assert_eq!(emitted.metadata.extra["caused_by"]["hops"], 1);
        assert_eq!(emitted.metadata.extra["caused_by"]["event_type"], "task.failed");

        let refused = |call: &mut CallContext, e: wit::NewEvent| call.emit(e).expect_err("refused");
        assert!(refused(&mut call, new_event("system.health_alert")).contains("not in handlers.h.emits"));
        let mut e = new_event("task.created");
        e.source = Some("other".into());
        assert!(refused(&mut call, e).contains("may_set_source"));
        let mut e = new_event("task.created");
        e.master = Some("other".into());
        assert!(refused(&mut call, e).contains("may_set_master"));
        let mut e = new_event("task.created");
        e.priority = Some(wit::Priority::Critical);
        assert!(refused(&mut call, e).contains("max_priority high"));

        let mut call = context("max_priority = 'critical'\nmay_set_source = true\nmay_set_master = true");
        let mut e = new_event("system.health_alert");
        e.source = Some("other".into());
        e.master = Some("other".into());
        e.priority = Some(wit::Priority::Critical);
        call.emit(e).expect("allowed by the config");
    }
}
