//! `/v1/kv/{key}`: get, put and delete one key.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use kv_core::validate::{check_key, parse_ttl_seconds};
use kv_core::{Command, Entry, Failure, OpResult, Precondition, Ttl};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::forward::{lead_or_forward, Forwardable, Local};
use super::{ApiError, App};
use crate::proposer::WriteError;
use crate::reads::ReadError;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GetQuery {
    consistency: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PutQuery {
    ttl: Option<String>,
    keep_ttl: Option<String>,
}

impl PutQuery {
    fn ttl(&self) -> Result<Ttl, ApiError> {
        let keep = parse_bool(self.keep_ttl.as_deref(), "keep_ttl", "invalid_keep_ttl")?;
        match (&self.ttl, keep) {
            (Some(_), true) => Err(ApiError::bad(
                "conflicting_ttl",
                "ttl and keep_ttl=true contradict each other: send one",
            )),
            (Some(raw), false) => Ok(Ttl::AfterMs(parse_ttl_seconds(raw)?)),
            (None, true) => Ok(Ttl::Keep),
            (None, false) => Ok(Ttl::Clear),
        }
    }
}

/// Reads `If-None-Match: *` (create-if-absent, PUT only) or `If-Match: "<revision>"`.
fn precondition(headers: &HeaderMap, allow_create: bool) -> Result<Precondition, ApiError> {
    let none_match: Vec<_> = headers.get_all(header::IF_NONE_MATCH).iter().collect();
    let if_match: Vec<_> = headers.get_all(header::IF_MATCH).iter().collect();
    let invalid = |m: &str| Err(ApiError::bad("invalid_precondition", m));
    match (none_match.as_slice(), if_match.as_slice()) {
        ([], []) => Ok(Precondition::Always),
        ([_, ..], [_, ..]) => Err(ApiError::bad(
            "conflicting_preconditions",
            "send either If-None-Match or If-Match, not both",
        )),
        ([v], []) if allow_create => match v.as_bytes() {
            b"*" => Ok(Precondition::Absent),
            _ => invalid("If-None-Match accepts only * (create if absent)"),
        },
        ([_], []) => invalid("If-None-Match: * is only for PUT"),
        ([], [v]) => {
            let revision = v
                .to_str()
                .ok()
                .and_then(|t| t.strip_prefix('"')?.strip_suffix('"'))
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse::<u64>().ok());
            match revision {
                Some(r) => Ok(Precondition::Revision(r)),
                None => invalid("If-Match must be one quoted revision, like \"42\""),
            }
        }
        _ => invalid("send at most one If-None-Match or If-Match header"),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NoQuery {}

fn parse_query<T: DeserializeOwned + Default>(uri: &axum::http::Uri) -> Result<T, ApiError> {
    match uri.query() {
        None => Ok(T::default()),
        Some(q) => {
            serde_urlencoded::from_str(q).map_err(|e| ApiError::bad("invalid_query", e.to_string()))
        }
    }
}

fn key_from(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(key) = path.map_err(|e| ApiError::bad("invalid_key", e.body_text()))?;
    check_key(&key)?;
    Ok(key)
}

fn etag(revision: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{revision}\""))
        .expect("a quoted number is a valid header value")
}

fn json_response(status: StatusCode, body: Vec<u8>, revision: Option<u64>) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(r) = revision {
        headers.insert(header::ETAG, etag(r));
    }
    response
}

fn push_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(out, value).expect("strings and numbers always serialize");
}

/// Writes an entry as JSON. The stored value is already validated JSON text, so it is
/// copied in as is rather than parsed again.
fn entry_json(
    key: &str,
    revision: u64,
    create_revision: u64,
    version: u64,
    expires_at_ms: Option<u64>,
    now_ms: u64,
    value: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + key.len() + value.map_or(0, <[u8]>::len));
    out.extend_from_slice(b"{\"key\":");
    push_json(&mut out, key);
    if let Some(v) = value {
        out.extend_from_slice(b",\"value\":");
        out.extend_from_slice(v);
    }
    out.extend_from_slice(b",\"revision\":");
    push_json(&mut out, &revision);
    out.extend_from_slice(b",\"create_revision\":");
    push_json(&mut out, &create_revision);
    out.extend_from_slice(b",\"version\":");
    push_json(&mut out, &version);
    out.extend_from_slice(b",\"expires_at_ms\":");
    push_json(&mut out, &expires_at_ms);
    out.extend_from_slice(b",\"ttl_ms\":");
    push_json(&mut out, &expires_at_ms.map(|at| at.saturating_sub(now_ms)));
    out.push(b'}');
    out
}

