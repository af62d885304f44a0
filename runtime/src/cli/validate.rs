//! `cortex validate`: check one event document, or a JSONL file of events
//! with each problem reported by line number ([`Validator::check_text`]
//! tells which it is).

use anyhow::{Context, Result};

use super::{Outcome, read_stdin, strip_bom};
use cortex::config::Config;
use cortex::event::{Checked, Validator};
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
    Ok(match validator.check_text(strip_bom(&text)) {
        Checked::One(Ok(e)) => {
            println!("valid: {} {}", e.event_id, e.event_type);
            Outcome::Success
        }
        Checked::One(Err(invalid)) => {
            for p in &invalid.0 {
                println!("{p}");
            }
            Outcome::Failure
        }
        Checked::Lines { total, invalid } if invalid.is_empty() => {
            println!("valid: {total} events");
            Outcome::Success
        }
        Checked::Lines { total, invalid } => {
            for (line, problems) in &invalid {
                for p in &problems.0 {
                    println!("line {line}: {p}");
                }
            }
            println!("{} of {total} events are invalid", invalid.len());
            Outcome::Failure
        }
    })
}
