//! Cluster status, liveness and readiness.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use openraft::ServerState;
use serde::Serialize;
use utoipa::ToSchema;

use kv_core::ErrorCode;

use super::auth::{Caller, Need};
use super::error::{Error400, Error401, Error403, Error503};
use super::request::{parse_query, NoQuery};
use super::{ApiError, App};

/// A node's raft role.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

fn role(state: ServerState) -> Role {
    match state {
        ServerState::Leader => Role::Leader,
        ServerState::Follower => Role::Follower,
        ServerState::Candidate => Role::Candidate,
        ServerState::Learner => Role::Learner,
        ServerState::Shutdown => Role::Shutdown,
    }
}

/// `GET /v1/cluster`'s answer: this node's view of the cluster.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Cluster)]
pub(crate) struct ClusterView {
    /// This node's id.
    node_id: u64,
    /// The cluster's id; null before this node has joined one.
    #[schema(required = true)]
    cluster_id: Option<String>,
    /// This node's role.
    state: Role,
    /// The leader's id, null when none is known.
    #[schema(required = true)]
    leader_id: Option<u64>,
    /// The leader's addresses, null when none is known.
    #[schema(required = true)]
    leader: Option<NodeAddrs>,
    /// The current raft term.
    term: u64,
    /// The last log index this node knows committed.
    #[schema(required = true)]
    commit_index: Option<u64>,
    /// The last log index applied to this node's state machine.
    #[schema(required = true)]
    applied_index: Option<u64>,
    /// The last index in this node's log.
    #[schema(required = true)]
    last_log_index: Option<u64>,
    /// The last index in this node's snapshot.
    #[schema(required = true)]
    snapshot_index: Option<u64>,
    /// The last index purged from this node's log.
    #[schema(required = true)]
    purged_index: Option<u64>,
    /// Raft answers that did not match their request, since start.
    raft_mismatched_answers: u64,
    /// Large AppendEntries sent, since start.
    raft_large_appends_sent: u64,
    /// AppendEntries that timed out, since start.
    raft_append_timeouts: u64,
    /// Elections this node started, since start.
    raft_elections_started: u64,
    /// Every member, with its role as this node sees it.
    members: Vec<ClusterMember>,
}

/// A node's id and addresses.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeAddrs {
    id: u64,
    client_addr: String,
    raft_addr: String,
}

/// A member in `GET /v1/cluster`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClusterMember {
    id: u64,
    client_addr: String,
    raft_addr: String,
    role: Role,
}

async fn committed_index(app: &App) -> Result<Option<u64>, ApiError> {
    app.raft
        .with_raft_state(|st| st.committed.map(|c| c.index))
        .await
        .map_err(|e| ApiError::new(ErrorCode::Unavailable, format!("raft is not running: {e}")))
}

