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
    /// Check an event document (FILE, or `-` / nothing for stdin).
    Validate { file: Option<PathBuf> },
    /// Queue depth, oldest queued event, events by type, dead letters.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Process everything queued, including follow-up events, then exit.
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
    /// Show the configured handlers.
    Handlers {
        #[command(subcommand)]
        command: HandlersCommand,
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
        #[arg(long)]
        json: bool,
    },
    /// Load every handler; exit 1 naming each one that does not load.
    Check,
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
    // The dispatcher logs one "handler completed" line per invocation, as
    // the seed's monitoring expects; other commands only warnings.
    let json_logs = matches!(cli.command, Command::Serve { log_format: LogFormat::Json, .. });
    init_tracing(
        if matches!(cli.command, Command::Dispatch { .. } | Command::Serve { .. }) { "info" } else { "warn" },
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
        Command::Validate { file } => validate(&layout, file.as_deref()),
        Command::Status { json } => status(&layout, json),
        Command::Dispatch { json, no_wait } => dispatch(&layout, json, no_wait),
        Command::Serve { listen, .. } => serve(layout, &listen),
        Command::Handlers { command: HandlersCommand::List { json } } => handlers(&layout, json, false),
        Command::Handlers { command: HandlersCommand::Check } => handlers(&layout, false, true),
    }
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

fn dispatch(layout: &Layout, json: bool, no_wait: bool) -> Result<ExitCode> {
    let (config, queue) = open(layout)?;
    let queue: std::sync::Arc<dyn cortex::queue::Queue> = std::sync::Arc::new(queue);
    let dispatcher = cortex::dispatch::prepare(queue, layout.root(), std::sync::Arc::new(config))?;
    let until = if no_wait { cortex::dispatch::Until::NothingDue } else { cortex::dispatch::Until::Drained };
    let summary = dispatcher.run(until, &|| false, None)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{summary}");
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

fn handlers(layout: &Layout, json: bool, check: bool) -> Result<ExitCode> {
    let config = Config::load(layout.root())?;
    let fuel = config.handlers.values().any(|h| h.limits.fuel.is_some());
    let sandbox = cortex::sandbox::Sandbox::new(layout.root(), config.validator(), fuel)?;
    let serving = cortex::service::running(layout);
    let mut rows = Vec::new();
    let mut broken = 0;
    for (name, h) in &config.handlers {
        let path = sandbox.component_path(h);
        let (loads, sha256, info, error) = match sandbox.load(name, h) {
            Ok(l) => (true, Some(l.sha256.clone()), Some(l.info.clone()), None),
            Err(e) => (false, cortex::sandbox::sha256_file(&path).ok(), None, Some(format!("{e:#}"))),
        };
        broken += usize::from(!loads);
        rows.push(serde_json::json!({
            "name": name,
            "component": path.display().to_string(),
            "sha256": sha256,
            "version": info.as_ref().map(|i| i.version.clone()),
            "events": h.events,
            "declared_events": info.as_ref().map(|i| i.events.clone()),
            "grants": h.grants.iter().map(|g| format!("{}:{}", g.dir, if g.mode == cortex::config::Access::Rw { "rw" } else { "ro" })).collect::<Vec<_>>(),
            "loads": loads,
            "error": error,
            "serving_sha256": serving.as_ref().and_then(|s| s["handlers"][name]["sha256"].as_str().map(str::to_string)),
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        for r in &rows {
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
            if let Some(e) = r["error"].as_str() {
                println!("    error:     {e}");
            }
            if let Some(s) = r["serving_sha256"].as_str() {
                println!("    serving:   {s} (in the running cortex serve)");
            }
        }
    }
    if check {
        if broken > 0 {
            eprintln!("cortex: {broken} of {} handlers do not load", rows.len());
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
