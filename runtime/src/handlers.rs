//! What a handler's `describe()` declares beyond its events, checked against
//! `cortex.toml` and shown to people: the event types it emits and the
//! payload contract (a JSON Schema) of each type it handles, both new in
//! `cortex:events@0.2.0` (a 0.1.0 component declares neither).
//!
//! `cortex handlers check` reports [`emit_problems`] and
//! [`contract_problems`] as failures, so a handler whose follow-ups the
//! validator or its `emits` setting would refuse is caught before it runs
//! (issue 16: enabling the JavaScript notifier passed `check`, then its
//! `notification.requested` was refused on every alert).
//! `cortex handlers list --verbose` prints [`declaration_lines`]; `--json`
//! includes [`declarations_json`].

use serde_json::{Value, json};

use crate::config::HandlerConfig;
use crate::event::Validator;
use crate::sandbox::Info;
use crate::text::Escaped;

/// Each declared emitted type that the validator does not know (neither
/// built in nor in `[events] custom_types`) or that the handler's `emits`
/// setting does not allow: the host would refuse that emit at run time.
pub fn emit_problems(name: &str, info: &Info, config: &HandlerConfig, validator: &Validator) -> Vec<String> {
    let mut out = Vec::new();
    for t in &info.emits {
        if validator.category(t).is_none() {
            out.push(format!(
                "handler {name} declares that it emits {}, which is neither a built-in event type nor in [events] custom_types: add it there, or its emits will be refused",
                Escaped(t)
            ));
        }
        if let Some(patterns) = &config.emits
            && !patterns.iter().any(|p| crate::pattern::glob_match(p, t))
        {
            out.push(format!(
                "handler {name} declares that it emits {}, which handlers.{name}.emits ({}) does not allow: add it there, or its emits will be refused",
                Escaped(t),
                patterns.join(", ")
            ));
        }
    }
    out
}

/// Each contract whose schema is not a JSON object (a JSON Schema is one).
pub fn contract_problems(name: &str, info: &Info) -> Vec<String> {
    info.contracts
        .iter()
        .filter_map(|c| match serde_json::from_str::<Value>(&c.schema) {
            Ok(Value::Object(_)) => None,
            Ok(other) => Some(format!(
                "handler {name}: the contract of {} is not a JSON Schema object but {}",
                Escaped(&c.event_type),
                crate::event::kind(&other)
            )),
            Err(e) => Some(format!("handler {name}: the contract of {} is not JSON: {e}", Escaped(&c.event_type))),
        })
        .collect()
}

/// The declarations for `--json`: `emits`, and `contracts` with each
/// schema parsed (kept as text when it is not JSON).
pub fn declarations_json(info: &Info) -> Value {
    let contracts: Vec<Value> = info
        .contracts
        .iter()
        .map(|c| {
            let schema = serde_json::from_str::<Value>(&c.schema).unwrap_or_else(|_| Value::String(c.schema.clone()));
            json!({"event_type": c.event_type, "schema": schema})
        })
        .collect();
    json!({"emits": info.emits, "contracts": contracts})
}

/// The lines `cortex handlers list --verbose` adds under a handler: what it
/// emits and each contract's schema, indented, guest text escaped.
pub fn declaration_lines(info: &Info) -> Vec<String> {
    let mut out = Vec::new();
    let emits: Vec<String> = info.emits.iter().map(|t| Escaped(t).to_string()).collect();
    out.push(format!("    emits:     {}", if emits.is_empty() { "(none declared)".into() } else { emits.join(", ") }));
    if info.contracts.is_empty() {
        out.push("    contracts: (none declared)".into());
    }
    for c in &info.contracts {
        out.push(format!("    contract:  {}", Escaped(&c.event_type)));
        // Pretty JSON escapes control characters inside strings itself.
        let text = match serde_json::from_str::<Value>(&c.schema) {
            Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
            Err(_) => c.schema.clone(),
        };
        out.extend(text.lines().map(|l| format!("      {}", Escaped(l))));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::sandbox::Contract;

    fn setup(extra: &str) -> (HandlerConfig, Validator) {
        let config = Config::parse(&format!(
            "[events]\ncustom_types = ['billing.invoice_paid']\n[handlers.h]\ncomponent='h.wasm'\nevents=['task.*']\n{extra}"
        ))
        .expect("test config parses");
        (config.handlers["h"].clone(), config.validator())
    }

    fn info(emits: &[&str]) -> Info {
        Info { emits: emits.iter().map(|s| s.to_string()).collect(), ..Info::default() }
    }

    #[test]
    fn an_emitted_type_must_be_known_and_allowed() {
        let (config, validator) = setup("");
        assert!(emit_problems("h", &info(&["task.created", "billing.invoice_paid"]), &config, &validator).is_empty());
        let problems = emit_problems("h", &info(&["notification.requested"]), &config, &validator);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("notification.requested") && problems[0].contains("custom_types"), "{problems:?}");

        let (config, validator) = setup("emits = ['task.*']");
        let problems = emit_problems("h", &info(&["task.created", "system.health_alert"]), &config, &validator);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("system.health_alert") && problems[0].contains("handlers.h.emits (task.*)"));
    }

    #[test]
    fn contracts_are_checked_shown_and_escaped() {
        let mut i = info(&["task.created"]);
        i.contracts = vec![
            Contract { event_type: "task.failed".into(), schema: r#"{"type":"object","title":"a\u001bb"}"#.into() },
            Contract { event_type: "task.created\u{1b}[2J".into(), schema: "[1]".into() },
            Contract { event_type: "task.updated".into(), schema: "{".into() },
        ];
        let problems = contract_problems("h", &i);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("not a JSON Schema object but an array"), "{problems:?}");
        assert!(!problems[0].contains('\u{1b}'), "{problems:?}");
        assert!(problems[1].contains("task.updated is not JSON"), "{problems:?}");

        let lines = declaration_lines(&i).join("\n");
        assert!(lines.contains("    emits:     task.created"), "{lines}");
        assert!(lines.contains("    contract:  task.failed\n      {\n"), "{lines}");
        assert!(lines.contains("        \"type\": \"object\""), "{lines}");
        assert!(!lines.contains('\u{1b}'), "{lines}");
        assert_eq!(
            declaration_lines(&Info::default()),
            ["    emits:     (none declared)", "    contracts: (none declared)"]
        );

        let j = declarations_json(&i);
        assert_eq!(j["emits"], json!(["task.created"]));
        assert_eq!(j["contracts"][0]["schema"]["type"], "object");
        assert_eq!(j["contracts"][2]["schema"], "{");
    }
}
