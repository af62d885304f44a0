//! The `cortex` binary: parse the command line, load the checked config,
//! call into the library, print `{:#}` error chains and map them to exit codes.

use std::io::{BufReader, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use chrono::{DateTime, FixedOffset};
use clap::{Args, Parser, Subcommand};

use cortex::config::Config;
use cortex::event::{NewEvent, Priority, Validator};
use cortex::layout::{self, Layout};
use cortex::producer::{BadBatch, Producer};
use cortex::queue::{self, FsQueue};
use cortex::{dlq, replay};

#[derive(Parser)]
#[command(name = "cortex", version, about = "Sandboxed WebAssembly event handlers over a durable queue")]
struct Cli {
    /// Coordination root directory.
    #[arg(long, global = true, env = "CORTEX_ROOT", default_value = "coordination")]
    root: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the coordination layout, a commented default cortex.toml and
    /// the built-in handler components.
    Init {
        /// Where the built-in components are (default: $CORTEX_HANDLERS, else
        /// `handlers/` beside the cortex binary, where `make handlers` puts them).
        #[arg(long, env = "CORTEX_HANDLERS")]
        handlers: Option<PathBuf>,
    },
    /// Build, validate, log and queue an event (or a JSONL batch from stdin).
    Emit(EmitArgs),
    /// Check an event document or a JSONL file of events (problems of a
    /// JSONL file are reported with their line numbers).
    Validate {
        /// A file, `-` or nothing for stdin, or the event itself as an
        /// argument (anything starting with `{`).
        #[arg(value_name = "FILE|-|EVENT_JSON")]
        input: Option<String>,
    },
    /// Queue depth, oldest queued event, events by type, dead letters.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Process everything queued, including follow-up events, then exit.
    ///
    /// Exits 3 when events were dead-lettered in the run (see `cortex dlq
    /// list`), so that scripts and cron notice; 1 on errors.
    Dispatch {
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Exit when nothing is due instead of waiting for pending retries.
        #[arg(long)]
        no_wait: bool,
    },
    /// Run as a service: dispatch as events arrive, hot-reload components
    /// and cortex.toml, serve /metrics, /healthz and /readyz.
    Serve {
        /// Address for the HTTP endpoints, or `off`.
        #[arg(long, default_value = "127.0.0.1:9464")]
        listen: String,
        /// Log format on stderr.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Show the configured handlers; write and test new ones.
    Handlers {
        #[command(subcommand)]
        command: HandlersCommand,
    },
    // `cortex handlers` under the singular name: a separate hidden command
    // rather than an alias, so that its help and usage errors say
    // `Usage: cortex handler ...`, the name the user typed.
    /// Show the configured handlers; write and test new ones.
    #[command(hide = true)]
    Handler {
        #[command(subcommand)]
        command: HandlersCommand,
    },
    /// Run archived events again: copies back through the queue, or the
    /// handlers in-process now (optionally a candidate component).
    Replay(ReplayArgs),
    /// The dead-letter queue: list, show, retry, purge.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

/// Which events; every filter given must match.
#[derive(Args)]
struct FilterArgs {
    /// One event, by id.
    #[arg(long, value_name = "ID", value_parser = replay::parse_event_id)]
    event_id: Option<String>,
    /// Events whose timestamp is on this date (as written in the timestamp).
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = replay::parse_date)]
    date: Option<String>,
    /// Events at or after this time: RFC 3339, or a time ago (30s, 10m, 2h, 3d, 1w).
    #[arg(long, value_name = "RFC3339|AGO", value_parser = replay::parse_time)]
    since: Option<DateTime<FixedOffset>>,
    /// Events before this time: RFC 3339, or a time ago (30s, 10m, 2h, 3d, 1w).
    #[arg(long, value_name = "RFC3339|AGO", value_parser = replay::parse_time)]
    until: Option<DateTime<FixedOffset>>,
    /// Event type, exact or a glob, e.g. 'worker.*'.
    #[arg(long = "type", value_name = "GLOB")]
    event_type: Option<String>,
    /// Source, exact or a glob.
    #[arg(long)]
    source: Option<String>,
    /// critical, high, medium or low.
    #[arg(long)]
    priority: Option<Priority>,
    /// Events with this correlation id.
    #[arg(long, value_name = "ID")]
    correlation_id: Option<String>,
}

impl FilterArgs {
    fn filter(self) -> replay::Filter {
        replay::Filter {
            event_id: self.event_id,
            date: self.date,
            since: self.since,
            until: self.until,
            event_type: self.event_type,
            source: self.source,
            priority: self.priority,
            correlation_id: self.correlation_id,
        }
    }
}

#[derive(Args)]
struct ReplayArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// requeue (the default): copies back in the queue, keeping their ids;
    /// direct: run the matching handlers in-process now. --component implies direct.
    #[arg(long, value_enum)]
    mode: Option<ReplayMode>,
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReplayMode {
    Requeue,
    Direct,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Dead letters, with the same filters as replay.
    List {
        #[command(flatten)]
        filter: FilterArgs,
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
        filter: FilterArgs,
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum HandlersCommand {
    /// Each handler: component, sha256, events, grants, and whether it loads.
    List {
        /// Print the handlers as JSON (with their declared emits and contracts).
        #[arg(long)]
        json: bool,
        /// Also print the event types each handler declares it emits and the
        /// JSON Schema of each payload contract it publishes.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Load every handler; exit 1 naming each one that does not load, or
    /// that declares emits the validator or its `emits` setting would refuse.
    Check,
    /// Scaffold a handler folder (source, Makefile, WIT, a fixture and its
    /// expectation) in Rust, Python or JavaScript; print the cortex.toml
    /// block that enables it.
    New {
        /// The handler's name, e.g. on-invoice-paid.
        name: String,
        /// The language of the scaffold.
        #[arg(long, value_enum, default_value = "rust")]
        lang: cortex::scaffold::Lang,
        /// Event types or globs it handles (repeatable; default '*').
        #[arg(long = "events", value_name = "PATTERN")]
        events: Vec<String>,
        /// Where to write it (default: ./NAME); must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run a component against fixture events in a throwaway sandbox and
    /// print its outcome, emitted events, written files and log lines; with
    /// --expect, compare and exit 1 on any difference.
    Test(Box<TestArgs>),
}

#[derive(Args)]
struct TestArgs {
    /// The handler component (.wasm).
    component: PathBuf,
    /// An event file (one JSON event, or JSONL); repeat for several, run in
    /// order in the same sandbox.
    #[arg(long = "event", value_name = "FILE", required = true, num_args = 1..)]
    events: Vec<PathBuf>,
    /// A grant as the handler sees it, e.g. state/cost:rw; DIR=HOST_DIR:rw
    /// starts it from a copy of HOST_DIR (the original is never written).
    #[arg(long = "grant", value_name = "DIR[=HOST_DIR]:ro|rw")]
    grants: Vec<cortex::harness::GrantSpec>,
    /// Start the sandbox root from a copy of this directory (files under
    /// the grants' paths, e.g. DIR/state/cost/totals.json).
    #[arg(long, value_name = "DIR")]
    seed: Option<PathBuf>,
    /// A setting for the handler's config(key); the value is read as TOML
    /// (numbers, booleans, { inline = tables }) or else taken as a string.
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = cortex::harness::parse_setting)]
    settings: Vec<(String, toml::Value)>,
    /// Start from this handler's grants, settings and limits in the root's
    /// cortex.toml (flags add to and override them).
    #[arg(long, value_name = "NAME")]
    handler: Option<String>,
    /// An event type to accept besides the catalogue and the root's
    /// [events] custom_types (for the handler's emits).
    #[arg(long = "custom-type", value_name = "TYPE")]
    custom_types: Vec<String>,
    /// Expected report (a JSON subset of --json's output): exit 1 on any difference.
    #[arg(long, value_name = "FILE")]
    expect: Option<PathBuf>,
    /// Write what this run did, without what varies between runs, as an
    /// expectation file to edit and then pass to --expect.
    #[arg(long, value_name = "FILE", conflicts_with = "expect")]
    write_expect: Option<PathBuf>,
    /// The delivery number the handler sees.
    #[arg(long, default_value_t = 1)]
    attempt: u32,
    /// limits.memory_mb for this run.
    #[arg(long)]
    memory_mb: Option<u64>,
    /// limits.deadline_ms for this run.
    #[arg(long)]
    deadline_ms: Option<u64>,
    /// Keep the sandbox root in this (new or empty) directory.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct EmitArgs {
    /// Event type, e.g. worker.completed.
    #[arg(required_unless_present = "batch")]
    event_type: Option<String>,
    /// Component that emits the event.
    #[arg(required_unless_present = "batch")]
    source: Option<String>,
    /// The payload, a JSON object; `@FILE` reads it from a file and `-`
    /// from stdin. Use one of those for large payloads: the OS refuses to
    /// start a command with an argument over 128 KiB.
    #[arg(required_unless_present = "batch", value_name = "PAYLOAD_JSON|@FILE|-")]
    payload: Option<String>,
    /// The event's correlation_id, shared by related events (empty: none).
    correlation_id: Option<String>,
    /// critical, high, medium (default) or low.
    priority: Option<Priority>,
    /// A tag for metadata.tags (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// metadata.master: the agent or run the event belongs to.
    #[arg(long, value_name = "NAME")]
    master: Option<String>,
    /// Print the whole event as JSON instead of its id.
    #[arg(long)]
    json: bool,
    /// Read JSONL events from stdin and queue all of them or none (lines
    /// whose event_id is already in the batch or the root are skipped and
    /// reported on stderr).
    #[arg(long, conflicts_with_all = ["event_type", "source", "payload", "correlation_id", "priority", "tags", "master"])]
    batch: bool,
}

/// `cortex dispatch` finished, but dead-lettered events in the run.
const EXIT_DEAD_LETTERED: u8 = 3;
/// `cortex dispatch` ran, but handlers did not load; their events wait.
const EXIT_HANDLERS_NOT_LOADING: u8 = 4;

/// Exit codes: 0 success, 1 failure (bad input or an operation that failed),
/// 2 usage errors (from clap), 3 [`EXIT_DEAD_LETTERED`], 4
/// [`EXIT_HANDLERS_NOT_LOADING`] (it takes precedence over 3). Public so
/// that the tests crate's `cortex-failpoints` binary runs this same `main`
/// with its crash points armed.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The dispatcher logs one "handler completed" line per invocation, as
    // the seed's monitoring expects; other commands only warnings.
    let json_logs = matches!(cli.command, Command::Serve { log_format: LogFormat::Json, .. });
    init_tracing(
        if matches!(cli.command, Command::Dispatch { .. } | Command::Serve { .. }) {
            "info"
        } else {
            "warn,cortex::progress=info"
        },
        json_logs,
    );
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if let Some(bad) = e.downcast_ref::<BadBatch>() {
                eprint!("cortex: {bad}");
            } else {
                eprintln!("cortex: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(default: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    if json {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let layout = Layout::new(&cli.root);
    match cli.command {
        Command::Init { handlers } => init(&layout, handlers),
        Command::Emit(args) => emit(&layout, args),
        Command::Validate { input } => validate(&layout, input.as_deref()),
        Command::Status { json } => status(&layout, json),
        Command::Dispatch { json, no_wait } => dispatch(&layout, json, no_wait),
        Command::Serve { listen, .. } => serve(layout, &listen),
        Command::Handlers { command } | Command::Handler { command } => match command {
            HandlersCommand::List { json, verbose } => handlers(&layout, json, verbose, false),
            HandlersCommand::Check => handlers(&layout, false, false, true),
            HandlersCommand::Test(args) => handler_test(&layout, *args),
            HandlersCommand::New { name, lang, events, dir } => handler_new(&name, lang, &events, dir),
        },
        Command::Replay(args) => replay(&layout, args),
        Command::Dlq { command } => dlq(&layout, command),
    }
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

fn replay(layout: &Layout, args: ReplayArgs) -> Result<ExitCode> {
    let (config, queue) = open(layout)?;
    let mode = match (args.mode, &args.component) {
        (Some(ReplayMode::Requeue), _) => replay::Mode::Requeue,
        (Some(ReplayMode::Direct), _) | (None, Some(_)) => replay::Mode::Direct,
        (None, None) => replay::Mode::Requeue,
    };
    let request = replay::Request {
        filter: args.filter.filter(),
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
    let report = replay::run(&queue, &config, &request, &mut progress_meter())?;
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
    Ok(if report.failed > 0 || !report.refused.is_empty() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn dlq(layout: &Layout, command: DlqCommand) -> Result<ExitCode> {
    let (config, queue) = open(layout)?;
    let listing = dlq::list(layout)?;
    for u in &listing.unreadable {
        tracing::warn!("skipped: {u}");
    }
    let record = |l: &dlq::DeadLetter| serde_json::json!({"key": l.key, "file": l.path, "record": l.record});
    match command {
        DlqCommand::List { filter, json } => {
            let filter = filter.filter();
            let letters = listing.matching(&filter);
            if json {
                println!("{}", serde_json::to_string_pretty(&letters.iter().map(|l| record(l)).collect::<Vec<_>>())?);
            } else {
                for l in &letters {
                    println!("{}", l.line());
                }
                println!("{} of {} dead letters", letters.len(), listing.letters.len());
            }
        }
        DlqCommand::Show { id, json } => {
            for l in listing.find(&id)? {
                if json {
                    println!("{}", serde_json::to_string_pretty(&l.record)?);
                } else {
                    print!("{}", l.describe());
                }
            }
        }
        DlqCommand::Retry { id, all, filter, json } => {
            let filter = filter.filter();
            let letters: Vec<&dlq::DeadLetter> = match (&id, all) {
                (Some(id), _) => listing
                    .find(id)?
                    .into_iter()
                    .filter(|l| filter.is_empty() || l.event().is_some_and(|e| filter.matches(e)))
                    .collect(),
                (None, true) => {
                    let (events, others): (Vec<_>, Vec<_>) =
                        listing.matching(&filter).into_iter().partition(|l| l.event().is_some());
                    if !others.is_empty() {
                        eprintln!(
                            "cortex: skipping {} dead letters that are not events (files dropped into the queue); see `cortex dlq list`",
                            others.len()
                        );
                    }
                    events
                }
                (None, false) if !filter.is_empty() => listing.matching(&filter),
                (None, false) => anyhow::bail!(
                    "dlq retry needs a dead letter: an ID (event id or key), --all, or filters such as --type 'task.*' (see `cortex dlq list`)"
                ),
            };
            if letters.is_empty() {
                println!("no dead letters selected; nothing was retried");
                return Ok(ExitCode::SUCCESS);
            }
            queue::check_writable(layout)?;
            let events = dlq::retry(&queue, &config.validator(), &letters)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&events)?);
            } else {
                for e in &events {
                    println!("retried {}  {}", e.event_id, e.event_type);
                }
                println!(
                    "put {} dead letters back in the queue; `cortex dispatch` (or a running `cortex serve`) processes them",
                    events.len()
                );
            }
        }
        DlqCommand::Purge { id, older_than, yes } => {
            let letters = match (&id, older_than) {
                (Some(id), _) => listing.find(id)?,
                (None, Some(days)) => listing.older_than(days),
                (None, None) => anyhow::bail!(
                    "dlq purge needs a dead letter: an ID (event id or key) or --older-than DAYS (see `cortex dlq list`)"
                ),
            };
            if letters.is_empty() {
                println!("no dead letters selected; nothing was deleted");
                return Ok(ExitCode::SUCCESS);
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
                return Ok(ExitCode::FAILURE);
            }
            dlq::purge(layout, &letters)?;
            println!("deleted {} dead letters", letters.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn init(layout: &Layout, handlers: Option<PathBuf>) -> Result<ExitCode> {
    let mut report = layout::init(layout, cortex::DEFAULT_CONFIG)?;
    let source = handlers.or_else(|| std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join("handlers"))));
    let config = Config::load(layout.root())?;
    let mut missing = Vec::new();
    for h in config.handlers.values() {
        let target = if h.component.is_absolute() { h.component.clone() } else { layout.root().join(&h.component) };
        if target.exists() {
            continue;
        }
        let found = source.as_ref().zip(target.file_name()).map(|(dir, f)| dir.join(f)).filter(|p| p.is_file());
        match found {
            Some(from) => {
                std::fs::copy(&from, &target)
                    .with_context(|| format!("failed to copy {} to {}", from.display(), target.display()))?;
                report.created.push(target);
            }
            None => missing.push(target),
        }
    }
    if report.created.is_empty() {
        println!("{} is already initialised; nothing changed", layout.root().display());
    } else {
        for p in &report.created {
            println!("created {}", p.display());
        }
        println!("initialised {}", layout.root().display());
    }
    if !missing.is_empty() {
        let from = source.map(|s| s.display().to_string()).unwrap_or_else(|| "(no directory)".into());
        eprintln!(
            "cortex: warning: {} handler components were not found in {from}: run `make handlers` (or pass --handlers DIR) and `cortex init` again",
            missing.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn open(layout: &Layout) -> Result<(Config, FsQueue)> {
    let config = Config::load(layout.root())?;
    let queue =
        FsQueue::open(layout.clone(), config.validator())?.with_archive_retention(config.archive.retention_days);
    Ok((config, queue))
}

fn emit(layout: &Layout, args: EmitArgs) -> Result<ExitCode> {
    let (config, queue) = open(layout)?;
    let producer = Producer::new(&queue, config.validator());
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.batch {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            eprintln!("cortex: reading JSONL events from the terminal; end with Ctrl-D");
        }
        let batch = producer.emit_batch(BufReader::new(stdin.lock()))?;
        for d in &batch.skipped {
            eprintln!("cortex: {d}");
        }
        let events = batch.events;
        for e in &events {
            if args.json {
                writeln!(out, "{}", e.to_json())?;
            } else {
                writeln!(out, "{}", e.event_id)?;
            }
        }
        out.flush()?;
        if batch.skipped.is_empty() {
            eprintln!("queued {} events", events.len());
        } else {
            eprintln!(
                "queued {} events; skipped {} whose event_id was already known (the id is the idempotency key)",
                events.len(),
                batch.skipped.len()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    // clap guarantees these three unless --batch.
    let (event_type, source, payload) =
        (args.event_type.unwrap_or_default(), args.source.unwrap_or_default(), args.payload.unwrap_or_default());
    let (payload, from) = match payload.as_str() {
        "-" => (read_stdin()?, "the payload on stdin".to_string()),
        p if p.starts_with('@') => (
            std::fs::read_to_string(&p[1..]).with_context(|| format!("failed to read the payload file {}", &p[1..]))?,
            format!("the payload file {}", &p[1..]),
        ),
        _ => (payload, "PAYLOAD_JSON".to_string()),
    };
    let payload = strip_bom(&payload);
    let payload: serde_json::Value = serde_json::from_str(payload)
        .with_context(|| format!("{from} is not valid JSON: {}", cortex::text::quote(payload)))?;
    let serde_json::Value::Object(payload) = payload else {
        anyhow::bail!("{from} must be a JSON object, e.g. '{{\"worker_id\": \"w-1\"}}'");
    };
    let event = producer
        .emit(NewEvent {
            event_type,
            source,
            payload,
            correlation_id: args.correlation_id,
            priority: args.priority,
            master: args.master,
            tags: args.tags,
        })
        .context("event rejected; nothing was written")?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&event)?)?;
    } else {
        writeln!(out, "{}", event.event_id)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn validate(layout: &Layout, input: Option<&str>) -> Result<ExitCode> {
    // Custom types come from the root's config when there is one.
    let validator =
        if layout.config().exists() { Config::load(layout.root())?.validator() } else { Validator::default() };
    let text = match input {
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
                ExitCode::SUCCESS
            }
            Err(invalid) => {
                for p in &invalid.0 {
                    println!("{p}");
                }
                ExitCode::FAILURE
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
        return Ok(ExitCode::FAILURE);
    }
    println!("valid: {total} events");
    Ok(ExitCode::SUCCESS)
}

/// Text without a leading UTF-8 byte order mark (editors on Windows add one).
fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

fn dispatch(layout: &Layout, json: bool, no_wait: bool) -> Result<ExitCode> {
    let (config, queue) = open(layout)?;
    let queue: std::sync::Arc<dyn cortex::queue::Queue> = std::sync::Arc::new(queue);
    let dispatcher = cortex::dispatch::prepare(queue, layout.root(), std::sync::Arc::new(config))?;
    let until = if no_wait { cortex::dispatch::Until::NothingDue } else { cortex::dispatch::Until::Drained };
    let summary = dispatcher.run(cortex::dispatch::Mode::OneShot(until), &|| false)?;
    if json {
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
            dispatcher.handlers().read().unwrap_or_else(|e| e.into_inner()).len() + summary.broken.len()
        );
        return Ok(ExitCode::from(EXIT_HANDLERS_NOT_LOADING));
    }
    if summary.dead_lettered > 0 {
        eprintln!(
            "cortex: {} events were dead-lettered in this run (exit code {EXIT_DEAD_LETTERED}); see `cortex dlq list`",
            summary.dead_lettered
        );
        return Ok(ExitCode::from(EXIT_DEAD_LETTERED));
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(layout: Layout, listen: &str) -> Result<ExitCode> {
    let listen = match listen {
        "off" | "none" => None,
        addr => Some(
            addr.parse()
                .with_context(|| format!("--listen {addr:?} is not an address like 127.0.0.1:9464 (or `off`)"))?,
        ),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    runtime.block_on(async move {
        // The first SIGTERM/SIGINT asks for a graceful stop; a second one
        // quits at once (what is not settled is recovered on the next start).
        let shutdown = async {
            use tokio::signal::unix::{SignalKind, signal};
            let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
                (Ok(t), Ok(i)) => (t, i),
                _ => return std::future::pending().await,
            };
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            tokio::spawn(async move {
                tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
                eprintln!("cortex: second signal: exiting now");
                std::process::exit(130);
            });
        };
        cortex::service::run(layout, cortex::service::Options { listen }, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}

fn handler_new(name: &str, lang: cortex::scaffold::Lang, events: &[String], dir: Option<PathBuf>) -> Result<ExitCode> {
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    let s = cortex::scaffold::new(name, lang, events, &dir)?;
    println!("created {} ({} files)", s.dir.display(), s.files.len());
    let d = s.dir.display();
    println!(
        "
build and test it:
  make -C {d} test
"
    );
    println!(
        "enable it: copy {d}/{name}.wasm to <root>/handlers/ and add to <root>/cortex.toml:
"
    );
    print!("{}", s.config);
    Ok(ExitCode::SUCCESS)
}

/// Where compiled components are cached outside a root: $CORTEX_CACHE, else
/// $XDG_CACHE_HOME/cortex/compiled, else ~/.cache/cortex/compiled.
fn user_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(cortex::sandbox::CACHE_ENV) {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("cortex/compiled")
}

fn handler_test(layout: &Layout, args: TestArgs) -> Result<ExitCode> {
    let config = if layout.root().join(cortex::config::CONFIG_FILE).is_file() || args.handler.is_some() {
        Some(Config::load(layout.root())?)
    } else {
        None
    };
    let mut validator_types = config.as_ref().map(|c| c.events.custom_types.clone()).unwrap_or_default();
    validator_types.extend(args.custom_types);
    let max_bytes = config.as_ref().map_or(cortex::event::DEFAULT_MAX_EVENT_BYTES, |c| c.limits.max_event_bytes);
    let mut grants: Vec<cortex::harness::GrantSpec> = Vec::new();
    let mut settings = std::collections::BTreeMap::new();
    let mut limits = cortex::config::HandlerLimits::default();
    if let Some(name) = &args.handler {
        let config = config.as_ref().expect("loaded above");
        let h = config.handlers.get(name).with_context(|| {
            format!("no handler {name:?} in {}", layout.root().join(cortex::config::CONFIG_FILE).display())
        })?;
        grants = h
            .grants
            .iter()
            .map(|g| cortex::harness::GrantSpec { dir: g.dir.clone(), mode: g.mode, seed: None })
            .collect();
        settings = h.settings.clone();
        limits = h.limits.clone();
    }
    let guessing = args.handler.is_none() && args.grants.is_empty();
    let component_stem = args.component.file_stem().map(|s| s.to_os_string());
    for g in args.grants {
        grants.retain(|old| old.dir != g.dir);
        grants.push(g);
    }
    settings.extend(args.settings);
    if let Some(mb) = args.memory_mb {
        limits.memory_mb = mb;
    }
    if let Some(ms) = args.deadline_ms {
        limits.deadline_ms = ms;
    }
    let request = cortex::harness::Request {
        component: args.component,
        events: args.events,
        grants,
        seed: args.seed,
        settings,
        limits,
        validator: Validator::new(validator_types, max_bytes),
        // A handler of this root: its compiled cache, so a component that
        // `serve` or `dispatch` compiled is not compiled again.
        cache_dir: match (&args.handler, std::env::var_os(cortex::sandbox::CACHE_ENV)) {
            (Some(_), None) => layout.cache(),
            _ => user_cache_dir(),
        },
        attempt: args.attempt,
        keep: args.keep,
        name: args.handler,
    };
    let report = cortex::harness::run(&request)?;
    // Run without --handler and --grant, a handler of the root fails for
    // want of the directories and settings its table gives it: say so.
    let failed = report.failed();
    let table = config.as_ref().filter(|_| guessing && failed > 0).and_then(|c| {
        c.handlers.iter().find_map(|(name, h)| {
            let same_file = h.component.file_stem().is_some_and(|s| Some(s) == component_stem.as_deref());
            (same_file || report.handler.name == *name).then_some(name)
        })
    });
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        cortex::harness::print_text(&report, &mut out)?;
    }
    if let Some(path) = &args.write_expect {
        let text = serde_json::to_string_pretty(&cortex::harness::expectation(&report))? + "\n";
        std::fs::write(path, text).with_context(|| format!("failed to write {}", path.display()))?;
        eprintln!("wrote the expectation {}: edit out what should not be checked", path.display());
    }
    if let Some(name) = table {
        eprintln!(
            "cortex: hint: the root's cortex.toml has [handlers.{name}]; run with --handler {name} to use its grants and settings"
        );
    }
    let Some(expect) = args.expect else {
        if failed > 0 {
            eprintln!("cortex: {failed} event(s) failed (give --expect FILE to state that a failure is expected)");
            return Ok(ExitCode::FAILURE);
        }
        return Ok(ExitCode::SUCCESS);
    };
    let text = std::fs::read_to_string(&expect).with_context(|| format!("failed to read {}", expect.display()))?;
    let expected: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", expect.display()))?;
    let diffs = cortex::harness::differences(&expected, &report.to_value());
    if diffs.is_empty() {
        eprintln!("expect {}: as expected", expect.display());
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("expect {}: {} difference(s)", expect.display(), diffs.len());
    for d in &diffs {
        eprintln!("  {d}");
    }
    Ok(ExitCode::FAILURE)
}

fn handlers(layout: &Layout, json: bool, verbose: bool, check: bool) -> Result<ExitCode> {
    let config = Config::load(layout.root())?;
    let fuel = config.handlers.values().any(|h| h.limits.fuel.is_some());
    let sandbox = cortex::sandbox::Sandbox::new(layout.root(), config.validator(), fuel)?;
    let serving = cortex::service::running(layout);
    let mut rows = Vec::new();
    let mut details = Vec::new();
    let mut broken = 0;
    for (name, h) in &config.handlers {
        let path = sandbox.component_path(h);
        let (loads, sha256, info, error) = match sandbox.load(name, h) {
            Ok(l) => match cortex::dispatch::declared(&l, config.dispatch.describe_mismatch) {
                Ok(()) => (true, Some(l.sha256.clone()), Some(l.info.clone()), None),
                Err(e) => (false, Some(l.sha256.clone()), Some(l.info.clone()), Some(format!("{e:#}"))),
            },
            Err(e) => (false, cortex::sandbox::sha256_file(&path).ok(), None, Some(format!("{e:#}"))),
        };
        broken += usize::from(!loads);
        let problems = info.as_ref().map_or_else(Vec::new, |i| {
            let mut p = cortex::handlers::emit_problems(name, i, h, &config.validator());
            p.extend(cortex::handlers::contract_problems(name, i));
            p
        });
        let declared = info.as_ref().map(cortex::handlers::declarations_json);
        details.push(info.as_ref().filter(|_| verbose).map(cortex::handlers::declaration_lines).unwrap_or_default());
        rows.push(serde_json::json!({
            "emits": declared.as_ref().map(|d| d["emits"].clone()),
            "contracts": declared.as_ref().map(|d| d["contracts"].clone()),
            "problems": problems,
            "name": name,
            "component": path.display().to_string(),
            "sha256": sha256,
            "version": info.as_ref().map(|i| i.version.clone()),
            "events": h.events,
            "declared_events": info.as_ref().map(|i| i.events.clone()),
            "grants": h.grants.iter().map(|g| format!("{}:{}", g.dir, if g.mode == cortex::config::Access::Rw { "rw" } else { "ro" })).collect::<Vec<_>>(),
            "unsafe_grants": h.grants.iter().filter(|g| g.unsafe_allow && g.is_reserved()).map(|g| g.dir.clone()).collect::<Vec<_>>(),
            "loads": loads,
            "error": error,
            "serving_sha256": serving.iter().find_map(|s| s.handlers.get(name).map(|h| h.sha256.clone())),
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        for (r, details) in rows.iter().zip(&details) {
            let sha = r["sha256"].as_str().map(|s| &s[..12.min(s.len())]).unwrap_or("(missing)");
            let state = if r["loads"] == true {
                format!("loads (v{})", r["version"].as_str().unwrap_or("?"))
            } else {
                "DOES NOT LOAD".into()
            };
            println!("{:<22} {sha}  {state}", r["name"].as_str().unwrap_or(""));
            println!("    component: {}", r["component"].as_str().unwrap_or(""));
            println!(
                "    events:    {}",
                r["events"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            );
            println!(
                "    grants:    {}",
                r["grants"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            );
            for line in details {
                println!("{line}");
            }
            for p in r["problems"].as_array().into_iter().flatten().filter_map(|v| v.as_str()) {
                println!("    problem:   {p}");
            }
            if let Some(e) = r["error"].as_str() {
                println!("    error:     {e}");
            }
            for dir in r["unsafe_grants"].as_array().into_iter().flatten().filter_map(|v| v.as_str()) {
                println!("    warning:   grant {dir} is the runtime's own directory (unsafe_allow = true)");
            }
            if let Some(s) = r["serving_sha256"].as_str() {
                println!("    serving:   {s} (in the running cortex serve)");
            }
        }
    }
    if check {
        for r in &rows {
            for dir in r["unsafe_grants"].as_array().into_iter().flatten().filter_map(|v| v.as_str()) {
                eprintln!(
                    "cortex: warning: handler {} is granted {dir} with unsafe_allow = true: it can damage the queue or the code the host runs there",
                    r["name"].as_str().unwrap_or("")
                );
            }
        }
        let problems: Vec<&str> = rows
            .iter()
            .flat_map(|r| r["problems"].as_array().into_iter().flatten())
            .filter_map(|v| v.as_str())
            .collect();
        for p in &problems {
            eprintln!("cortex: {p}");
        }
        if broken > 0 {
            eprintln!("cortex: {broken} of {} handlers do not load", rows.len());
        }
        if broken > 0 || !problems.is_empty() {
            return Ok(ExitCode::FAILURE);
        }
        println!("all {} handlers load", rows.len());
    }
    Ok(ExitCode::SUCCESS)
}

fn read_stdin() -> Result<String> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).context("failed to read the event from stdin")?;
    Ok(s)
}

fn status(layout: &Layout, json: bool) -> Result<ExitCode> {
    let (_, queue) = open(layout)?;
    let status = cortex::status::gather(&queue)?;
    for s in &status.skipped {
        tracing::warn!("{s}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{status}");
    }
    Ok(ExitCode::SUCCESS)
}