/// [`entry_json`] of a stored entry, with or without its value.
fn stored_entry_json(key: &str, e: &Entry, now_ms: u64, with_value: bool) -> Vec<u8> {
    let value = with_value.then_some(e.value.as_slice());
    entry_json(
        key,
        e.revision,
        e.create_revision,
        e.version,
        e.expires_at_ms,
        now_ms,
        value,
    )
}

fn serve_local_get(app: &App, key: &str) -> Result<Response, ApiError> {
    let now = app.read_time_ms();
    match app.reader.get(key)? {
        Some(e) if e.is_live_at(now) => {
            let body = stored_entry_json(key, &e, now, true);
            Ok(json_response(StatusCode::OK, body, Some(e.revision)))
        }
        _ => Err(ApiError::KeyNotFound),
    }
}

fn forwardable(
    method: Method,
    uri: &axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
    is_write: bool,
) -> Forwardable {
    let path_and_query = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
    Forwardable {
        method,
        path_and_query,
        headers,
        body,
        is_write,
    }
}

/// Whether a read asked for `consistency=stale` (default: linearizable).
fn wants_stale(consistency: Option<&str>) -> Result<bool, ApiError> {
    match consistency {
        Some("stale") => Ok(true),
        None | Some("linearizable") => Ok(false),
        Some(other) => Err(ApiError::bad(
            "invalid_consistency",
            format!("consistency must be linearizable or stale, got {other:?}"),
        )),
    }
}

/// Serves a read from local state: at once when stale reads are allowed, otherwise on
/// the leader after a ReadIndex confirmation (forwarding there if needed).
async fn read<F>(
    app: &App,
    stale: bool,
    uri: &Uri,
    headers: HeaderMap,
    serve: F,
) -> Result<Response, ApiError>
where
    F: Fn() -> Result<Response, ApiError>,
{
    if stale {
        return serve();
    }
    let req = forwardable(Method::GET, uri, headers, Bytes::new(), false);
    lead_or_forward(app, req, || async {
        match app.reads.confirm().await {
            Ok(()) => serve().map(Local::Done),
            Err(ReadError::NotLeader(leader)) => Ok(Local::NotLeader(leader)),
            Err(ReadError::Timeout) => Err(ApiError::Unavailable(
                "leadership could not be confirmed in time".into(),
            )),
            Err(ReadError::Stopped(m)) => Err(ApiError::Unavailable(m)),
        }
    })
    .await
}

pub(crate) async fn get_key(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = key_from(path)?;
    let q: GetQuery = parse_query(&uri)?;
    let stale = wants_stale(q.consistency.as_deref())?;
    read(&app, stale, &uri, headers, || serve_local_get(&app, &key)).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    prefix: Option<String>,
    limit: Option<String>,
    after: Option<String>,
    keys_only: Option<String>,
    consistency: Option<String>,
}

/// The most entries one list page returns.
const MAX_LIST_LIMIT: usize = 1000;

/// Reads a `true`/`false` query flag (absent = false); anything else is `code`.
fn parse_bool(raw: Option<&str>, name: &str, code: &'static str) -> Result<bool, ApiError> {
    match raw {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::bad(
            code,
            format!("{name} must be true or false, got {other:?}"),
        )),
    }
}

fn serve_local_list(
    app: &App,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
    keys_only: bool,
) -> Result<Response, ApiError> {
    let now = app.read_time_ms();
    let (items, more) = app.reader.list(prefix, after, limit, now)?;
    let mut body = b"{\"items\":[".to_vec();
    for (i, (key, e)) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend(stored_entry_json(key, e, now, !keys_only));
    }
    body.extend_from_slice(b"],\"next\":");
    let next = items.last().filter(|_| more).map(|(k, _)| k.as_str());
    push_json(&mut body, &next);
    body.push(b'}');
    Ok(json_response(StatusCode::OK, body, None))
}

/// `GET /v1/kv?prefix=P&limit=N&after=K&keys_only=true`: live entries in key order.
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q: ListQuery = parse_query(&uri)?;
    let limit = match q.limit.as_deref() {
        None => 100,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::bad(
                    "invalid_limit",
                    format!("limit must be a whole number from 1 to {MAX_LIST_LIMIT}, got {raw:?}"),
                )
            })?,
    };
    let keys_only = parse_bool(q.keys_only.as_deref(), "keys_only", "invalid_query")?;
    let stale = wants_stale(q.consistency.as_deref())?;
    let prefix = q.prefix.unwrap_or_default();
    let after = q.after;
    read(&app, stale, &uri, headers, || {
        serve_local_list(&app, &prefix, after.as_deref(), limit, keys_only)
    })
    .await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PrefixQuery {
    prefix: Option<String>,
}

