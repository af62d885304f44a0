//! The command line: the clap definitions of `cortex` and one file per
//! command (mini-redis `src/cmd/`). A command parses its flags, calls the
//! library, and prints what it returns; the rules (what to select, how
//! flags and `cortex.toml` combine, where components live) are the
//! library's. Each command returns an [`Outcome`] that `main` maps to an
//! exit code.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use cortex::config::Config;
use cortex::layout::Layout;
use cortex::store::Store;

pub use super::Outcome;

mod dispatch;
mod dlq;
mod emit;
mod export;
mod handler_test;
mod handlers;
mod init;
mod replay;
mod serve;
mod state;
mod status;
mod trace;
mod validate;
mod webhooks;

#[derive(Parser)]
#[command(name = "cortex", version, about = "Sandboxed WebAssembly event handlers over a durable queue")]
pub struct Cli {
    /// Coordination root directory.
    #[arg(long, global = true, env = "CORTEX_ROOT", default_value = "coordination")]
    root: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create the coordination layout, a commented default cortex.toml and
    /// the built-in handler components.
    Init(init::Args),
    /// Build, validate, log and queue an event (or a JSONL batch from stdin,
    /// or CloudEvents with --cloudevent).
    Emit(emit::Args),
    /// Write archived events out as JSON lines: CloudEvents or the Cortex
    /// envelopes, selected with replay's filters (none: everything).
    Export(export::Args),
    /// Check an event document or a JSONL file of events (problems of a
    /// JSONL file are reported with their line numbers).
    Validate(validate::Args),
    /// Queue depth, oldest queued event, events by type, dead letters.
    Status(status::Args),
    /// Process everything queued, including follow-up events, then exit.
    ///
    /// Exits 3 when events were dead-lettered in the run (see `cortex dlq
    /// list`), so that scripts and cron notice; 1 on errors.
    Dispatch(dispatch::Args),
    /// Run as a service: dispatch as events arrive, hot-reload components
    /// and cortex.toml, serve /metrics, /healthz and /readyz.
    Serve(serve::Args),
    /// Show the configured handlers; write and test new ones.
    Handlers {
        #[command(subcommand)]
        command: handlers::Command,
    },
    // `cortex handlers` under the singular name: a separate hidden command
    // rather than an alias, so that its help and usage errors say
    // `Usage: cortex handler ...`, the name the user typed.
    /// Show the configured handlers; write and test new ones.
    #[command(hide = true)]
    Handler {
        #[command(subcommand)]
        command: handlers::Command,
    },
    /// Run archived events again: copies back through the queue, or the
    /// handlers in-process now (optionally a candidate component).
    Replay(replay::Args),
    /// The dead-letter queue: list, show, retry, purge.
    Dlq {
        #[command(subcommand)]
        command: dlq::Command,
    },
    /// The causal tree of an event or a correlation id, across the queue,
    /// the claims, the dead letters and the archive: each event with its
    /// handlers and their outcome, duration and time after its parent.
    Trace(trace::Args),
    /// Handler state: the key-value buckets; `set`/`delete` repair them.
    State {
        #[command(subcommand)]
        command: state::Command,
    },
    /// Outbound webhook endpoints: list them, re-enable one after 410 Gone.
    Webhooks {
        #[command(subcommand)]
        command: webhooks::Command,
    },
}

impl Command {
    /// Whether the command logs progress at `info` (one "handler completed"
    /// line per invocation, as the seed's monitoring expects); the others
    /// log only warnings.
    pub fn logs_progress(&self) -> bool {
        matches!(self, Command::Dispatch(_) | Command::Serve(_))
    }

    /// Whether log lines are JSON (`serve --log-format json`).
    pub fn json_logs(&self) -> bool {
        matches!(self, Command::Serve(args) if args.json_logs())
    }
}

/// Runs the parsed command.
///
/// # Errors
/// Whatever the command fails with; `main` prints the chain.
pub fn run(cli: Cli) -> Result<Outcome> {
    let layout = Layout::new(&cli.root);
    match cli.command {
        Command::Init(args) => init::run(&layout, args),
        Command::Emit(args) => emit::run(&layout, args),
        Command::Export(args) => export::run(&layout, args),
        Command::Validate(args) => validate::run(&layout, args),
        Command::Status(args) => status::run(&layout, args),
        Command::Dispatch(args) => dispatch::run(&layout, args),
        Command::Serve(args) => serve::run(layout, args),
        Command::Handlers { command } | Command::Handler { command } => handlers::run(&layout, command),
        Command::Replay(args) => replay::run(&layout, args),
        Command::Dlq { command } => dlq::run(&layout, command),
        Command::Trace(args) => trace::run(&layout, args),
        Command::State { command } => state::run(&layout, command),
        Command::Webhooks { command } => webhooks::run(&layout, command),
    }
}

/// The root's checked config and the store it selects.
fn open(layout: &Layout) -> Result<(Config, Arc<dyn Store>)> {
    let config = Config::load(layout.root())?;
    let store = cortex::store::open(layout, &config)?;
    Ok((config, store))
}

fn read_stdin() -> Result<String> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).context("failed to read the event from stdin")?;
    Ok(s)
}

/// Text without a leading UTF-8 byte order mark (editors on Windows add one).
fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// A `\r` counter on stderr when it is a terminal; nothing otherwise.
fn progress_meter() -> impl FnMut(&str, u64, u64) {
    let tty = std::io::stderr().is_terminal();
    let mut last = std::time::Instant::now();
    move |stage: &str, done: u64, total: u64| {
        if !tty || (done < total && last.elapsed() < std::time::Duration::from_millis(100)) {
            return;
        }
        last = std::time::Instant::now();
        let pct = done.saturating_mul(100).checked_div(total).unwrap_or(100);
        eprint!("\r\x1b[2K{stage}: {pct}%");
        if done >= total {
            eprint!("\r\x1b[2K");
        }
    }
}
