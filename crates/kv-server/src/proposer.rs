//! The write path: batches concurrent client writes into one raft entry.
//!
//! openraft 0.9 appends one entry per fsync, so one proposer task drains a channel of
//! pending writes, proposes them as one `Command::Batch`, and hands each caller its own
//! result. While a batch is in flight, new writes queue up and form the next batch, so
//! the batch size grows with the load. No key changes twice in one batch (two writes to
//! one key never share it, and a `DeletePrefix` or `Expire`, which names no key, goes
//! alone): every change of a key gets its own revision (the log index), which
//! compare-and-swap relies on.
//!
//! One batch is in flight at a time, proposed on the proposer task itself: openraft
//! 0.9's core fsyncs each proposal as its own append, one at a time, so a second batch
//! in flight only splits the queue into more fsyncs, and a task per batch would be one
//! more wake-up per write (the measurements are in docs/performance.md).

use std::collections::VecDeque;
use std::time::Duration;

use kv_core::{BatchKeys, Command, OpResult, Request, Response};
use kv_store::typ::{NodeId, NodeInfo, Raft, TypeConfig};
use openraft::error::{ClientWriteError, Fatal};
use openraft::raft::ClientWriteResult;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::config::LimitsConfig;
use crate::disk::{DiskFull, DiskGuard};
use crate::quiet::Quiet;

/// Writes waiting for a batch before new ones wait to be queued.
const QUEUED_WRITES: usize = 4096;
/// Most bytes of values in one batch, so one raft entry stays well under the RPC limit.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Why a write did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// This node is not the leader; nothing was applied. The leader, if known.
    #[error("not the leader")]
    NotLeader(Option<(NodeId, NodeInfo)>),
    /// The write was handed to raft but its commit was not seen, because it timed out
    /// or raft stopped: it may or may not have been applied.
    #[error("the write's outcome is unknown")]
    OutcomeUnknown,
    /// The node is shutting down or raft stopped before the write was handed to it:
    /// nothing was applied.
    #[error("raft is not running: {0}")]
    Stopped(String),
    /// The write would grow the data while the disk is short of its reserve; nothing was
    /// proposed.
    #[error("{0}")]
    DiskFull(#[from] DiskFull),
    /// The queue of writes waiting for a batch stayed full for the whole wait; nothing
    /// was proposed.
    #[error("the write queue stayed full for {0:?}; nothing was applied")]
    Overloaded(Duration),
}

struct Pending {
    command: Command,
    reply: oneshot::Sender<Result<OpResult, WriteError>>,
}

/// Roughly how many bytes a command adds to a raft entry.
fn size(command: &Command) -> usize {
    match command {
        Command::Set { key, value, .. } => key.len() + value.len(),
        Command::Delete { key, .. } => key.len(),
        Command::DeletePrefix { prefix } => prefix.len(),
        Command::Idempotent { id, command, .. } => id.len() + 32 + size(command),
        Command::Expire { .. } | Command::Purge | Command::OpenSession { .. } => 32,
        Command::WithinQuota { command, .. } | Command::WithinLimits { command, .. } => {
            16 + size(command)
        }
        Command::Session { command, .. } => 48 + size(command),
        Command::Authorized { command, .. } => 8 + size(command),
        Command::PutToken { token, .. } => {
            64 + token.name.len()
                + token
                    .grants
                    .iter()
                    .map(|g| g.prefix.len() + 1)
                    .sum::<usize>()
        }
        Command::RevokeToken { .. } => 16,
        Command::Batch(commands) => commands.iter().map(size).sum(),
    }
}

/// Handle for submitting writes; cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    disk: DiskGuard,
    tx: mpsc::Sender<Pending>,
    /// How long a write may wait for a place in the full queue.
    queue_wait: Duration,
}

impl Proposer {
    /// Starts the proposer task on `tracker`; it stops when `cancel` fires.
    pub fn start(
        raft: Raft,
        clock: Clock,
        disk: DiskGuard,
        limits: &LimitsConfig,
        quiet: Quiet,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        let write_timeout = Duration::from_millis(limits.write_timeout_ms);
        // Bounded: under overload, writers wait here (each may hold a value of up to
        // 1 MiB) instead of queueing without limit.
        let (tx, rx) = mpsc::channel(QUEUED_WRITES);
        let batcher = Batcher {
            raft,
            clock,
            max_batch: limits.max_batch,
            write_timeout,
            quiet,
            rx,
            carry: VecDeque::new(),
        };
        tracker.spawn(batcher.run(cancel));
        Self {
            disk,
            tx,
            queue_wait: write_timeout,
        }
    }