/// `GET /v1/cluster`: this node's view of the cluster.
#[utoipa::path(
    get,
    path = "/v1/cluster",
    tag = "admin",
    responses(
        (status = 200, description = "This node's view of the cluster.", body = ClusterView),
        (status = 401, description = "`unauthenticated`", body = Error401),
        (status = 403, description = "`forbidden`: not an admin token", body = Error403),
        (status = 503, description = "`unavailable`: raft is not running", body = Error503,
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn cluster(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ClusterView>, ApiError> {
    app.authorize(&caller, Need::Admin)?;
    let m = app.raft.metrics().borrow().clone();
    let commit_index = committed_index(&app).await?;
    let membership = m.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(id, node)| {
            let role = if *id == m.id {
                role(m.state)
            } else if Some(*id) == m.current_leader {
                Role::Leader
            } else if voters.contains(id) {
                Role::Follower
            } else {
                Role::Learner
            };
            ClusterMember {
                id: *id,
                client_addr: node.client_addr.clone(),
                raft_addr: node.raft_addr.clone(),
                role,
            }
        })
        .collect();
    let leader = m.current_leader.and_then(|id| {
        membership.get_node(&id).map(|n| NodeAddrs {
            id,
            client_addr: n.client_addr.clone(),
            raft_addr: n.raft_addr.clone(),
        })
    });
    Ok(Json(ClusterView {
        node_id: m.id,
        cluster_id: Some(app.cluster_id.get()).filter(|id| !id.is_empty()),
        state: role(m.state),
        leader_id: m.current_leader,
        leader,
        term: m.current_term,
        commit_index,
        applied_index: m.last_applied.map(|l| l.index),
        last_log_index: m.last_log_index,
        snapshot_index: m.snapshot.map(|l| l.index),
        purged_index: m.purged.map(|l| l.index),
        raft_mismatched_answers: crate::raft_network::mismatched_answers(),
        raft_large_appends_sent: crate::raft_network::large_appends_sent(),
        raft_append_timeouts: crate::raft_network::append_timeouts(),
        raft_elections_started: crate::raft_network::elections_started(),
        members,
    }))
}

/// `GET /v1/admin/digest`: a hash of this node's whole state machine and the log index
/// it was taken at. Replicas at the same `applied_index` must report the same `digest`;
/// the chaos suite compares them after every run. Reads the whole state: an operator
/// tool, not for hot paths, so one runs at a time and a second caller is told to retry.
#[utoipa::path(
    get,
    path = "/v1/admin/digest",
    tag = "admin",
    params(DigestQuery),
    responses(
        (status = 200, description = "A hash of this node's whole state machine.", body = DigestView),
        (status = 400, description = "`invalid_query`", body = Error400),
        (status = 401, description = "`unauthenticated`", body = Error401),
        (status = 403, description = "`forbidden`: not an admin token", body = Error403),
        (status = 503, description = "`unavailable`: a digest or backup is already running, or a snapshot is being installed",
            body = Error503, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn digest(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    uri: axum::http::Uri,
) -> Result<Json<DigestView>, ApiError> {
    app.authorize(&caller, Need::Admin)?;
    let DigestQuery { scope } = parse_query(&uri)?;
    let state_only = match scope.as_deref() {
        None => false,
        Some("state") => true,
        Some(other) => {
            return Err(ApiError::new(
                ErrorCode::InvalidQuery,
                format!("scope is \"state\" or absent, not {other:?}"),
            ))
        }
    };
    let running = app.digest_running.clone().try_lock_owned().map_err(|_| {
        ApiError::new(
            ErrorCode::Unavailable,
            "a digest is already being computed on this node; retry when it is done",
        )
    })?;
    let reader = app.reader.clone();
    // The scan holds the lock, also when the request that started it goes away.
    let d = tokio::task::spawn_blocking(move || {
        let _running = running;
        if state_only {
            reader.state_digest()
        } else {
            reader.digest()
        }
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::Internal, format!("digest task: {e}")))??;
    Ok(Json(DigestView {
        node_id: app.id,
        applied_index: d.applied_index,
        digest: format!("{:032x}", d.hash),
        keys: d.keys,
        records: d.records,
        sessions: d.sessions,
        tokens: d.tokens,
    }))
}

/// `GET /v1/admin/digest`'s answer.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Digest)]
pub(crate) struct DigestView {
    /// This node's id.
    node_id: u64,
    /// The log index the digest was taken at (null with `scope=state`, or before
    /// anything was applied).
    #[schema(required = true)]
    applied_index: Option<u64>,
    /// The hash, 32 hex digits.
    #[schema(pattern = "^[0-9a-f]{32}$")]
    digest: String,
    /// Stored entries, live or expired.
    keys: u64,
    /// Stored idempotency records.
    records: u64,
    /// Stored client sessions.
    sessions: u64,
    /// Stored tokens.
    tokens: u64,
}

/// `GET /v1/admin/digest`'s query: `scope=state` leaves out the last applied log id and
/// the membership, to compare a restored backup with its source.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DigestQuery {
    /// `state`: the state alone, without the applied index and membership.
    #[param(pattern = "^state$")]
    scope: Option<String>,
}

/// `GET /v1/admin/backup`: the whole state as a snapshot file (the layout of
/// `kv_core::snapshot_file`, with a SHA-256 trailer), streamed with its length and
/// `Kv-Backup-Index`, the log index it holds everything up to. Served by the leader after
/// it confirms its leadership, so every write acknowledged before the request is in it;
/// other nodes answer `503` (clients try the next node). One scan at a time per node,
/// shared with the digest.
#[utoipa::path(
    get,
    path = "/v1/admin/backup",
    tag = "admin",
    responses(
        (status = 200, description = "The whole state as a snapshot file.",
            content_type = "application/octet-stream", body = SnapshotFile,
            headers(
                ("Content-Length" = u64, description = "The file's size in bytes"),
                ("Kv-Backup-Index" = u64, description = "The log index the backup holds everything up to"),
            )),
        (status = 400, description = "`invalid_query`", body = Error400),
        (status = 401, description = "`unauthenticated`", body = Error401),
        (status = 403, description = "`forbidden`: not an admin token", body = Error403),
        (status = 503, description = "`no_leader`, `unavailable`: this node does not lead, \
            leadership could not be confirmed, or a digest or backup is already running",
            body = Error503, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn backup(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    app.authorize(&caller, Need::Admin)?;
    let NoQuery {} = parse_query(&uri)?;
    match app.leader() {
        super::Leader::Me => {}
        super::Leader::Other(node) => {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "backups are taken on the leader, at {}; this node does not stream one \
                     through",
                    node.client_addr
                ),
            ))
        }
        super::Leader::Unknown => {
            return Err(ApiError::new(ErrorCode::NoLeader, "no leader is known"))
        }
    }
    app.reads.confirm().await.map_err(|e| {
        ApiError::new(
            ErrorCode::Unavailable,
            format!("leadership could not be confirmed: {e}"),
        )
    })?;
    let running = app.digest_running.clone().try_lock_owned().map_err(|_| {
        ApiError::new(
            ErrorCode::Unavailable,
            "a digest or backup is already being taken on this node; retry when it is done",
        )
    })?;
    let reader = app.reader.clone();
    let (meta, file, size) = tokio::task::spawn_blocking(move || {
        let _running = running;
        reader.backup()
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::Internal, format!("backup task: {e}")))??;
    let index = meta.last_log_id.map_or(0, |l| l.index);
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        tokio::fs::File::from_std(file),
        256 * 1024,
    ));
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/octet-stream".to_owned(),
            ),
            (axum::http::header::CONTENT_LENGTH, size.to_string()),
            (
                axum::http::HeaderName::from_static("kv-backup-index"),
                index.to_string(),
            ),
        ],
        body,
    )
        .into_response())
}

