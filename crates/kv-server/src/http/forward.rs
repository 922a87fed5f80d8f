//! Serving a request on the leader: locally when this node leads, otherwise by
//! forwarding it to the leader's client address and relaying the answer.

use std::future::Future;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode};
use axum::response::Response;
use kv_store::typ::{NodeId, NodeInfo};

use super::{ApiError, App, Leader};

/// How many times a request has been forwarded; bounds forwarding loops while nodes
/// disagree about who leads.
pub(crate) const HOPS_HEADER: &str = "x-quorum-kv-hops";
const MAX_HOPS: u32 = 2;

/// Request headers worth passing to the leader.
const FORWARDED_REQUEST_HEADERS: &[&str] = &[
    "content-type",
    "if-match",
    "if-none-match",
    "idempotency-key",
];
/// Response headers worth relaying back.
const RELAYED_RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "etag",
    "retry-after",
    "idempotency-replayed",
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
        None => Err(ApiError::NoLeader(
            "no leader is known right now; retry shortly".into(),
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
        return Err(ApiError::NoLeader(format!(
            "the request was forwarded {hops} times without reaching the leader; retry shortly"
        )));
    }
    let timeout_ms = if req.is_write {
        app.limits.write_timeout_ms
    } else {
        app.limits.read_timeout_ms
    };
    let url = format!("http://{}{}", node.client_addr, req.path_and_query);
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
    let response = out
        .send()
        .await
        .map_err(|e| unreachable_or_unknown(e, req.is_write))?;
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
    Ok(relayed)
}

fn unreachable_or_unknown(e: reqwest::Error, is_write: bool) -> ApiError {
    if e.is_connect() {
        // Never sent: safe to report plainly unavailable.
        ApiError::Unavailable(format!("the leader could not be reached: {e}"))
    } else if is_write {
        ApiError::OutcomeUnknown(format!(
            "the leader did not answer in time ({e}); the write may or may not have been applied, and may be retried"
        ))
    } else {
        ApiError::Unavailable(format!("the leader did not answer in time: {e}"))
    }
}
