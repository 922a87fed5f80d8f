//! The nemesis: the faults a run injects, how each is injected and undone, and the
//! liveness a healed cluster must show.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use super::firewall::Firewall;
use super::ChaosConfig;
use crate::TestCluster;

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
    /// Membership changes: a node replaced by a new one on an empty disk (a dead
    /// follower, with the leader killed meanwhile at random, or the leader itself,
    /// removed while it leads), and leadership handed to another voter.
    Churn,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 6] = [
        Self::Kill,
        Self::Pause,
        Self::Partition,
        Self::Skew,
        Self::Install,
        Self::Churn,
    ];

    /// The name on the command line and in the summary.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Pause => "pause",
            Self::Partition => "partition",
            Self::Skew => "skew",
            Self::Install => "install",
            Self::Churn => "churn",
        }
    }

    /// Parses `kill,pause,partition,skew,install,churn`.
    pub fn parse_list(s: &str) -> Result<Vec<FaultKind>> {
        let mut kinds = BTreeSet::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match Self::ALL.into_iter().find(|k| k.name() == part) {
                Some(kind) => kinds.insert(kind),
                None => {
                    bail!("unknown fault {part:?} (kill, pause, partition, skew, install, churn)")
                }
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
            Self::Churn => &[
                Fault::ReplaceFollower,
                Fault::ReplaceLeader,
                Fault::MoveLeader,
            ],
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
    ReplaceFollower,
    ReplaceLeader,
    MoveLeader,
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
            Fault::ReplaceFollower => "replace-follower",
            Fault::ReplaceLeader => "replace-leader",
            Fault::MoveLeader => "move-leader",
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
pub(super) const MAX_QUIET_TERM_RISE: u64 = 2;
/// How long a membership change may take to be answered, retries included, and a new
/// node to catch up and be promoted.
const CHANGE_WITHIN: Duration = Duration::from_secs(60);
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

/// The nemesis's side of a run: the cluster, the firewall, and its random choices.
pub(super) struct Nemesis {
    pub(super) cluster: TestCluster,
    pub(super) firewall: Option<Firewall>,
    pub(super) rng: StdRng,
    pub(super) skewed: Option<u64>,
    pub(super) log: Vec<String>,
    pub(super) counts: BTreeMap<&'static str, u64>,
    pub(super) installs_interrupted: BTreeMap<&'static str, u64>,
    pub(super) started: Instant,
    /// The members, one per slot (a slot's addresses, which the workers and firewall
    /// rules name, pass to the node that replaces its member).
    pub(super) members: Vec<u64>,
}

impl Nemesis {
    fn ids(&self) -> Vec<u64> {
        self.members.clone()
    }

    fn ipv4(&self, id: u64) -> Result<std::net::Ipv4Addr> {
        match self.cluster.ip(id) {
            std::net::IpAddr::V4(ip) => Ok(ip),
            other => bail!("n{id} listens on {other}, not IPv4"),
        }
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
    pub(super) async fn check_liveness(&self) -> Result<(String, u64)> {
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
                let (a, b) = (self.ipv4(*a)?, self.ipv4(*b)?);
                self.firewall()?.block(a, b)?;
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
            Fault::ReplaceFollower => {
                let l = self.leader().await?;
                let candidates: Vec<u64> = ids
                    .iter()
                    .copied()
                    .filter(|id| *id != l && Some(*id) != self.skewed)
                    .collect();
                let old = *candidates.choose(&mut self.rng).context("a follower")?;
                let kill_leader = self.rng.gen_bool(0.5);
                self.replace(old, false, kill_leader.then_some(hold))
                    .await?
            }
            Fault::ReplaceLeader => {
                let mut l = self.leader().await?;
                let mut moved = String::new();
                if Some(l) == self.skewed {
                    // The skew fault needs its node: hand its leadership on first.
                    let (line, to) = self.move_leader(&ids).await?;
                    moved = format!("{line}, then ");
                    l = to;
                }
                let line = self.replace(l, true, None).await?;
                format!("{moved}{line}")
            }
            Fault::MoveLeader => self.move_leader(&ids).await?.0,
        };
        Ok(what)
    }

    /// An admin request to the members in turn until one answers other than `503
    /// no_leader|unavailable` or `504` (a change that timed out goes on; the caller's
    /// checks see where it got to).
    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value)> {
        let deadline = Instant::now() + CHANGE_WITHIN;
        let mut turn = 0usize;
        loop {
            let ids: Vec<u64> = self
                .cluster
                .responsive()
                .into_iter()
                .filter(|id| self.members.contains(id))
                .collect();
            let last = match ids.get(turn % ids.len().max(1)) {
                None => "no member is running".to_string(),
                Some(id) => {
                    let mut request = self
                        .cluster
                        .http
                        .request(method.clone(), self.cluster.url(*id, path));
                    if let Some(body) = &body {
                        request = request
                            .header("content-type", "application/json")
                            .body(body.to_string());
                    }
                    match request.send().await {
                        Ok(r) => {
                            let (status, v) = TestCluster::json(r).await?;
                            let code = v["error"]["code"].as_str().unwrap_or("");
                            let retry = status == 504
                                || (status == 503 && matches!(code, "no_leader" | "unavailable"));
                            if !retry {
                                return Ok((status, v));
                            }
                            format!("n{id}: {status} {v}")
                        }
                        Err(e) => format!("n{id}: {e}"),
                    }
                }
            };
            turn += 1;
            if Instant::now() > deadline {
                return Err(product(format!(
                    "{method} {path} got no final answer within {CHANGE_WITHIN:?}; last: {last}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The voters and whether the configuration is joint, as the leader reports them.
    async fn voters(&self) -> Result<(BTreeSet<u64>, bool)> {
        let (status, v) = self
            .admin(reqwest::Method::GET, "/v1/admin/members", None)
            .await?;
        if status != 200 {
            return Err(product(format!("listing the members: {status} {v}")));
        }
        let voters = v["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["voter"] == true)
            .filter_map(|m| m["id"].as_u64())
            .collect();
        Ok((voters, v["joint"] == true))
    }

    /// Replaces member `old` by a new node (a new id, an empty disk) on `old`'s
    /// addresses, so the slot's workers and firewall rules go on naming it. A follower
    /// dies with its disk first and is then removed; a leader is removed while it leads
    /// (the others elect another) and then dies. With `kill_leader`, the leader is
    /// killed for that long while the new node catches up. Every step retries until
    /// its answer is final; the change must end in a plain configuration of the members.
    async fn replace(
        &mut self,
        old: u64,
        leading: bool,
        kill_leader: Option<Duration>,
    ) -> Result<String> {
        use reqwest::Method;
        let client_addr = self.cluster.client_addr(old);
        let raft_addr = self.cluster.nodes[(old - 1) as usize].raft_addr;
        if !leading {
            self.cluster.kill(old);
        }
        let path = format!("/v1/admin/members/{old}");
        let (status, v) = self.admin(Method::DELETE, &path, None).await?;
        // `node_not_found`: an attempt that timed out went through.
        if !(status == 200 || (status == 404 && v["error"]["code"] == "node_not_found")) {
            return Err(product(format!("removing n{old}: {status} {v}")));
        }
        if leading {
            let deadline = Instant::now() + LEADER_WITHIN;
            loop {
                match self.cluster.leader_now().await {
                    Some(l) if l != old => break,
                    _ if Instant::now() > deadline => {
                        return Err(product(format!(
                            "no other leader within {LEADER_WITHIN:?} of removing leader n{old}"
                        )))
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            self.cluster.kill(old);
        }
        std::fs::remove_dir_all(self.cluster.data_dir(old)?)?;
        let new = self.cluster.nodes.len() as u64 + 1;
        let body = serde_json::json!({
            "client_addr": client_addr.to_string(),
            "raft_addr": raft_addr.to_string(),
            "id": new,
        });
        let (status, v) = self
            .admin(Method::POST, "/v1/admin/members", Some(body))
            .await?;
        if status != 201 {
            // `node_id_used`: an attempt that timed out went through.
            let listed = self.admin(Method::GET, "/v1/admin/members", None).await?.1;
            let added = listed["members"]
                .as_array()
                .is_some_and(|ms| ms.iter().any(|m| m["id"] == new));
            if !added {
                return Err(product(format!("adding n{new}: {status} {v}")));
            }
        }
        let id = self.cluster.add_node_at(client_addr, raft_addr).await?;
        ensure!(
            id == new,
            "the harness numbered the new node n{id}, not n{new}"
        );
        let mut killed = String::new();
        if let Some(hold) = kill_leader {
            let l = self.leader().await?;
            self.cluster.kill(l);
            tokio::time::sleep(hold).await;
            self.cluster.restart(l)?;
            killed = format!(
                ", leader n{l} killed for {:.1} s while n{new} caught up",
                hold.as_secs_f64()
            );
        }
        let path = format!("/v1/admin/members/{new}/promote");
        let deadline = Instant::now() + CHANGE_WITHIN;
        loop {
            let (status, v) = self.admin(Method::POST, &path, None).await?;
            let code = v["error"]["code"].as_str().unwrap_or("");
            match (status, code) {
                (200, _) => break,
                // A promotion that timed out went through.
                (409, "membership_refused")
                    if v["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("voter already")) =>
                {
                    break
                }
                (409, "not_caught_up" | "membership_change_in_progress")
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                _ => return Err(product(format!("promoting n{new}: {status} {v}"))),
            }
        }
        let slot = self
            .members
            .iter()
            .position(|m| *m == old)
            .context("the replaced node's slot")?;
        self.members[slot] = new;
        let want: BTreeSet<u64> = self.members.iter().copied().collect();
        let deadline = Instant::now() + LEADER_WITHIN;
        loop {
            let (voters, joint) = self.voters().await?;
            if voters == want && !joint {
                break;
            }
            if Instant::now() > deadline {
                return Err(product(format!(
                    "after replacing n{old} by n{new}: voters {voters:?} (joint: {joint}), not {want:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(format!(
            "replaced n{old} ({}) by n{new} on an empty disk at its addresses{killed}",
            if leading {
                "removed while leading"
            } else {
                "killed, disk wiped, removed"
            }
        ))
    }

    /// Hands leadership to another member (`POST /v1/admin/leader`); a target still
    /// catching up after an earlier fault is asked again. Returns the line and the new
    /// leader.
    async fn move_leader(&mut self, ids: &[u64]) -> Result<(String, u64)> {
        let l = self.leader().await?;
        let target = self.other_than(ids, l);
        let deadline = Instant::now() + CHANGE_WITHIN;
        let started = Instant::now();
        loop {
            let body = serde_json::json!({ "to": target });
            let (status, v) = self
                .admin(reqwest::Method::POST, "/v1/admin/leader", Some(body))
                .await?;
            match (status, v["error"]["code"].as_str()) {
                (200, _) if v["leader_id"] == target => break,
                (409, Some("not_caught_up" | "membership_change_in_progress"))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                _ => {
                    return Err(product(format!(
                        "handing leadership from n{l} to n{target}: {status} {v}"
                    )))
                }
            }
        }
        Ok((
            format!(
                "moved leadership n{l} -> n{target} ({} ms)",
                started.elapsed().as_millis()
            ),
            target,
        ))
    }

    /// Undoes whatever a failed fault left behind: heal, resume, restart.
    pub(super) fn heal_all(&mut self) -> Result<()> {
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

    pub(super) async fn schedule(&mut self, config: &ChaosConfig) -> Result<()> {
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
            // The install fault lasts as long as purging and catching up take; membership
            // changes as long as their steps, and a replacement says how long it killed
            // the leader.
            let held = match fault {
                Fault::KillInInstall
                | Fault::ReplaceFollower
                | Fault::ReplaceLeader
                | Fault::MoveLeader => String::new(),
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
