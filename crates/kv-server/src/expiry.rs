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
        // Purges and expiries take turns, so neither waits for the other to finish.
        loop {
            let purging = purge(&reader, &proposer).await;
            let expiring = expire(&reader, &proposer, &clock).await;
            if !purging && !expiring {
                break;
            }
        }
    }
}

/// Proposes one `Expire` if keys are due; whether more may be due after it.
async fn expire(reader: &StateReader, proposer: &Proposer, clock: &Clock) -> bool {
    let now = clock.now_ms();
    match reader.has_due(now) {
        Ok(true) => {}
        Ok(false) => return false,
        Err(e) => {
            tracing::error!(error = %e, "reading the expiry index");
            return false;
        }
    }
    match proposer.write(Command::Expire { up_to_ms: now }).await {
        Ok(OpResult::Expired { removed }) => removed as usize == EXPIRE_LIMIT,
        Ok(_) => false,
        Err(e) => {
            tracing::debug!(error = %e, "expire proposal did not go through");
            false
        }
    }
}

/// Proposes one `Purge` if a prefix delete has entries left; whether any are left after it.
async fn purge(reader: &StateReader, proposer: &Proposer) -> bool {
    if reader.pending_purges() == 0 {
        return false;
    }
    match proposer.write(Command::Purge).await {
        Ok(OpResult::Purged { pending, .. }) => pending > 0,
        Ok(_) => false,
        Err(e) => {
            tracing::debug!(error = %e, "purge proposal did not go through");
            false
        }
    }
}
