//! `/v1/kv`: list the live entries under a prefix, and delete every key under one.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use axum::Extension;
use kv_core::{Command, ErrorCode};
use kv_store::Page;

use super::answer;
use super::answer::{PageAnswer, PrefixDeleteAnswer};
use super::auth::{Caller, Need};
use super::error::{Error400, Error401, Error403, Error422, Error503, Error504};
use super::leader::{lead_or_forward, propose, read, Forwardable};
use super::request::AtMostOnce;
use super::request::{
    idempotency, no_precondition, parse_bool, parse_query, wants_stale, ListQuery, PrefixQuery,
};
use super::{ApiError, App};

/// The most bytes of keys and values one list page holds (it always holds at least one
/// entry): 1,000 values of 1 MiB would otherwise be a 1 GiB answer.
pub(crate) const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Reads and encodes one page on the blocking pool, so a long scan never holds up the
/// async workers (and raft's heartbeats with them).
async fn serve_local_list(
    app: &App,
    caller: &Caller,
    prefix: String,
    after: Option<String>,
    limit: usize,
    keys_only: bool,
) -> Result<Response, ApiError> {
    let within = app
        .authorize(caller, Need::AnyToken)?
        .and_then(|token| token.readable_within(&prefix));
    if within.as_ref().is_some_and(Vec::is_empty) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("this token may read no key under {prefix:?}"),
        ));
    }
    let now = app.read_time_ms();
    let reader = app.reader.clone();
    tokio::task::spawn_blocking(move || {
        let page = Page {
            prefix: &prefix,
            after: after.as_deref(),
            limit,
            max_bytes: MAX_PAGE_BYTES,
            keys_only,
            within: within.as_deref(),
        };
        let (items, more) = reader.list(&page, now)?;
        Ok(answer::page(&items, more, keys_only, now))
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::Internal, format!("list task: {e}")))?
}

/// `GET /v1/kv?prefix=P&limit=N&after=K&keys_only=true`: live entries in key order, of
/// the keys the caller may read.
#[utoipa::path(
    get,
    path = "/v1/kv",
    operation_id = "list_keys",
    tag = "kv",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of live entries in key order, of the keys the token may read.", body = PageAnswer),
        (status = 400, description = "`invalid_query`, `invalid_limit`, `invalid_consistency`, `invalid_precondition`", body = Error400),
        (status = 401, description = "`unauthenticated`", body = Error401),
        (status = 403, description = "`forbidden`: the token may read no key under the prefix", body = Error403),
        (status = 503, description = "`no_leader`, `unavailable`", body = Error503, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q: ListQuery = parse_query(&uri)?;
    let limit = q.limit()?;
    let keys_only = parse_bool(q.keys_only.as_deref(), "keys_only", ErrorCode::InvalidQuery)?;
    let stale = wants_stale(q.consistency.as_deref())?;
    no_precondition(&headers)?;
    let prefix = q.prefix.unwrap_or_default();
    let after = q.after;
    let req = || Forwardable::new(Method::GET, &uri, headers, Bytes::new(), false);
    read(&app, stale, req, || {
        serve_local_list(
            &app,
            &caller,
            prefix.clone(),
            after.clone(),
            limit,
            keys_only,
        )
    })
    .await
}

/// `DELETE /v1/kv?prefix=P`: removes every key with a non-empty prefix in one command.
#[utoipa::path(
    delete,
    path = "/v1/kv",
    operation_id = "delete_prefix",
    tag = "kv",
    params(PrefixQuery, AtMostOnce),
    responses(
        (status = 200, description = "Every key under the prefix is deleted at `revision`, atomically.", body = PrefixDeleteAnswer, headers(("Idempotency-Replayed" = String, description = "`true` when this is the recorded answer of an earlier try"))),
        (status = 400, description = "`invalid_prefix`, `invalid_query`, `invalid_precondition`, `invalid_idempotency_key`, `invalid_session`", body = Error400),
        (status = 401, description = "`unauthenticated`", body = Error401),
        (status = 403, description = "`forbidden`: the token may not write every key under the prefix", body = Error403),
        (status = 422, description = "`idempotency_key_reused`, `session_expired`", body = Error422),
        (status = 503, description = "`no_leader`, `unavailable` (also while 64 prefix deletes are removing their keys): not applied", body = Error503, headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 504, description = "`outcome_unknown`: may or may not have been applied", body = Error504),
    )
)]
pub(crate) async fn delete_prefix(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q: PrefixQuery = parse_query(&uri)?;
    let prefix = q.prefix()?;
    no_precondition(&headers)?;
    let idem = idempotency(&headers, "DELETE", "", &uri, b"")?;
    let req = Forwardable::new(Method::DELETE, &uri, headers, Bytes::new(), true);
    lead_or_forward(&app, req, || async {
        app.authorize_write(&caller, Need::DeletePrefix(&prefix))
            .await?;
        let command = Command::DeletePrefix {
            prefix: prefix.clone(),
        };
        propose(&app, &caller, "", command, idem, false).await
    })
    .await
}
