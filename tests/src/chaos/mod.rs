//! The chaos suite: a real cluster (each node on its own loopback address), concurrent
//! workers recording a history (with values up to 1 MiB), and a nemesis that kills,
//! pauses, partitions and skews nodes, and kills nodes in the middle of a snapshot
//! install. After healing it checks liveness (a leader soon, terms that stop climbing),
//! then the history for linearizability per key, that every replica reports the same
//! state digest at the same applied index, that deliberate replays repeated their
//! answers, that no value was applied twice, and that no raft answer was matched to the
//! wrong request.
//!
//! A fault the nemesis cannot inject because the cluster misbehaves (no leader, a node
//! that cannot win an election, a node that cannot catch up) is a [`ProductFailure`]: the
//! run goes on to heal and check, and fails with it, the terms per minute and the
//! elections each node started.
//!
//! Every fault is undone by the run, also when it fails: nodes are killed when the
//! cluster is dropped, paused ones included, and the firewall chain is removed when
//! the [`Firewall`] is dropped (and at the start of the next run, after a crash).

mod checks;
pub mod firewall;
mod nemesis;
mod report;
pub mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::checker::{check, CheckOptions, DEFAULT_TTL_SLACK_MS};
use crate::history::{OpKind, Outcome};
use crate::{TestCluster, Tuning};
pub use firewall::Firewall;
use workload::{Recorder, Shared, Worker};

use checks::{converged_digests, expired_but_listed};
pub use nemesis::{FaultKind, ProductFailure};
use nemesis::{Nemesis, MAX_QUIET_TERM_RISE};
use report::{watch_cluster, ClusterWatch, LARGE_APPENDS, MISMATCHED};
pub use report::{ChaosReport, TermStats};

/// A seed for a run that was not given one: the clock's nanoseconds.
pub fn fresh_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A chaos run's settings.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// 3 or 5 nodes.
    pub nodes: usize,
    /// How long faults are injected (the first round, every variant of every enabled
    /// kind once, always completes).
    pub duration: Duration,
    pub faults: Vec<FaultKind>,
    pub seed: u64,
    /// Concurrent client workers.
    pub workers: usize,
    /// Where the history is written.
    pub history: PathBuf,
    /// The skewed node's clock offset, when `Skew` is enabled.
    pub skew_ms: u64,
    /// Run the cluster with TLS on both ports and tokens; the workers use a token of
    /// their own over https.
    pub secure: bool,
}

impl ChaosConfig {
    /// Defaults for `nodes` nodes: every fault kind, 6 workers, 1 s skew.
    pub fn new(nodes: usize, duration: Duration, seed: u64, history: PathBuf) -> Self {
        Self {
            nodes,
            duration,
            faults: FaultKind::ALL.to_vec(),
            seed,
            workers: 6,
            history,
            skew_ms: 1000,
            secure: false,
        }
    }

    /// The checker's TTL slack: the default plus the clock disagreement the run causes
    /// (HISTORY-FORMAT.md: slack above the cluster's clock disagreement).
    pub fn ttl_slack_ms(&self) -> u64 {
        let skew = if self.faults.contains(&FaultKind::Skew) {
            self.skew_ms
        } else {
            0
        };
        DEFAULT_TTL_SLACK_MS + skew
    }
}

