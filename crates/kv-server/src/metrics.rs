//! What `GET /metrics` shows, in Prometheus' text format.
//!
//! Events (requests, appends, fsyncs, applies, snapshots, batches) are recorded where
//! they happen through the `metrics` facade and rendered by its Prometheus exporter.
//! Levels (raft indexes, each follower's lag, stored bytes) are read when scraped, so a
//! follower that left or a leader that stepped down leaves no stale series behind.

use std::fmt::Write;
use std::sync::OnceLock;
use std::time::Duration;

use kv_store::typ::RaftMetrics;
use kv_store::StateReader;
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Upper bounds of the latency histograms, in seconds: 100 µs (an fsync on a fast
/// disk) to 10 s (a write timing out).
const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Upper bounds of the proposer's batch sizes, in writes (`limits.max_batch` is 512).
const WRITES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
/// Expiry-index entries counted at most per scrape, so a scrape stays cheap.
pub const DUE_CAP: usize = 10_000;
/// How often histograms are folded, so they hold no more than that interval's samples
/// when nobody scrapes.
pub const UPKEEP: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("quorumkv_proposer_batch_writes".into()),
                    WRITES,
                )
            })
            .expect("bucket lists are not empty")
            .install_recorder()
            .unwrap_or_else(|e| {
                // Another recorder is installed (a test harness): render nothing of ours.
                tracing::warn!(error = %e, "metrics recorder not installed");
                PrometheusBuilder::new().build_recorder().handle()
            });
        describe();
        handle
    })
}

fn describe() {
    let s = Unit::Seconds;
    describe_histogram!(
        "quorumkv_log_fsync_duration_seconds",
        s,
        "fdatasync of a raft log append"
    );
    describe_histogram!(
        "quorumkv_log_append_duration_seconds",
        s,
        "a raft log append: encoding, write and fdatasync"
    );
    describe_counter!(
        "quorumkv_log_appended_bytes_total",
        Unit::Bytes,
        "bytes appended to the raft log"
    );
    describe_histogram!(
        "quorumkv_apply_duration_seconds",
        s,
        "one apply call of the state machine"
    );
    describe_counter!("quorumkv_applied_entries_total", "log entries applied");
    describe_counter!("quorumkv_snapshot_builds_total", "snapshots built");
    describe_histogram!(
        "quorumkv_snapshot_build_duration_seconds",
        s,
        "building a snapshot: capture and making it durable"
    );
    describe_gauge!(
        "quorumkv_snapshot_size_bytes",
        Unit::Bytes,
        "size of the last snapshot built"
    );
    describe_counter!(
        "quorumkv_snapshot_installs_total",
        "snapshots installed from the leader"
    );
    describe_histogram!(
        "quorumkv_snapshot_install_duration_seconds",
        s,
        "installing a snapshot"
    );
    describe_histogram!(
        "quorumkv_proposer_batch_writes",
        "writes in one proposed batch (one log entry)"
    );
    describe_histogram!(
        "quorumkv_proposer_commit_duration_seconds",
        s,
        "from proposing a batch to its answer (commit and apply)"
    );
    describe_counter!(
        "quorumkv_http_requests_total",
        "client API requests answered, by route, method and status"
    );
    describe_histogram!(
        "quorumkv_http_request_duration_seconds",
        s,
        "client API requests from head to answer, by route and method"
    );
    describe_counter!(
        "quorumkv_http_forwarded_requests_total",
        "requests forwarded to the leader, by outcome"
    );
}

/// Folds histogram samples until `stop` fires.
pub async fn upkeep(stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(UPKEEP);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => handle().run_upkeep(),
        }
    }
}

/// Appends one metric family to `out`.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    if samples.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

fn one(value: impl Into<f64>) -> Vec<(String, f64)> {
    vec![(String::new(), value.into())]
}

/// What the node is doing now, read at scrape time.
pub struct Levels<'a> {
    pub raft: &'a RaftMetrics,
    pub commit_index: Option<u64>,
    pub reader: &'a StateReader,
    /// The state machine's clock, for what is due to expire.
    pub now_ms: u64,
    /// Snapshot bytes received of an install in progress, if one is.
    pub snapshot_receiving: Option<u64>,
}

