//! Cluster status, liveness and readiness.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use openraft::ServerState;
use serde_json::{json, Value};

use kv_core::ErrorCode;

use super::auth::{Caller, Need};
use super::request::{parse_query, NoQuery};
use super::{ApiError, App};

fn role(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

async fn committed_index(app: &App) -> Result<Option<u64>, ApiError> {
    app.raft
        .with_raft_state(|st| st.committed.map(|c| c.index))
        .await
        .map_err(|e| ApiError::new(ErrorCode::Unavailable, format!("raft is not running: {e}")))
}

/// `GET /v1/cluster`: this node's view of the cluster.
pub(crate) async fn cluster(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    app.authorize(&caller, Need::Admin)?;
    let m = app.raft.metrics().borrow().clone();
    let commit_index = committed_index(&app).await?;
    let membership = m.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let members: Vec<Value> = membership
        .nodes()
        .map(|(id, node)| {
            let role = if *id == m.id {
                role(m.state)
            } else if Some(*id) == m.current_leader {
                "leader"
            } else if voters.contains(id) {
                "follower"
            } else {
                "learner"
            };
            json!({ "id": id, "client_addr": node.client_addr, "raft_addr": node.raft_addr, "role": role })
        })
        .collect();
    let leader = m.current_leader.and_then(|id| {
        membership
            .get_node(&id)
            .map(|n| json!({ "id": id, "client_addr": n.client_addr, "raft_addr": n.raft_addr }))
    });
    Ok(Json(json!({
        "node_id": m.id,
        "cluster_id": Some(app.cluster_id.get()).filter(|id| !id.is_empty()),
        "state": role(m.state),
        "leader_id": m.current_leader,
        "leader": leader,
        "term": m.current_term,
        "commit_index": commit_index,
        "applied_index": m.last_applied.map(|l| l.index),
        "last_log_index": m.last_log_index,
        "snapshot_index": m.snapshot.map(|l| l.index),
        "purged_index": m.purged.map(|l| l.index),
        "raft_mismatched_answers": crate::raft_network::mismatched_answers(),
        "raft_large_appends_sent": crate::raft_network::large_appends_sent(),
        "raft_append_timeouts": crate::raft_network::append_timeouts(),
        "raft_elections_started": crate::raft_network::elections_started(),
        "members": members,
    })))
}

/// `GET /v1/admin/digest`: a hash of this node's whole state machine and the log index
/// it was taken at. Replicas at the same `applied_index` must report the same `digest`;
/// the chaos suite compares them after every run. Reads the whole state: an operator
/// tool, not for hot paths, so one runs at a time and a second caller is told to retry.
pub(crate) async fn digest(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    uri: axum::http::Uri,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({
        "node_id": app.id,
        "applied_index": d.applied_index,
        "digest": format!("{:032x}", d.hash),
        "keys": d.keys,
        "records": d.records,
        "sessions": d.sessions,
        "tokens": d.tokens,
    })))
}

/// `GET /v1/admin/digest`'s query: `scope=state` leaves out the last applied log id and
/// the membership, to compare a restored backup with its source.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DigestQuery {
    scope: Option<String>,
}

/// `GET /v1/admin/backup`: the whole state as a snapshot file (the layout of
/// `kv_core::snapshot_file`, with a SHA-256 trailer), streamed with its length and
/// `Kv-Backup-Index`, the log index it holds everything up to. Served by the leader after
/// it confirms its leadership, so every write acknowledged before the request is in it;
/// other nodes answer `503` (clients try the next node). One scan at a time per node,
/// shared with the digest.
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

/// `GET /metrics`: Prometheus' text format (see `crate::metrics`).
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

/// `GET /healthz`: the process is up and serving HTTP.
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: a leader is known and this node has applied all it knows committed;
/// otherwise `503` saying which is not so.
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
    let body = json!({ "ready": true, "leader_id": m.current_leader, "applied_index": applied });
    Ok((StatusCode::OK, Json(body)).into_response())
}
