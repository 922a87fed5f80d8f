//! `/v1/admin/members`: the cluster's membership, and changes to it one at a time
//! (admin only; served by the leader, forwarded there from other nodes).
//!
//! A node joins as a learner (`POST`), is promoted to voter once it has caught up
//! (`POST …/{id}/promote`), and leaves with `DELETE …/{id}`. openraft makes a voter change
//! in two steps (joint, then final configuration) driven from the caller's future, so
//! each change runs as a task of its own that finishes even when the request that asked
//! for it goes away; the lock it holds refuses a second change until it is done.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use kv_core::ErrorCode;
use kv_store::typ::{NodeId, NodeInfo, RaftMetrics};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Caller, Need};
use super::error::{
    Error400, Error401, Error403, Error404, Error408, Error409, Error413, Error415, Error503,
    Error504,
};
use super::leader::{lead_or_forward, Forwardable, Local};
use super::request::{check_content_type, no_precondition, parse_query, read_body, NoQuery};
use super::{ApiError, App};

/// A learner this close to the leader's last log index has caught up: one AppendEntries
/// carries the rest.
pub(crate) const CAUGHT_UP_ENTRIES: u64 = 64;

/// How long a request waits for its change; the change itself goes on after that.
const CHANGE_WAIT: Duration = Duration::from_secs(10);

/// The longest body of a membership request.
const MAX_REQUEST_BYTES: usize = 4096;

/// `POST /v1/admin/members`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewMember {
    /// The node's client address, `ip:port`, reachable by the other nodes.
    #[schema(example = "127.0.0.1:7004")]
    client_addr: String,
    /// The node's raft address, `ip:port`, reachable by the other nodes.
    #[schema(example = "127.0.0.1:8004")]
    raft_addr: String,
    /// The node's id; by default one above the highest any member ever had. Ids are never
    /// reused.
    #[serde(default)]
    #[schema(minimum = 1)]
    id: Option<u64>,
}

/// The members as the leader sees them: the answer of `GET /v1/admin/members` and of
/// every change.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Members)]
pub(crate) struct MembersView {
    /// The leader's id.
    #[schema(required = true)]
    leader_id: Option<u64>,
    /// The current raft term.
    term: u64,
    /// The leader's last log index.
    #[schema(required = true)]
    last_log_index: Option<u64>,
    /// Whether a voter change is half done (joint configuration).
    joint: bool,
    members: Vec<MemberView>,
}

/// One member.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Member)]
pub(crate) struct MemberView {
    id: u64,
    client_addr: String,
    raft_addr: String,
    /// A voter, or a learner.
    voter: bool,
    /// Whether it leads.
    leader: bool,
    /// The last log index it has replicated, null when not known yet.
    #[schema(required = true)]
    matched_index: Option<u64>,
    /// Entries it is behind the leader's last log index.
    lag: u64,
}

/// `POST /v1/admin/members`'s answer: the new learner and the cluster it joins.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = AddedMember)]
pub(crate) struct AddedMemberView {
    id: u64,
    /// The id of the cluster it joins.
    cluster_id: String,
    client_addr: String,
    raft_addr: String,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidMemberRequest, message)
}

pub(super) fn in_progress() -> ApiError {
    ApiError::new(
        ErrorCode::MembershipChangeInProgress,
        "another membership change is in progress; retry when it is done",
    )
}

/// How far node `id` has replicated, as the leader sees it: its own last log index for
/// the leader itself.
pub(super) fn matched_index(m: &RaftMetrics, id: NodeId) -> Option<u64> {
    if id == m.id {
        return m.last_log_index;
    }
    m.replication
        .as_ref()
        .and_then(|r| r.get(&id).copied().flatten())
        .map(|l| l.index)
}

/// `404 node_not_found` unless `id` is a member.
pub(super) fn require_member(m: &RaftMetrics, id: NodeId) -> Result<(), ApiError> {
    match m.membership_config.membership().get_node(&id) {
        Some(_) => Ok(()),
        None => Err(ApiError::new(
            ErrorCode::NodeNotFound,
            format!("node {id} is not a member"),
        )),
    }
}

