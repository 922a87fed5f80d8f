//! RocksDB storage for one quorum-kv node: the raft log and the state machine,
//! implementing openraft's storage-v2 traits.
//!
//! Invariants:
//! - One RocksDB database per node, with column families for the raft log, raft
//!   metadata, state-machine data, state-machine metadata and the expiry index.
//! - Every write openraft must find after a crash (vote, appended entries, truncation,
//!   purge) is fsynced before the call returns or its flush callback fires.
//! - One apply call is one synced `WriteBatch`: data, expiry index, `last_applied`,
//!   membership and the clock change together or not at all.
//! - Command semantics live in kv-core; this crate only persists their effects.

mod db;
mod error;
mod log_files;
mod log_store;
mod snapshot;
mod state_machine;
pub mod typ;

pub use db::{open, open_with, Digest, StateReader, Stores, DEFAULT_LOG_SEGMENT_BYTES};
pub use error::StoreError;
pub use log_store::LogStore;
pub use state_machine::StateMachine;
