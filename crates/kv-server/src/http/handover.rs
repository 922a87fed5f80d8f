//! `POST /v1/admin/leader`: hands leadership to another voter, for rolling restarts and
//! before removing the leader (admin only; served by the leader).
//!
//! openraft 0.9 has no leadership transfer, and a follower's campaign is refused by
//! voters that still hold the leader's lease (they heard from it within
//! `election_max_ms`). So the leader goes quiet: no proposals, read confirmations or
//! heartbeats (`crate::quiet`); once the target has its whole log and the lease has run
//! out, it asks the target to campaign (`POST /v1/admin/campaign` there). The target
//! wins before any follower's own election timer (the lease plus at least
//! `election_min_ms`) fires, and its log is as long as any, so the votes go to it. All
//! nodes must share the `[raft]` timings for this reckoning to hold.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use kv_core::ErrorCode;
use kv_store::typ::{NodeId, NodeInfo, Raft, RaftMetrics};
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedMutexGuard;
use utoipa::ToSchema;

use super::auth::{Caller, Need};
use super::error::{
    Error400, Error401, Error403, Error404, Error408, Error409, Error413, Error415, Error503,
    Error504,
};
use super::leader::{lead_or_forward, Forwardable, Local};
use super::members::{in_progress, matched_index, require_member};
use super::request::{check_content_type, no_precondition, parse_query, read_body, NoQuery};
use super::{ApiError, App};

/// The longest body of a handover request.
const MAX_REQUEST_BYTES: usize = 256;

/// `POST /v1/admin/leader`'s body, which may be empty.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MoveTo {
    /// The voter to lead; by default the one that has replicated furthest.
    #[serde(default)]
    #[schema(minimum = 1)]
    to: Option<NodeId>,
}

/// `POST /v1/admin/leader`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LeaderMoved {
    /// The node that leads now.
    leader_id: NodeId,
    /// The node that led before.
    previous_leader_id: NodeId,
    /// The term now.
    term: u64,
    /// The term before.
    previous_term: u64,
}

/// `POST /v1/admin/campaign`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Campaigning {
    /// The node that started an election.
    node_id: NodeId,
}

/// Turns the leader's heartbeats off, and on again when dropped: a node that leads again
/// later must not do so silently.
struct HeartbeatsOff(Raft);

impl HeartbeatsOff {
    fn new(raft: &Raft) -> Self {
        raft.runtime_config().heartbeat(false);
        Self(raft.clone())
    }
}

impl Drop for HeartbeatsOff {
    fn drop(&mut self) {
        self.0.runtime_config().heartbeat(true);
    }
}