/// The members as the leader sees them: roles, and how far each has replicated.
fn describe(m: &RaftMetrics) -> MembersView {
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let last = m.last_log_index.unwrap_or(0);
    let members = membership
        .nodes()
        .map(|(id, node)| {
            let matched_index = matched_index(m, *id);
            MemberView {
                id: *id,
                client_addr: node.client_addr.clone(),
                raft_addr: node.raft_addr.clone(),
                voter: voters.contains(id),
                leader: m.current_leader == Some(*id),
                matched_index,
                lag: last.saturating_sub(matched_index.unwrap_or(0)),
            }
        })
        .collect();
    MembersView {
        leader_id: m.current_leader,
        term: m.current_term,
        last_log_index: m.last_log_index,
        joint: membership.get_joint_config().len() > 1,
        members,
    }
}

/// `GET /v1/admin/members`: every member with its role and replication lag.
#[utoipa::path(
    get,
    path = "/v1/admin/members",
    operation_id = "list_members",
    tag = "admin",
    responses(
        (status = 200, description = "The members, as the leader sees them.", body = MembersView),
        (status = 400, description = "`invalid_query`, `invalid_precondition`", body = Error400),
        (status = 401, description = "`unauthenticated`", body = Error401),
        (status = 403, description = "`forbidden`: not an admin token", body = Error403),
        (status = 503, description = "`no_leader`, `unavailable`", body = Error503,
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let NoQuery {} = parse_query(&uri)?;
    no_precondition(&headers)?;
    app.authorize(&caller, Need::Admin)?;
    let req = Forwardable::new(Method::GET, &uri, headers, Bytes::new(), false);
    lead_or_forward(&app, req, || async {
        let m = app.raft.metrics().borrow().clone();
        Ok(Local::Done(Json(describe(&m)).into_response()))
    })
    .await
}

/// What a membership change ended with, in the API's terms.
fn changed(
    app: &App,
    result: Result<(), RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>>,
) -> Result<Local, ApiError> {
    match result {
        Ok(()) => {
            let m = app.raft.metrics().borrow().clone();
            Ok(Local::Done(Json(describe(&m)).into_response()))
        }
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Ok(Local::NotLeader(f.leader_id.zip(f.leader_node)))
        }
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => match e {
            ChangeMembershipError::InProgress(_) => Err(in_progress()),
            e => Err(ApiError::new(ErrorCode::MembershipRefused, e.to_string())),
        },
        Err(RaftError::Fatal(e)) => Err(ApiError::new(
            ErrorCode::Unavailable,
            format!("raft is not running: {e}"),
        )),
    }
}

/// Runs `change` as a task holding the membership lock, and waits for it a while: the
/// change finishes (both steps of a voter change) even if this request goes away.
async fn run_change<F>(
    app: &Arc<App>,
    change: impl FnOnce(Arc<App>) -> F,
) -> Result<Local, ApiError>
where
    F: std::future::Future<
            Output = Result<(), RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>>,
        > + Send
        + 'static,
{
    let guard = app
        .membership
        .clone()
        .try_lock_owned()
        .map_err(|_| in_progress())?;
    let m = app.raft.metrics().borrow().clone();
    if m.membership_config.membership().get_joint_config().len() > 1 {
        return Err(in_progress());
    }
    let work = change(app.clone());
    let task = tokio::spawn(async move {
        let _held = guard;
        work.await
    });
    match tokio::time::timeout(CHANGE_WAIT, task).await {
        Ok(Ok(result)) => changed(app, result),
        Ok(Err(e)) => Err(ApiError::new(
            ErrorCode::Internal,
            format!("membership change task: {e}"),
        )),
        Err(_) => Err(ApiError::new(
            ErrorCode::OutcomeUnknown,
            format!(
                "the change did not complete within {} s; it goes on, see GET \
                 /v1/admin/members",
                CHANGE_WAIT.as_secs()
            ),
        )),
    }
}

