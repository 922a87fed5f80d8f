//! The short chaos run CI does on every change: every fault kind at least once on a
//! three-node cluster, then partitions and kills of a five-node one with TLS and tokens
//! on. The long randomized run is
//! `scripts/chaos.sh`. Histories are kept (and their path printed) when a check fails.

use std::time::Duration;

use anyhow::{Context, Result};
use kv_tests::chaos::{fresh_seed, run, ChaosConfig, FaultKind};

fn seed() -> u64 {
    std::env::var("KV_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(fresh_seed)
}

async fn run_and_check(config: ChaosConfig) -> Result<()> {
    let history = config.history.clone();
    let (nodes, seed) = (config.nodes, config.seed);
    let secure = if config.secure {
        " with TLS and tokens"
    } else {
        ""
    };
    // Printed first, so a run that stops with a harness error can still be repeated.
    println!("chaos run on {nodes} nodes{secure}, seed {seed} (KV_CHAOS_SEED={seed} repeats it)");
    let report = run(config)
        .await
        .with_context(|| format!("chaos run on {nodes} nodes with seed {seed}"))?;
    println!("{report}");
    assert!(
        report.passed(),
        "chaos checks failed; history kept in {}",
        history.display()
    );
    std::fs::remove_file(&history)?;
    Ok(())
}

// One test, so the two runs never hold the firewall chain at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_chaos_runs_stay_linearizable_and_converge() -> Result<()> {
    let seed = seed();
    let dir = std::env::temp_dir();
    let history = |n: usize| dir.join(format!("quorum-kv-chaos-{n}-nodes-{seed}.jsonl"));

    // Every variant of every fault kind once: kill (leader, minority, all), pause
    // (leader, follower), partition (isolate the leader, split, bridge), skew, a kill
    // in the middle of a snapshot install, and churn (a dead follower and the leader
    // each replaced by a new node on an empty disk, a leadership handover).
    let three = ChaosConfig::new(3, Duration::from_secs(0), seed, history(3));
    run_and_check(three).await?;

    // With TLS on both ports and tokens: the workers' token over https, mutual TLS
    // between nodes through the partitions, restarts and replacements (each new node
    // with a certificate of its own).
    let mut five = ChaosConfig::new(5, Duration::from_secs(0), seed, history(5));
    five.faults = vec![FaultKind::Partition, FaultKind::Kill, FaultKind::Churn];
    five.secure = true;
    run_and_check(five).await
}
