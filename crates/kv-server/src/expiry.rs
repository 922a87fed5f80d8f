//! The expiry ticker: while this node leads, it proposes `Expire` when keys are due and
//! `Purge` while prefix deletes have entries left to remove. Followers never delete on
//! their own; deletion travels through the log, a bounded number of keys per entry.

use std::time::Duration;

use kv_core::{Command, OpResult, EXPIRE_LIMIT};

use kv_store::StateReader;
use openraft::ServerState;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::proposer::Proposer;

/// How often the leader looks for due keys.
pub const TICK: Duration = Duration::from_secs(1);

/// Runs until `cancel` fires.
pub async fn run(
    raft: kv_store::typ::Raft,
    reader: StateReader,
    proposer: Proposer,
    clock: Clock,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if raft.metrics().borrow().state != ServerState::Leader {
            continue;
        }
        purge(&reader, &proposer).await;
        // Keep going while a full command's worth was removed: more may be due.
        loop {
            let now = clock.now_ms();
            match reader.has_due(now) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    tracing::error!(error = %e, "reading the expiry index");
                    break;
                }
            }
            match proposer.write(Command::Expire { up_to_ms: now }).await {
                Ok(OpResult::Expired { removed }) if removed as usize == EXPIRE_LIMIT => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "expire proposal did not go through");
                    break;
                }
            }
        }
    }
}

/// Proposes `Purge` until no prefix delete has entries left, or a proposal fails.
async fn purge(reader: &StateReader, proposer: &Proposer) {
    while reader.pending_purges() > 0 {
        match proposer.write(Command::Purge).await {
            Ok(OpResult::Purged { pending, .. }) if pending > 0 => continue,
            Ok(_) => break,
            Err(e) => {
                tracing::debug!(error = %e, "purge proposal did not go through");
                break;
            }
        }
    }
}
