//! The `cortex:events` worlds the host speaks: the generated bindings of
//! 0.2.0 (`wit/`) and of 0.1.0 (`wit/v0.1/`), which world a component was
//! built against, and one face over both for the rest of the sandbox.
//!
//! Both worlds put `emit`, `log` and `config` at the root of the component's
//! imports with different types, so each gets its own [`Linker`], cloned
//! from one that already holds WASI. A component is told apart by what it
//! imports (`cortex:events/types@0.1.x` or `@0.2.x`) or, when it imports no
//! type of the package, by the error type of its `handle` export; it is then
//! pre-linked with that world's linker. A 0.1.0 component's `Err(string)`
//! becomes a retryable [`GuestError`], exactly as it was handled before 0.2.0;
//! its `describe` declares no emits and no contracts. Only the 0.2.0 world
//! imports `wasi:keyvalue`, so only its linker holds it.

use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, HasSelf, Linker, Type};
use wasmtime::{Engine, Store};

use super::host::State;
use super::{Contract, Info};

/// `cortex:events@0.2.0`: errors that say whether a retry can help,
/// declared emits and contracts, and `wasi:keyvalue` (see `keyvalue`).
pub(super) mod v02 {
    wasmtime::component::bindgen!({
        world: "handler",
        path: "../wit",
        with: {
            "wasi:keyvalue/store.bucket": crate::sandbox::keyvalue::Bucket,
        },
    });
}

/// `cortex:events@0.1.0`: `handle` fails with a bare string.
pub(super) mod v01 {
    wasmtime::component::bindgen!({
        world: "handler",
        path: "../wit/v0.1",
    });
}

use v01::cortex::events::types as wit01;
/// The types of the current world, which the host functions work in.
pub(super) use v02::cortex::events::types as wit;

/// The `cortex:events` version a component was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    V01,
    V02,
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            World::V01 => "cortex:events@0.1.0",
            World::V02 => "cortex:events@0.2.0",
        })
    }
}

impl World {
    /// Which world `component` targets, from its imports, else from the
    /// error type of its `handle` export (a string only in 0.1.0).
    pub fn of(engine: &Engine, component: &Component) -> World {
        let ty = component.component_type();
        for (name, _) in ty.imports(engine) {
            if name.starts_with("cortex:events/types@0.1.") {
                return World::V01;
            }
            if name.starts_with("cortex:events/types@0.2.") {
                return World::V02;
            }
        }
        let handle = ty.get_export(engine, "handle").map(|e| e.ty);
        if let Some(ComponentItem::ComponentFunc(func)) = handle
            && let Some(Type::Result(result)) = func.results().next()
            && result.err() == Some(Type::String)
        {
            return World::V01;
        }
        World::V02
    }
}

/// What a handler's `handle` returned as its error.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestError {
    pub message: String,
    /// Whether delivering the event again can succeed (always for 0.1.0).
    pub retryable: bool,
}

/// One linker per world, sharing the WASI part.
pub struct Linkers {
    v01: Linker<State>,
    v02: Linker<State>,
}

impl Linkers {
    /// Adds each world's host functions to a copy of `base`.
    pub fn new(base: &Linker<State>) -> wasmtime::Result<Linkers> {
        let mut v01 = base.clone();
        v01::Handler::add_to_linker::<_, HasSelf<_>>(&mut v01, |s| s)?;
        let mut v02 = base.clone();
        v02::Handler::add_to_linker::<_, HasSelf<_>>(&mut v02, |s| s)?;
        Ok(Linkers { v01, v02 })
    }

    /// `component` pre-linked with the linker of the world it targets.
    pub fn pre(&self, engine: &Engine, component: &Component) -> wasmtime::Result<Pre> {
        Ok(match World::of(engine, component) {
            World::V01 => Pre::V01(v01::HandlerPre::new(self.v01.instantiate_pre(component)?)?),
            World::V02 => Pre::V02(v02::HandlerPre::new(self.v02.instantiate_pre(component)?)?),
        })
    }
}

/// A component linked once, instantiated per event.
pub enum Pre {
    V01(v01::HandlerPre<State>),
    V02(v02::HandlerPre<State>),
}

