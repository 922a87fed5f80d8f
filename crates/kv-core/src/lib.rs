//! Wire types and command semantics of quorum-kv, as pure functions over plain data.
//!
//! Invariants this crate keeps, so the rest of the system can rely on them:
//! - No I/O, no async, no openraft: everything here is synchronous and deterministic.
//! - Applying a command never reads a clock, a random number or local configuration.
//!   Time arrives as the stamp inside [`Request`]; the state machine's clock only moves
//!   forward (`clock = max(clock, stamp)`).
//! - The result of applying a sequence of commands does not depend on how a caller
//!   groups them into apply calls: every read made while applying goes through an
//!   [`Overlay`] that shows the writes of earlier commands not yet persisted.
//! - A batch changes each key at most once ([`BatchKeys`] is the rule the proposer
//!   builds batches by), so every change of a key has its own revision.

pub mod command;
pub mod entry;
pub mod error_code;
pub mod key_path;
pub mod overlay;
pub mod record;
pub mod session;
pub mod snapshot_file;
pub mod token;
pub mod validate;

pub use command::{
    apply_request, changes_keys_once, check_precondition, BatchKeys, Command, Failure, Limits,
    OpResult, Precondition, Request, Response, Ttl, EXPIRE_LIMIT, MAX_TOMBSTONES, PURGE_LIMIT,
};
pub use entry::{data_bytes, Entry, EntryMeta};
pub use error_code::ErrorCode;
pub use key_path::key_path;
pub use overlay::{tombstoned, Due, Overlay, Slot, StateView, Tombstone};
pub use record::{fingerprint, Fingerprinter, Record};
pub use session::{Answer, Session, SESSION_WINDOW};
pub use token::{Access, Grant, Token, BOOTSTRAP_TOKEN, MAX_GRANTS, MAX_TOKENS};
