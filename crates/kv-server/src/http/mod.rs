//! The client HTTP API (v1): routes, shared state, errors, and forwarding to the leader.

mod admin;
mod answer;
mod auth;
mod error;
mod handover;
mod key;
mod leader;
mod members;
mod observe;
mod prefix;
mod request;
mod serve;
mod session;
mod tokens;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use kv_store::typ::{NodeId, NodeInfo, Raft};
use kv_store::StateReader;

pub use auth::Auth;
pub use error::ApiError;
pub use leader::MAX_FORWARDS;
pub(crate) use members::finish_joint_configurations;
pub use serve::{serve, ConnectionLimits};

use crate::clock::Clock;
use crate::config::LimitsConfig;
use crate::proposer::Proposer;
use crate::reads::ReadBarrier;

/// What every handler shares.
pub struct App {
    /// This node's id.
    pub id: NodeId,
    /// The raft handle.
    pub raft: Raft,
    /// Direct reads of applied state.
    pub reader: StateReader,
    /// The write path.
    pub proposer: Proposer,
    /// Linearizable-read confirmations.
    pub reads: ReadBarrier,
    /// Wall clock for TTL checks on reads.
    pub clock: Clock,
    /// The process's one HTTP client, for forwarding to the leader.
    pub client: reqwest::Client,
    /// How the leader's client port is reached: `https` with TLS, `http` without.
    pub scheme: &'static str,
    /// Input limits and timeouts.
    pub limits: LimitsConfig,
    /// Held while `/v1/admin/digest` scans the state: one scan at a time.
    pub digest_running: Arc<tokio::sync::Mutex<()>>,
    /// Permits to forward a request to the leader (`leader::MAX_FORWARDS`).
    pub forwards: tokio::sync::Semaphore,
    /// Bearer tokens, when on.
    pub auth: Option<Auth>,
    /// A snapshot this node is receiving from the leader, if any.
    pub snapshot_progress: Arc<crate::raft_network::SnapshotProgress>,
    /// This node's cluster id.
    pub cluster_id: crate::cluster_id::ClusterId,
    /// Held by the membership change or leadership handover under way: one at a time.
    pub membership: Arc<tokio::sync::Mutex<()>>,
    /// Held exclusively while a leadership handover keeps this leader quiet.
    pub quiet: crate::quiet::Quiet,
    /// Raft timings: a handover waits out the followers' leader lease.
    pub timing: crate::config::RaftConfig,
}

/// Who leads, as far as this node knows.
pub(crate) enum Leader {
    Me,
    Other(NodeInfo),
    Unknown,
}

impl App {
    pub(crate) fn leader(&self) -> Leader {
        let m = self.raft.metrics().borrow().clone();
        match m.current_leader {
            Some(id) if id == self.id => Leader::Me,
            Some(id) => match m.membership_config.membership().get_node(&id) {
                Some(node) => Leader::Other(node.clone()),
                None => Leader::Unknown,
            },
            None => Leader::Unknown,
        }
    }

    /// The time reads judge expiry by: never behind the state machine's clock, so a key
    /// the log already treats as expired is never shown.
    pub(crate) fn read_time_ms(&self) -> u64 {
        self.clock.now_ms().max(self.reader.clock_ms())
    }
}

/// The client API's routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(
            "/v1/kv/{*key}",
            get(key::get_key).put(key::put_key).delete(key::delete_key),
        )
        .route("/v1/kv", get(prefix::list).delete(prefix::delete_prefix))
        .route(
            "/v1/kv/",
            get(key::empty_key)
                .put(key::empty_key)
                .delete(key::empty_key),
        )
        .route("/v1/sessions", post(session::open))
        .route("/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/v1/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route("/v1/cluster", get(admin::cluster))
        .route("/v1/admin/digest", get(admin::digest))
        .route("/v1/admin/backup", get(admin::backup))
        .route("/v1/admin/members", get(members::list).post(members::add))
        .route(
            "/v1/admin/members/{id}",
            axum::routing::delete(members::remove),
        )
        .route("/v1/admin/members/{id}/promote", post(members::promote))
        .route("/v1/admin/leader", post(handover::move_leader))
        .route("/v1/admin/campaign", post(handover::campaign))
        .route("/metrics", get(admin::metrics))
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz))
        .fallback(error::route_not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::authenticate,
        ))
        .layer(axum::middleware::from_fn(observe::observe))
        .layer(axum::middleware::from_fn(serve::bounded_head))
        .with_state(app)
}