/// The recorded metrics and the levels, as one Prometheus text document.
pub fn render(levels: &Levels<'_>) -> String {
    let mut out = handle().render();
    let m = levels.raft;
    let index = |i: Option<u64>| one(i.unwrap_or(0) as f64);
    let g = |out: &mut String, name: &str, help: &str, samples: Vec<(String, f64)>| {
        family(out, name, "gauge", help, &samples)
    };
    g(
        &mut out,
        "quorumkv_raft_term",
        "current raft term",
        one(m.current_term as f64),
    );
    let leader = m.current_leader.map(|l| one(l as f64)).unwrap_or_default();
    g(
        &mut out,
        "quorumkv_raft_leader_id",
        "the leader's node id, absent when none is known",
        leader,
    );
    g(
        &mut out,
        "quorumkv_raft_is_leader",
        "1 on the leader, 0 elsewhere",
        one(u8::from(m.current_leader == Some(m.id))),
    );
    g(
        &mut out,
        "quorumkv_raft_commit_index",
        "highest log index known committed",
        index(levels.commit_index),
    );
    g(
        &mut out,
        "quorumkv_raft_applied_index",
        "highest log index applied",
        index(m.last_applied.map(|l| l.index)),
    );
    g(
        &mut out,
        "quorumkv_raft_last_log_index",
        "highest log index stored",
        index(m.last_log_index),
    );
    g(
        &mut out,
        "quorumkv_raft_snapshot_index",
        "log index of the last snapshot",
        index(m.snapshot.map(|l| l.index)),
    );
    g(
        &mut out,
        "quorumkv_raft_purged_index",
        "log index purged up to",
        index(m.purged.map(|l| l.index)),
    );
    let membership = m.membership_config.membership();
    g(
        &mut out,
        "quorumkv_raft_voters",
        "voters in the membership",
        one(membership.voter_ids().count() as f64),
    );
    g(
        &mut out,
        "quorumkv_raft_learners",
        "learners in the membership",
        one(membership.learner_ids().count() as f64),
    );
    let last = m.last_log_index.unwrap_or(0);
    let lag: Vec<(String, f64)> = m
        .replication
        .iter()
        .flatten()
        .filter(|(id, _)| **id != m.id)
        .map(|(id, matched)| {
            let matched = matched.map_or(0, |l| l.index);
            (
                format!("{{follower=\"{id}\"}}"),
                last.saturating_sub(matched) as f64,
            )
        })
        .collect();
    g(
        &mut out,
        "quorumkv_raft_follower_lag_entries",
        "log entries the leader has that a follower has not acknowledged (on the leader)",
        lag,
    );
    let ack = m
        .millis_since_quorum_ack
        .map(|ms| one(ms as f64 / 1000.0))
        .unwrap_or_default();
    g(
        &mut out,
        "quorumkv_raft_quorum_ack_age_seconds",
        "time since a quorum last acknowledged the leader (on the leader)",
        ack,
    );
    let receiving = levels
        .snapshot_receiving
        .map(|b| one(b as f64))
        .unwrap_or_default();
    g(
        &mut out,
        "quorumkv_snapshot_receiving_bytes",
        "bytes received of a snapshot being installed, absent when none is",
        receiving,
    );
    let counters = [
        (
            "quorumkv_raft_elections_started_total",
            "elections this node started",
            crate::raft_network::elections_started(),
        ),
        (
            "quorumkv_raft_append_timeouts_total",
            "AppendEntries that timed out",
            crate::raft_network::append_timeouts(),
        ),
        (
            "quorumkv_raft_large_appends_sent_total",
            "AppendEntries sent at their size cap",
            crate::raft_network::large_appends_sent(),
        ),
        (
            "quorumkv_raft_mismatched_answers_total",
            "raft answers that matched no request",
            crate::raft_network::mismatched_answers(),
        ),
    ];
    for (name, help, value) in counters {
        family(&mut out, name, "counter", help, &one(value as f64));
    }
    let r = levels.reader;
    g(
        &mut out,
        "quorumkv_stored_bytes",
        "key and value bytes stored (what limits.max_data_bytes bounds)",
        one(r.data_bytes() as f64),
    );
    if let Ok(keys) = r.estimated_keys() {
        g(
            &mut out,
            "quorumkv_keys_estimated",
            "stored entries, as RocksDB estimates them",
            one(keys as f64),
        );
    }
    g(
        &mut out,
        "quorumkv_records_stored",
        "idempotency records, sessions and session answers (what limits.max_records bounds)",
        one(r.record_count() as f64),
    );
    g(
        &mut out,
        "quorumkv_prefix_deletes_pending",
        "prefix deletes whose keys are not all purged",
        one(r.pending_purges() as f64),
    );
    if let Ok(due) = r.due_count(levels.now_ms, DUE_CAP) {
        g(
            &mut out,
            "quorumkv_expiry_due_entries",
            "keys, records and sessions past their expiry and not yet removed (counted up to 10000)",
            one(due as f64),
        );
    }
    g(
        &mut out,
        "quorumkv_tokens",
        "access tokens",
        one(r.tokens().len() as f64),
    );
    out
}
