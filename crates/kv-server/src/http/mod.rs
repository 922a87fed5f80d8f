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
mod openapi;
mod prefix;
mod request;
mod serve;
mod session;
mod tokens;

use std::sync::Arc;

use axum::Router;
use kv_store::typ::{NodeId, NodeInfo, Raft};
use kv_store::StateReader;

pub use auth::Auth;
pub use error::ApiError;
pub use leader::MAX_FORWARDS;
pub(crate) use members::finish_joint_configurations;
pub use openapi::document as openapi_document;
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

/// Every route, each registered from its handler's OpenAPI description (see `openapi`).
fn routes() -> openapi::Routes {
    use key::{
        __path_delete_empty_key, __path_delete_key, __path_get_empty_key, __path_get_key,
        __path_put_empty_key, __path_put_key,
    };
    openapi::Routes::new()
        .add_rest::<__path_get_key, _, _>("key", key::get_key)
        .add_rest::<__path_put_key, _, _>("key", key::put_key)
        .add_rest::<__path_delete_key, _, _>("key", key::delete_key)
        .add::<__path_get_empty_key, _, _>(key::get_empty_key)
        .add::<__path_put_empty_key, _, _>(key::put_empty_key)
        .add::<__path_delete_empty_key, _, _>(key::delete_empty_key)
        .add::<prefix::__path_list, _, _>(prefix::list)
        .add::<prefix::__path_delete_prefix, _, _>(prefix::delete_prefix)
        .add::<session::__path_open, _, _>(session::open)
        .add::<tokens::__path_list, _, _>(tokens::list)
        .add::<tokens::__path_create, _, _>(tokens::create)
        .add::<tokens::__path_revoke, _, _>(tokens::revoke)
        .add::<admin::__path_cluster, _, _>(admin::cluster)
        .add::<admin::__path_digest, _, _>(admin::digest)
        .add::<admin::__path_backup, _, _>(admin::backup)
        .add::<members::__path_list, _, _>(members::list)
        .add::<members::__path_add, _, _>(members::add)
        .add::<members::__path_remove, _, _>(members::remove)
        .add::<members::__path_promote, _, _>(members::promote)
        .add::<handover::__path_move_leader, _, _>(handover::move_leader)
        .add::<handover::__path_campaign, _, _>(handover::campaign)
        .add::<admin::__path_metrics, _, _>(admin::metrics)
        .add::<admin::__path_healthz, _, _>(admin::healthz)
        .add::<admin::__path_readyz, _, _>(admin::readyz)
        .add::<openapi::__path_openapi_json, _, _>(openapi::openapi_json)
}

/// The client API's routes.
pub fn router(app: Arc<App>) -> Router {
    routes()
        .router
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
