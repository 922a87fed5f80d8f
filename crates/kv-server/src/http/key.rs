//! `/v1/kv/{key}`: get, put and delete one key.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use axum::Extension;
use kv_core::validate::InputError;
use kv_core::{Command, ErrorCode, Precondition};

use super::answer;
use super::answer::{DeletedAnswer, EntryAnswer, EntryMetaAnswer, PreconditionFailedAnswer};
use super::auth::{Caller, Need};
use super::error::{
    Error400, Error401, Error403, Error404, Error408, Error413, Error415, Error422, Error503,
    Error504, Error507,
};
use super::leader::{lead_or_forward, propose, read, Forwardable};
use super::request::{
    check_content_type, check_json, idempotency, no_precondition, parse_query, precondition,
    read_body, wants_stale, GetQuery, Key, NoQuery, PutQuery,
};
use super::request::{AtMostOnce, IfMatch, IfNoneMatch};
use super::{ApiError, App};

fn serve_local_get(app: &App, caller: &Caller, key: &str) -> Result<Response, ApiError> {
    app.authorize(caller, Need::Read(key))?;
    let now = app.read_time_ms();
    match app.reader.get(key)? {
        Some(e) if e.is_live_at(now) => Ok(answer::entry(key, &e, now)),
        _ => Err(ApiError::new(ErrorCode::KeyNotFound, "key not found")),
    }
}

/// `GET /v1/kv/{key}?consistency=linearizable|stale`.
#[utoipa::path(
    get,
    path = "/v1/kv/{key}",
    tag = "kv",
    params(("key" = String, Path, description = "The key: non-empty UTF-8 of at most 4 KiB, percent-encoded; may hold `/` and `:`, but no `/`-separated part that is `.` or `..`", min_length = 1), GetQuery),
    responses(
        (status = 200, description = "The live entry.", body = EntryAnswer, headers(("ETag" = String, description = "The key's revision, quoted"))),
        (status = 400, description = "`invalid_key`, `invalid_query`, `invalid_consistency`, `invalid_precondition`", body = Error400),
        (status = 401, description = "`unauthenticated`", body = Error401),
        (status = 403, description = "`forbidden`: the token may not read the key", body = Error403),
        (status = 404, description = "`key_not_found`: absent or expired", body = Error404),
        (status = 503, description = "`no_leader`, `unavailable`", body = Error503, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn get_key(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Key(key): Key,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q: GetQuery = parse_query(&uri)?;
    let stale = wants_stale(q.consistency.as_deref())?;
    no_precondition(&headers)?;
    let req = || Forwardable::for_key(Method::GET, &key, &uri, headers, Bytes::new(), false);
    read(&app, stale, req, || async {
        serve_local_get(&app, &caller, &key)
    })
    .await
}

/// `PUT /v1/kv/{key}?ttl=S|keep_ttl=true` with a JSON body, optionally conditional.
#[utoipa::path(
    put,
    path = "/v1/kv/{key}",
    tag = "kv",
    params(("key" = String, Path, description = "The key: non-empty UTF-8 of at most 4 KiB, percent-encoded; may hold `/` and `:`, but no `/`-separated part that is `.` or `..`", min_length = 1), PutQuery, IfMatch, IfNoneMatch, AtMostOnce),
    request_body(
        content = serde_json::Value,
        description = "The value: any JSON document of at most `limits.max_value_bytes` (1 MiB), nested at most 64 deep",
        content_type = "application/json"
    ),
    responses(
        (status = 200, description = "Written.", body = EntryMetaAnswer,
            links(
                ("get" = (operation_id = "get_key", parameters(("key" = "$response.body#/key")))),
                ("delete" = (operation_id = "delete_key", parameters(("key" = "$response.body#/key")))),
            ),
            headers(("ETag" = String, description = "The key's revision, quoted"), ("Idempotency-Replayed" = String, description = "`true` when this is the recorded answer of an earlier try"))),
        (status = 201, description = "Created (with `If-None-Match: *`).", body = EntryMetaAnswer,
            links(
                ("get" = (operation_id = "get_key", parameters(("key" = "$response.body#/key")))),
                ("delete" = (operation_id = "delete_key", parameters(("key" = "$response.body#/key")))),
            ),
            headers(("ETag" = String, description = "The key's revision, quoted"), ("Idempotency-Replayed" = String, description = "`true` when this is the recorded answer of an earlier try"))),
        (status = 400, description = "`invalid_key`, `invalid_ttl`, `invalid_keep_ttl`, `conflicting_ttl`, `invalid_json`, `invalid_query`, `invalid_precondition`, `conflicting_preconditions`, `invalid_idempotency_key`, `invalid_session`", body = Error400),
        (status = 401, description = "`unauthenticated`", body = Error401),
        (status = 403, description = "`forbidden`: the token may not write the key", body = Error403),
        (status = 408, description = "`request_timeout`", body = Error408),
        (status = 412, description = "`key_exists`, `revision_mismatch`: the precondition failed; `current` holds the key's entry", body = PreconditionFailedAnswer, headers(("ETag" = String, description = "The current revision, quoted; absent when the key is"), ("Idempotency-Replayed" = String, description = "`true` when this is the recorded answer of an earlier try"))),
        (status = 413, description = "`value_too_large`", body = Error413),
        (status = 415, description = "`unsupported_media_type`", body = Error415),
        (status = 422, description = "`idempotency_key_reused`, `session_expired`", body = Error422),
        (status = 503, description = "`no_leader`, `unavailable`: not applied", body = Error503, headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 504, description = "`outcome_unknown`: may or may not have been applied", body = Error504),
        (status = 507, description = "`insufficient_storage`, `quota_exceeded`, `records_full`: not applied", body = Error507),
    )
)]
pub(crate) async fn put_key(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Key(key): Key,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let q: PutQuery = parse_query(&uri)?;
    let ttl = q.ttl()?;
    let precondition = precondition(&headers, true)?;
    check_content_type(&headers)?;
    let body_timeout = Duration::from_millis(app.limits.body_timeout_ms);
    let body = read_body(body, &headers, app.limits.max_value_bytes, body_timeout).await?;
    check_json(&body)?;
    let idem = idempotency(&headers, "PUT", &key, &uri, &body)?;
    let value = body.to_vec();
    let req = Forwardable::for_key(Method::PUT, &key, &uri, headers, body, true);
    lead_or_forward(&app, req, || async {
        app.authorize_write(&caller, Need::Write(&key)).await?;
        let command = Command::Set {
            key: key.clone(),
            value,
            ttl,
            precondition,
        };
        let created = precondition == Precondition::Absent;
        propose(&app, &caller, &key, command, idem, created).await
    })
    .await
}

