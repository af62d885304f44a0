//! The `cortex` binary: parse the command line, start tracing, run the
//! command (one file each under `cli/`, printing only; the decisions are
//! the library's) and map the outcome or the `{:#}` error chain to an exit
//! code.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use cortex::producer::BadBatch;

mod cli;

/// How a command that did not fail with an error ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Bad input, or an operation that did not do what was asked.
    Failure,
    /// `cortex dispatch` finished, but dead-lettered events in the run.
    DeadLettered,
    /// `cortex dispatch` ran, but handlers did not load; their events wait.
    HandlersNotLoading,
}

impl Outcome {
    /// Exit codes: 0 success, 1 failure (bad input or an operation that
    /// failed), 2 usage errors (from clap), 3 dead-lettered, 4 handlers not
    /// loading (it takes precedence over 3).
    pub fn code(self) -> u8 {
        match self {
            Outcome::Success => 0,
            Outcome::Failure => 1,
            Outcome::DeadLettered => 3,
            Outcome::HandlersNotLoading => 4,
        }
    }

    /// [`Outcome::Success`] when `ok`, else [`Outcome::Failure`].
    pub fn of(ok: bool) -> Outcome {
        if ok { Outcome::Success } else { Outcome::Failure }
    }
}

/// Parses, runs and maps to an exit code (see [`Outcome::code`]). Public so
/// that the tests crate's `cortex-failpoints` binary runs this same `main`
/// with its crash points armed.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // The dispatcher logs one "handler completed" line per invocation, as
    // the seed's monitoring expects; other commands only warnings.
    init_tracing(
        if cli.command.logs_progress() { "info" } else { "warn,cortex::progress=info" },
        cli.command.json_logs(),
    );
    match cli::run(cli) {
        Ok(outcome) => ExitCode::from(outcome.code()),
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
