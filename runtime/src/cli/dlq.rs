//! `cortex dlq`: list, show, retry and purge dead letters. What each
//! subcommand selects is [`cortex::dlq::Listing`]'s to decide.

use anyhow::Result;
use serde::Serialize;

use super::{Outcome, open};
use cortex::dlq::{self, DeadLetter};
use cortex::layout::Layout;
use cortex::queue;
use cortex::replay::Filter;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Dead letters, with the same filters as replay.
    List {
        #[command(flatten)]
        filter: Filter,
        /// Print the dead letters (key, file and record) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The forensic record of a dead letter: reason, each attempt's failures
    /// with handler, kind, message and component hash.
    Show {
        /// An event id, or a dead letter's key (its file name).
        id: String,
        /// Print the raw record.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back in the queue as new entries (attempt 1),
    /// recording the retry in metadata.dlq_retry.
    Retry {
        /// An event id or a dead letter's key.
        #[arg(conflicts_with = "all")]
        id: Option<String>,
        /// Every dead letter that holds an event.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: Filter,
        /// Print the retried events as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete dead letters (asks for --yes).
    Purge {
        /// An event id or a dead letter's key.
        #[arg(conflicts_with = "older_than")]
        id: Option<String>,
        /// Every dead letter older than this many days.
        #[arg(long, value_name = "DAYS")]
        older_than: Option<u64>,
        /// Really delete.
        #[arg(long)]
        yes: bool,
    },
}

/// A dead letter as `dlq list --json` prints it.
#[derive(Serialize)]
struct Row<'l> {
    file: &'l std::path::Path,
    key: &'l str,
    record: &'l cortex::records::DeadLetterRecord,
}

impl<'l> From<&'l DeadLetter> for Row<'l> {
    fn from(l: &'l DeadLetter) -> Row<'l> {
        Row { file: &l.path, key: &l.key, record: &l.record }
    }
}

pub fn run(layout: &Layout, command: Command) -> Result<Outcome> {
    let (config, queue) = open(layout)?;
    let listing = queue.dead_letters()?;
    for u in &listing.unreadable {
        tracing::warn!("skipped: {u}");
    }
    match command {
        Command::List { filter, json } => {
            let letters = listing.matching(&filter);
            if json {
                let rows: Vec<Row> = letters.iter().map(|l| Row::from(*l)).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for l in &letters {
                    println!("{}", l.line());
                }
                println!("{} of {} dead letters", letters.len(), listing.letters.len());
            }
        }
        Command::Show { id, json } => {
            for l in listing.find(&id)? {
                if json {
                    println!("{}", serde_json::to_string_pretty(&l.record)?);
                } else {
                    print!("{}", l.describe());
                }
            }
        }
        Command::Retry { id, all, filter, json } => {
            let selection = listing.for_retry(id.as_deref(), all, &filter)?;
            if selection.not_events > 0 {
                eprintln!(
                    "cortex: skipping {} dead letters that are not events (files dropped into the queue); see `cortex dlq list`",
                    selection.not_events
                );
            }
            if selection.letters.is_empty() {
                println!("no dead letters selected; nothing was retried");
                return Ok(Outcome::Success);
            }
            queue::check_writable(layout)?;
            let webhooks = selection.letters.iter().filter(|l| l.record.webhook.is_some()).count();
            let events = dlq::retry(queue.as_ref(), &config.validator(), &selection.letters)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&events)?);
            } else {
                for e in &events {
                    println!("retried {}  {}", e.event_id, e.event_type);
                }
                if webhooks > 0 {
                    println!(
                        "put {webhooks} webhook deliveries back in their outbox; a running `cortex serve` sends them"
                    );
                }
                if events.len() > webhooks {
                    println!(
                        "put {} dead letters back in the queue; `cortex dispatch` (or a running `cortex serve`) processes them",
                        events.len() - webhooks
                    );
                }
            }
        }
        Command::Purge { id, older_than, yes } => {
            let letters = listing.for_purge(id.as_deref(), older_than)?;
            if letters.is_empty() {
                println!("no dead letters selected; nothing was deleted");
                return Ok(Outcome::Success);
            }
            if !yes {
                println!("would delete {} dead letters:", letters.len());
                for l in &letters {
                    println!("  {}", l.line());
                }
                eprintln!(
                    "cortex: refusing to delete {} dead letters without --yes; run again with --yes to delete them",
                    letters.len()
                );
                return Ok(Outcome::Failure);
            }
            dlq::purge(queue.as_ref(), &letters)?;
            println!("deleted {} dead letters", letters.len());
        }
    }
    Ok(Outcome::Success)
}
