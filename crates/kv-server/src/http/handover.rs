//! `POST /v1/admin/leader`: hands leadership to another voter, for rolling restarts and
//! before removing the leader (admin only; served by the leader).
//!
//! openraft 0.9 has no leadership transfer, and a follower asked to campaign loses while
//! the others still hold the leader's lease. So the leader goes quiet: no proposals, read
//! confirmations or heartbeats (`crate::quiet`); once every voter has its whole log and
//! the lease (`election_max_ms` after the last message) has run out, it asks the target
//! to campaign (`POST /v1/admin/campaign` there). The target wins before any follower's
//! own election timer (`election_max_ms` plus at least `election_min_ms`) fires, and has
//! the longest log, so every vote goes to it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use kv_core::ErrorCode;
use kv_store::typ::{NodeId, NodeInfo, RaftMetrics};
use serde::Deserialize;
use serde_json::json;

use super::auth::{Caller, Need};
use super::leader::{lead_or_forward, Forwardable, Local};
use super::members::{in_progress, matched_index, require_member};
use super::request::{check_content_type, no_precondition, parse_query, read_body, NoQuery};
use super::{ApiError, App};

/// The longest body of a handover request.
const MAX_REQUEST_BYTES: usize = 256;

/// `POST /v1/admin/leader`'s body, which may be empty.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveTo {
    #[serde(default)]
    to: Option<NodeId>,
}

/// Turns the leader's heartbeats off, and on again when dropped: a node that leads again
/// later must not do so silently.
struct HeartbeatsOff<'a>(&'a App);

impl<'a> HeartbeatsOff<'a> {
    fn new(app: &'a App) -> Self {
        app.raft.runtime_config().heartbeat(false);
        Self(app)
    }
}

impl Drop for HeartbeatsOff<'_> {
    fn drop(&mut self) {
        self.0.raft.runtime_config().heartbeat(true);
    }
}

fn refused(message: String) -> ApiError {
    ApiError::new(ErrorCode::MembershipRefused, message)
}

/// The voter to hand over to: `to`, or the one that has replicated furthest (the lowest
/// id among equals).
fn choose(m: &RaftMetrics, me: NodeId, to: Option<NodeId>) -> Result<(NodeId, NodeInfo), ApiError> {
    let membership = m.membership_config.membership();
    let id = match to {
        Some(id) => {
            require_member(m, id)?;
            if !membership.voter_ids().any(|v| v == id) {
                return Err(refused(format!(
                    "node {id} is a learner; only a voter can lead"
                )));
            }
            id
        }
        None => membership
            .voter_ids()
            .filter(|v| *v != me)
            .max_by_key(|v| (matched_index(m, *v), std::cmp::Reverse(*v)))
            .ok_or_else(|| refused("there is no other voter to lead".into()))?,
    };
    let node = membership
        .get_node(&id)
        .cloned()
        .ok_or_else(|| refused(format!("node {id} has no address")))?;
    Ok((id, node))
}

/// Waits until every voter has replicated the leader's whole log.
async fn all_replicated(app: &App, within: Duration) -> Result<(), ApiError> {
    let mut metrics = app.raft.metrics();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let behind = {
            let m = metrics.borrow_and_update();
            let last = m.last_log_index;
            m.membership_config
                .membership()
                .voter_ids()
                .filter(|v| matched_index(&m, *v) != last)
                .collect::<Vec<_>>()
        };
        if behind.is_empty() {
            return Ok(());
        }
        if tokio::time::timeout_at(deadline, metrics.changed())
            .await
            .is_err()
        {
            return Err(ApiError::new(
                ErrorCode::NotCaughtUp,
                format!(
                    "voters {behind:?} did not replicate the whole log within {} ms; \
                     leadership stays here",
                    within.as_millis()
                ),
            ));
        }
    }
}

/// Waits until this node sees a leader other than itself; `None` if none within `within`.
async fn new_leader(app: &App, within: Duration) -> Option<NodeId> {
    let mut metrics = app.raft.metrics();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let leader = metrics.borrow_and_update().current_leader;
        if leader.is_some_and(|l| l != app.id) {
            return leader;
        }
        tokio::time::timeout_at(deadline, metrics.changed())
            .await
            .ok()?
            .ok()?;
    }
}

/// Asks `node` to campaign, with the caller's credentials.
async fn ask_to_campaign(app: &App, node: &NodeInfo, headers: &HeaderMap) -> Result<(), ApiError> {
    let url = format!("{}://{}/v1/admin/campaign", app.scheme, node.client_addr);
    let mut request = app
        .client
        .post(url)
        .timeout(Duration::from_millis(app.timing.election_min_ms));
    if let Some(auth) = headers.get(axum::http::header::AUTHORIZATION) {
        request = request.header(axum::http::header::AUTHORIZATION, auth);
    }
    let failed = |why: String| {
        ApiError::new(
            ErrorCode::LeaderNotMoved,
            format!("node at {} did not campaign: {why}", node.client_addr),
        )
    };
    let response = request.send().await.map_err(|e| failed(e.to_string()))?;
    if response.status() != reqwest::StatusCode::ACCEPTED {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        return Err(failed(format!("{status} {body}")));
    }
    Ok(())
}

