//! What a handler is: the [`Handler`] trait, whose constants `describe()`
//! reports (name, version, handled and emitted event types, one payload
//! [`Contract`] per handled type), and the [`handler!`](crate::handler)
//! macro that exports it as the component's `handler` world.

use crate::bindings::cortex::events::types as wit;
use crate::{Event, Result};

/// The payload contract of one handled event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contract {
    /// An exact event type, e.g. `worker.completed`.
    pub event_type: &'static str,
    /// A JSON Schema (draft 2020-12) of the payloads the handler accepts,
    /// as JSON text: keep it in a file next to the parsing code and
    /// `include_str!` it.
    pub schema: &'static str,
}

/// What every handler implements.
pub trait Handler {
    const NAME: &'static str;
    const VERSION: &'static str = "0.1.0";
    /// Event types or globs this handler expects.
    const EVENTS: &'static [&'static str];
    /// Event types it may emit as follow-ups (`cortex handlers check`
    /// compares them with the configuration).
    const EMITS: &'static [&'static str] = &[];
    /// The payload contract of each handled event type it documents.
    const CONTRACTS: &'static [Contract] = &[];

    /// Handles one event; the `Ok` string is the outcome's summary.
    ///
    /// # Errors
    /// [`crate::Error::retry`] (also any `String`) when a retry can help;
    /// [`crate::Error::refuse`] when the event itself is unusable.
    fn handle(event: Event) -> Result<String>;
}

/// `describe()` of a [`Handler`]: used by [`handler!`](crate::handler).
pub fn describe<H: Handler>() -> wit::Info {
    let texts = |items: &[&str]| items.iter().map(|s| s.to_string()).collect();
    wit::Info {
        name: H::NAME.into(),
        version: H::VERSION.into(),
        events: texts(H::EVENTS),
        emits: texts(H::EMITS),
        contracts: H::CONTRACTS
            .iter()
            .map(|c| wit::Contract { event_type: c.event_type.into(), schema: c.schema.into() })
            .collect(),
    }
}

/// `handle()` of a [`Handler`]: used by [`handler!`](crate::handler).
///
/// # Errors
/// The handler's error, as the WIT `handler-error` record.
pub fn handle<H: Handler>(event: wit::Event) -> std::result::Result<wit::Outcome, wit::HandlerError> {
    H::handle(event.into()).map(|summary| wit::Outcome { summary }).map_err(Into::into)
}

/// Exports a [`Handler`] as the component's `handler` world.
#[macro_export]
macro_rules! handler {
    ($t:ty) => {
        struct __CortexExport;
        impl $crate::bindings::Guest for __CortexExport {
            fn handle(
                event: $crate::bindings::cortex::events::types::Event,
            ) -> ::std::result::Result<$crate::bindings::Outcome, $crate::bindings::HandlerError> {
                $crate::handle::<$t>(event)
            }
            fn describe() -> $crate::bindings::Info {
                $crate::describe::<$t>()
            }
        }
        $crate::bindings::export_handler!(__CortexExport);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Probe;

    impl Handler for Probe {
        const NAME: &'static str = "probe";
        const EVENTS: &'static [&'static str] = &["a.*"];
        const EMITS: &'static [&'static str] = &["b.done"];
        const CONTRACTS: &'static [Contract] = &[Contract { event_type: "a.x", schema: "{}" }];
        fn handle(event: Event) -> Result<String> {
            match event.str("fail") {
                Some("refuse") => Err(crate::Error::refuse("payload.fail says no")),
                Some(other) => Err(other.into()),
                None => Ok(format!("handled {}", event.id)),
            }
        }
    }

    fn wit_event(payload: &str) -> wit::Event {
        wit::Event {
            event_id: "evt_1".into(),
            event_type: "a.x".into(),
            timestamp: "2025-12-01T12:00:00Z".into(),
            source: "s".into(),
            correlation_id: None,
            master: None,
            priority: crate::Priority::Medium,
            tags: Vec::new(),
            metadata: "{}".into(),
            payload: payload.into(),
            attempt: 1,
        }
    }

    #[test]
    fn describe_reports_the_constants() {
        let info = describe::<Probe>();
        assert_eq!((info.name.as_str(), info.version.as_str()), ("probe", "0.1.0"));
        assert_eq!((info.events, info.emits), (vec!["a.*".to_string()], vec!["b.done".to_string()]));
        assert_eq!(info.contracts.len(), 1);
        assert_eq!((info.contracts[0].event_type.as_str(), info.contracts[0].schema.as_str()), ("a.x", "{}"));
    }

    #[test]
    fn handle_says_whether_a_retry_can_help() {
        assert_eq!(handle::<Probe>(wit_event("{}")).unwrap().summary, "handled evt_1");
        let refused = handle::<Probe>(wit_event(r#"{"fail": "refuse"}"#)).unwrap_err();
        assert_eq!((refused.message.as_str(), refused.retryable), ("payload.fail says no", false));
        let busy = handle::<Probe>(wit_event(r#"{"fail": "busy"}"#)).unwrap_err();
        assert_eq!((busy.message.as_str(), busy.retryable), ("busy", true));
    }
}
