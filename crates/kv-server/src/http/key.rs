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
use super::auth::{Caller, Need};
use super::leader::{lead_or_forward, propose, read, Forwardable};
use super::request::{
    check_content_type, check_json, idempotency, no_precondition, parse_query, precondition,
    read_body, wants_stale, GetQuery, Key, NoQuery, PutQuery,
};
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
