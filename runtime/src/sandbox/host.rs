//! What a handler instance can reach: the store state, WASI, and the
//! `emit` / `log` / `config` host functions of the `handler` world.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::HandlerImports;
use super::wit;
use crate::event::{Event, Validator};

/// Log lines kept per invocation (the rest are counted, not kept).
const MAX_LOG_LINES: usize = 1000;
/// Longest log line kept, in bytes.
const MAX_LOG_LINE: usize = 4096;

/// A line a handler logged.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LogLine {
    pub level: String,
    pub message: String,
}

/// Per-invocation context behind the host functions.
pub struct CallContext {
    handler: String,
    settings: Arc<std::collections::BTreeMap<String, String>>,
    trigger_id: String,
    trigger_correlation: Option<String>,
    validator: Arc<Validator>,
    max_emits: usize,
    /// Events the handler emitted, validated, in order.
    pub emitted: Vec<Event>,
    pub logs: Vec<LogLine>,
    dropped_logs: usize,
}

impl CallContext {
    pub fn new(
        handler: &str,
        settings: Arc<std::collections::BTreeMap<String, String>>,
        trigger: &Event,
        validator: Arc<Validator>,
        max_emits: usize,
    ) -> CallContext {
        CallContext {
            handler: handler.to_string(),
            settings,
            trigger_id: trigger.event_id.clone(),
            trigger_correlation: trigger.correlation_id.clone(),
            validator,
            max_emits,
            emitted: Vec::new(),
            logs: Vec::new(),
            dropped_logs: 0,
        }
    }

    fn emit(&mut self, new: wit::NewEvent) -> Result<String, String> {
        if self.emitted.len() >= self.max_emits {
            return Err(format!(
                "emit refused: this invocation already emitted {} events, the limit (limits.max_emits)",
                self.max_emits
            ));
        }
        let payload = match serde_json::from_str::<Value>(&new.payload) {
            Ok(Value::Object(m)) => m,
            Ok(other) => return Err(format!("payload: expected a JSON object, found {}", crate::event::kind(&other))),
            Err(e) => return Err(format!("payload: malformed JSON: {e}")),
        };
        let priority = new.priority.map(|p| match p {
            wit::Priority::Critical => crate::event::Priority::Critical,
            wit::Priority::High => crate::event::Priority::High,
            wit::Priority::Medium => crate::event::Priority::Medium,
            wit::Priority::Low => crate::event::Priority::Low,
        });
        let mut value = crate::event::NewEvent {
            event_type: new.event_type,
            source: new.source.unwrap_or_else(|| self.handler.clone()),
            payload,
            // A chain stays traceable: the trigger's correlation id, or the
            // trigger itself when it had none.
            correlation_id: new
                .correlation_id
                .or_else(|| self.trigger_correlation.clone())
                .or_else(|| Some(self.trigger_id.clone())),
            priority,
            master: new.master,
            tags: new.tags,
        }
        .into_value();
        let mut caused_by = Map::new();
        caused_by.insert("event_id".into(), Value::String(self.trigger_id.clone()));
        caused_by.insert("handler".into(), Value::String(self.handler.clone()));
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
        let name = match level {
            wit::Level::Trace => "trace",
            wit::Level::Debug => "debug",
            wit::Level::Info => "info",
            wit::Level::Warn => "warn",
            wit::Level::Error => "error",
        };
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let (handler, event) = (&self.handler, &self.trigger_id);
        match level {
            wit::Level::Trace => tracing::trace!(handler, event, "{message}"),
            wit::Level::Debug => tracing::debug!(handler, event, "{message}"),
            wit::Level::Info => tracing::info!(handler, event, "{message}"),
            wit::Level::Warn => tracing::warn!(handler, event, "{message}"),
            wit::Level::Error => tracing::error!(handler, event, "{message}"),
        }
        if self.logs.len() < MAX_LOG_LINES {
            self.logs.push(LogLine { level: name.into(), message });
        } else {
            self.dropped_logs += 1;
        }
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
