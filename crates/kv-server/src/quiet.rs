//! Quieting a leader's raft traffic for a leadership handover.
//!
//! Besides heartbeats, a leader sends followers only what the proposer proposes and what
//! the read confirmer's rounds send. Each holds a shared permit while in flight; a
//! handover takes the exclusive one and turns heartbeats off, so followers hear nothing
//! until their leader lease runs out and they grant the target's campaign.

use std::sync::Arc;

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// The permits: shared for raft traffic, exclusive for a handover.
#[derive(Clone, Default)]
pub struct Quiet(Arc<RwLock<()>>);

impl Quiet {
    /// Waits while a handover holds the node quiet; held while a proposal or read
    /// confirmation is in flight.
    pub async fn traffic(&self) -> OwnedRwLockReadGuard<()> {
        self.0.clone().read_owned().await
    }

    /// Waits for the traffic in flight to finish and holds back new traffic until
    /// dropped (tokio's lock is fair: waiting traffic does not starve it).
    pub async fn hush(&self) -> OwnedRwLockWriteGuard<()> {
        self.0.clone().write_owned().await
    }
}
