//! `/v1/tokens`: creating, listing and revoking access tokens (admin only).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use kv_core::{Access, Command, ErrorCode, Grant, OpResult, Token, MAX_GRANTS};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::answer;
use super::auth::{hash, token_string, Caller, Need};
use super::error::{
    Error400, Error401, Error403, Error408, Error413, Error415, Error503, Error504, Error507,
};
use super::leader::{lead_or_forward, not_written, read, Forwardable, Local};
use super::request::{check_content_type, no_precondition, parse_query, read_body, NoQuery};
use super::{ApiError, App};

/// The longest token request body: 64 grants of long prefixes.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// `POST /v1/tokens`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewToken {
    /// A name for people, 1 to 128 bytes.
    #[schema(min_length = 1, max_length = 128)]
    name: String,
    /// Whether the token may administer the cluster (tokens, members, backups, metrics).
    #[serde(default)]
    admin: bool,
    /// What the token may read and write.
    #[serde(default)]
    #[schema(max_items = 64)]
    grants: Vec<GrantView>,
}

/// A grant of access to every key under a prefix.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Grant)]
pub(crate) struct GrantView {
    /// The keys it covers: those that begin with it (every key when empty).
    #[schema(max_length = 4096)]
    prefix: String,
    /// `read`, or `write` (which includes read).
    access: GrantAccess,
}

/// What a grant allows.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum GrantAccess {
    Read,
    Write,
}

/// A token as the API shows it: never its hash.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Token)]
pub(crate) struct TokenView {
    /// The token's id, 16 hex digits.
    #[schema(pattern = "^[0-9a-f]{16}$")]
    id: String,
    name: String,
    admin: bool,
    grants: Vec<GrantView>,
    /// When it was created (Unix milliseconds).
    created_ms: u64,
}

/// `POST /v1/tokens`'s answer: the token, and its secret, shown only here.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CreatedToken)]
pub(crate) struct CreatedTokenView {
    /// The token's id, 16 hex digits.
    #[schema(pattern = "^[0-9a-f]{16}$")]
    id: String,
    name: String,
    admin: bool,
    grants: Vec<GrantView>,
    /// When it was created (Unix milliseconds).
    created_ms: u64,
    /// What to send as `Authorization: Bearer <token>`.
    #[schema(pattern = "^kvt_[0-9a-f]{16}_[0-9a-f]{64}$")]
    token: String,
    /// The log index of its creation.
    revision: u64,
}

/// `GET /v1/tokens`'s answer.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Tokens)]
pub(crate) struct TokensView {
    tokens: Vec<TokenView>,
}

/// `DELETE /v1/tokens/{id}`'s answer.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Revoked)]
pub(crate) struct RevokedView {
    /// Whether the token existed.
    revoked: bool,
    /// The log index of the revoke.
    revision: u64,
}

/// Tokens are managed only where they are checked: a node with auth off would let anyone
/// make an admin token that becomes valid when auth is turned on.
fn auth_on(app: &App) -> Result<(), ApiError> {
    match app.auth {
        Some(_) => Ok(()),
        None => Err(ApiError::new(
            ErrorCode::Forbidden,
            "auth is off on this node: tokens are managed only on nodes with an [auth] section",
        )),
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidTokenRequest, message)
}

