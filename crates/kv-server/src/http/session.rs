//! `/v1/sessions`: opening a client session, the way a client numbers its writes so that
//! retries apply at most once (see `kv_core::session`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use axum::Extension;
use kv_core::session::session_key;
use kv_core::Command;

use super::answer::SessionAnswer;
use super::auth::{Caller, Need};
use super::error::{Error400, Error401, Error403, Error503, Error504, Error507};
use super::leader::{lead_or_forward, propose, Forwardable};
use super::request::{no_precondition, parse_query, NoQuery};
use super::{ApiError, App};

/// `POST /v1/sessions`: opens a session with a fresh random id, answered as
/// `201 {"session": "<32 hex digits>", "expires_at_ms": …}`.
#[utoipa::path(
    post,
    path = "/v1/sessions",
    operation_id = "open_session",
    tag = "kv",
    responses(
        (status = 201, description = "A new client session.", body = SessionAnswer),
        (status = 400, description = "`invalid_query`, `invalid_precondition`", body = Error400),
        (status = 401, description = "`unauthenticated`", body = Error401),
        (status = 403, description = "`forbidden`: the token may write no key", body = Error403),
        (status = 503, description = "`no_leader`, `unavailable`: not opened", body = Error503, headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 504, description = "`outcome_unknown`", body = Error504),
        (status = 507, description = "`insufficient_storage`, `records_full`: not opened", body = Error507),
    )
)]
pub(crate) async fn open(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let NoQuery {} = parse_query(&uri)?;
    no_precondition(&headers)?;
    let req = Forwardable::new(Method::POST, &uri, headers, Bytes::new(), true);
    lead_or_forward(&app, req, || async {
        app.authorize_write(&caller, Need::Session).await?;
        // Chosen by the leader and carried in the command: apply stays deterministic.
        let id: u128 = rand::random();
        let command = Command::OpenSession {
            id: caller.scoped_session(id),
            idle_ms: app.limits.session_idle_s.saturating_mul(1000),
        };
        propose(&app, &caller, &session_key(id), command, None, true).await
    })
    .await
}