/// `DELETE /v1/kv?prefix=P`: removes every key with a non-empty prefix in one command.
pub(crate) async fn delete_prefix(
    State(app): State<Arc<App>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q: PrefixQuery = parse_query(&uri)?;
    let prefix = q.prefix.filter(|p| !p.is_empty()).ok_or_else(|| {
        ApiError::bad(
            "invalid_prefix",
            "a non-empty prefix is required: DELETE /v1/kv?prefix=P (the whole store cannot be deleted at once)",
        )
    })?;
    let idem = idempotency(&headers, "DELETE", "", &uri, b"")?;
    let req = forwardable(Method::DELETE, &uri, headers, Bytes::new(), true);
    lead_or_forward(&app, req, || {
        let command = Command::DeletePrefix {
            prefix: prefix.clone(),
        };
        propose(&app, "", command, idem, false)
    })
    .await
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let mime = ct
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "values are JSON: send content-type application/json, not {mime:?}"
        )))
    }
}

/// How far past the limit a too-large body is still read (and discarded) before the
/// 413 goes out: a client still sending when the server answers and closes would see a
/// broken pipe instead of the 413. Bodies larger than this are cut off.
const TOO_LARGE_DRAIN: usize = 4 * 1024 * 1024;

async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::TooLarge(format!("values may be at most {limit} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit + TOO_LARGE_DRAIN) {
        return Err(too_large());
    }
    // The only error a body within the limit can produce is a broken connection, whose
    // answer nobody reads; anything else here is the limit.
    match axum::body::to_bytes(body, limit + TOO_LARGE_DRAIN).await {
        Ok(bytes) if bytes.len() <= limit => Ok(bytes),
        _ => Err(too_large()),
    }
}

fn precondition_failed(app: &App, key: &str, failure: Failure, current: Option<Entry>) -> Response {
    let message = match failure {
        Failure::KeyExists => "the key already exists; current holds its entry",
        Failure::RevisionMismatch => {
            "the key is not at the expected revision; current holds its entry (null when absent)"
        }
    };
    let mut body =
        serde_json::to_vec(&serde_json::json!({ "code": failure.code(), "message": message }))
            .expect("a small object serializes");
    body.splice(0..0, b"{\"error\":".iter().copied());
    body.extend_from_slice(b",\"current\":");
    let revision = current.as_ref().map(|e| e.revision);
    match current {
        Some(e) => body.extend(stored_entry_json(key, &e, app.read_time_ms(), true)),
        None => body.extend_from_slice(b"null"),
    }
    body.push(b'}');
    json_response(StatusCode::PRECONDITION_FAILED, body, revision)
}

/// `{"deleted": …, "revision": …}`: a count for prefix deletes, a flag for one key.
fn deleted_answer(deleted: serde_json::Value, revision: u64) -> Local {
    let body = serde_json::to_vec(&serde_json::json!({ "deleted": deleted, "revision": revision }))
        .expect("a small object serializes");
    Local::Done(json_response(StatusCode::OK, body, None))
}

fn written_response(
    app: &App,
    key: &str,
    result: OpResult,
    created: bool,
) -> Result<Local, ApiError> {
    match result {
        OpResult::Failed { failure, current } => {
            Ok(Local::Done(precondition_failed(app, key, failure, current)))
        }
        OpResult::Written {
            revision,
            create_revision,
            version,
            expires_at_ms,
        } => {
            let body = entry_json(
                key,
                revision,
                create_revision,
                version,
                expires_at_ms,
                app.read_time_ms(),
                None,
            );
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(Local::Done(json_response(status, body, Some(revision))))
        }
        OpResult::DeletedPrefix { deleted, revision } => {
            Ok(deleted_answer(deleted.into(), revision))
        }
        OpResult::Deleted { deleted, revision } => Ok(deleted_answer(deleted.into(), revision)),
        other => Err(ApiError::Internal(format!(
            "unexpected write result {other:?}"
        ))),
    }
}

/// Header naming a write's idempotency key.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A write's idempotency key and the fingerprint of the request carrying it.
struct Idempotency {
    id: String,
    fingerprint: u128,
}