/// `DELETE /v1/kv/{key}`, optionally with `If-Match`.
#[utoipa::path(
    delete,
    path = "/v1/kv/{key}",
    tag = "kv",
    params(("key" = String, Path, description = "The key: non-empty UTF-8 of at most 4 KiB, percent-encoded; may hold `/` and `:`, but no `/`-separated part that is `.` or `..`", min_length = 1), IfMatch, AtMostOnce),
    responses(
        (status = 200, description = "Deleted, or already absent.", body = DeletedAnswer, headers(("Idempotency-Replayed" = String, description = "`true` when this is the recorded answer of an earlier try"))),
        (status = 400, description = "`invalid_key`, `invalid_query`, `invalid_precondition`, `invalid_idempotency_key`, `invalid_session`", body = Error400),
        (status = 401, description = "`unauthenticated`", body = Error401),
        (status = 403, description = "`forbidden`: the token may not write the key", body = Error403),
        (status = 412, description = "`revision_mismatch`: `current` holds the key's entry, or null", body = PreconditionFailedAnswer, headers(("ETag" = String, description = "The current revision, quoted; absent when the key is"), ("Idempotency-Replayed" = String, description = "`true` when this is the recorded answer of an earlier try"))),
        (status = 422, description = "`idempotency_key_reused`, `session_expired`", body = Error422),
        (status = 503, description = "`no_leader`, `unavailable`: not applied", body = Error503, headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 504, description = "`outcome_unknown`: may or may not have been applied", body = Error504),
    )
)]
pub(crate) async fn delete_key(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Key(key): Key,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let _: NoQuery = parse_query(&uri)?;
    let precondition = precondition(&headers, false)?;
    let idem = idempotency(&headers, "DELETE", &key, &uri, b"")?;
    let req = Forwardable::for_key(Method::DELETE, &key, &uri, headers, Bytes::new(), true);
    lead_or_forward(&app, req, || async {
        app.authorize_write(&caller, Need::Write(&key)).await?;
        let command = Command::Delete {
            key: key.clone(),
            precondition,
        };
        propose(&app, &caller, &key, command, idem, false).await
    })
    .await
}

/// `/v1/kv/` with nothing after the slash: the empty key, whatever the method.
pub(crate) async fn empty_key() -> ApiError {
    InputError::EmptyKey.into()
}

/// `GET /v1/kv/`: the empty key.
#[utoipa::path(get, path = "/v1/kv/", tag = "kv",
    responses((status = 400, description = "`invalid_key`: a key is never empty", body = Error400)))]
pub(crate) async fn get_empty_key() -> ApiError {
    empty_key().await
}

/// `PUT /v1/kv/`: the empty key.
#[utoipa::path(put, path = "/v1/kv/", tag = "kv",
    responses((status = 400, description = "`invalid_key`: a key is never empty", body = Error400)))]
pub(crate) async fn put_empty_key() -> ApiError {
    empty_key().await
}

/// `DELETE /v1/kv/`: the empty key.
#[utoipa::path(delete, path = "/v1/kv/", tag = "kv",
    responses((status = 400, description = "`invalid_key`: a key is never empty", body = Error400)))]
pub(crate) async fn delete_empty_key() -> ApiError {
    empty_key().await
}
