//! The `cortex` binary: parse the command line, load the checked config,
//! call into the library, print `{:#}` error chains and map them to exit codes.

use std::io::{BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use cortex::config::Config;
use cortex::event::{NewEvent, Priority, Validator};
use cortex::layout::{self, Layout};
use cortex::producer::{BadBatch, Producer};
use cortex::queue::{self, FsQueue};

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
    /// Create the coordination layout and a commented default cortex.toml.
    Init,
    /// Build, validate, log and queue an event (or a JSONL batch from stdin).
    Emit(EmitArgs),
    /// Check an event document (FILE, or `-` / nothing for stdin).
    Validate { file: Option<PathBuf> },
    /// Queue depth, oldest queued event, events by type, dead letters.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct EmitArgs {
    /// Event type, e.g. worker.completed.
    #[arg(required_unless_present = "batch")]
    event_type: Option<String>,
    /// Component that emits the event.
    #[arg(required_unless_present = "batch")]
    source: Option<String>,
    /// The payload, a JSON object.
    #[arg(required_unless_present = "batch")]
    payload: Option<String>,
    correlation_id: Option<String>,
    /// critical, high, medium (default) or low.
    priority: Option<Priority>,
    #[arg(long = "tag")]
    tags: Vec<String>,
    #[arg(long)]
    master: Option<String>,
    /// Print the whole event as JSON instead of its id.
    #[arg(long)]
    json: bool,
    /// Read JSONL events from stdin and queue all of them or none.
    #[arg(long, conflicts_with_all = ["event_type", "source", "payload", "correlation_id", "priority", "tags", "master"])]
    batch: bool,
}

/// Exit codes: 0 success, 1 failure (bad input or an operation that failed),
/// 2 usage errors (from clap).
fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
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

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

fn run(cli: Cli) -> Result<ExitCode> {
    let layout = Layout::new(&cli.root);
    match cli.command {
        Command::Init => init(&layout),
        Command::Emit(args) => emit(&layout, args),
        Command::Validate { file } => validate(&layout, file.as_deref()),
        Command::Status { json } => status(&layout, json),
    }
}

fn init(layout: &Layout) -> Result<ExitCode> {
    let report = layout::init(layout, cortex::DEFAULT_CONFIG)?;
    if report.created.is_empty() {
        println!("{} is already initialised; nothing changed", layout.root().display());
    } else {
        for p in &report.created {
            println!("created {}", p.display());
        }
        println!("initialised {}", layout.root().display());
    }
    Ok(ExitCode::SUCCESS)
}

fn open(layout: &Layout) -> Result<(Config, FsQueue)> {
    let config = Config::load(layout.root())?;
    let queue = FsQueue::open(layout.clone(), config.validator())?;
    Ok((config, queue))
}

fn emit(layout: &Layout, args: EmitArgs) -> Result<ExitCode> {
    let (config, queue) = open(layout)?;
    queue::check_writable(layout)?;
    let producer = Producer::new(&queue, config.validator());
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.batch {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            eprintln!("cortex: reading JSONL events from the terminal; end with Ctrl-D");
        }
        let events = producer.emit_batch(BufReader::new(stdin.lock()))?;
        for e in &events {
            if args.json {
                writeln!(out, "{}", e.to_json())?;
            } else {
                writeln!(out, "{}", e.event_id)?;
            }
        }
        out.flush()?;
        eprintln!("queued {} events", events.len());
        return Ok(ExitCode::SUCCESS);
    }
    // clap guarantees these three unless --batch.
    let (event_type, source, payload) =
        (args.event_type.unwrap_or_default(), args.source.unwrap_or_default(), args.payload.unwrap_or_default());
    let payload: serde_json::Value =
        serde_json::from_str(&payload).with_context(|| format!("PAYLOAD_JSON is not valid JSON: {payload:?}"))?;
    let serde_json::Value::Object(payload) = payload else {
        anyhow::bail!("PAYLOAD_JSON must be a JSON object, e.g. '{{\"worker_id\": \"w-1\"}}'");
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

fn validate(layout: &Layout, file: Option<&Path>) -> Result<ExitCode> {
    // Custom types come from the root's config when there is one.
    let validator =
        if layout.config().exists() { Config::load(layout.root())?.validator() } else { Validator::default() };
    let text = match file {
        None => read_stdin()?,
        Some(p) if p == Path::new("-") => read_stdin()?,
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("failed to read {}", p.display()))?,
    };
    match validator.parse(&text) {
        Ok(e) => {
            println!("valid: {} {}", e.event_id, e.event_type);
            Ok(ExitCode::SUCCESS)
        }
        Err(invalid) => {
            for p in &invalid.0 {
                println!("{p}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
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