    /// Proposes one write and waits for its result.
    pub async fn write(&self, command: Command) -> Result<OpResult, WriteError> {
        self.disk.admits(&command)?;
        let command = self.disk.within_limits(command);
        let (reply, rx) = oneshot::channel();
        enqueue(&self.tx, Pending { command, reply }, self.queue_wait).await?;
        // A dropped reply means the batch task died mid-flight: the outcome is unknown.
        rx.await.unwrap_or(Err(WriteError::OutcomeUnknown))
    }
}

/// Queues a write, waiting at most `wait` for a place. A write that gets none was never
/// queued (a dropped `send` delivers nothing), so it is refused as not applied.
async fn enqueue<T>(tx: &mpsc::Sender<T>, item: T, wait: Duration) -> Result<(), WriteError> {
    match tokio::time::timeout(wait, tx.send(item)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(WriteError::Stopped("the proposer has stopped".into())),
        Err(_) => Err(WriteError::Overloaded(wait)),
    }
}

struct Batcher {
    raft: Raft,
    clock: Clock,
    max_batch: usize,
    write_timeout: Duration,
    quiet: Quiet,
    rx: mpsc::Receiver<Pending>,
    /// Writes deferred to the next batch because their key was already in one.
    carry: VecDeque<Pending>,
}

impl Batcher {
    async fn run(mut self, cancel: CancellationToken) {
        loop {
            let Some(batch) = (tokio::select! {
                _ = cancel.cancelled() => return,
                b = self.next_batch() => b,
            }) else {
                return;
            };
            // On this task: one batch in flight, and the next one gathers in the queue
            // meanwhile. Not raced against `cancel`: a batch once proposed is answered
            // (or times out) before the proposer stops.
            let _sending = self.quiet.traffic().await;
            propose(&self.raft, self.clock, self.write_timeout, batch).await;
        }
    }

    /// Waits for at least one write, then takes what is queued, up to the limits.
    async fn next_batch(&mut self) -> Option<Vec<Pending>> {
        if self.carry.is_empty() {
            let first = self.rx.recv().await?;
            self.carry.push_back(first);
        }
        while self.carry.len() < self.max_batch {
            match self.rx.try_recv() {
                Ok(p) => self.carry.push_back(p),
                Err(_) => break,
            }
        }
        Some(take_batch(&mut self.carry, |p| &p.command, self.max_batch))
    }
}

/// Takes the next batch from the front of `queue`: in queue order, every command that
/// fits the limits and that [`BatchKeys`] admits (no key changes twice in a batch, and a
/// command naming no key goes alone). The rest stay queued in order, so a deferred
/// command leads the next batch.
fn take_batch<T>(
    queue: &mut VecDeque<T>,
    command: impl Fn(&T) -> &Command,
    max_batch: usize,
) -> Vec<T> {
    let mut batch = Vec::new();
    let mut keys = BatchKeys::default();
    let mut bytes = 0;
    let mut deferred = VecDeque::new();
    while let Some(p) = queue.pop_front() {
        let c = command(&p);
        let fits =
            batch.is_empty() || (batch.len() < max_batch && bytes + size(c) <= MAX_BATCH_BYTES);
        if fits && keys.admits(c) {
            keys.add(c);
            bytes += size(c);
            batch.push(p);
        } else {
            deferred.push_back(p);
        }
    }
    *queue = deferred;
    batch
}

/// How a batch proposal ended, as far as this node saw.
#[derive(Debug)]
enum Proposal {
    /// raft refused the batch before taking it (its core had stopped): never proposed.
    NotTaken(Fatal<NodeId>),
    /// raft took the batch and answered.
    Answered(ClientWriteResult<TypeConfig>),
    /// raft took the batch, then stopped without answering: it may be in the log, even
    /// replicated, and commit later.
    Abandoned,
    /// No answer within the write timeout.
    TimedOut,
}

/// What the callers of a batch of `writes` commands are told, one result each.
fn outcome(proposal: Proposal, writes: usize) -> Result<Vec<OpResult>, WriteError> {
    match proposal {
        Proposal::NotTaken(fatal) => Err(WriteError::Stopped(fatal.to_string())),
        Proposal::Answered(Ok(resp)) => match resp.data {
            Response::Applied(OpResult::Batch(results)) if results.len() == writes => Ok(results),
            other => {
                tracing::error!(
                    ?other,
                    "a batch was answered with a result of the wrong shape"
                );
                Err(WriteError::OutcomeUnknown)
            }
        },
        Proposal::Answered(Err(ClientWriteError::ForwardToLeader(f))) => {
            Err(WriteError::NotLeader(f.leader_id.zip(f.leader_node)))
        }
        Proposal::Answered(Err(ClientWriteError::ChangeMembershipError(e))) => {
            Err(WriteError::Stopped(e.to_string()))
        }
        Proposal::Abandoned | Proposal::TimedOut => Err(WriteError::OutcomeUnknown),
    }
}

