//! `cortex replay`: run archived (or dead-lettered) events again, as copies
//! through the queue or in-process now, optionally with a candidate
//! component; prints the report as text or JSON.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use super::{Outcome, open, progress_meter};
use cortex::layout::Layout;
use cortex::{queue, replay};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    filter: replay::Filter,
    /// requeue (the default): copies back in the queue, keeping their ids;
    /// direct: run the matching handlers in-process now. --component implies direct.
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// List what would be replayed and change nothing; with --component,
    /// run the candidate on copies of its grants and discard its effects.
    #[arg(long)]
    dry_run: bool,
    /// Only this handler.
    #[arg(long, value_name = "NAME")]
    handler: Option<String>,
    /// A candidate component to run in place of the handler's configured one
    /// (direct mode), to try a fix on real events before deploying it.
    #[arg(long, value_name = "PATH.wasm")]
    component: Option<PathBuf>,
    /// Select from the dead-letter queue instead of the archive (to try a
    /// fix with --component; `cortex dlq retry` puts them back in the queue).
    #[arg(long)]
    dead_letters: bool,
    /// Print each event's outcome.
    #[arg(long, short)]
    verbose: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

// The values of --mode ([`replay::Mode`] without its docs, which clap would
// list in --help).
#[derive(Clone, Copy, clap::ValueEnum)]
enum Mode {
    Requeue,
    Direct,
}

pub fn run(layout: &Layout, args: Args) -> Result<Outcome> {
    let (config, queue) = open(layout)?;
    let mode = match (args.mode, &args.component) {
        (Some(Mode::Requeue), _) | (None, None) => replay::Mode::Requeue,
        (Some(Mode::Direct), _) | (None, Some(_)) => replay::Mode::Direct,
    };
    let request = replay::Request {
        filter: args.filter,
        origin: if args.dead_letters { replay::Origin::DeadLetters } else { replay::Origin::Archive },
        mode,
        dry_run: args.dry_run,
        handler: args.handler,
        component: args.component,
    };
    request.check(&config)?;
    if !args.dry_run {
        queue::check_writable(layout)?;
    }
    let report = replay::run(queue.as_ref(), layout, &config, &request, &mut progress_meter())?;
    for s in &report.skipped_lines {
        tracing::warn!("{s}");
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        for line in report.lines(args.verbose) {
            writeln!(out, "{line}")?;
        }
        write!(out, "{report}")?;
    }
    out.flush()?;
    Ok(Outcome::of(report.failed == 0 && report.refused.is_empty()))
}