/// Runs a chaos test: starts the cluster, the workers and the nemesis, heals, checks.
/// Errors only when the harness itself fails; a misbehaving cluster is a failed report.
pub async fn run(config: ChaosConfig) -> Result<ChaosReport> {
    if !matches!(config.nodes, 3 | 5) {
        bail!("chaos runs use 3 or 5 nodes, not {}", config.nodes);
    }
    let started = Instant::now();
    // First, so a leftover chain from a crashed run is gone before anything starts.
    let firewall = if config.faults.contains(&FaultKind::Partition) {
        Some(Firewall::new()?)
    } else {
        None
    };
    let skewed = config
        .faults
        .contains(&FaultKind::Skew)
        .then_some(config.nodes as u64);
    let tuning = Tuning {
        raft: vec![
            // Frequent snapshots and purges, so restarted nodes also catch up by
            // snapshot, and a node kept down is purged past within seconds (the install
            // fault); 300 entries kept after a snapshot let a follower paused for a
            // fault's hold catch up by AppendEntries of several MiB.
            "snapshot_every = 400".into(),
            "logs_kept_after_snapshot = 300".into(),
            "purge_batch_size = 32".into(),
        ],
        limits: vec![],
        node_lines: skewed
            .map(|id| (id, format!("clock_offset_ms = {}", config.skew_ms)))
            .into_iter()
            .collect(),
        own_addresses: true,
        auth: config.secure,
        disk_mib: None,
        tls: config.secure,
        require_client_cert: false,
    };
    let cluster = TestCluster::start_tuned(config.nodes, tuning).await?;
    let run_id = format!("chaos-{}-{}", config.seed, std::process::id());
    let access = if config.secure {
        workload::Access::secure(&cluster).await?
    } else {
        workload::Access::default()
    };
    let shared = Arc::new(Shared::new(
        Recorder::create(&config.history)?,
        cluster.nodes.iter().map(|n| n.client_addr).collect(),
        run_id,
        config.ttl_slack_ms(),
        access,
    )?);
    let watch = Arc::new(Mutex::new(ClusterWatch::default()));
    let watcher = tokio::spawn(watch_cluster(shared.clone(), watch.clone(), started));
    let mut workers = vec![];
    for id in 0..config.workers as u64 {
        workers.push(tokio::spawn(
            Worker::new(id, config.seed).run(shared.clone()),
        ));
    }
    let mut nemesis = Nemesis {
        cluster,
        firewall,
        rng: StdRng::seed_from_u64(config.seed),
        skewed,
        log: vec![],
        counts: BTreeMap::new(),
        installs_interrupted: BTreeMap::new(),
        started,
        members: (1..=config.nodes as u64).collect(),
    };
    let scheduled = nemesis.schedule(&config).await;
    nemesis.heal_all()?;
    let mut product_failures = vec![];
    let scheduled = match scheduled {
        Err(e) if e.downcast_ref::<ProductFailure>().is_some() => {
            product_failures.push(format!("{e:#}"));
            Ok(())
        }
        other => other,
    };
    // The load stays on while the cluster recovers and the liveness check watches it.
    let (liveness, settled_term) = if scheduled.is_ok() {
        match nemesis.check_liveness().await {
            Ok((seen, term)) => (seen, Some(term)),
            Err(e) => {
                product_failures.push(format!("{e:#}"));
                ("failed".into(), None)
            }
        }
    } else {
        ("not checked".into(), None)
    };
    shared.stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.context("worker task")??;
    }
    watcher.await.context("cluster watcher")?;
    scheduled?;
    let cluster = &nemesis.cluster;

    // Final linearizable reads of every key: what was acknowledged and not overwritten
    // must be there, and nothing expired may be. Only with a leader everyone follows.
    let mut violations = vec![];
    let leader = match async {
        cluster.wait_ready_all().await?;
        cluster.leader().await
    }
    .await
    {
        Ok(l) => Some(l),
        Err(e) => {
            product_failures.push(format!("after healing: {e:#}"));
            None
        }
    };
    let mut digests = vec![];
    if let Some(leader) = leader {
        let keys: Vec<String> = shared.keys.lock().expect("keys").iter().cloned().collect();
        let final_client = config.workers as u64;
        let slot = shared
            .nodes
            .iter()
            .position(|a| *a == cluster.client_addr(leader))
            .context("the leader's slot")?;
        for key in &keys {
            let mut answered = false;
            for _ in 0..5 {
                if shared.final_read(final_client, slot, key).await? {
                    answered = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if !answered {
                violations.push(format!("final read of {key} got no answer"));
            }
        }
        match converged_digests(cluster, &nemesis.members).await {
            Ok(d) => digests = d,
            Err(e) => violations.push(e),
        }
    }
    violations.extend(
        shared
            .violations
            .lock()
            .expect("violations")
            .iter()
            .cloned(),
    );

    // Every node's counters and state once more, now that the workload is over.
    let mut final_states = vec![];
    let mut final_term = 0;
    let at = started.elapsed().as_secs_f64();
    for id in cluster.live() {
        match cluster.get_json(id, "/v1/cluster").await {
            Ok((200, v)) => {
                watch.lock().expect("watch lock").see(id, at, &v);
                final_term = final_term.max(v["term"].as_u64().unwrap_or(0));
                final_states.push(format!(
                    "n{id}: {} at term {}, leader {}, log to {}, committed {}, applied {}, snapshot {}, purged {}",
                    v["state"].as_str().unwrap_or("?"),
                    v["term"],
                    v["leader_id"],
                    v["last_log_index"],
                    v["commit_index"],
                    v["applied_index"],
                    v["snapshot_index"],
                    v["purged_index"]
                ));
            }
            other => final_states.push(format!("n{id}: /v1/cluster answered {other:?}")),
        }
    }
    // Terms stop climbing once the cluster is healed: a node that keeps starting
    // elections after the liveness check (a node that cannot rejoin) fails the run.
    if let Some(settled) = settled_term {
        if final_term > settled + MAX_QUIET_TERM_RISE {
            product_failures.push(format!(
                "terms kept climbing after healing: term {settled} when the liveness check ended, {final_term} at the end of the run"
            ));
        }
    }
    let (counters, terms, term_changes, leader_changes) = {
        let w = watch.lock().expect("watch lock");
        (
            w.totals(),
            w.term_stats(started.elapsed()),
            w.terms
                .iter()
                .map(|(id, (_, c))| (*id, c.len().saturating_sub(1)))
                .collect::<BTreeMap<_, _>>(),
            w.leaders.len().saturating_sub(1),
        )
    };
    // The node logs hold every mismatch, also of a process killed before its counter
    // was last read (the log of a node spans its restarts).
    let mut mismatches_logged = BTreeMap::new();
    for node in &cluster.nodes {
        let text = cluster.log_text(node.id)?;
        let n = text
            .matches("raft answer does not match its request")
            .count() as u64;
        mismatches_logged.insert(node.id, n);
    }
    let mismatched: u64 = counters
        .values()
        .filter_map(|c| c.get(MISMATCHED))
        .sum::<u64>()
        .max(mismatches_logged.values().sum());
    if mismatched > 0 {
        violations.push(format!(
            "{mismatched} raft answers did not match their request (per node: counters {counters:?}, logs {mismatches_logged:?})"
        ));
    }
    let large_appends: u64 = counters.values().filter_map(|c| c.get(LARGE_APPENDS)).sum();
    if large_appends == 0 {
        violations.push(
            "no AppendEntries over 1 MiB was sent: the run never exercised large frames".into(),
        );
    }

    let ops = shared.recorder.finish()?;
    violations
        .extend(expired_but_listed(&nemesis.cluster, &shared, &ops, config.ttl_slack_ms()).await?);
    let options = CheckOptions {
        ttl_slack_ms: config.ttl_slack_ms(),
    };
    let verdict = tokio::task::spawn_blocking(move || {
        let verdict = check(&ops, options);
        (verdict, ops)
    })
    .await
    .context("checker task")?;
    let (verdict, ops) = verdict;
    let mut outcomes = BTreeMap::new();
    for op in &ops {
        let kind = match op.op {
            OpKind::Get => "get",
            OpKind::Put if op.ttl_ms.is_some() => "put-ttl",
            OpKind::Put => "put",
            OpKind::Delete => "delete",
            OpKind::Cas => "cas",
            OpKind::Create => "create",
        };
        let outcome = match op.result {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Unknown => "unknown",
            Outcome::Error => "error",
        };
        *outcomes
            .entry((kind.to_string(), outcome.to_string()))
            .or_insert(0) += 1;
    }
    let report = ChaosReport {
        elapsed: started.elapsed(),
        outcomes,
        fault_log: nemesis.log.clone(),
        fault_counts: nemesis.counts.clone(),
        installs_interrupted: nemesis.installs_interrupted.clone(),
        large_values: shared.large_values(),
        counters,
        mismatches_logged,
        terms,
        term_changes,
        liveness,
        final_states,
        product_failures,
        leader_changes,
        deliberate_retries: shared.deliberate_retries(),
        verdict,
        digests,
        violations,
        config,
    };
    if report.passed() {
        nemesis.cluster.pass();
    } else if let Some(dir) = nemesis.cluster.dir() {
        eprintln!("chaos run failed: node logs kept in {}", dir.display());
    }
    Ok(report)
}
