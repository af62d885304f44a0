//! `cortex handler test`: run a component against fixture events in a
//! throwaway sandbox ([`cortex::harness`]) and print its report; with
//! `--expect`, print the differences from an expectation file.

use std::io::Write;

use anyhow::Result;

use super::Outcome;
use cortex::harness::{self, Flags};
use cortex::layout::Layout;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    flags: Flags,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(layout: &Layout, args: Args) -> Result<Outcome> {
    let setup = args.flags.setup(layout)?;
    let report = harness::run(&setup.request)?;
    let failed = report.failed();
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        harness::print_text(&report, &mut out)?;
    }
    if let Some(path) = &setup.write_expect {
        harness::write_expectation(path, &report)?;
        eprintln!("wrote the expectation {}: edit out what should not be checked", path.display());
    }
    if let Some(name) = setup.table_hint(&report) {
        eprintln!(
            "cortex: hint: the root's cortex.toml has [handlers.{name}]; run with --handler {name} to use its grants and settings"
        );
    }
    let Some(expect) = &setup.expect else {
        if failed > 0 {
            eprintln!("cortex: {failed} event(s) failed (give --expect FILE to state that a failure is expected)");
            return Ok(Outcome::Failure);
        }
        return Ok(Outcome::Success);
    };
    let diffs = harness::differences_from(expect, &report)?;
    if diffs.is_empty() {
        eprintln!("expect {}: as expected", expect.display());
        return Ok(Outcome::Success);
    }
    eprintln!("expect {}: {} difference(s)", expect.display(), diffs.len());
    for d in &diffs {
        eprintln!("  {d}");
    }
    Ok(Outcome::Failure)
}