/// The token a request body asks for, with `hash` as its secret's hash.
fn parse_new_token(body: &[u8], hash: [u8; 32]) -> Result<Token, ApiError> {
    let new: NewToken = serde_json::from_slice(body).map_err(|e| {
        invalid(format!(
            "expected {{\"name\": …, \"admin\": bool, \"grants\": [{{\"prefix\": …, \"access\": \"read\"|\"write\"}}]}}: {e}"
        ))
    })?;
    if new.name.is_empty() || new.name.len() > kv_core::token::MAX_TOKEN_NAME_BYTES {
        return Err(invalid("a token's name is 1 to 128 bytes"));
    }
    if new.grants.len() > MAX_GRANTS {
        return Err(invalid(format!("a token has at most {MAX_GRANTS} grants")));
    }
    let grants = new
        .grants
        .into_iter()
        .map(|g| {
            let access = match g.access {
                GrantAccess::Read => Access::Read,
                GrantAccess::Write => Access::Write,
            };
            if g.prefix.len() > kv_core::validate::MAX_KEY_BYTES {
                return Err(invalid("a grant's prefix is at most as long as a key"));
            }
            Ok(Grant {
                prefix: g.prefix,
                access,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Token {
        name: new.name,
        hash,
        admin: new.admin,
        grants,
        created_ms: 0,
    })
}

/// A token as the API shows it: never its hash.
fn describe(id: u64, token: &Token) -> TokenView {
    let grants = token
        .grants
        .iter()
        .map(|g| GrantView {
            prefix: g.prefix.clone(),
            access: match g.access {
                Access::Read => GrantAccess::Read,
                Access::Write => GrantAccess::Write,
            },
        })
        .collect();
    TokenView {
        id: format!("{id:016x}"),
        name: token.name.clone(),
        admin: token.admin,
        grants,
        created_ms: token.created_ms,
    }
}

/// Proposes a token command as `caller`'s and returns its result.
async fn propose_token(
    app: &App,
    caller: &Caller,
    command: Command,
) -> Result<Result<OpResult, Local>, ApiError> {
    match app.proposer.write(caller.authorized(command)).await {
        Ok(OpResult::Failed { failure, .. }) => Err(answer::refused(failure)),
        Ok(result) => Ok(Ok(result)),
        Err(e) => not_written(e).map(Err),
    }
}

/// `POST /v1/tokens` with `{"name", "admin", "grants"}`: creates a token, answered once
/// as `201 {"id", "token", …}`; only its hash is kept.
#[utoipa::path(
    post,
    path = "/v1/tokens",
    operation_id = "create_token",
    tag = "tokens",
    request_body = NewToken,
    responses(
        (status = 201, description = "The token, with its secret (shown only here).", body = CreatedTokenView,
            links(("revoke" = (operation_id = "revoke_token", parameters(("id" = "$response.body#/id")))))),
        (status = 400, description = "`invalid_token_request`, `invalid_query`, `invalid_precondition`", body = Error400),
        (status = 401, description = "`unauthenticated`", body = Error401),
        (status = 403, description = "`forbidden`: not an admin token, or auth is off on this node", body = Error403),
        (status = 408, description = "`request_timeout`", body = Error408),
        (status = 413, description = "`value_too_large`: the body is over 64 KiB", body = Error413),
        (status = 415, description = "`unsupported_media_type`", body = Error415),
        (status = 503, description = "`no_leader`, `unavailable`", body = Error503,
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 504, description = "`outcome_unknown`", body = Error504),
        (status = 507, description = "`insufficient_storage`, `tokens_full`", body = Error507),
    )
)]
pub(crate) async fn create(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    auth_on(&app)?;
    let NoQuery {} = parse_query(&uri)?;
    no_precondition(&headers)?;
    check_content_type(&headers)?;
    let timeout = Duration::from_millis(app.limits.body_timeout_ms);
    let body = read_body(body, &headers, MAX_REQUEST_BYTES, timeout).await?;
    parse_new_token(&body, [0; 32])?;
    let req = Forwardable::new(Method::POST, &uri, headers, body.clone(), true);
    lead_or_forward(&app, req, || async {
        app.authorize_write(&caller, Need::Admin).await?;
        // Chosen here and carried in the command: apply stays deterministic, and the
        // secret itself never enters the log.
        let id = rand::random::<u64>().max(1);
        let secret: [u8; 32] = rand::random();
        let presented = token_string(id, &secret);
        let token = parse_new_token(&body, hash(&presented))?;
        let shown = describe(id, &token);
        let revision = match propose_token(&app, &caller, Command::PutToken { id, token }).await? {
            Ok(OpResult::TokenCreated { revision }) => revision,
            Ok(other) => return Err(unexpected(other)),
            Err(local) => return Ok(local),
        };
        // The creation time is the command's stamp, set when it applied.
        let TokenView {
            id,
            name,
            admin,
            grants,
            created_ms,
        } = app.reader.token(id).map_or(shown, |t| describe(id, &t));
        let body = CreatedTokenView {
            id,
            name,
            admin,
            grants,
            created_ms,
            token: presented,
            revision,
        };
        Ok(Local::Done(
            (StatusCode::CREATED, Json(body)).into_response(),
        ))
    })
    .await
}

/// `GET /v1/tokens`: every token, without secrets, as the leader knows them.
#[utoipa::path(
    get,
    path = "/v1/tokens",
    operation_id = "list_tokens",
    tag = "tokens",
    responses(
        (status = 200, description = "Every token, without secrets.", body = TokensView),
        (status = 400, description = "`invalid_query`, `invalid_precondition`", body = Error400),
        (status = 401, description = "`unauthenticated`", body = Error401),
        (status = 403, description = "`forbidden`: not an admin token, or auth is off on this node", body = Error403),
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
    auth_on(&app)?;
    let NoQuery {} = parse_query(&uri)?;
    no_precondition(&headers)?;
    let req = || Forwardable::new(Method::GET, &uri, headers, Bytes::new(), false);
    read(&app, false, req, || async {
        app.authorize(&caller, Need::Admin)?;
        let tokens = app
            .reader
            .tokens()
            .iter()
            .map(|(id, t)| describe(*id, t))
            .collect();
        Ok(Json(TokensView { tokens }).into_response())
    })
    .await
}

/// `DELETE /v1/tokens/{id}`: revokes a token on every node; `{"revoked": bool,
/// "revision"}` tells whether it existed.
#[utoipa::path(
    delete,
    path = "/v1/tokens/{id}",
    operation_id = "revoke_token",
    tag = "tokens",
    params(("id" = String, Path, description = "The token's id, 16 hex digits", pattern = "^[0-9a-fA-F]{16}$")),
    responses(
        (status = 200, description = "Revoked on every node.", body = RevokedView),
        (status = 400, description = "`invalid_token_request` (a bad id), `invalid_query`, `invalid_precondition`", body = Error400),
        (status = 401, description = "`unauthenticated`", body = Error401),
        (status = 403, description = "`forbidden`: not an admin token, or auth is off on this node", body = Error403),
        (status = 503, description = "`no_leader`, `unavailable`", body = Error503,
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 504, description = "`outcome_unknown`", body = Error504),
    )
)]
pub(crate) async fn revoke(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    auth_on(&app)?;
    let NoQuery {} = parse_query(&uri)?;
    no_precondition(&headers)?;
    let id = parse_token_id(&id)?;
    let req = Forwardable::new(Method::DELETE, &uri, headers, Bytes::new(), true);
    lead_or_forward(&app, req, || async {
        app.authorize_write(&caller, Need::Admin).await?;
        match propose_token(&app, &caller, Command::RevokeToken { id }).await? {
            Ok(OpResult::TokenRevoked { existed, revision }) => Ok(Local::Done(
                Json(RevokedView {
                    revoked: existed,
                    revision,
                })
                .into_response(),
            )),
            Ok(other) => Err(unexpected(other)),
            Err(local) => Ok(local),
        }
    })
    .await
}

