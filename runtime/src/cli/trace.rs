//! `cortex trace ID`: the causal tree of an event, or every tree of a
//! correlation id, as text or JSON. What the trees hold is
//! [`cortex::trace`]'s to decide; this file prints.

use anyhow::Result;

use super::{Outcome, open};
use cortex::layout::Layout;

#[derive(clap::Args)]
pub struct Args {
    /// An event id (shows the tree of its root ancestor, the event marked)
    /// or a correlation id (shows every tree that holds one of its events).
    id: String,
    /// Print the trees as JSON: each event with its handlers and children.
    #[arg(long)]
    json: bool,
}

pub fn run(layout: &Layout, args: Args) -> Result<Outcome> {
    let (config, queue) = open(layout)?;
    let trace = cortex::trace::trace(queue.as_ref(), &config, &args.id)?;
    for s in &trace.skipped {
        tracing::warn!("skipped: {s}");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&trace)?);
    } else {
        print!("{trace}");
    }
    Ok(Outcome::Success)
}
