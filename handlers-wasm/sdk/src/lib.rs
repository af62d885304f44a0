//! The Cortex guest SDK: write an event handler as a plain Rust type.
//!
//! ```ignore
//! use cortex_sdk::{Contract, Emit, Error, Event, Handler, Reader, Result};
//!
//! struct OnTaskFailure;
//!
//! impl Handler for OnTaskFailure {
//!     const NAME: &'static str = "on-task-failure";
//!     const EVENTS: &'static [&'static str] = &["task.failed"];
//!     const EMITS: &'static [&'static str] = &["task.created"];
//!     const CONTRACTS: &'static [Contract] =
//!         &[Contract { event_type: "task.failed", schema: include_str!("schema/task.failed.json") }];
//!     fn handle(event: Event) -> Result<String> {
//!         let mut p = Reader::new(&event);
//!         let task_id = p.req_str("task_id")?; // missing: refused, not retried
//!         p.finish().warn();                    // one warn line naming ignored fields
//!         Emit::new("task.created").payload(&serde_json::json!({"task_id": task_id}))?.send()?;
//!         Ok("retried".into())
//!     }
//! }
//! cortex_sdk::handler!(OnTaskFailure);
//! ```
//!
//! The crate wraps the `wit-bindgen` bindings of the `cortex:events@0.2.0`
//! world. A handler is a type implementing [`Handler`], exported with
//! [`handler!`]; `describe()` is filled from its constants.
//!
//! # Layout
//! - `event`: [`Event`], the incoming event with its payload parsed, and
//!   priority names.
//! - `payload`: [`Reader`], typed reads of payload fields (synonyms, numbers
//!   sent as strings) that refuse unusable values and remember which fields
//!   were read, so the rest can be reported with one warn line ([`Leftover`]).
//! - `error`: [`Error`] and [`Result`]: whether a retry can help.
//! - `handler`: the [`Handler`] trait, [`Contract`] and the [`handler!`]
//!   export macro.
//! - `contract`: checks of a handler's JSON Schema against its parser, for
//!   the handlers' unit tests.
//! - `emit`: [`Emit`], the one follow-up event builder.
//! - `config`: the handler's settings.
//! - `log`: lines for the host's log.
//! - `state`: JSON state files in the grants, and the applied-id list that
//!   makes at-least-once delivery safe.
//! - `time`: RFC 3339 timestamps (chrono) and the WASI wall clock.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "handler",
        path: "../../wit",
        generate_all,
        pub_export_macro: true,
        export_macro_name: "export_handler",
        default_bindings_module: "cortex_sdk::bindings",
    });
}

pub mod config;
pub mod contract;
mod emit;
mod error;
mod event;
mod handler;
pub mod log;
mod payload;
pub mod state;
pub mod time;

pub use bindings::cortex::events::types::{Level, Priority};
pub use config::{config, config_or};
pub use emit::Emit;
pub use error::{Error, Result};
pub use event::{Event, parse_priority, priority_name};
pub use handler::{Contract, Handler};
#[doc(hidden)]
pub use handler::{describe, handle};
pub use log::{info, log, warn};
pub use payload::{Leftover, Names, Reader, SCHEDULE_FIELDS};
pub use serde_json::{Map, Value, json};
