//! `cortex serve`: run as a service until SIGTERM or SIGINT (a second
//! signal quits at once); the service itself is [`cortex::service::run`].

use anyhow::{Context, Result};

use super::Outcome;
use cortex::layout::Layout;

#[derive(clap::Args)]
pub struct Args {
    /// Address for the HTTP endpoints, or `off`.
    #[arg(long, default_value = "127.0.0.1:9464")]
    listen: String,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl Args {
    pub fn json_logs(&self) -> bool {
        self.log_format == LogFormat::Json
    }
}

pub fn run(layout: Layout, args: Args) -> Result<Outcome> {
    let listen = match args.listen.as_str() {
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
    Ok(Outcome::Success)
}