fn not_moved(message: String) -> ApiError {
    ApiError::new(ErrorCode::LeaderNotMoved, message)
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

/// Waits until `target` has replicated the leader's whole log. Other voters need not:
/// one that is down must not stand in the way of a handover.
async fn replicated(app: &App, target: NodeId, within: Duration) -> Result<(), ApiError> {
    let mut metrics = app.raft.metrics();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (matched, last) = {
            let m = metrics.borrow_and_update();
            (matched_index(&m, target), m.last_log_index)
        };
        if matched == last {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline, metrics.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                return Err(ApiError::new(
                    ErrorCode::Unavailable,
                    "raft is not running; leadership stays here",
                ))
            }
            Err(_) => {
                return Err(ApiError::new(
                    ErrorCode::NotCaughtUp,
                    format!(
                        "node {target} has replicated up to index {} of {} and did not \
                         catch up within {} ms; leadership stays here",
                        matched.unwrap_or(0),
                        last.unwrap_or(0),
                        within.as_millis()
                    ),
                ))
            }
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

/// Asks `node` to campaign, with the caller's credentials. The error says whether the
/// request may have reached it (so it may be campaigning) and why it failed.
async fn ask_to_campaign(
    app: &App,
    node: &NodeInfo,
    authorization: Option<&HeaderValue>,
) -> Result<(), (bool, String)> {
    let url = format!("{}://{}/v1/admin/campaign", app.scheme, node.client_addr);
    let mut request = app
        .client
        .post(url)
        // The target may wait out up to one more lease before it campaigns.
        .timeout(Duration::from_millis(3 * app.timing.election_max_ms));
    if let Some(auth) = authorization {
        request = request.header(header::AUTHORIZATION, auth);
    }
    let response = request
        .send()
        .await
        .map_err(|e| (!e.is_connect(), e.to_string()))?;
    if response.status() != reqwest::StatusCode::ACCEPTED {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        return Err((false, format!("{status} {body}")));
    }
    Ok(())
}

/// The handover itself, on the leader: a task of its own, holding the membership lock,
/// so a request that goes away does not cut it short.
async fn hand_over(
    app: Arc<App>,
    target: NodeId,
    node: NodeInfo,
    authorization: Option<HeaderValue>,
    _one_change: OwnedMutexGuard<()>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let timing = app.timing.clone();
    let term_before = app.raft.metrics().borrow().current_term;
    // Proposals and confirmations in flight take milliseconds; one that takes longer
    // means a slow disk or quorum, not a time to hand over.
    let wait = Duration::from_millis(timing.election_min_ms);
    let quiet = tokio::time::timeout(wait, app.quiet.hush())
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::Unavailable,
                "writes or reads in flight did not finish in time; leadership stays here",
            )
        })?;
    let heartbeats = HeartbeatsOff::new(&app.raft);
    replicated(&app, target, wait).await?;
    // The last message a follower got left at most a heartbeat ago (one in flight).
    tokio::time::sleep(Duration::from_millis(
        timing.election_max_ms + timing.heartbeat_ms,
    ))
    .await;
    if let Err((maybe_campaigning, why)) =
        ask_to_campaign(&app, &node, authorization.as_ref()).await
    {
        if !maybe_campaigning {
            return Err(not_moved(format!(
                "node {target} did not campaign: {why}; see GET /v1/cluster for who leads"
            )));
        }
        tracing::warn!(
            target,
            "no answer to the campaign request ({why}); waiting for an election"
        );
    }
    let elected = new_leader(&app, Duration::from_millis(2 * timing.election_max_ms)).await;
    drop(heartbeats);
    drop(quiet);
    let term = app.raft.metrics().borrow().current_term;
    match elected {
        Some(leader) if leader == target => {
            tracing::info!(
                from = app.id,
                to = target,
                term,
                took_ms = started.elapsed().as_millis() as u64,
                "leadership handed over"
            );
            Ok(Json(LeaderMoved {
                leader_id: target,
                previous_leader_id: app.id,
                term,
                previous_term: term_before,
            })
            .into_response())
        }
        Some(leader) => Err(not_moved(format!(
            "node {leader} was elected instead of node {target}"
        ))),
        None => Err(not_moved(format!(
            "no other node was elected within {} ms; this node still leads",
            2 * timing.election_max_ms
        ))),
    }
}

