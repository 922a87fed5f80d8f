//! `kv-server`: runs one quorum-kv node from a TOML configuration.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use kv_server::config::NodeConfig;
use tracing_subscriber::EnvFilter;

/// One node of a quorum-kv cluster.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The node's TOML configuration.
    #[arg(long, short)]
    config: PathBuf,
    /// Overrides `data_dir` from the configuration.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    let mut config = NodeConfig::load(&args.config)?;
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    kv_server::node::run(config, stop_signal())
        .await
        .context("node failed")
}

/// Resolves on SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term =
        signal(SignalKind::terminate()).expect("installing a SIGTERM handler at startup");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
