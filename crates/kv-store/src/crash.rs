//! Crash points for tests: a node started with `KV_CRASH_AT=<point>` aborts the moment it
//! reaches that point, as a `kill -9` would stop it there. Unset, every point is a no-op.

use std::sync::OnceLock;

/// The received snapshot is durable; raft has not been told about it yet.
pub const SNAPSHOT_RECEIVED: &str = "snapshot-received";
/// A snapshot install is about to write its batch into RocksDB.
pub const SNAPSHOT_INSTALLING: &str = "snapshot-installing";
/// A snapshot install has written its batch; openraft has not heard back.
pub const SNAPSHOT_INSTALLED: &str = "snapshot-installed";
/// A purge has made `last_purged` durable but not yet removed any segment.
pub const PURGE_RECORDED: &str = "purge-recorded";
/// A purge has removed the segments it covers.
pub const PURGED: &str = "purged";

/// A joint configuration (the first step of a voter change) has been applied; on the
/// leader, the final one has not been proposed yet.
pub const MEMBERSHIP_JOINT_APPLIED: &str = "membership-joint-applied";
/// Every crash point, for validating `KV_CRASH_AT` at start.
pub const ALL: &[&str] = &[
    SNAPSHOT_RECEIVED,
    SNAPSHOT_INSTALLING,
    SNAPSHOT_INSTALLED,
    PURGE_RECORDED,
    PURGED,
    MEMBERSHIP_JOINT_APPLIED,
];

/// The crash point this process was started with, read once.
pub fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var("KV_CRASH_AT").ok())
        .as_deref()
}

/// Aborts the process if it was started to crash at `point`.
pub fn point(point: &'static str) {
    if armed() == Some(point) {
        eprintln!("KV_CRASH_AT={point}: aborting here on purpose");
        std::process::abort();
    }
}
