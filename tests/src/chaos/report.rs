//! What a run saw and found: the cluster watch (terms, leaders, counters of every
//! node) and the report that says whether the run passed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::workload::Shared;
use super::ChaosConfig;
use crate::checker::Verdict;

/// What a run did and found.
pub struct ChaosReport {
    pub config: ChaosConfig,
    pub elapsed: Duration,
    /// (op, outcome) → count.
    pub outcomes: BTreeMap<(String, String), u64>,
    /// Faults injected, in order, with when and what.
    pub fault_log: Vec<String>,
    /// Faults injected, by name.
    pub fault_counts: BTreeMap<&'static str, u64>,
    /// Snapshot installs cut short by a crash, by crash point.
    pub installs_interrupted: BTreeMap<&'static str, u64>,
    /// Large values written (first attempts) and their bytes.
    pub large_values: (u64, u64),
    /// Per node, each raft counter of `/v1/cluster` summed over the node's processes.
    pub counters: BTreeMap<u64, BTreeMap<&'static str, u64>>,
    /// Per node, answers to another request as the node logs counted them (this also
    /// covers a process killed before the counter was last read).
    pub mismatches_logged: BTreeMap<u64, u64>,
    /// How terms rose: first and last term seen, per minute over the run, and the most
    /// in any one minute.
    pub terms: TermStats,
    /// Term changes each node was seen to make.
    pub term_changes: BTreeMap<u64, usize>,
    /// What the liveness check after healing saw.
    pub liveness: String,
    /// Each node's `/v1/cluster` at the end of the run.
    pub final_states: Vec<String>,
    /// The cluster misbehaved: see [`ProductFailure`].
    pub product_failures: Vec<String>,
    pub leader_changes: usize,
    pub deliberate_retries: u64,
    pub verdict: Verdict,
    /// Replica digests after the quiet period: (node, applied index, digest).
    pub digests: Vec<(u64, u64, String)>,
    /// Everything that failed besides linearizability.
    pub violations: Vec<String>,
}

impl ChaosReport {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.verdict.ok() && self.violations.is_empty() && self.product_failures.is_empty()
    }

    /// A raft counter summed over every node.
    pub fn counter_total(&self, name: &str) -> u64 {
        self.counters
            .values()
            .filter_map(|c| c.get(name))
            .sum::<u64>()
    }

    fn counter_line(&self, name: &str) -> String {
        let per_node: Vec<String> = self
            .counters
            .iter()
            .map(|(id, c)| format!("n{id} {}", c.get(name).copied().unwrap_or(0)))
            .collect();
        format!("{} ({})", self.counter_total(name), per_node.join(", "))
    }
}

