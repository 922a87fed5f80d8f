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

pub mod firewall;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::checker::{check, CheckOptions, Verdict, DEFAULT_TTL_SLACK_MS};
use crate::history::{OpKind, Outcome};
use crate::{node_ip, TestCluster, Tuning};
pub use firewall::Firewall;
use workload::{Recorder, Shared, Worker};

/// A kind of fault, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// kill -9 and restart: the leader, a minority, or every node.
    Kill,
    /// SIGSTOP / SIGCONT: the leader or another node.
    Pause,
    /// iptables DROP rules: isolate the leader, split majority|minority, a bridge.
    Partition,
    /// One node's stamp clock runs ahead; it is made leader.
    Skew,
    /// A follower kept down until the others purged past it, then killed while it
    /// installs the snapshot it gets.
    Install,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 5] = [
        Self::Kill,
        Self::Pause,
        Self::Partition,
        Self::Skew,
        Self::Install,
    ];

    /// The name on the command line and in the summary.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Pause => "pause",
            Self::Partition => "partition",
            Self::Skew => "skew",
            Self::Install => "install",
        }
    }

    /// Parses `kill,pause,partition,skew,install`.
    pub fn parse_list(s: &str) -> Result<Vec<FaultKind>> {
        let mut kinds = BTreeSet::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match Self::ALL.into_iter().find(|k| k.name() == part) {
                Some(kind) => kinds.insert(kind),
                None => bail!("unknown fault {part:?} (kill, pause, partition, skew, install)"),
            };
        }
        Ok(kinds.into_iter().collect())
    }

    fn variants(self) -> &'static [Fault] {
        match self {
            Self::Kill => &[Fault::KillLeader, Fault::KillMinority, Fault::KillAll],
            Self::Pause => &[Fault::PauseLeader, Fault::PauseFollower],
            Self::Partition => &[Fault::IsolateLeader, Fault::SplitMajority, Fault::Bridge],
            Self::Skew => &[Fault::SkewedLeader],
            Self::Install => &[Fault::KillInInstall],
        }
    }
}

/// One fault the nemesis injects and undoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillLeader,
    KillMinority,
    KillAll,
    PauseLeader,
    PauseFollower,
    IsolateLeader,
    SplitMajority,
    Bridge,
    SkewedLeader,
    KillInInstall,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill-leader",
            Fault::KillMinority => "kill-minority",
            Fault::KillAll => "kill-all",
            Fault::PauseLeader => "pause-leader",
            Fault::PauseFollower => "pause-follower",
            Fault::IsolateLeader => "isolate-leader",
            Fault::SplitMajority => "split-majority",
            Fault::Bridge => "bridge",
            Fault::SkewedLeader => "skewed-leader",
            Fault::KillInInstall => "kill-in-install",
        }
    }
}

/// Steps of a snapshot install at which a node can be made to abort (`KV_CRASH_AT`, see
/// crates/kv-store/src/crash.rs), in the order a follower takes them.
const INSTALL_CRASH_POINTS: [&str; 5] = [
    "snapshot-received",
    "snapshot-installing",
    "purge-recorded",
    "purged",
    "snapshot-installed",
];

/// How long a healthy cluster may go without a leader: after healing, and before a fault
/// that needs one. Elections take one to two election timeouts (500-1000 ms); 15 s is
/// several elections lost in a row.
const LEADER_WITHIN: Duration = Duration::from_secs(15);
/// After healing, once a leader is back, terms are watched this long ...
const QUIET_WINDOW: Duration = Duration::from_secs(5);
/// ... and may rise at most this much in it: a node just healed or restarted may still
/// start an election of its own, but more is an election storm.
const MAX_QUIET_TERM_RISE: u64 = 2;
/// How long the other nodes may take to purge their logs past a follower that is down.
/// At the chaos tuning that is a few hundred entries, seconds of the workload.
const PURGE_WITHIN: Duration = Duration::from_secs(60);

