//! `cortex webhooks`: the configured endpoints (enabled or disabled after
//! `410 Gone`, deliveries waiting), and `enable`, which turns a disabled
//! one back on.

use anyhow::{Result, bail};

use super::Outcome;
use cortex::layout::Layout;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Each endpoint: its url (scheme and host only), state, deliveries waiting.
    List {
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send to an endpoint again after it answered 410 Gone (a running
    /// `cortex serve` picks it up within a second).
    Enable {
        /// The endpoint's name, as in [webhooks.NAME].
        name: String,
    },
}

pub fn run(layout: &Layout, command: Command) -> Result<Outcome> {
    let config = cortex::config::Config::load(layout.root())?;
    let routes = cortex::webhooks::Routes::of(&config);
    match command {
        Command::List { json } => {
            let endpoints = cortex::webhooks::endpoint_status(layout, &routes);
            if json {
                println!("{}", serde_json::to_string_pretty(&endpoints)?);
            } else if endpoints.is_empty() {
                println!("no [webhooks] endpoints in cortex.toml");
            } else {
                for e in &endpoints {
                    let why =
                        e.disabled.as_ref().map_or(String::new(), |d| format!(" ({} Gone at {})", d.status, d.at));
                    println!("{}  {}  {}{why}  {} pending", e.name, e.url, e.state, e.pending);
                }
            }
        }
        Command::Enable { name } => {
            if routes.get(&name).is_none() {
                bail!("no webhook endpoint {name} in cortex.toml; see `cortex webhooks list`");
            }
            if cortex::webhooks::enable(layout, &name)? {
                println!("webhook endpoint {name} enabled; a running `cortex serve` sends its deliveries again");
            } else {
                println!("webhook endpoint {name} was not disabled");
            }
        }
    }
    Ok(Outcome::Success)
}