/// The schema of a backup: bytes, in the snapshot file layout.
pub(crate) struct SnapshotFile;

impl utoipa::PartialSchema for SnapshotFile {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .content_media_type("application/octet-stream")
            .description(Some(
                "A snapshot file (`kv_core::snapshot_file`) with a SHA-256 trailer",
            ))
            .into()
    }
}

impl ToSchema for SnapshotFile {}

/// `GET /metrics`: Prometheus' text format (see `crate::metrics`).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus' text exposition format 0.0.4.",
            content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        (status = 401, description = "`unauthenticated`", body = Error401),
        (status = 403, description = "`forbidden`: not an admin token", body = Error403),
        (status = 503, description = "`unavailable`: raft is not running", body = Error503,
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn metrics(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    app.authorize(&caller, Need::Admin)?;
    let raft = app.raft.metrics().borrow().clone();
    let commit_index = committed_index(&app).await?;
    let reader = app.reader.clone();
    let now_ms = app.read_time_ms();
    let snapshot_receiving = app.snapshot_progress.receiving();
    // Counting what is due reads RocksDB: off the async workers.
    let text = tokio::task::spawn_blocking(move || {
        crate::metrics::render(&crate::metrics::Levels {
            raft: &raft,
            commit_index,
            reader: &reader,
            now_ms,
            snapshot_receiving,
        })
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::Internal, format!("metrics task: {e}")))?;
    let content_type = "text/plain; version=0.0.4; charset=utf-8";
    Ok(([(axum::http::header::CONTENT_TYPE, content_type)], text).into_response())
}

/// `GET /healthz`'s answer.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Health {
    /// Always `ok`.
    #[schema(value_type = String, pattern = "^ok$")]
    status: &'static str,
}

/// `GET /healthz`: the process is up and serving HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    security(()),
    responses((status = 200, description = "The process is up.", body = Health))
)]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// `GET /readyz`'s answer.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Ready {
    /// Always `true` (a node that is not ready answers `503`).
    ready: bool,
    /// The leader's id.
    #[schema(required = true)]
    leader_id: Option<u64>,
    /// The last log index applied here.
    #[schema(required = true)]
    applied_index: Option<u64>,
}

/// `GET /readyz`: a leader is known and this node has applied all it knows committed;
/// otherwise `503` saying which is not so.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "Ready to serve.", body = Ready),
        (status = 503, description = "`unavailable`: not ready, and the message says why",
            body = Error503, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn readyz(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let m = app.raft.metrics().borrow().clone();
    let committed = committed_index(&app).await?;
    let applied = m.last_applied.map(|l| l.index);
    let not_ready = |why: String| {
        Err(ApiError::new(
            ErrorCode::Unavailable,
            format!("not ready: {why}"),
        ))
    };
    if let Some(bytes) = app.snapshot_progress.receiving() {
        return not_ready(format!(
            "installing a snapshot from the leader ({bytes} bytes received)"
        ));
    }
    let membership = m.membership_config.membership();
    if membership.get_node(&app.id).is_none() {
        return not_ready(if membership.nodes().next().is_none() {
            "not a member of a cluster yet: waiting to be added (kvctl member add)".into()
        } else {
            "not a member of the cluster: removed, or not added yet".into()
        });
    }
    if m.current_leader.is_none() {
        return not_ready("no leader is known".into());
    }
    if applied < committed {
        let behind = committed.unwrap_or(0) - applied.unwrap_or(0);
        return not_ready(format!(
            "catching up: {behind} committed entries not applied yet (applied {}, committed {})",
            applied.unwrap_or(0),
            committed.unwrap_or(0)
        ));
    }
    let body = Ready {
        ready: true,
        leader_id: m.current_leader,
        applied_index: applied,
    };
    Ok((StatusCode::OK, Json(body)).into_response())
}