/// A fresh instance of a handler.
pub enum Instance {
    V01(v01::Handler),
    V02(v02::Handler),
}

impl Pre {
    pub fn world(&self) -> World {
        match self {
            Pre::V01(_) => World::V01,
            Pre::V02(_) => World::V02,
        }
    }

    pub fn instantiate(&self, store: &mut Store<State>) -> wasmtime::Result<Instance> {
        Ok(match self {
            Pre::V01(pre) => Instance::V01(pre.instantiate(store)?),
            Pre::V02(pre) => Instance::V02(pre.instantiate(store)?),
        })
    }
}

impl Instance {
    /// Calls `describe`.
    pub fn describe(&self, store: &mut Store<State>) -> wasmtime::Result<Info> {
        Ok(match self {
            Instance::V01(i) => {
                let info = i.call_describe(store)?;
                Info { name: info.name, version: info.version, events: info.events, ..Info::default() }
            }
            Instance::V02(i) => {
                let info = i.call_describe(store)?;
                Info {
                    name: info.name,
                    version: info.version,
                    events: info.events,
                    emits: info.emits,
                    contracts: info
                        .contracts
                        .into_iter()
                        .map(|c| Contract { event_type: c.event_type, schema: c.schema })
                        .collect(),
                }
            }
        })
    }

    /// Calls `handle`: the outer error is a trap, the inner the guest's own.
    pub fn handle(&self, store: &mut Store<State>, event: &wit::Event) -> wasmtime::Result<Result<String, GuestError>> {
        Ok(match self {
            Instance::V01(i) => i
                .call_handle(store, &event_01(event))?
                .map(|o| o.summary)
                .map_err(|message| GuestError { message, retryable: true }),
            Instance::V02(i) => i
                .call_handle(store, event)?
                .map(|o| o.summary)
                .map_err(|e| GuestError { message: e.message, retryable: e.retryable }),
        })
    }
}

fn priority_01(p: wit::Priority) -> wit01::Priority {
    match p {
        wit::Priority::Critical => wit01::Priority::Critical,
        wit::Priority::High => wit01::Priority::High,
        wit::Priority::Medium => wit01::Priority::Medium,
        wit::Priority::Low => wit01::Priority::Low,
    }
}

fn priority_02(p: wit01::Priority) -> wit::Priority {
    match p {
        wit01::Priority::Critical => wit::Priority::Critical,
        wit01::Priority::High => wit::Priority::High,
        wit01::Priority::Medium => wit::Priority::Medium,
        wit01::Priority::Low => wit::Priority::Low,
    }
}

/// The 0.1.0 spelling of an event (the record is the same field for field).
fn event_01(e: &wit::Event) -> wit01::Event {
    wit01::Event {
        event_id: e.event_id.clone(),
        event_type: e.event_type.clone(),
        timestamp: e.timestamp.clone(),
        source: e.source.clone(),
        correlation_id: e.correlation_id.clone(),
        master: e.master.clone(),
        priority: priority_01(e.priority),
        tags: e.tags.clone(),
        metadata: e.metadata.clone(),
        payload: e.payload.clone(),
        attempt: e.attempt,
    }
}

impl wit01::Host for State {}

/// A 0.1.0 guest's host calls, answered by the 0.2.0 ones (the imports did
/// not change between the versions).
impl v01::HandlerImports for State {
    fn emit(&mut self, e: wit01::NewEvent) -> Result<String, String> {
        v02::HandlerImports::emit(
            self,
            wit::NewEvent {
                event_type: e.event_type,
                payload: e.payload,
                source: e.source,
                correlation_id: e.correlation_id,
                priority: e.priority.map(priority_02),
                master: e.master,
                tags: e.tags,
            },
        )
    }

    fn log(&mut self, level: wit01::Level, message: String) {
        let level = match level {
            wit01::Level::Trace => wit::Level::Trace,
            wit01::Level::Debug => wit::Level::Debug,
            wit01::Level::Info => wit::Level::Info,
            wit01::Level::Warn => wit::Level::Warn,
            wit01::Level::Error => wit::Level::Error,
        };
        v02::HandlerImports::log(self, level, message);
    }

    fn config(&mut self, key: String) -> Option<String> {
        v02::HandlerImports::config(self, key)
    }
}