/// `POST /v1/admin/leader` with `{"to": id}` or no body (the voter that has replicated
/// furthest): hands leadership over, answering once the target leads.
#[utoipa::path(
    post,
    path = "/v1/admin/leader",
    operation_id = "move_leader",
    tag = "admin",
    request_body(
        content = Option<MoveTo>,
        content_type = "application/json",
        description = "The voter to hand leadership to; no body picks the one that has \
            replicated furthest"
    ),
    responses(
        (status = 200, description = "The target leads (or led already).", body = LeaderMoved),
        (status = 400, description = "`invalid_member_request`, `invalid_query`, `invalid_precondition`", body = Error400),
        (status = 401, description = "`unauthenticated`", body = Error401),
        (status = 403, description = "`forbidden`: not an admin token", body = Error403),
        (status = 404, description = "`node_not_found`: `to` is not a member", body = Error404),
        (status = 408, description = "`request_timeout`", body = Error408),
        (status = 409, description = "`membership_change_in_progress`, `membership_refused` (a learner, or no other voter), `not_caught_up` (the target is behind), `leader_not_moved` (another node was elected, or none)", body = Error409),
        (status = 413, description = "`value_too_large`: the body is over 256 bytes", body = Error413),
        (status = 415, description = "`unsupported_media_type`", body = Error415),
        (status = 503, description = "`no_leader`, `unavailable`", body = Error503,
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 504, description = "`outcome_unknown`: forwarded, and the leader did not answer in time; see the cluster", body = Error504),
    )
)]
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
    let authorization = headers.get(header::AUTHORIZATION).cloned();
    let req = Forwardable::new(Method::POST, &uri, headers, body, true);
    lead_or_forward(&app, req, || async {
        app.authorize_write(&caller, Need::Admin).await?;
        let one_change = app
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
                Json(LeaderMoved {
                    leader_id: app.id,
                    previous_leader_id: app.id,
                    term: m.current_term,
                    previous_term: m.current_term,
                })
                .into_response(),
            ));
        }
        let task = tokio::spawn(hand_over(
            app.clone(),
            target,
            node,
            authorization,
            one_change,
        ));
        match task.await {
            Ok(result) => result.map(Local::Done),
            Err(e) => Err(ApiError::new(
                ErrorCode::Internal,
                format!("leadership handover task: {e}"),
            )),
        }
    })
    .await
}

/// `POST /v1/admin/campaign`: this node, a voter that does not lead, starts an election
/// as soon as it has not heard from a leader for a lease (`election_max_ms`), instead of
/// after its election timeout. The leader's handover asks for it once it has been quiet
/// that long; a node that still hears from its leader a lease later refuses, so it
/// cannot depose a working leader.
#[utoipa::path(
    post,
    path = "/v1/admin/campaign",
    operation_id = "campaign",
    tag = "admin",
    responses(
        (status = 202, description = "This node started an election.", body = Campaigning),
        (status = 400, description = "`invalid_query`, `invalid_precondition`", body = Error400),
        (status = 401, description = "`unauthenticated`", body = Error401),
        (status = 403, description = "`forbidden`: not an admin token", body = Error403),
        (status = 409, description = "`membership_refused`: this node leads, is not a voter, or still hears from its leader", body = Error409),
        (status = 503, description = "`unavailable`: raft is not running", body = Error503,
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn campaign(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let NoQuery {} = parse_query(&uri)?;
    no_precondition(&headers)?;
    app.authorize(&caller, Need::Admin)?;
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
    let stopped = |e: openraft::error::Fatal<NodeId>| {
        ApiError::new(ErrorCode::Unavailable, format!("raft is not running: {e}"))
    };
    // The leader's quiet window can still carry a message the target hears late (a
    // resend after a backoff, say): wait out the lease from the last one, for at most one
    // more lease, so a leader that keeps sending is never deposed.
    let lease = Duration::from_millis(app.timing.election_max_ms);
    let deadline = tokio::time::Instant::now() + lease;
    loop {
        let heard = app
            .raft
            .with_raft_state(|st| st.vote_last_modified())
            .await
            .map_err(stopped)?;
        let Some(left) = heard.and_then(|at| lease.checked_sub(at.elapsed())) else {
            break;
        };
        if tokio::time::Instant::now() + left > deadline {
            return Err(refused(format!(
                "node {} still hears from its leader (within the last {} ms); a campaign \
                 now would only disrupt it (POST /v1/admin/leader hands leadership over)",
                app.id,
                lease.as_millis()
            )));
        }
        tokio::time::sleep(left + Duration::from_millis(10)).await;
    }
    app.raft.trigger().elect().await.map_err(stopped)?;
    Ok((StatusCode::ACCEPTED, Json(Campaigning { node_id: app.id })).into_response())
}
