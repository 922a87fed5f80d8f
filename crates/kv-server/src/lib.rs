//! One quorum-kv node: configuration, the raft network, the client HTTP API, and the
//! node's lifecycle. The binary `kv-server` is a thin wrapper around [`node::run`].
//!
//! Invariants:
//! - kv-core and kv-store never open sockets; this crate (and kv-client) do.
//! - Time enters only through [`clock::Clock`]: as the stamp of proposed commands and
//!   as the reader's time for TTL checks, never inside apply.
//! - Writes reach raft only through the proposer; linearizable reads only after a
//!   ReadIndex confirmation started after the read arrived.
//! - Every client error is a JSON body with a stable code (see `http::ApiError`).

pub mod certs;
mod clock;
mod cluster_id;
pub mod config;
mod disk;
mod expiry;
mod http;
mod metrics;
pub mod node;
mod proposer;
mod quiet;
mod raft_network;
mod reads;
mod slots;
mod tls;

pub use http::openapi_document;
