//! `cortex handlers` (and its hidden singular `cortex handler`): list and
//! check the configured handlers ([`cortex::inventory`]), scaffold a new
//! one, and test a component (`handler_test.rs`).

use std::path::PathBuf;

use anyhow::Result;

use super::{Outcome, handler_test};
use cortex::config::Config;
use cortex::inventory::HandlerRow;
use cortex::layout::Layout;

#[derive(clap::Subcommand)]
pub enum Command {
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
    Test(Box<handler_test::Args>),
}

pub fn run(layout: &Layout, command: Command) -> Result<Outcome> {
    match command {
        Command::List { json, verbose } => list(layout, json, verbose, false),
        Command::Check => list(layout, false, false, true),
        Command::Test(args) => handler_test::run(layout, *args),
        Command::New { name, lang, events, dir } => new(&name, lang, &events, dir),
    }
}

fn list(layout: &Layout, json: bool, verbose: bool, check: bool) -> Result<Outcome> {
    let config = Config::load(layout.root())?;
    let rows = cortex::inventory::list(layout, &config)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        for r in &rows {
            print_row(r, verbose);
        }
    }
    if !check {
        return Ok(Outcome::Success);
    }
    for r in &rows {
        for dir in &r.unsafe_grants {
            eprintln!(
                "cortex: warning: handler {} is granted {dir} with unsafe_allow = true: it can damage the queue or the code the host runs there",
                r.name
            );
        }
    }
    let problems: Vec<&String> = rows.iter().flat_map(|r| &r.problems).collect();
    for p in &problems {
        eprintln!("cortex: {p}");
    }
    let broken = rows.iter().filter(|r| !r.loads).count();
    if broken > 0 {
        eprintln!("cortex: {broken} of {} handlers do not load", rows.len());
    }
    if broken > 0 || !problems.is_empty() {
        return Ok(Outcome::Failure);
    }
    println!("all {} handlers load", rows.len());
    Ok(Outcome::Success)
}

fn print_row(r: &HandlerRow, verbose: bool) {
    let sha = r.sha256.as_deref().map(|s| &s[..12.min(s.len())]).unwrap_or("(missing)");
    let state =
        if r.loads { format!("loads (v{})", r.version.as_deref().unwrap_or("?")) } else { "DOES NOT LOAD".into() };
    println!("{:<22} {sha}  {state}", r.name);
    println!("    component: {}", r.component);
    println!("    events:    {}", r.events.join(", "));
    println!("    grants:    {}", r.grants.join(", "));
    if verbose {
        for line in &r.details {
            println!("{line}");
        }
    }
    for p in &r.problems {
        println!("    problem:   {p}");
    }
    if let Some(e) = &r.error {
        println!("    error:     {e}");
    }
    for dir in &r.unsafe_grants {
        println!("    warning:   grant {dir} is the runtime's own directory (unsafe_allow = true)");
    }
    if let Some(s) = &r.serving_sha256 {
        println!("    serving:   {s} (in the running cortex serve)");
    }
}

fn new(name: &str, lang: cortex::scaffold::Lang, events: &[String], dir: Option<PathBuf>) -> Result<Outcome> {
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
    Ok(Outcome::Success)
}