fn addr(what: &str, raw: &str) -> Result<SocketAddr, ApiError> {
    let addr: SocketAddr = raw
        .parse()
        .map_err(|_| invalid(format!("{what} {raw:?} is not an ip:port address")))?;
    if addr.ip().is_unspecified() || addr.port() == 0 {
        return Err(invalid(format!(
            "{what} {addr} is not an address other nodes can reach"
        )));
    }
    Ok(addr)
}

/// `POST /v1/admin/members` with `{"client_addr", "raft_addr", "id"?}`: adds a node as a
/// learner; answers `201` with its id and the cluster id it joins. Ids are never
/// reused: the default is one above the highest any membership ever named.
#[utoipa::path(
    post,
    path = "/v1/admin/members",
    operation_id = "add_member",
    tag = "admin",
    request_body = NewMember,
    responses(
        (status = 201, description = "The node is a learner of the cluster.", body = AddedMemberView,
            links(
                ("promote" = (operation_id = "promote_member", parameters(("id" = "$response.body#/id")))),
                ("remove" = (operation_id = "remove_member", parameters(("id" = "$response.body#/id")))),
            )),
        (status = 400, description = "`invalid_member_request`, `invalid_query`, `invalid_precondition`", body = Error400),
        (status = 401, description = "`unauthenticated`", body = Error401),
        (status = 403, description = "`forbidden`: not an admin token", body = Error403),
        (status = 408, description = "`request_timeout`", body = Error408),
        (status = 409, description = "`membership_change_in_progress`, `node_id_used`, `address_in_use`, `membership_refused`", body = Error409),
        (status = 413, description = "`value_too_large`: the body is over 4 KiB", body = Error413),
        (status = 415, description = "`unsupported_media_type`", body = Error415),
        (status = 503, description = "`no_leader`, `unavailable`", body = Error503,
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 504, description = "`outcome_unknown`: the change goes on; see the members", body = Error504),
    )
)]
pub(crate) async fn add(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let NoQuery {} = parse_query(&uri)?;
    no_precondition(&headers)?;
    check_content_type(&headers)?;
    let timeout = Duration::from_millis(app.limits.body_timeout_ms);
    let body = read_body(body, &headers, MAX_REQUEST_BYTES, timeout).await?;
    let new: NewMember = serde_json::from_slice(&body).map_err(|e| {
        invalid(format!(
            "expected {{\"client_addr\": \"ip:port\", \"raft_addr\": \"ip:port\", \"id\"?: n}}: {e}"
        ))
    })?;
    let client_addr = addr("client_addr", &new.client_addr)?;
    let raft_addr = addr("raft_addr", &new.raft_addr)?;
    if client_addr == raft_addr {
        return Err(invalid("client_addr and raft_addr must differ"));
    }
    if new.id == Some(0) {
        return Err(invalid("node ids start at 1"));
    }
    let req = Forwardable::new(Method::POST, &uri, headers, body, true);
    lead_or_forward(&app, req, || async {
        app.authorize_write(&caller, Need::Admin).await?;
        let m = app.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let ever = app.reader.max_node_id();
        let highest = membership.nodes().map(|(id, _)| *id).fold(ever, u64::max);
        let id = new.id.unwrap_or(highest + 1);
        if membership.get_node(&id).is_some() {
            return Err(ApiError::new(
                ErrorCode::NodeIdUsed,
                format!("node {id} is a member already"),
            ));
        }
        if id <= ever {
            // A new id means no node takes a new, empty log for the old node's.
            return Err(ApiError::new(
                ErrorCode::NodeIdUsed,
                format!(
                    "node {id} was a member before and ids are never reused; use {} or above",
                    ever + 1
                ),
            ));
        }
        let taken = [client_addr.to_string(), raft_addr.to_string()];
        if let Some((other, _)) = membership
            .nodes()
            .find(|(_, n)| taken.contains(&n.client_addr) || taken.contains(&n.raft_addr))
        {
            return Err(ApiError::new(
                ErrorCode::AddressInUse,
                format!("node {other} uses one of these addresses; remove it first to reuse them"),
            ));
        }
        let node = NodeInfo {
            client_addr: client_addr.to_string(),
            raft_addr: raft_addr.to_string(),
        };
        let local = run_change(&app, move |app| async move {
            app.raft.add_learner(id, node, false).await.map(|_| ())
        })
        .await?;
        Ok(match local {
            Local::Done(_) => Local::Done(
                (
                    StatusCode::CREATED,
                    Json(AddedMemberView {
                        id,
                        cluster_id: app.cluster_id.get(),
                        client_addr: client_addr.to_string(),
                        raft_addr: raft_addr.to_string(),
                    }),
                )
                    .into_response(),
            ),
            other => other,
        })
    })
    .await
}

