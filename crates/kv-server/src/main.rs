//! `kv-server`: runs one quorum-kv node from a TOML configuration, makes the
//! certificates for a cluster's TLS (`kv-server certs`), or seeds a node's data directory
//! from a backup (`kv-server restore`).

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kv_server::certs::NodeSpec;
use kv_server::config::{LogFormat, NodeConfig};
use tracing_subscriber::EnvFilter;

/// One node of a quorum-kv cluster.
#[derive(Parser)]
#[command(
    version,
    about,
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
struct Args {
    /// The node's TOML configuration.
    #[arg(long, short, required = true)]
    config: Option<PathBuf>,
    /// Overrides `data_dir` from the configuration.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Makes a cluster CA (or reuses the one in DIR) and certificates for nodes and
    /// clients: ca.pem, node{ID}.pem, client-{NAME}.pem, each with its -key.pem (0600).
    Certs {
        /// Where the files go (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// A node's id and the IP addresses (and DNS names) its certificate names:
        /// ID=IP[,IP|DNS...]; repeat for each node.
        #[arg(long = "node", value_name = "ID=IP[,IP|DNS...]")]
        nodes: Vec<NodeSpec>,
        /// A client certificate to make, from a clients CA of its own (clients-ca.pem);
        /// repeat for each client.
        #[arg(long = "client", value_name = "NAME")]
        clients: Vec<String>,
    },
    /// Prints the OpenAPI 3.1 description of the client API (as served at
    /// `/v1/openapi.json` and checked in as docs/openapi.json).
    Openapi,
    /// Seeds the empty data directory of the node CONFIG describes from a backup
    /// (`kvctl backup`): a one-node cluster with a new cluster id, holding the backup's
    /// state; grow it with `kvctl member add`.
    Restore {
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        /// The restored node's TOML configuration (its id, addresses and data_dir).
        #[arg(long)]
        config: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Certs {
        dir,
        nodes,
        clients,
    }) = args.command
    {
        for file in kv_server::certs::make(&dir, &nodes, &clients)? {
            println!("wrote {}", file.display());
        }
        return Ok(());
    }
    if let Some(Command::Openapi) = args.command {
        print!("{}", kv_server::openapi_document());
        return Ok(());
    }
    if let Some(Command::Restore { from, config }) = args.command {
        let config = NodeConfig::load(&config)?;
        let restored = kv_server::node::restore(&config, &from)?;
        println!("{restored}");
        return Ok(());
    }
    let path = args.config.context("--config is required")?;
    let mut config = NodeConfig::load(&path)?;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }
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