/// The handover itself, on the leader, holding the membership lock.
async fn hand_over(
    app: &App,
    target: NodeId,
    node: &NodeInfo,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let timing = &app.timing;
    let term_before = app.raft.metrics().borrow().current_term;
    // Proposals and confirmations in flight take milliseconds; one that takes longer
    // means a slow disk or quorum, not a time to hand over.
    let wait = Duration::from_millis(timing.election_max_ms);
    let quiet = tokio::time::timeout(wait, app.quiet.hush())
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::Unavailable,
                "writes or reads in flight did not finish in time; leadership stays here",
            )
        })?;
    let heartbeats = HeartbeatsOff::new(app);
    all_replicated(app, wait).await?;
    // The last message a follower got left at most a heartbeat ago (one in flight).
    tokio::time::sleep(Duration::from_millis(
        timing.election_max_ms + timing.heartbeat_ms,
    ))
    .await;
    ask_to_campaign(app, node, headers).await?;
    let elected = new_leader(app, Duration::from_millis(2 * timing.election_max_ms)).await;
    drop(heartbeats);
    drop(quiet);
    let m = app.raft.metrics().borrow().clone();
    match elected {
        Some(leader) if leader == target => {
            tracing::info!(
                from = app.id,
                to = target,
                term = m.current_term,
                took_ms = started.elapsed().as_millis() as u64,
                "leadership handed over"
            );
            Ok(Json(json!({
                "leader_id": target,
                "previous_leader_id": app.id,
                "term": m.current_term,
                "previous_term": term_before,
            }))
            .into_response())
        }
        other => Err(ApiError::new(
            ErrorCode::LeaderNotMoved,
            match other {
                Some(leader) => format!("node {leader} was elected instead of node {target}"),
                None => format!(
                    "no election settled within {} ms; this node still leads",
                    2 * timing.election_max_ms
                ),
            },
        )),
    }
}

/// `POST /v1/admin/leader` with `{"to": id}` or no body (the voter that has replicated
/// furthest): hands leadership over, answering once the target leads.
pub(crate) async fn move_leader(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let NoQuery {} = parse_query(&uri)?;
    no_precondition(&headers)?;
    let timeout = Duration::from_millis(app.limits.body_timeout_ms);
    let body = read_body(body, &headers, MAX_REQUEST_BYTES, timeout).await?;
    let asked: MoveTo = if body.is_empty() {
        MoveTo::default()
    } else {
        check_content_type(&headers)?;
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidMemberRequest,
                format!("expected {{\"to\"?: node id}}: {e}"),
            )
        })?
    };
    let req = Forwardable::new(Method::POST, &uri, headers.clone(), body, true);
    lead_or_forward(&app, req, || async {
        app.authorize_write(&caller, Need::Admin).await?;
        let _one_change = app
            .membership
            .clone()
            .try_lock_owned()
            .map_err(|_| in_progress())?;
        let m = app.raft.metrics().borrow().clone();
        if m.membership_config.membership().get_joint_config().len() > 1 {
            return Err(in_progress());
        }
        let (target, node) = choose(&m, app.id, asked.to)?;
        if target == app.id {
            return Ok(Local::Done(
                Json(json!({
                    "leader_id": app.id,
                    "previous_leader_id": app.id,
                    "term": m.current_term,
                    "previous_term": m.current_term,
                }))
                .into_response(),
            ));
        }
        hand_over(&app, target, &node, &headers)
            .await
            .map(Local::Done)
    })
    .await
}

/// `POST /v1/admin/campaign`: this node, a voter that does not lead, starts an election
/// now. The leader's handover asks for it once the followers' lease has run out; asked
/// at another time, voters that still hear from their leader refuse it.
pub(crate) async fn campaign(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let NoQuery {} = parse_query(&uri)?;
    no_precondition(&headers)?;
    app.authorize_write(&caller, Need::Admin).await?;
    let m = app.raft.metrics().borrow().clone();
    if m.current_leader == Some(app.id) {
        return Err(refused(format!("node {} leads already", app.id)));
    }
    if !m
        .membership_config
        .membership()
        .voter_ids()
        .any(|v| v == app.id)
    {
        return Err(refused(format!("node {} is not a voter", app.id)));
    }
    app.raft
        .trigger()
        .elect()
        .await
        .map_err(|e| ApiError::new(ErrorCode::Unavailable, format!("raft is not running: {e}")))?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "node_id": app.id }))).into_response())
}
