//! The openraft type configuration and short aliases for its long generic types.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A node's identity in the cluster.
pub type NodeId = u64;

/// Where a member of the cluster listens. Wire and on-disk type (it is part of the
/// membership stored in the log).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `host:port` of the client HTTP API.
    pub client_addr: String,
    /// `host:port` of the raft RPC listener.
    pub raft_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client={} raft={}", self.client_addr, self.raft_addr)
    }
}

openraft::declare_raft_types!(
    /// quorum-kv's raft types.
    pub TypeConfig:
        D = kv_core::Request,
        R = kv_core::Response,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type LogEntry = openraft::Entry<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<NodeId>;
/// A vote.
pub type Vote = openraft::Vote<NodeId>;
/// Membership as stored with the log id that set it.
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
/// A snapshot with its data.
pub type Snapshot = openraft::storage::Snapshot<TypeConfig>;
/// openraft's storage error.
pub type StorageError = openraft::StorageError<NodeId>;
/// Raft metrics.
pub type RaftMetrics = openraft::RaftMetrics<NodeId, NodeInfo>;
