//! `cortex dispatch`: process everything queued, follow-ups included, then
//! exit; the exit code says whether events were dead-lettered or handlers
//! did not load.

use std::sync::Arc;

use anyhow::Result;

use super::{Outcome, open};
use cortex::dispatch::Until;
use cortex::layout::Layout;
use cortex::lock::RecoverRw;

#[derive(clap::Args)]
pub struct Args {
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Exit when nothing is due instead of waiting for pending retries.
    #[arg(long)]
    no_wait: bool,
}

pub fn run(layout: &Layout, args: Args) -> Result<Outcome> {
    let (config, queue) = open(layout)?;
    let dispatcher = cortex::dispatch::prepare(queue, layout.root(), Arc::new(config))?;
    let until = if args.no_wait { Until::NothingDue } else { Until::Drained };
    let summary = dispatcher.run(cortex::dispatch::Mode::OneShot(until), &|| false)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{summary}");
    }
    if !summary.broken.is_empty() {
        for (name, why) in &summary.broken {
            eprintln!("cortex: handler {name} failed to load: {why}");
        }
        eprintln!(
            "cortex: {} of {} handlers do not load; the events routed to them wait in the queue (fix them, run `make handlers`, or remove them from cortex.toml)",
            summary.broken.len(),
            dispatcher.handlers().read_locked().len() + summary.broken.len()
        );
        return Ok(Outcome::HandlersNotLoading);
    }
    if summary.dead_lettered > 0 {
        eprintln!(
            "cortex: {} events were dead-lettered in this run (exit code {}); see `cortex dlq list`",
            summary.dead_lettered,
            Outcome::DeadLettered.code()
        );
        return Ok(Outcome::DeadLettered);
    }
    Ok(Outcome::Success)
}
