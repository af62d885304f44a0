//! `cortex status`: queue depth, oldest queued event, events by type, dead
//! letters, as text or JSON.

use anyhow::Result;

use super::{Outcome, open};
use cortex::layout::Layout;

#[derive(clap::Args)]
pub struct Args {
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(layout: &Layout, args: Args) -> Result<Outcome> {
    let (config, queue) = open(layout)?;
    let status = cortex::status::gather(queue.as_ref(), layout, &config)?;
    for s in &status.skipped {
        tracing::warn!("{s}");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{status}");
    }
    Ok(Outcome::Success)
}
