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
use kv_store::typ::{NodeId, NodeInfo, Raft};
use openraft::error::{ClientWriteError, RaftError};
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
    /// The write was proposed but its commit was not seen in time: it may or may not
    /// have been applied.
    #[error("the write's outcome is unknown")]
    OutcomeUnknown,
    /// The node is shutting down or raft stopped.
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

async fn propose(raft: &Raft, clock: Clock, timeout: Duration, batch: Vec<Pending>) {
    let (commands, replies): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    let request = Request {
        stamp_ms: clock.now_ms(),
        command: Command::Batch(commands),
    };
    let error = match tokio::time::timeout(timeout, raft.client_write(request)).await {
        Err(_) => WriteError::OutcomeUnknown,
        Ok(Ok(resp)) => match resp.data {
            Response::Applied(OpResult::Batch(results)) if results.len() == replies.len() => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
                return;
            }
            other => {
                tracing::error!(
                    ?other,
                    "a batch was answered with a result of the wrong shape"
                );
                WriteError::OutcomeUnknown
            }
        },
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            WriteError::NotLeader(f.leader_id.zip(f.leader_node))
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
            WriteError::Stopped(e.to_string())
        }
        Ok(Err(RaftError::Fatal(e))) => WriteError::Stopped(e.to_string()),
    };
    for reply in replies {
        let _ = reply.send(Err(error.clone()));
    }
}