async fn propose(raft: &Raft, clock: Clock, timeout: Duration, batch: Vec<Pending>) {
    let (commands, replies): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    let writes = replies.len();
    metrics::histogram!("quorumkv_proposer_batch_writes").record(writes as f64);
    let started = std::time::Instant::now();
    let request = Request {
        stamp_ms: clock.now_ms(),
        command: Command::Batch(commands),
    };
    // Hand-over and answer apart (`client_write` reports a stop in either as `Fatal`):
    // only a refused hand-over proves the batch was never proposed.
    let proposal = tokio::time::timeout(timeout, async {
        match raft.client_write_ff(request).await {
            Err(fatal) => Proposal::NotTaken(fatal),
            Ok(answer) => match answer.await {
                Ok(result) => Proposal::Answered(result),
                Err(_) => {
                    tracing::warn!("raft stopped before answering a proposed batch");
                    Proposal::Abandoned
                }
            },
        }
    })
    .await
    .unwrap_or(Proposal::TimedOut);
    metrics::histogram!("quorumkv_proposer_commit_duration_seconds").record(started.elapsed());
    match outcome(proposal, writes) {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::error::ForwardToLeader;
    use openraft::raft::ClientWriteResponse;
    use openraft::{CommittedLeaderId, LogId};
    use std::convert::Infallible;

    use kv_core::{apply_request, Due, Entry, Overlay, Precondition, Record, StateView, Ttl};

    fn deleted(revision: u64) -> OpResult {
        OpResult::Deleted {
            deleted: true,
            revision,
        }
    }

    fn answered(data: Response) -> Proposal {
        Proposal::Answered(Ok(ClientWriteResponse {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 7),
            data,
            membership: None,
        }))
    }

    #[tokio::test]
    async fn a_write_that_finds_the_queue_full_is_refused_unqueued_after_the_wait() {
        let (tx, mut rx) = mpsc::channel(1);
        let wait = Duration::from_millis(50);
        enqueue(&tx, 1, wait).await.expect("a free place");
        let started = std::time::Instant::now();
        assert_eq!(
            enqueue(&tx, 2, wait).await,
            Err(WriteError::Overloaded(wait))
        );
        assert!(started.elapsed() >= wait);
        assert_eq!(rx.recv().await, Some(1));
        assert!(
            rx.try_recv().is_err(),
            "the refused write must not be queued"
        );
        enqueue(&tx, 3, wait)
            .await
            .expect("a place again once one is taken");
        drop(rx);
        assert!(matches!(
            enqueue(&tx, 4, wait).await,
            Err(WriteError::Stopped(_))
        ));
    }

    #[test]
    fn each_write_of_an_applied_batch_gets_its_own_result() {
        let results = vec![deleted(7), deleted(7)];
        let proposal = answered(Response::Applied(OpResult::Batch(results.clone())));
        assert_eq!(outcome(proposal, 2), Ok(results));
    }

    #[test]
    fn an_answer_of_the_wrong_shape_is_outcome_unknown() {
        let proposal = answered(Response::Applied(OpResult::Batch(vec![deleted(7)])));
        assert_eq!(outcome(proposal, 2), Err(WriteError::OutcomeUnknown));
        assert_eq!(
            outcome(answered(Response::None), 1),
            Err(WriteError::OutcomeUnknown)
        );
    }

    #[test]
    fn raft_stopping_after_it_took_the_batch_is_outcome_unknown() {
        // The entry may already be in the log of a quorum: a 503 would read as "not applied".
        assert_eq!(
            outcome(Proposal::Abandoned, 3),
            Err(WriteError::OutcomeUnknown)
        );
    }

    #[test]
    fn raft_refusing_the_batch_before_taking_it_is_stopped() {
        assert!(matches!(
            outcome(Proposal::NotTaken(Fatal::Stopped), 1),
            Err(WriteError::Stopped(_))
        ));
        assert!(matches!(
            outcome(Proposal::NotTaken(Fatal::Panicked), 1),
            Err(WriteError::Stopped(_))
        ));
    }

    #[test]
    fn a_timeout_is_outcome_unknown() {
        assert_eq!(
            outcome(Proposal::TimedOut, 1),
            Err(WriteError::OutcomeUnknown)
        );
    }

    #[test]
    fn forward_to_leader_is_not_leader_with_the_leader_if_known() {
        let node = NodeInfo {
            client_addr: "127.0.0.1:1".into(),
            raft_addr: "127.0.0.1:2".into(),
        };
        let forward = |leader_id, leader_node| {
            Proposal::Answered(Err(ClientWriteError::ForwardToLeader(ForwardToLeader {
                leader_id,
                leader_node,
            })))
        };
        assert_eq!(
            outcome(forward(Some(2), Some(node.clone())), 1),
            Err(WriteError::NotLeader(Some((2, node))))
        );
        assert_eq!(
            outcome(forward(None, None), 1),
            Err(WriteError::NotLeader(None))
        );
    }

    /// A state machine with nothing in it yet.
    struct Empty;

    impl StateView for Empty {
        type Error = Infallible;
        fn get(&self, _: &str) -> Result<Option<Entry>, Infallible> {
            Ok(None)
        }
        fn get_record(&self, _: &str) -> Result<Option<Record>, Infallible> {
            Ok(None)
        }
        fn get_token(&self, _: u64) -> Result<Option<kv_core::Token>, Infallible> {
            Ok(None)
        }
        fn get_session(&self, _: u128) -> Result<Option<kv_core::Session>, Infallible> {
            Ok(None)
        }
        fn scan(
            &self,
            _: &str,
            _: Option<&str>,
            _: usize,
            _: &mut dyn FnMut(&str) -> bool,
        ) -> Result<Vec<(String, kv_core::EntryMeta)>, Infallible> {
            Ok(vec![])
        }
        fn due(
            &self,
            _: u64,
            _: usize,
            _: &mut dyn FnMut(&Due) -> bool,
        ) -> Result<Vec<Due>, Infallible> {
            Ok(vec![])
        }
    }

    fn set(key: &str) -> Command {
        Command::Set {
            key: key.into(),
            value: b"1".to_vec(),
            ttl: Ttl::Clear,
            precondition: Precondition::Always,
        }
    }

    /// Batches `commands` as the proposer does and applies the batches as consecutive
    /// log entries from index 1: each command's result, in queue order.
    fn batch_and_apply(commands: Vec<Command>) -> Vec<OpResult> {
        let mut queue: VecDeque<(usize, Command)> = commands.into_iter().enumerate().collect();
        let mut overlay = Overlay::new(0);
        let mut results = vec![];
        for index in 1.. {
            let batch = take_batch(&mut queue, |(_, c)| c, 64);
            if batch.is_empty() {
                break;
            }
            let (order, commands): (Vec<usize>, Vec<Command>) = batch.into_iter().unzip();
            let request = Request {
                stamp_ms: 1000,
                command: Command::Batch(commands),
            };
            let Ok(OpResult::Batch(batch_results)) =
                apply_request(&Empty, &mut overlay, &request, index)
            else {
                panic!("a batch answers a batch");
            };
            results.extend(order.into_iter().zip(batch_results));
        }
        results.sort_by_key(|(i, _)| *i);
        results.into_iter().map(|(_, r)| r).collect()
    }

    #[test]
    fn a_prefix_delete_never_shares_a_revision_with_a_write_it_covers() {
        let results = batch_and_apply(vec![
            set("a/x"),
            Command::DeletePrefix {
                prefix: "a/".into(),
            },
        ]);
        let [OpResult::Written {
            revision: set_at, ..
        }, OpResult::PrefixDeleted {
            revision: deleted_at,
        }] = results[..]
        else {
            panic!("unexpected results {results:?}");
        };
        assert!(
            set_at < deleted_at,
            "a/x at {set_at} escapes the delete at {deleted_at}"
        );
    }

    #[test]
    fn writes_of_distinct_keys_share_a_batch_and_a_prefix_delete_goes_alone() {
        let prefix = Command::DeletePrefix {
            prefix: "p/".into(),
        };
        let mut queue: VecDeque<Command> =
            [set("a"), set("b"), set("a"), prefix.clone(), set("c")].into();
        let mut batches = vec![];
        while !queue.is_empty() {
            batches.push(take_batch(&mut queue, |c| c, 64));
        }
        assert_eq!(
            batches,
            vec![
                vec![set("a"), set("b"), set("c")],
                vec![set("a")],
                vec![prefix]
            ]
        );
    }
}
