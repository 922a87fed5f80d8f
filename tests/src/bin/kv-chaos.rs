//! Runs the chaos suite against a fresh local cluster and prints a summary.
//!
//! `kv-chaos [--nodes 3|5] [--duration 10m] [--faults kill,pause,partition,skew,install,churn]
//! [--seed N] [--workers 6] [--skew-ms 1000] [--history PATH]`. Exits 1 when a check fails
//! (a product failure included); the history file and the node logs are kept then.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Parser;
use kv_tests::chaos::{fresh_seed, run, ChaosConfig, FaultKind};

#[derive(Parser)]
#[command(
    about = "Kill, pause, partition and skew a local quorum-kv cluster under load, and kill nodes mid-snapshot-install, then check the history"
)]
struct Args {
    /// Cluster size (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// How long to inject faults: 90s, 10m, 1h.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    duration: Duration,
    /// Fault kinds, comma-separated.
    #[arg(long, default_value = "kill,pause,partition,skew,install,churn")]
    faults: String,
    /// Seed of the schedule and the workload (random when absent).
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent client workers.
    #[arg(long, default_value_t = 6)]
    workers: usize,
    /// The skewed node's clock offset in ms (with the skew fault); the checker's TTL
    /// slack grows by as much.
    #[arg(long, default_value_t = 1000)]
    skew_ms: u64,
    /// History file (default target/chaos/history-SEED.jsonl under the current folder).
    #[arg(long)]
    history: Option<PathBuf>,
    /// TLS on both ports and tokens (the workers use a token of their own over https).
    #[arg(long)]
    secure: bool,
}

fn parse_duration(s: &str) -> Result<Duration> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| anyhow::anyhow!("bad duration {s:?}"))?;
    Ok(Duration::from_secs(match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => bail!("bad duration unit in {s:?} (s, m, h)"),
    }))
}

#[tokio::main]
async fn main() -> Result<ExitCode> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(fresh_seed);
    let history = args
        .history
        .unwrap_or_else(|| PathBuf::from(format!("target/chaos/history-{seed}.jsonl")));
    let mut config = ChaosConfig::new(args.nodes, args.duration, seed, history);
    config.faults = FaultKind::parse_list(&args.faults)?;
    config.workers = args.workers;
    config.skew_ms = args.skew_ms;
    config.secure = args.secure;
    eprintln!(
        "chaos: {} nodes{}, seed {seed}, {:?} of faults, history {}",
        config.nodes,
        if config.secure {
            " with TLS and tokens"
        } else {
            ""
        },
        config.duration,
        config.history.display()
    );
    // On Ctrl-C or SIGTERM the run is dropped, which kills its nodes and removes the
    // firewall chain.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let report = tokio::select! {
        report = run(config) => report?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted: nodes stopped, firewall rules removed"),
        _ = term.recv() => bail!("terminated: nodes stopped, firewall rules removed"),
    };
    println!("{report}");
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