impl fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let kinds: Vec<&str> = c.faults.iter().map(|k| k.name()).collect();
        writeln!(
            f,
            "chaos run: {} nodes, seed {}, {:.1} s, faults {}, {} workers, ttl slack {} ms",
            c.nodes,
            c.seed,
            self.elapsed.as_secs_f64(),
            kinds.join(","),
            c.workers,
            c.ttl_slack_ms()
        )?;
        let total: u64 = self.outcomes.values().sum();
        writeln!(f, "operations: {total}")?;
        let mut by_op: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for ((op, outcome), n) in &self.outcomes {
            by_op.entry(op).or_default().push(format!("{outcome} {n}"));
        }
        for (op, parts) in by_op {
            writeln!(f, "  {op:<7} {}", parts.join(", "))?;
        }
        writeln!(
            f,
            "deliberate retries: {} (replays must repeat the answer)",
            self.deliberate_retries
        )?;
        let counts: Vec<String> = self
            .fault_counts
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        writeln!(
            f,
            "faults injected: {} ({})",
            self.fault_log.len(),
            counts.join(", ")
        )?;
        for line in &self.fault_log {
            writeln!(f, "  {line}")?;
        }
        let interrupted: u64 = self.installs_interrupted.values().sum();
        let points: Vec<String> = self
            .installs_interrupted
            .iter()
            .map(|(p, n)| format!("{p} {n}"))
            .collect();
        writeln!(
            f,
            "snapshot installs interrupted: {interrupted} ({})",
            points.join(", ")
        )?;
        writeln!(
            f,
            "large values written: {} ({:.1} MiB)",
            self.large_values.0,
            self.large_values.1 as f64 / (1024.0 * 1024.0)
        )?;
        writeln!(
            f,
            "large AppendEntries sent (over 1 MiB): {}",
            self.counter_line(LARGE_APPENDS)
        )?;
        writeln!(
            f,
            "AppendEntries timed out: {}",
            self.counter_line(APPEND_TIMEOUTS)
        )?;
        let logged: u64 = self.mismatches_logged.values().sum();
        writeln!(
            f,
            "mismatched raft answers: {} (node logs: {logged})",
            self.counter_line(MISMATCHED)
        )?;
        writeln!(f, "leader changes: {}", self.leader_changes)?;
        writeln!(f, "terms: {}", self.terms)?;
        writeln!(
            f,
            "elections started per node: {}",
            self.counter_line(ELECTIONS)
        )?;
        let changes: Vec<String> = self
            .term_changes
            .iter()
            .map(|(id, n)| format!("n{id} {n}"))
            .collect();
        writeln!(f, "term changes seen per node: {}", changes.join(", "))?;
        writeln!(f, "liveness after healing: {}", self.liveness)?;
        for state in &self.final_states {
            writeln!(f, "at the end, {state}")?;
        }
        for failure in &self.product_failures {
            writeln!(f, "PRODUCT FAILURE: {failure}")?;
        }
        for (node, index, digest) in &self.digests {
            writeln!(f, "replica n{node}: applied index {index}, digest {digest}")?;
        }
        let checked: usize = self.verdict.keys.iter().map(|k| k.operations).sum();
        if self.verdict.ok() {
            writeln!(
                f,
                "checker: linearizable ({} keys, {checked} model operations)",
                self.verdict.keys.len()
            )?;
        } else {
            writeln!(
                f,
                "checker: NOT linearizable, keys {:?}",
                self.verdict.failing_keys()
            )?;
            for twice in &self.verdict.reapplied {
                writeln!(f, "  applied twice: {twice}")?;
            }
        }
        if self.violations.is_empty() {
            writeln!(f, "other checks: passed")?;
        } else {
            for v in &self.violations {
                writeln!(f, "violation: {v}")?;
            }
        }
        writeln!(f, "history: {}", c.history.display())?;
        write!(
            f,
            "verdict: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

/// Counters of `/v1/cluster` the suite reads (see crates/kv-server/src/raft_network.rs).
pub(super) const ELECTIONS: &str = "raft_elections_started";
pub(super) const LARGE_APPENDS: &str = "raft_large_appends_sent";
pub(super) const APPEND_TIMEOUTS: &str = "raft_append_timeouts";
pub(super) const MISMATCHED: &str = "raft_mismatched_answers";
pub(super) const COUNTERS: [&str; 4] = [ELECTIONS, LARGE_APPENDS, APPEND_TIMEOUTS, MISMATCHED];

/// A counter of a node whose process restarts (and starts counting from 0 again).
#[derive(Default, Clone, Copy)]
pub(super) struct Counter {
    /// Summed over the node's earlier processes.
    earlier: u64,
    /// The current process's last value read.
    current: u64,
}

impl Counter {
    /// A value read. One lower than the last means a new process; what the old process
    /// counted after it was last read (at most one poll, 250 ms) is not seen.
    fn see(&mut self, value: u64) {
        if value < self.current {
            self.earlier += self.current;
        }
        self.current = value;
    }

    fn total(&self) -> u64 {
        self.earlier + self.current
    }
}

/// What polling `/v1/cluster` of every node saw during a run.
#[derive(Default)]
pub(super) struct ClusterWatch {
    /// (term, leader) pairs seen.
    pub(super) leaders: BTreeSet<(u64, u64)>,
    /// Per node: its last term, and (seconds into the run, new term) at each change.
    pub(super) terms: BTreeMap<u64, (u64, Vec<(f64, u64)>)>,
    pub(super) counters: BTreeMap<u64, BTreeMap<&'static str, Counter>>,
}

impl ClusterWatch {
    pub(super) fn see(&mut self, id: u64, at: f64, v: &serde_json::Value) {
        let term = v["term"].as_u64();
        if let (Some(t), Some(l)) = (term, v["leader_id"].as_u64()) {
            self.leaders.insert((t, l));
        }
        if let Some(t) = term {
            let (last, changes) = self.terms.entry(id).or_default();
            if t != *last {
                *last = t;
                changes.push((at, t));
            }
        }
        let counters = self.counters.entry(id).or_default();
        for name in COUNTERS {
            if let Some(n) = v[name].as_u64() {
                counters.entry(name).or_default().see(n);
            }
        }
    }

    pub(super) fn totals(&self) -> BTreeMap<u64, BTreeMap<&'static str, u64>> {
        self.counters
            .iter()
            .map(|(id, c)| (*id, c.iter().map(|(n, c)| (*n, c.total())).collect()))
            .collect()
    }

    /// How the highest term any node reported rose over the run.
    pub(super) fn term_stats(&self, elapsed: Duration) -> TermStats {
        let mut changes: Vec<(f64, u64)> = self
            .terms
            .values()
            .flat_map(|(_, c)| c.iter().copied())
            .collect();
        changes.sort_by(|a, b| a.0.total_cmp(&b.0));
        // The highest term seen by each moment.
        let mut highest = vec![];
        let mut max = 0;
        for (at, t) in changes {
            max = max.max(t);
            highest.push((at, max));
        }
        let first = highest.first().map_or(0, |h| h.1);
        let last = highest.last().map_or(0, |h| h.1);
        // The most the highest term rose within 60 s of any change.
        let mut busiest_minute = 0;
        for (i, (at, t)) in highest.iter().enumerate() {
            let before = highest[..=i]
                .iter()
                .rev()
                .find(|(a, _)| *a <= at - 60.0)
                .map_or(first, |h| h.1);
            busiest_minute = busiest_minute.max(t - before);
        }
        let minutes = elapsed.as_secs_f64() / 60.0;
        TermStats {
            first,
            last,
            per_minute: (last - first) as f64 / minutes.max(1.0 / 60.0),
            busiest_minute,
        }
    }
}

