//! `cortex export`: archived events out of Cortex, one JSON line each, as
//! CloudEvents (structured mode, see [`cortex::cloudevents`]) or as the
//! envelopes themselves. The selection is replay's ([`replay::select`]
//! with the same filter flags; no filter exports everything), so an event
//! archived more than once is exported once, in its latest copy. Output
//! goes to stdout, or to `--out FILE`, written whole and renamed into place
//! so that a failed export never leaves half a file.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{Outcome, open, progress_meter};
use cortex::layout::Layout;
use cortex::{cloudevents, fsio, replay};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    filter: replay::Filter,
    /// cloudevents: structured-mode CloudEvents (the mapping is in the
    /// README); jsonl: the Cortex envelopes as archived.
    #[arg(long, value_enum, default_value = "jsonl")]
    format: Format,
    /// Write to FILE (replaced whole, atomically) instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Cloudevents,
    Jsonl,
}

pub fn run(layout: &Layout, args: Args) -> Result<Outcome> {
    let (config, store) = open(layout)?;
    args.filter.check()?;
    let selection = replay::select(
        store.as_ref(),
        &args.filter,
        replay::Origin::Archive,
        &config.validator(),
        &mut progress_meter(),
    )?;
    let mut refused = 0;
    for s in &selection.skipped {
        refused += usize::from(s.refused);
        tracing::warn!("{s}");
    }
    let mut text = String::new();
    for e in &selection.events {
        let line = match args.format {
            Format::Cloudevents => cloudevents::to_structured(e).to_string(),
            Format::Jsonl => e.to_json(),
        };
        text.push_str(&line);
        text.push('\n');
    }
    match &args.out {
        Some(path) => write_whole(path, text.as_bytes())?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes()).context("failed to write the export to stdout")?;
            out.flush().context("failed to write the export to stdout")?;
        }
    }
    let to = args.out.as_ref().map_or_else(|| "stdout".to_string(), |p| p.display().to_string());
    eprintln!("exported {} events to {to}", selection.events.len());
    if refused > 0 {
        eprintln!("cortex: {refused} archived events are not valid now and were not exported (see the warnings above)");
    }
    Ok(Outcome::of(refused == 0))
}

/// Writes `bytes` as `path`: a temp file beside it, then a rename.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fsio::write_durably(dir, path, bytes).with_context(|| format!("failed to write the export to {}", path.display()))
}