/// The cluster failed to do what a correct cluster does under the fault at hand: elect a
/// leader, let a given node win an election, catch a node up, settle after healing. The
/// harness did its part; the run fails with this as a product failure.
#[derive(Debug)]
pub struct ProductFailure(pub String);

impl fmt::Display for ProductFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProductFailure {}

fn product(what: String) -> anyhow::Error {
    ProductFailure(what).into()
}

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

/// The nemesis's side of a run: the cluster, the firewall, and its random choices.
struct Nemesis {
    cluster: TestCluster,
    firewall: Option<Firewall>,
    rng: StdRng,
    skewed: Option<u64>,
    log: Vec<String>,
    counts: BTreeMap<&'static str, u64>,
    installs_interrupted: BTreeMap<&'static str, u64>,
    started: Instant,
}

impl Nemesis {
    fn ids(&self) -> Vec<u64> {
        (1..=self.cluster.nodes.len() as u64).collect()
    }

    /// The leader, waiting up to [`LEADER_WITHIN`] for one. Every fault starts from a
    /// cluster with a leader; none that long is a product failure.
    async fn leader(&self) -> Result<u64> {
        let deadline = Instant::now() + LEADER_WITHIN;
        loop {
            if let Some(l) = self.cluster.leader_now().await {
                return Ok(l);
            }
            if Instant::now() > deadline {
                return Err(product(format!(
                    "no leader within {LEADER_WITHIN:?} (responsive nodes {:?})",
                    self.cluster.responsive()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One of `ids` other than `not`, at random.
    fn other_than(&mut self, ids: &[u64], not: u64) -> u64 {
        let others: Vec<u64> = ids.iter().copied().filter(|id| *id != not).collect();
        *others.choose(&mut self.rng).expect("a cluster of 3 or 5")
    }

    /// Node `id`'s `/v1/cluster` number `field`, if it answers.
    async fn metric(&self, id: u64, field: &str) -> Option<u64> {
        match self.cluster.get_json(id, "/v1/cluster").await {
            Ok((200, v)) => v[field].as_u64(),
            _ => None,
        }
    }

    /// Keeps a follower down until every other node has purged its log past it, then
    /// restarts it to crash at a random step of the snapshot install it must get, then
    /// starts it normally and waits until it has caught up past the gap.
    async fn kill_in_install(&mut self, ids: &[u64]) -> Result<String> {
        let l = self.leader().await?;
        let target = self.other_than(ids, l);
        // The target may still be starting after an earlier fault restarted it.
        self.cluster
            .wait_serving(target)
            .await
            .map_err(|e| product(format!("n{target} does not answer: {e:#}")))?;
        let last = self
            .metric(target, "last_log_index")
            .await
            .with_context(|| format!("n{target} did not report its log"))?;
        self.cluster.kill(target);
        // Entries may reach the target between the question and the kill: a margin of
        // 50 entries covers them. Waiting for every other node (not only the leader)
        // means whoever leads next must send a snapshot too.
        let past = last + 50;
        let others: Vec<u64> = ids.iter().copied().filter(|id| *id != target).collect();
        let deadline = Instant::now() + PURGE_WITHIN;
        loop {
            let mut purged = vec![];
            for id in &others {
                purged.push((*id, self.metric(*id, "purged_index").await));
            }
            if purged.iter().all(|(_, p)| p.is_some_and(|p| p > past)) {
                break;
            }
            if Instant::now() > deadline {
                let commit = self.metric(l, "commit_index").await;
                return Err(product(format!(
                    "with n{target} down (log to {last}), the others did not purge past {past} within {PURGE_WITHIN:?}: purged {purged:?}, n{l}'s commit index {commit:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let point = *INSTALL_CRASH_POINTS
            .choose(&mut self.rng)
            .expect("crash points");
        let aborted = |text: &str| {
            text.matches(&format!("KV_CRASH_AT={point}: aborting here on purpose"))
                .count()
        };
        let before = aborted(&self.cluster.log_text(target)?);
        self.cluster
            .restart_to_crash_at(target, point)
            .await
            .map_err(|e| {
                product(format!(
                    "n{target}, behind the others' purged logs, never crashed at {point} of a snapshot install: {e:#}"
                ))
            })?;
        if aborted(&self.cluster.log_text(target)?) <= before {
            let text = self.cluster.log_text(target)?;
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            return Err(product(format!(
                "n{target} exited before reaching {point} of its snapshot install; its last log lines (newest first): {tail:?}"
            )));
        }
        *self.installs_interrupted.entry(point).or_insert(0) += 1;
        self.cluster.restart(target)?;
        // Caught up: it knows a leader and has applied past the entries it never had.
        let caught_up = self
            .cluster
            .poll(
                &format!("n{target} to catch up after a crash at {point}"),
                || async {
                    let (_, v) = match self.cluster.get_json(target, "/v1/cluster").await {
                        Ok(answer) => answer,
                        Err(_) => return Ok(false),
                    };
                    Ok(v["leader_id"].is_u64()
                        && v["applied_index"].as_u64().is_some_and(|a| a > past))
                },
            )
            .await;
        caught_up.map_err(|e| product(format!("{e:#}")))?;
        Ok(format!(
            "n{target} (log to {last}) down until the others purged past {past}, crashed at {point} of its snapshot install, restarted, caught up"
        ))
    }

    /// Waits until node `id` holds every entry leader `l` had committed when asked.
    async fn caught_up(&self, id: u64, l: u64) -> Result<()> {
        let Some(commit) = self.metric(l, "commit_index").await else {
            // The leader is gone already: the next round finds the new one.
            return Ok(());
        };
        let deadline = Instant::now() + crate::SETTLE;
        loop {
            let log = self.metric(id, "last_log_index").await;
            if log.is_some_and(|log| log >= commit) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(product(format!(
                    "n{id} did not catch up with leader n{l} within {:?}: its log ends at {log:?}, n{l} had committed {commit}",
                    crate::SETTLE
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// After healing: a leader within [`LEADER_WITHIN`], then terms that rise at most
    /// [`MAX_QUIET_TERM_RISE`] in a [`QUIET_WINDOW`] (the workers are still running).
    /// Returns what it saw and the term at the end.
    async fn check_liveness(&self) -> Result<(String, u64)> {
        let healed = Instant::now();
        let leader = self
            .leader()
            .await
            .map_err(|e| product(format!("after healing: {e:#}")))?;
        let took = healed.elapsed();
        let max_term = || async {
            let mut max = None;
            for id in self.cluster.responsive() {
                max = max.max(self.metric(id, "term").await);
            }
            max.unwrap_or(0)
        };
        let first = max_term().await;
        let window = Instant::now();
        let mut last = first;
        while window.elapsed() < QUIET_WINDOW {
            tokio::time::sleep(Duration::from_millis(250)).await;
            last = max_term().await;
            if last > first + MAX_QUIET_TERM_RISE {
                return Err(product(format!(
                    "terms kept climbing after healing: term {first} to {last} within {:.1} s of a leader (n{leader}) being found, more than {MAX_QUIET_TERM_RISE} allowed in a quiet {QUIET_WINDOW:?}",
                    window.elapsed().as_secs_f64()
                )));
            }
        }
        Ok((
            format!(
                "leader n{leader} {:.1} s after healing; terms {first} -> {last} in the next {QUIET_WINDOW:?}",
                took.as_secs_f64()
            ),
            last,
        ))
    }

    fn firewall(&mut self) -> Result<&mut Firewall> {
        self.firewall
            .as_mut()
            .ok_or_else(|| anyhow!("partition faults need the firewall"))
    }

    /// Cuts every node of `side_a` off from every node of `side_b` for `hold`, then heals.
    async fn partition(&mut self, side_a: &[u64], side_b: &[u64], hold: Duration) -> Result<()> {
        for a in side_a {
            for b in side_b {
                self.firewall()?.block(node_ip(*a), node_ip(*b))?;
            }
        }
        tokio::time::sleep(hold).await;
        self.firewall()?.heal()
    }

    /// Injects `fault`, holds it, undoes it. Returns a line for the log.
    async fn run_fault(&mut self, fault: Fault, hold: Duration) -> Result<String> {
        let ids = self.ids();
        let what = match fault {
            Fault::KillLeader => {
                let l = self.leader().await?;
                self.cluster.kill(l);
                tokio::time::sleep(hold).await;
                self.cluster.restart(l)?;
                format!("killed leader n{l}, restarted")
            }
            Fault::KillMinority => {
                let mut victims = ids.clone();
                victims.shuffle(&mut self.rng);
                victims.truncate((ids.len() - 1) / 2);
                for v in &victims {
                    self.cluster.kill(*v);
                }
                tokio::time::sleep(hold).await;
                for v in &victims {
                    self.cluster.restart(*v)?;
                }
                format!("killed {victims:?}, restarted")
            }
            Fault::KillAll => {
                for id in &ids {
                    self.cluster.kill(*id);
                }
                tokio::time::sleep(hold.min(Duration::from_secs(1))).await;
                for id in &ids {
                    self.cluster.restart(*id)?;
                }
                "killed every node, restarted all".to_string()
            }
            Fault::PauseLeader | Fault::PauseFollower => {
                let l = self.leader().await?;
                let target = if fault == Fault::PauseLeader {
                    l
                } else {
                    self.other_than(&ids, l)
                };
                self.cluster.pause(target)?;
                tokio::time::sleep(hold).await;
                self.cluster.resume(target)?;
                format!("paused n{target} (leader was n{l}), resumed")
            }
            Fault::IsolateLeader => {
                let l = self.leader().await?;
                let others: Vec<u64> = ids.iter().copied().filter(|id| *id != l).collect();
                self.partition(&[l], &others, hold).await?;
                format!("isolated leader n{l}, healed")
            }
            Fault::SplitMajority => {
                let mut order = ids.clone();
                order.shuffle(&mut self.rng);
                let (minority, majority) = order.split_at((ids.len() - 1) / 2);
                self.partition(minority, majority, hold).await?;
                format!("split {minority:?} | {majority:?}, healed")
            }
            Fault::Bridge => {
                let mut order = ids.clone();
                order.shuffle(&mut self.rng);
                let half = ids.len() / 2;
                let (left, rest) = order.split_at(half);
                let (bridge, right) = rest.split_at(1);
                self.partition(left, right, hold).await?;
                format!("bridge {left:?} | {bridge:?} | {right:?} (the middle sees both), healed")
            }
            Fault::SkewedLeader => {
                let target = self.skewed.context("skew needs a skewed node")?;
                let mut pauses = vec![];
                for _ in 0..12 {
                    let l = self.leader().await?;
                    if l == target {
                        break;
                    }
                    // Raft elects only a node whose log is as long as a majority's: a
                    // skewed node still catching up (after a restart, by a snapshot that
                    // each leader change starts over) cannot win, however often leaders
                    // are paused. Let it catch up under a stable leader first; a node that
                    // cannot is a product failure of its own.
                    self.caught_up(target, l).await?;
                    // Pause the leader until someone else leads; retry until it is the
                    // skewed node.
                    self.cluster.pause(l)?;
                    pauses.push(l);
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while Instant::now() < deadline {
                        if self.cluster.leader_now().await.is_some_and(|n| n != l) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    self.cluster.resume(l)?;
                }
                let now = self.cluster.leader_now().await;
                if now != Some(target) {
                    // Each paused leader was replaced by another node: every other node
                    // could win an election, the skewed one never did.
                    return Err(product(format!(
                        "skewed n{target} never won an election: paused the leaders {pauses:?} one after another, and the leader is now {now:?}"
                    )));
                }
                tokio::time::sleep(hold).await;
                format!("skewed n{target} leads (paused {pauses:?} to get there)")
            }
            Fault::KillInInstall => self.kill_in_install(&ids).await?,
        };
        Ok(what)
    }

    /// Undoes whatever a failed fault left behind: heal, resume, restart.
    fn heal_all(&mut self) -> Result<()> {
        if let Some(fw) = self.firewall.as_mut() {
            fw.heal()?;
        }
        for id in self.ids() {
            if self.cluster.is_paused(id) {
                self.cluster.resume(id)?;
            }
            if !self.cluster.live().contains(&id) {
                self.cluster.restart(id)?;
            }
        }
        Ok(())
    }

    async fn schedule(&mut self, config: &ChaosConfig) -> Result<()> {
        let mut first_round: Vec<Fault> = config
            .faults
            .iter()
            .flat_map(|k| k.variants().iter().copied())
            .collect();
        first_round.reverse();
        let all = first_round.clone();
        while let Some(fault) = first_round.pop().or_else(|| {
            (self.started.elapsed() < config.duration)
                .then(|| all.choose(&mut self.rng).copied())
                .flatten()
        }) {
            let hold = Duration::from_millis(self.rng.gen_range(2000..4500));
            let at = self.started.elapsed().as_secs_f64();
            let what = self.run_fault(fault, hold).await;
            let what = match what {
                Ok(w) => w,
                Err(e) => {
                    self.heal_all()?;
                    return Err(e.context(format!("injecting {}", fault.name())));
                }
            };
            *self.counts.entry(fault.name()).or_insert(0) += 1;
            // The install fault lasts as long as purging and catching up take.
            let held = match fault {
                Fault::KillInInstall => String::new(),
                _ => format!(" (held {:.1} s)", hold.as_secs_f64()),
            };
            self.log
                .push(format!("{at:6.1} s {:<15} {what}{held}", fault.name()));
            // Let the cluster recover and serve a while before the next fault.
            tokio::time::sleep(Duration::from_millis(self.rng.gen_range(1500..3000))).await;
        }
        Ok(())
    }
}

/// Counters of `/v1/cluster` the suite reads (see crates/kv-server/src/raft_network.rs).
const ELECTIONS: &str = "raft_elections_started";
const LARGE_APPENDS: &str = "raft_large_appends_sent";
const APPEND_TIMEOUTS: &str = "raft_append_timeouts";
const MISMATCHED: &str = "raft_mismatched_answers";
const COUNTERS: [&str; 4] = [ELECTIONS, LARGE_APPENDS, APPEND_TIMEOUTS, MISMATCHED];

/// A counter of a node whose process restarts (and starts counting from 0 again).
#[derive(Default, Clone, Copy)]
struct Counter {
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
struct ClusterWatch {
    /// (term, leader) pairs seen.
    leaders: BTreeSet<(u64, u64)>,
    /// Per node: its last term, and (seconds into the run, new term) at each change.
    terms: BTreeMap<u64, (u64, Vec<(f64, u64)>)>,
    counters: BTreeMap<u64, BTreeMap<&'static str, Counter>>,
}

impl ClusterWatch {
    fn see(&mut self, id: u64, at: f64, v: &serde_json::Value) {
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

    fn totals(&self) -> BTreeMap<u64, BTreeMap<&'static str, u64>> {
        self.counters
            .iter()
            .map(|(id, c)| (*id, c.iter().map(|(n, c)| (*n, c.total())).collect()))
            .collect()
    }

    /// How the highest term any node reported rose over the run.
    fn term_stats(&self, elapsed: Duration) -> TermStats {
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
async fn watch_cluster(shared: Arc<Shared>, watch: Arc<Mutex<ClusterWatch>>, started: Instant) {
    while !shared.stop.load(Ordering::Relaxed) {
        for (i, addr) in shared.nodes.iter().enumerate() {
            let ask = shared
                .http
                .get(format!("http://{addr}/v1/cluster"))
                .timeout(Duration::from_millis(300))
                .send()
                .await;
            if let Ok(r) = ask {
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    let at = started.elapsed().as_secs_f64();
                    watch.lock().expect("watch lock").see(i as u64 + 1, at, &v);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until every node reports the same applied index and digest; the error says
/// what was seen last.
async fn converged_digests(
    cluster: &TestCluster,
) -> std::result::Result<Vec<(u64, u64, String)>, String> {
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = String::new();
    loop {
        let mut seen = vec![];
        for id in cluster.live() {
            match cluster.get_json(id, "/v1/admin/digest").await {
                Ok((200, v)) => seen.push((
                    id,
                    v["applied_index"].as_u64().unwrap_or(0),
                    v["digest"].as_str().unwrap_or("").to_string(),
                )),
                other => last = format!("n{id}: {other:?}"),
            }
        }
        if seen.len() == cluster.nodes.len() {
            let same_index = seen.iter().all(|s| s.1 == seen[0].1);
            let same_digest = seen.iter().all(|s| s.2 == seen[0].2);
            if same_index && same_digest {
                return Ok(seen);
            }
            last = format!("{seen:?}");
        }
        if Instant::now() > deadline {
            return Err(format!(
                "replicas did not converge to one digest at one applied index within 40 s: {last}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Lists the run's keys on every node (local reads, paged) and reports any entry whose
/// value was written with a TTL whose window (return + ttl + slack) has closed: an
/// expired key visible through the listing path.
async fn expired_but_listed(
    cluster: &TestCluster,
    shared: &Shared,
    ops: &[crate::history::Op],
    slack_ms: u64,
) -> Result<Vec<String>> {
    let writes: std::collections::HashMap<(&str, &str), &crate::history::Op> = ops
        .iter()
        .filter(|o| o.op != OpKind::Get)
        .filter_map(|o| Some(((o.key.as_str(), o.value.as_deref()?), o)))
        .collect();
    let mut found = vec![];
    for id in cluster.live() {
        let mut after: Option<String> = None;
        loop {
            let mut path = format!(
                // Pages of 100: a page may hold large values of up to 1 MiB each.
                "/v1/kv?prefix={}/&limit=100&consistency=stale",
                shared.run_id
            );
            if let Some(a) = &after {
                path.push_str(&format!("&after={a}"));
            }
            let listed_at = shared.recorder.now();
            let (status, page) = cluster.get_json(id, &path).await?;
            if status != 200 {
                bail!("listing on n{id}: {status} {page}");
            }
            for item in page["items"].as_array().into_iter().flatten() {
                let key = item["key"].as_str().unwrap_or("");
                let value = workload::history_value(item["value"].as_str().unwrap_or(""));
                let Some(w) = writes.get(&(key, value.as_str())) else {
                    found.push(format!(
                        "n{id} lists {key} = {value:?}, which no write wrote"
                    ));
                    continue;
                };
                if let (Some(ttl), Some(ret)) = (w.ttl_ms.filter(|t| *t > 0), w.ret) {
                    if listed_at > ret + (ttl + slack_ms) * 1_000_000 {
                        found.push(format!(
                            "n{id} lists {key} = {value:?} after its TTL ({ttl} ms) ran out"
                        ));
                    }
                }
            }
            match page["next"].as_str() {
                Some(next) => after = Some(next.to_string()),
                None => break,
            }
        }
    }
    Ok(found)
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
        // openraft 0.9 draws a node's election timeout once per process
        // (engine/engine_config.rs): a skewed node that drew the longest never times out
        // first when the leader is paused. The shortest range lets it win once its log
        // is current, which the fault waits for.
        node_election_ms: skewed.map(|id| (id, (300, 500))).into_iter().collect(),
        own_addresses: true,
        disk_mib: None,
    };
    let cluster = TestCluster::start_tuned(config.nodes, tuning).await?;
    let run_id = format!("chaos-{}-{}", config.seed, std::process::id());
    let shared = Arc::new(Shared::new(
        Recorder::create(&config.history)?,
        cluster.nodes.iter().map(|n| n.client_addr).collect(),
        run_id,
        config.ttl_slack_ms(),
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
        for key in &keys {
            let mut answered = false;
            for _ in 0..5 {
                if shared
                    .final_read(final_client, leader as usize - 1, key)
                    .await?
                {
                    answered = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if !answered {
                violations.push(format!("final read of {key} got no answer"));
            }
        }
        match converged_digests(cluster).await {
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
