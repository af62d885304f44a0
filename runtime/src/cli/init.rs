//! `cortex init`: create the coordination layout and a commented default
//! `cortex.toml`, and copy in the built-in handler components it names.

use std::path::PathBuf;

use anyhow::Result;

use super::Outcome;
use cortex::config::Config;
use cortex::layout::{self, Layout};

#[derive(clap::Args)]
pub struct Args {
    /// Where the built-in components are (default: $CORTEX_HANDLERS, else
    /// `handlers/` beside the cortex binary, where `make handlers` puts them).
    #[arg(long, env = "CORTEX_HANDLERS")]
    handlers: Option<PathBuf>,
}

pub fn run(layout: &Layout, args: Args) -> Result<Outcome> {
    let mut report = layout::init(layout, cortex::DEFAULT_CONFIG)?;
    let source =
        args.handlers.or_else(|| std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join("handlers"))));
    let config = Config::load(layout.root())?;
    let installed = layout::install_components(layout, &config, source.as_deref())?;
    report.created.extend(installed.copied);
    if report.created.is_empty() {
        println!("{} is already initialised; nothing changed", layout.root().display());
    } else {
        for p in &report.created {
            println!("created {}", p.display());
        }
        println!("initialised {}", layout.root().display());
    }
    if !installed.missing.is_empty() {
        let from = source.map(|s| s.display().to_string()).unwrap_or_else(|| "(no directory)".into());
        eprintln!(
            "cortex: warning: {} handler components were not found in {from}: run `make handlers` (or pass --handlers DIR) and `cortex init` again",
            installed.missing.len()
        );
    }
    Ok(Outcome::Success)
}
