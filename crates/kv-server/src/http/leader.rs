//! Serving a request on the leader: linearizable reads after a ReadIndex confirmation
//! and writes through the proposer when this node leads, otherwise by forwarding the
//! request to the leader's client address and relaying the answer.

use std::future::Future;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use kv_core::{Command, ErrorCode, OpResult};
use kv_store::typ::{NodeId, NodeInfo};

use super::answer;
use super::auth::Caller;
use super::request::Idempotency;
use super::{ApiError, App, Leader};
use crate::proposer::WriteError;
use crate::reads::ReadError;

/// How many times a request has been forwarded; bounds forwarding loops while nodes
/// disagree about who leads.
pub(crate) const HOPS_HEADER: &str = "x-quorum-kv-hops";
const MAX_HOPS: u32 = 2;
/// Most requests this node forwards to the leader at once.
pub const MAX_FORWARDS: usize = 128;

/// Request headers worth passing to the leader.
const FORWARDED_REQUEST_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "if-match",
    "if-none-match",
    "idempotency-key",
    "kv-session",
];
/// Response headers worth relaying back.
const RELAYED_RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "etag",
    "retry-after",
    "idempotency-replayed",
    "www-authenticate",
];

/// A request as it may have to travel to the leader.
pub(crate) struct Forwardable {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Writes that fail in flight have an unknown outcome; reads are merely unavailable.
    pub is_write: bool,
}

impl Forwardable {
    /// A request of `/v1/kv/{key}`, forwarded with the checked key rather than the path
    /// as received, so it means the same on the leader.
    pub(crate) fn for_key(
        method: Method,
        key: &str,
        uri: &Uri,
        headers: HeaderMap,
        body: Bytes,
        is_write: bool,
    ) -> Self {
        let mut path_and_query = kv_core::key_path(key);
        if let Some(q) = uri.query() {
            path_and_query.push('?');
            path_and_query.push_str(q);
        }
        Self {
            method,
            path_and_query,
            headers,
            body,
            is_write,
        }
    }

    /// The request as received: its method, path and query, headers and body.
    pub(crate) fn new(
        method: Method,
        uri: &Uri,
        headers: HeaderMap,
        body: Bytes,
        is_write: bool,
    ) -> Self {
        let path_and_query = uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
        Self {
            method,
            path_and_query,
            headers,
            body,
            is_write,
        }
    }
}

/// What the local attempt came to.
pub(crate) enum Local {
    Done(Response),
    /// Leadership moved before the request was applied; nothing happened here.
    NotLeader(Option<(NodeId, NodeInfo)>),
}

/// Runs `local` if this node leads; forwards to the leader otherwise, or when `local`
/// finds leadership gone.
pub(crate) async fn lead_or_forward<Fut>(
    app: &App,
    req: Forwardable,
    local: impl FnOnce() -> Fut,
) -> Result<Response, ApiError>
where
    Fut: Future<Output = Result<Local, ApiError>>,
{
    let target = match app.leader() {
        Leader::Me => match local().await? {
            Local::Done(response) => return Ok(response),
            Local::NotLeader(leader) => {
                leader.filter(|(id, _)| *id != app.id).map(|(_, node)| node)
            }
        },
        Leader::Other(node) => Some(node),
        Leader::Unknown => None,
    };
    match target {
        Some(node) => forward(app, &node, req).await,
        None => Err(ApiError::new(
            ErrorCode::NoLeader,
            "no leader is known right now; retry shortly",
        )),
    }
}

async fn forward(app: &App, node: &NodeInfo, req: Forwardable) -> Result<Response, ApiError> {
    let hops: u32 = req
        .headers
        .get(HOPS_HEADER)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    if hops >= MAX_HOPS {
        return Err(ApiError::new(
            ErrorCode::NoLeader,
            format!(
                "the request was forwarded {hops} times without reaching the leader; retry shortly"
            ),
        ));
    }
    let timeout_ms = if req.is_write {
        app.limits.write_timeout_ms
    } else {
        app.limits.read_timeout_ms
    };
    // Below the leader's cap on connections from one address, so the leader never
    // refuses this node's forwards for their number.
    let wait = Duration::from_millis(timeout_ms);
    let _permit = match tokio::time::timeout(wait, app.forwards.acquire()).await {
        Ok(Ok(permit)) => permit,
        _ => {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("{MAX_FORWARDS} requests are being forwarded to the leader; retry shortly"),
            ))
        }
    };
    let url = format!(
        "{}://{}{}",
        app.scheme, node.client_addr, req.path_and_query
    );
    let mut out = app
        .client
        .request(req.method, url)
        .timeout(Duration::from_millis(timeout_ms + 1000))
        .header(HOPS_HEADER, (hops + 1).to_string())
        .body(req.body);
    for name in FORWARDED_REQUEST_HEADERS {
        for value in req.headers.get_all(*name) {
            out = out.header(*name, value);
        }
    }
    let response = out.send().await.map_err(|e| {
        let outcome = if e.is_connect() {
            "unreachable"
        } else {
            "failed"
        };
        metrics::counter!("quorumkv_http_forwarded_requests_total", "outcome" => outcome)
            .increment(1);
        unreachable_or_unknown(e, req.is_write)
    })?;
    metrics::counter!("quorumkv_http_forwarded_requests_total", "outcome" => "answered")
        .increment(1);
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = HeaderMap::new();
    for name in RELAYED_RESPONSE_HEADERS {
        if let Some(value) = response.headers().get(*name) {
            headers.insert(HeaderName::from_static(name), value.clone());
        }
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| unreachable_or_unknown(e, req.is_write))?;
    let mut relayed = Response::new(Body::from(body));
    *relayed.status_mut() = status;
    *relayed.headers_mut() = headers;
    relayed.extensions_mut().insert(super::observe::Forwarded);
    Ok(relayed)
}

