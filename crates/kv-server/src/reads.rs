//! Linearizable reads: one ReadIndex confirmation round shared by every read waiting
//! when it starts.
//!
//! A read may share a round only if the round started after the read arrived, or the
//! read could miss a write acknowledged before it began. So reads queue; the confirmer
//! takes everything queued, runs one `ensure_linearizable` (a heartbeat to a quorum,
//! then waiting until the state machine has applied up to the read index), and answers
//! them all. Reads arriving meanwhile wait for the next round.

use std::time::Duration;

use kv_store::typ::{NodeId, NodeInfo, Raft};
use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::quiet::Quiet;

/// Why a linearizable read could not be confirmed here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Not the leader (or no longer): the leader, if known.
    #[error("not the leader")]
    NotLeader(Option<(NodeId, NodeInfo)>),
    /// No quorum confirmed leadership in time.
    #[error("leadership could not be confirmed in time")]
    Timeout,
    /// Raft stopped.
    #[error("raft is not running: {0}")]
    Stopped(String),
}

type Waiter = oneshot::Sender<Result<(), ReadError>>;

/// Handle for waiting until a linearizable read may be served from local state.
#[derive(Clone)]
pub struct ReadBarrier {
    tx: mpsc::Sender<Waiter>,
}

impl ReadBarrier {
    /// Starts the confirmer task on `tracker`.
    pub fn start(
        raft: Raft,
        timeout: Duration,
        quiet: Quiet,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(64 * 1024);
        tracker.spawn(confirm_rounds(raft, timeout, quiet, rx, cancel));
        Self { tx }
    }

    /// Returns once local state reflects every write acknowledged before this call.
    pub async fn confirm(&self) -> Result<(), ReadError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(tx)
            .await
            .map_err(|_| ReadError::Stopped("the read confirmer stopped".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(ReadError::Stopped("the read confirmer stopped".into())))
    }
}

async fn confirm_rounds(
    raft: Raft,
    timeout: Duration,
    quiet: Quiet,
    mut rx: mpsc::Receiver<Waiter>,
    cancel: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => return,
            w = rx.recv() => match w { Some(w) => w, None => return },
        };
        // Before gathering: reads that arrive while a handover holds the node quiet
        // share the round after it.
        let _sending = quiet.traffic().await;
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let result = match tokio::time::timeout(timeout, raft.ensure_linearizable()).await {
            Err(_) => Err(ReadError::Timeout),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(ReadError::NotLeader(f.leader_id.zip(f.leader_node)))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                Err(ReadError::Timeout)
            }
            Ok(Err(RaftError::Fatal(e))) => Err(ReadError::Stopped(e.to_string())),
        };
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}