/// Reads `Idempotency-Key` (1 to 255 visible ASCII characters) and fingerprints the
/// request by what decides its effect: method, key or prefix, query, preconditions, body.
fn idempotency(
    headers: &HeaderMap,
    method: &str,
    target: &str,
    uri: &Uri,
    body: &[u8],
) -> Result<Option<Idempotency>, ApiError> {
    let values: Vec<_> = headers.get_all(IDEMPOTENCY_KEY).iter().collect();
    let raw = match values.as_slice() {
        [] => return Ok(None),
        [v] => v.as_bytes(),
        _ => {
            return Err(ApiError::bad(
                "invalid_idempotency_key",
                "send one Idempotency-Key header",
            ))
        }
    };
    if raw.is_empty() || raw.len() > 255 || !raw.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(ApiError::bad(
            "invalid_idempotency_key",
            "an Idempotency-Key is 1 to 255 visible ASCII characters",
        ));
    }
    let header = |name| headers.get(name).map_or(&b""[..], HeaderValue::as_bytes);
    let fingerprint = kv_core::fingerprint(&[
        method.as_bytes(),
        target.as_bytes(),
        uri.query().unwrap_or("").as_bytes(),
        header(header::IF_MATCH),
        header(header::IF_NONE_MATCH),
        body,
    ]);
    let id = String::from_utf8_lossy(raw).into_owned();
    Ok(Some(Idempotency { id, fingerprint }))
}

/// Proposes `command`, recorded under its idempotency key if it has one. `created`
/// says a success is a creation (201).
async fn propose(
    app: &App,
    key: &str,
    command: Command,
    idempotency: Option<Idempotency>,
    created: bool,
) -> Result<Local, ApiError> {
    let command = match idempotency {
        None => command,
        Some(Idempotency { id, fingerprint }) => Command::Idempotent {
            id,
            fingerprint,
            retain_ms: app.limits.idempotency_retention_s.saturating_mul(1000),
            command: Box::new(command),
        },
    };
    match app.proposer.write(command).await {
        Ok(OpResult::Replayed(original)) => {
            let mut local = written_response(app, key, *original, created)?;
            if let Local::Done(response) = &mut local {
                response.headers_mut().insert("idempotency-replayed", HeaderValue::from_static("true"));
            }
            Ok(local)
        }
        Ok(OpResult::IdempotencyKeyReused) => Err(ApiError::IdempotencyKeyReused),
        Ok(result) => written_response(app, key, result, created),
        Err(WriteError::NotLeader(leader)) => Ok(Local::NotLeader(leader)),
        Err(WriteError::OutcomeUnknown) => Err(ApiError::OutcomeUnknown(
            "the write was proposed but its commit was not seen (it timed out or raft stopped); it may or may not have been applied. Retrying it with the same Idempotency-Key is safe: it is applied at most once".into(),
        )),
        Err(WriteError::Stopped(m)) => Err(ApiError::Unavailable(m)),
        Err(WriteError::DiskFull(full)) => Err(ApiError::InsufficientStorage(full.to_string())),
    }
}

pub(crate) async fn put_key(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = key_from(path)?;
    let q: PutQuery = parse_query(&uri)?;
    let ttl = q.ttl()?;
    let precondition = precondition(&headers, true)?;
    check_content_type(&headers)?;
    let body = read_body(body, &headers, app.limits.max_value_bytes).await?;
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
        return Err(ApiError::bad(
            "invalid_json",
            format!("the value is not valid JSON: {e}"),
        ));
    }
    let idem = idempotency(&headers, "PUT", &key, &uri, &body)?;
    let value = body.to_vec();
    let req = forwardable(Method::PUT, &uri, headers, body, true);
    lead_or_forward(&app, req, || {
        let command = Command::Set {
            key: key.clone(),
            value,
            ttl,
            precondition,
        };
        let created = precondition == Precondition::Absent;
        propose(&app, &key, command, idem, created)
    })
    .await
}

pub(crate) async fn delete_key(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = key_from(path)?;
    let _: NoQuery = parse_query(&uri)?;
    let precondition = precondition(&headers, false)?;
    let idem = idempotency(&headers, "DELETE", &key, &uri, b"")?;
    let req = forwardable(Method::DELETE, &uri, headers, Bytes::new(), true);
    lead_or_forward(&app, req, || {
        let command = Command::Delete {
            key: key.clone(),
            precondition,
        };
        propose(&app, &key, command, idem, false)
    })
    .await
}

pub(crate) async fn empty_key() -> ApiError {
    kv_core::validate::InputError::EmptyKey.into()
}