fn unreachable_or_unknown(e: reqwest::Error, is_write: bool) -> ApiError {
    if e.is_connect() {
        // Never sent: safe to report plainly unavailable.
        ApiError::new(
            ErrorCode::Unavailable,
            format!("the leader could not be reached: {e}"),
        )
    } else if is_write {
        ApiError::new(ErrorCode::OutcomeUnknown, format!(
            "the leader did not answer in time ({e}); the write may or may not have been applied, and may be retried"
        ))
    } else {
        ApiError::new(
            ErrorCode::Unavailable,
            format!("the leader did not answer in time: {e}"),
        )
    }
}

/// Serves a read from local state: at once when stale reads are allowed, otherwise on
/// the leader after a ReadIndex confirmation (forwarding there if needed).
/// `req` builds the request as it would be forwarded; a stale read never needs it.
pub(crate) async fn read<F, Fut>(
    app: &App,
    stale: bool,
    req: impl FnOnce() -> Forwardable,
    serve: F,
) -> Result<Response, ApiError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    if stale {
        return serve().await;
    }
    lead_or_forward(app, req(), || async {
        match app.reads.confirm().await {
            Ok(()) => serve().await.map(Local::Done),
            Err(ReadError::NotLeader(leader)) => Ok(Local::NotLeader(leader)),
            Err(ReadError::Timeout) => Err(ApiError::new(
                ErrorCode::Unavailable,
                "leadership could not be confirmed in time",
            )),
            Err(ReadError::Stopped(m)) => Err(ApiError::new(ErrorCode::Unavailable, m)),
        }
    })
    .await
}

/// Proposes `command` on this node (which leads) as `caller`'s, recorded under its
/// idempotency key or session if it has one (each scoped to the caller's token), and
/// answers for `key`. `created` says a success is a creation (201).
pub(crate) async fn propose(
    app: &App,
    caller: &Caller,
    key: &str,
    command: Command,
    idempotency: Option<Idempotency>,
    created: bool,
) -> Result<Local, ApiError> {
    let command = match idempotency {
        None => command,
        Some(Idempotency::Key { id, fingerprint }) => Command::Idempotent {
            id: caller.scoped_key(id),
            fingerprint,
            retain_ms: app.limits.idempotency_retention_s.saturating_mul(1000),
            command: Box::new(command),
        },
        Some(Idempotency::Session {
            id,
            seq,
            ack,
            fingerprint,
        }) => Command::Session {
            id: caller.scoped_session(id),
            seq,
            ack,
            fingerprint,
            idle_ms: app.limits.session_idle_s.saturating_mul(1000),
            command: Box::new(command),
        },
    };
    match app.proposer.write(caller.authorized(command)).await {
        Ok(OpResult::Replayed(original)) => {
            let mut local = answer::written(app, key, *original, created)?;
            if let Local::Done(response) = &mut local {
                response
                    .headers_mut()
                    .insert("idempotency-replayed", HeaderValue::from_static("true"));
            }
            Ok(local)
        }
        Ok(OpResult::IdempotencyKeyReused) => Err(ApiError::new(
            ErrorCode::IdempotencyKeyReused,
            "this Idempotency-Key, or this session's write number, was already used for a different request",
        )),
        Ok(OpResult::SessionExpired) => Err(ApiError::new(
            ErrorCode::SessionExpired,
            "this session has ended (or never began with write number 1), or this write's answer was acknowledged; it was not applied now",
        )),
        Ok(result) => answer::written(app, key, result, created),
        Err(e) => not_written(e),
    }
}

/// What a write that was not applied here answers.
pub(crate) fn not_written(e: WriteError) -> Result<Local, ApiError> {
    match e {
        WriteError::NotLeader(leader) => Ok(Local::NotLeader(leader)),
        WriteError::OutcomeUnknown => Err(ApiError::new(
            ErrorCode::OutcomeUnknown,
            "the write was proposed but its commit was not seen (it timed out or raft stopped); it may or may not have been applied. Retrying it with the same Idempotency-Key is safe: it is applied at most once",
        )),
        WriteError::Stopped(m) => Err(ApiError::new(ErrorCode::Unavailable, m)),
        e @ WriteError::Overloaded(_) => Err(ApiError::new(ErrorCode::Unavailable, e.to_string())),
        WriteError::DiskFull(full) => Err(ApiError::new(
            ErrorCode::InsufficientStorage,
            full.to_string(),
        )),
    }
}
