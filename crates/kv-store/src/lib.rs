//! RocksDB storage for one quorum-kv node: the raft log and the state machine,
//! implementing openraft's storage-v2 traits.
//!
//! Invariants:
//! - Per node: the raft log in segment files, and one RocksDB database with column
//!   families for raft metadata, state-machine data, state-machine metadata, the expiry
//!   index and idempotency records.
//! - Every write openraft must find after a crash (vote, appended entries, truncation,
//!   purge) is fsynced before the call returns or its flush callback fires.
//! - One apply call is one `WriteBatch`: data, expiry index, `last_applied`, membership
//!   and the clock change together or not at all. It is not synced: the entries are in
//!   the synced log, and the log is purged only after a synced RocksDB write.
//! - A snapshot is durable in its file before the state machine or the log changes
//!   for it: a received one before raft learns of it (raft purges the log it covers at
//!   once), an installed one before its first batch. `open` installs a stored snapshot
//!   that is ahead of the state or whose install was cut short (its marker is in
//!   `sm_meta`), and refuses a log purged past the state.
//! - Snapshots are files, never whole in memory: built on the blocking pool from a
//!   RocksDB snapshot taken while apply waits, sent and received in chunks, installed
//!   in batches of bounded size while readers are refused.
//! - The state machine's in-memory entry cache holds only what RocksDB holds.
//! - Command semantics live in kv-core; this crate only persists their effects.

pub mod crash;
mod db;
mod entry_cache;
mod error;
mod log_files;
mod log_fs;
mod log_store;
mod snapshot;
mod state_machine;
pub mod typ;

pub use db::{
    open, open_with, restore, Digest, Page, StateReader, Stores, DEFAULT_LOG_SEGMENT_BYTES,
};
pub use error::StoreError;
pub use log_store::LogStore;
pub use snapshot::{Incoming, SnapshotData, SnapshotStore};
pub use state_machine::StateMachine;
