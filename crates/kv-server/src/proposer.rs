//! The write path: batches concurrent client writes into one raft entry.
//!
//! openraft 0.9 appends one entry per fsync, so one proposer task drains a channel of
//! pending writes, proposes them as one `Command::Batch`, and hands each caller its own
//! result. While a batch is in flight, new writes queue up and form the next batch, so
//! the batch size grows with the load. Two writes to the same key never share a batch:
//! every change gets its own revision (the log index), which compare-and-swap relies on.
//!
//! One batch is in flight at a time, proposed on the proposer task itself: openraft
//! 0.9's core fsyncs each proposal as its own append, one at a time, so a second batch
//! in flight only splits the queue into more fsyncs. Measured against 2 and 4 batches in
//! flight (two A/B rounds each): writes at 16 connections 7-30% and at 64 connections
//! 11-27% faster than with 4, and never slower at 1 connection. A task per batch (as
//! before) was one more wake-up per write: without it the p50 at 1 connection was 0-11%
//! lower in four A/B pairs.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use kv_core::{Command, OpResult, Request, Response};
use kv_store::typ::{NodeId, NodeInfo, Raft, TypeConfig};
use openraft::error::{ClientWriteError, Fatal};
use openraft::raft::ClientWriteResult;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;

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
}

struct Pending {
    command: Command,
    reply: oneshot::Sender<Result<OpResult, WriteError>>,
}

/// The one key a command writes, if it writes exactly one.
fn written_key(command: &Command) -> Option<&str> {
    match command {
        Command::Set { key, .. } | Command::Delete { key, .. } => Some(key),
        Command::Idempotent { command, .. } => written_key(command),
        Command::Expire { .. } | Command::DeletePrefix { .. } | Command::Batch(_) => None,
    }
}

/// Roughly how many bytes a command adds to a raft entry.
fn size(command: &Command) -> usize {
    match command {
        Command::Set { key, value, .. } => key.len() + value.len(),
        Command::Delete { key, .. } => key.len(),
        Command::DeletePrefix { prefix } => prefix.len(),
        Command::Idempotent { id, command, .. } => id.len() + 32 + size(command),
        Command::Expire { .. } => 16,
        Command::Batch(commands) => commands.iter().map(size).sum(),
    }
}

impl Pending {
    fn key(&self) -> Option<&str> {
        written_key(&self.command)
    }

    fn size(&self) -> usize {
        size(&self.command)
    }
}

/// Handle for submitting writes; cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Starts the proposer task on `tracker`; it stops when `cancel` fires.
    pub fn start(
        raft: Raft,
        clock: Clock,
        max_batch: usize,
        write_timeout: Duration,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        // Bounded: under overload, writers wait here (each may hold a value of up to
        // 1 MiB) instead of queueing without limit.
        let (tx, rx) = mpsc::channel(QUEUED_WRITES);
        let batcher = Batcher {
            raft,
            clock,
            max_batch,
            write_timeout,
            rx,
            carry: VecDeque::new(),
        };
        tracker.spawn(batcher.run(cancel));
        Self { tx }
    }

    /// Proposes one write and waits for its result.
    pub async fn write(&self, command: Command) -> Result<OpResult, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { command, reply })
            .await
            .map_err(|_| WriteError::Stopped("the proposer has stopped".into()))?;
        // A dropped reply means the batch task died mid-flight: the outcome is unknown.
        rx.await.unwrap_or(Err(WriteError::OutcomeUnknown))
    }
}

struct Batcher {
    raft: Raft,
    clock: Clock,
    max_batch: usize,
    write_timeout: Duration,
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
        let mut batch = Vec::new();
        let mut keys = HashSet::new();
        let mut bytes = 0;
        let mut deferred = VecDeque::new();
        while let Some(p) = self.carry.pop_front() {
            let fits = batch.is_empty()
                || (batch.len() < self.max_batch && bytes + p.size() <= MAX_BATCH_BYTES);
            let key_free = p.key().is_none_or(|k| !keys.contains(k));
            if fits && key_free {
                if let Some(k) = p.key() {
                    keys.insert(k.to_owned());
                }
                bytes += p.size();
                batch.push(p);
            } else {
                deferred.push_back(p);
            }
        }
        self.carry = deferred;
        Some(batch)
    }
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
}
