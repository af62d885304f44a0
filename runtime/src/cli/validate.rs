//! `cortex validate`: check one event document, or a JSONL file of events
//! with each problem reported by line number.

use anyhow::{Context, Result};

use super::{Outcome, read_stdin, strip_bom};
use cortex::config::Config;
use cortex::event::Validator;
use cortex::layout::Layout;

#[derive(clap::Args)]
pub struct Args {
    /// A file, `-` or nothing for stdin, or the event itself as an
    /// argument (anything starting with `{`).
    #[arg(value_name = "FILE|-|EVENT_JSON")]
    input: Option<String>,
}

pub fn run(layout: &Layout, args: Args) -> Result<Outcome> {
    // Custom types come from the root's config when there is one.
    let validator =
        if layout.config().exists() { Config::load(layout.root())?.validator() } else { Validator::default() };
    let text = match args.input.as_deref() {
        None | Some("-") => read_stdin()?,
        // The event itself, as the seed's `validate "$(cat e.json)"` passes it.
        Some(arg) if strip_bom(arg).trim_start().starts_with('{') => arg.to_string(),
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("failed to read {p}"))?,
    };
    let text = strip_bom(&text);
    // JSONL when the first line is a whole JSON document of its own (and
    // more lines follow); else one (possibly pretty-printed) event.
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let jsonl = lines.next().is_some_and(|(_, first)| serde_json::from_str::<serde_json::Value>(first).is_ok())
        && lines.next().is_some();
    if !jsonl {
        return Ok(match validator.parse(text) {
            Ok(e) => {
                println!("valid: {} {}", e.event_id, e.event_type);
                Outcome::Success
            }
            Err(invalid) => {
                for p in &invalid.0 {
                    println!("{p}");
                }
                Outcome::Failure
            }
        });
    }
    let (mut total, mut bad) = (0, 0);
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        total += 1;
        if let Err(invalid) = validator.parse(line) {
            bad += 1;
            for p in &invalid.0 {
                println!("line {}: {p}", i + 1);
            }
        }
    }
    if bad > 0 {
        println!("{bad} of {total} events are invalid");
        return Ok(Outcome::Failure);
    }
    println!("valid: {total} events");
    Ok(Outcome::Success)
}