fn parse_id(raw: &str) -> Result<NodeId, ApiError> {
    Some(raw)
        .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .filter(|id| *id > 0)
        .ok_or_else(|| invalid(format!("{raw:?} is not a node id")))
}

/// `POST /v1/admin/members/{id}/promote`: makes a caught-up learner a voter.
#[utoipa::path(
    post,
    path = "/v1/admin/members/{id}/promote",
    operation_id = "promote_member",
    tag = "admin",
    params(("id" = u64, Path, description = "The node's id", minimum = 1)),
    responses(
        (status = 200, description = "The members after the change.", body = MembersView),
        (status = 400, description = "`invalid_member_request` (a bad id), `invalid_query`, `invalid_precondition`", body = Error400),
        (status = 401, description = "`unauthenticated`", body = Error401),
        (status = 403, description = "`forbidden`: not an admin token", body = Error403),
        (status = 404, description = "`node_not_found`", body = Error404),
        (status = 409, description = "`membership_change_in_progress`, `not_caught_up`, `membership_refused` (a voter already)", body = Error409),
        (status = 503, description = "`no_leader`, `unavailable`", body = Error503,
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 504, description = "`outcome_unknown`: the change goes on; see the members", body = Error504),
    )
)]
pub(crate) async fn promote(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let NoQuery {} = parse_query(&uri)?;
    no_precondition(&headers)?;
    let id = parse_id(&id)?;
    let req = Forwardable::new(Method::POST, &uri, headers, Bytes::new(), true);
    lead_or_forward(&app, req, || async {
        app.authorize_write(&caller, Need::Admin).await?;
        let m = app.raft.metrics().borrow().clone();
        require_member(&m, id)?;
        if m.membership_config
            .membership()
            .voter_ids()
            .any(|v| v == id)
        {
            return Err(ApiError::new(
                ErrorCode::MembershipRefused,
                format!("node {id} is a voter already"),
            ));
        }
        let last = m.last_log_index.unwrap_or(0);
        let matched = matched_index(&m, id).unwrap_or(0);
        let lag = last.saturating_sub(matched);
        if lag > CAUGHT_UP_ENTRIES || matched == 0 {
            return Err(ApiError::new(
                ErrorCode::NotCaughtUp,
                format!(
                    "node {id} has replicated up to index {matched} of {last} ({lag} behind); \
                     promote it once it is within {CAUGHT_UP_ENTRIES}"
                ),
            ));
        }
        run_change(&app, move |app| async move {
            let ids = BTreeSet::from([id]);
            app.raft
                .change_membership(ChangeMembers::AddVoterIds(ids), false)
                .await
                .map(|_| ())
        })
        .await
    })
    .await
}