/// How terms rose during a run.
#[derive(Debug, Default, Clone, Copy)]
pub struct TermStats {
    pub first: u64,
    pub last: u64,
    /// (last - first) per minute of the run.
    pub per_minute: f64,
    /// The most the highest term rose in any 60 s.
    pub busiest_minute: u64,
}

impl fmt::Display for TermStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {}, {:.1} per minute, at most {} in one minute",
            self.first, self.last, self.per_minute, self.busiest_minute
        )
    }
}

/// Polls every node's `/v1/cluster` every 250 ms until the workers stop.
pub(super) async fn watch_cluster(
    shared: Arc<Shared>,
    watch: Arc<Mutex<ClusterWatch>>,
    started: Instant,
) {
    while !shared.stop.load(Ordering::Relaxed) {
        for (i, addr) in shared.nodes.iter().enumerate() {
            let ask = shared
                .http
                .get(format!("{}://{addr}/v1/cluster", shared.scheme))
                .timeout(Duration::from_millis(300))
                .send()
                .await;
            if let Ok(r) = ask {
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    let at = started.elapsed().as_secs_f64();
                    // By the answering node's id: after a churn fault a slot's address
                    // belongs to a new node.
                    let id = v["node_id"].as_u64().unwrap_or(i as u64 + 1);
                    watch.lock().expect("watch lock").see(id, at, &v);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
