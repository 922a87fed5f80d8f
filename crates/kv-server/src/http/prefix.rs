//! `/v1/kv`: list the live entries under a prefix, and delete every key under one.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use kv_core::{Command, ErrorCode};

use super::answer;
use super::leader::{lead_or_forward, propose, read, Forwardable};
use super::request::{idempotency, parse_bool, parse_query, wants_stale, ListQuery, PrefixQuery};
use super::{ApiError, App};

fn serve_local_list(
    app: &App,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
    keys_only: bool,
) -> Result<Response, ApiError> {
    let now = app.read_time_ms();
    let (items, more) = app.reader.list(prefix, after, limit, now)?;
    Ok(answer::page(&items, more, keys_only, now))
}

/// `GET /v1/kv?prefix=P&limit=N&after=K&keys_only=true`: live entries in key order.
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q: ListQuery = parse_query(&uri)?;
    let limit = q.limit()?;
    let keys_only = parse_bool(q.keys_only.as_deref(), "keys_only", ErrorCode::InvalidQuery)?;
    let stale = wants_stale(q.consistency.as_deref())?;
    let prefix = q.prefix.unwrap_or_default();
    let after = q.after;
    read(&app, stale, &uri, headers, || {
        serve_local_list(&app, &prefix, after.as_deref(), limit, keys_only)
    })
    .await
}

/// `DELETE /v1/kv?prefix=P`: removes every key with a non-empty prefix in one command.
pub(crate) async fn delete_prefix(
    State(app): State<Arc<App>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q: PrefixQuery = parse_query(&uri)?;
    let prefix = q.prefix()?;
    let idem = idempotency(&headers, "DELETE", "", &uri, b"")?;
    let req = Forwardable::new(Method::DELETE, &uri, headers, Bytes::new(), true);
    lead_or_forward(&app, req, || {
        let command = Command::DeletePrefix {
            prefix: prefix.clone(),
        };
        propose(&app, "", command, idem, false)
    })
    .await
}