/// A token id as `DELETE /v1/tokens/{id}` takes it: 16 hex digits.
fn parse_token_id(raw: &str) -> Result<u64, ApiError> {
    Some(raw)
        .filter(|s| s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .ok_or_else(|| invalid("a token id is 16 hex digits"))
}

fn unexpected(result: OpResult) -> ApiError {
    ApiError::new(
        ErrorCode::Internal,
        format!("unexpected token result {result:?}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_requests_are_checked() {
        let ok = parse_new_token(
            br#"{"name":"billing","grants":[{"prefix":"billing/","access":"write"},{"prefix":"","access":"read"}]}"#,
            [1; 32],
        )
        .expect("valid");
        assert_eq!((ok.grants.len(), ok.admin, ok.hash), (2, false, [1; 32]));
        let admin = parse_new_token(br#"{"name":"ops","admin":true}"#, [0; 32]).expect("valid");
        assert!(admin.admin && admin.grants.is_empty());
        let many = format!(
            r#"{{"name":"n","grants":[{}]}}"#,
            vec![r#"{"prefix":"p","access":"read"}"#; MAX_GRANTS + 1].join(",")
        );
        for bad in [
            &br#"{"name":""}"#[..],
            br#"{"name":"n","grants":[{"prefix":"p","access":"all"}]}"#,
            br#"{"name":"n","extra":1}"#,
            br#"not json"#,
            many.as_bytes(),
        ] {
            let e = parse_new_token(bad, [0; 32]).expect_err("refused");
            assert_eq!(e.code(), ErrorCode::InvalidTokenRequest);
        }
    }

    #[test]
    fn token_ids_are_16_hex_digits_and_nothing_else() {
        assert_eq!(parse_token_id("000000000000002a").ok(), Some(42));
        assert_eq!(parse_token_id("FFFFFFFFFFFFFFFF").ok(), Some(u64::MAX));
        // from_str_radix alone takes a sign, which the description's pattern does not.
        for bad in [
            "+00000000000002a",
            "-00000000000002a",
            "00000000000002a",
            "000000000000002g",
        ] {
            let e = parse_token_id(bad).expect_err("refused");
            assert_eq!(e.code(), ErrorCode::InvalidTokenRequest, "{bad}");
        }
    }

    #[test]
    fn a_description_never_shows_the_hash() {
        let token = parse_new_token(br#"{"name":"n"}"#, [0xab; 32]).expect("valid");
        let shown = serde_json::to_string(&describe(42, &token)).expect("serializes");
        assert!(shown.contains("\"000000000000002a\""), "{shown}");
        assert!(!shown.contains("ab") && !shown.contains("hash"), "{shown}");
    }
}