/// `DELETE /v1/admin/members/{id}`: removes a voter or a learner; the leader too, which
/// steps down once the change is applied and the others elect a new one.
#[utoipa::path(
    delete,
    path = "/v1/admin/members/{id}",
    operation_id = "remove_member",
    tag = "admin",
    params(("id" = u64, Path, description = "The node's id", minimum = 1)),
    responses(
        (status = 200, description = "The members after the change.", body = MembersView),
        (status = 400, description = "`invalid_member_request` (a bad id), `invalid_query`, `invalid_precondition`", body = Error400),
        (status = 401, description = "`unauthenticated`", body = Error401),
        (status = 403, description = "`forbidden`: not an admin token", body = Error403),
        (status = 404, description = "`node_not_found`", body = Error404),
        (status = 409, description = "`membership_change_in_progress`, `membership_refused` (it would leave no voter)", body = Error409),
        (status = 503, description = "`no_leader`, `unavailable`", body = Error503,
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 504, description = "`outcome_unknown`: the change goes on; see the members", body = Error504),
    )
)]
pub(crate) async fn remove(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let NoQuery {} = parse_query(&uri)?;
    no_precondition(&headers)?;
    let id = parse_id(&id)?;
    let req = Forwardable::new(Method::DELETE, &uri, headers, Bytes::new(), true);
    lead_or_forward(&app, req, || async {
        app.authorize_write(&caller, Need::Admin).await?;
        let m = app.raft.metrics().borrow().clone();
        require_member(&m, id)?;
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        let change = if voters.contains(&id) {
            let left = voters.len() - 1;
            // Removing the leader of two voters can leave the last one unable to commit
            // the final configuration (openraft #2091): refuse rather than stall.
            if left == 0 || (left == 1 && id == app.id) {
                return Err(ApiError::new(
                    ErrorCode::MembershipRefused,
                    format!(
                        "removing node {id} would leave {left} voter(s) and no way to \
                         commit the change; add a voter first"
                    ),
                ));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        run_change(&app, move |app| async move {
            app.raft.change_membership(change, false).await.map(|_| ())
        })
        .await
    })
    .await
}

/// How often the leader looks for a joint configuration no change task is finishing.
const JOINT_CHECK: Duration = Duration::from_secs(1);

/// On the leader, finishes a joint configuration that an earlier leader committed but
/// did not replace by the final one (it stopped between the two steps of a voter
/// change): the final configuration is the joint one's last half. A change task of this
/// node holds the lock through both of its steps, so this never races one.
pub(crate) async fn finish_joint_configurations(
    app: Arc<App>,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(JOINT_CHECK) => {}
        }
        let m = app.raft.metrics().borrow().clone();
        let configs = m.membership_config.membership().get_joint_config().clone();
        if m.current_leader != Some(app.id) || configs.len() < 2 {
            continue;
        }
        let Ok(guard) = app.membership.clone().try_lock_owned() else {
            continue;
        };
        let last = configs.last().cloned().unwrap_or_default();
        let raft = app.raft.clone();
        // A task of its own, as every change: shutdown must not cut it between steps.
        let task = tokio::spawn(async move {
            let _held = guard;
            raft.change_membership(ChangeMembers::ReplaceAllVoters(last.clone()), false)
                .await
                .map(|_| last)
        });
        match task.await {
            Ok(Ok(voters)) => tracing::info!(
                ?voters,
                "finished a joint configuration an earlier leader left behind"
            ),
            // Not committed yet (this leader commits it with its first entries), or
            // leadership moved on: the next look tries again.
            Ok(Err(e)) => tracing::debug!("joint configuration not finished yet: {e}"),
            Err(e) => tracing::warn!("finishing a joint configuration: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn node_ids_in_paths_are_digits_from_one() {
        assert_eq!(super::parse_id("7").ok(), Some(7));
        // str::parse alone takes a leading `+`, which an integer in the description is not.
        for bad in ["0", "+7", "-7", "7.0", "", "x", "18446744073709551616"] {
            let e = super::parse_id(bad).expect_err("refused");
            assert_eq!(e.code(), super::ErrorCode::InvalidMemberRequest, "{bad}");
        }
    }
}
