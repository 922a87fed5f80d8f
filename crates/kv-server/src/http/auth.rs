//! Bearer tokens on the client port: who is calling, and whether they may do what they
//! ask.
//!
//! A request is authenticated where it arrives (is the header there, is it the bootstrap
//! token) and authorized where it is served, against that node's applied tokens: the
//! leader for writes and linearizable reads, after the read is confirmed, so a revoke
//! acknowledged before the request refuses it. Writes carry their token into the log
//! (`Command::Authorized`), where apply checks again.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kv_core::{Command, ErrorCode, Token, BOOTSTRAP_TOKEN};
use ring::digest::{digest, SHA256};
use subtle::ConstantTimeEq;

use super::{ApiError, App};

/// How a stored token's string begins: `kvt_<16 hex digits of id>_<64 hex digits>`.
const TOKEN_PREFIX: &str = "kvt_";

/// Who sent a request.
#[derive(Debug, Clone)]
pub(crate) enum Caller {
    /// Auth is off: anyone may do anything.
    Anyone,
    /// The bootstrap admin token from the configuration.
    Bootstrap,
    /// A stored token: its id, and the hash of what was presented, checked where the
    /// request is served.
    Token { id: u64, hash: [u8; 32] },
}

impl Caller {
    /// `command` as this caller proposes it: inside `Authorized` when auth is on, so
    /// apply checks the token again at its place in the log.
    pub(crate) fn authorized(&self, command: Command) -> Command {
        match self.token_id() {
            None => command,
            Some(token) => Command::Authorized {
                token,
                command: Box::new(command),
            },
        }
    }

    /// The token an `Authorized` command carries; `None` when auth is off.
    pub(crate) fn token_id(&self) -> Option<u64> {
        match self {
            Self::Anyone => None,
            Self::Bootstrap => Some(BOOTSTRAP_TOKEN),
            Self::Token { id, .. } => Some(*id),
        }
    }

    /// An `Idempotency-Key` as stored: one token's keys never meet another's. A key has
    /// no spaces, so scoped and unscoped ids never collide either.
    pub(crate) fn scoped_key(&self, key: String) -> String {
        match self.token_id() {
            None => key,
            Some(token) => format!("{token:016x} {key}"),
        }
    }

    /// A client session's id as stored: another token presenting the same id finds no
    /// session.
    pub(crate) fn scoped_session(&self, id: u128) -> u128 {
        let Some(token) = self.token_id() else {
            return id;
        };
        let mut input = b"kv-session".to_vec();
        input.extend_from_slice(&token.to_be_bytes());
        input.extend_from_slice(&id.to_be_bytes());
        let hash = digest(&SHA256, &input);
        let mut first = [0; 16];
        first.copy_from_slice(&hash.as_ref()[..16]);
        u128::from_be_bytes(first)
    }
}

/// What a request needs its caller to be granted.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Need<'a> {
    Read(&'a str),
    Write(&'a str),
    DeletePrefix(&'a str),
    /// Any valid token (listing, which is narrowed to what it may read).
    AnyToken,
    /// A token that may write somewhere: opening a client session.
    Session,
    Admin,
}

/// The node's auth settings: on when a bootstrap token is configured.
pub struct Auth {
    bootstrap: [u8; 32],
}

impl Auth {
    /// Auth with `admin_token` as the bootstrap token.
    pub fn new(admin_token: &str) -> Self {
        Self {
            bootstrap: hash(admin_token),
        }
    }
}

/// SHA-256 of a presented token. The secrets are 256 random bits (the bootstrap one at
/// least 32 characters), so a fast hash suffices.
pub(crate) fn hash(token: &str) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    out
}

/// The string a client presents for token `id` with `secret`.
pub(crate) fn token_string(id: u64, secret: &[u8; 32]) -> String {
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    format!("{TOKEN_PREFIX}{id:016x}_{hex}")
}

/// The id of a token string, if it has the shape of one.
fn token_id(token: &str) -> Option<u64> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(id, 16) || !hex(secret, 64) {
        return None;
    }
    u64::from_str_radix(id, 16)
        .ok()
        .filter(|id| *id != BOOTSTRAP_TOKEN)
}

/// Whether `presented` is the hash of `token`'s secret, in constant time.
fn matches(token: &Token, presented: &[u8; 32]) -> bool {
    bool::from(token.hash.ct_eq(presented))
}

fn unauthenticated(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthenticated, message)
}

/// Who sent a request with these headers.
fn caller(auth: &Auth, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(unauthenticated(
            "send one Authorization: Bearer <token> header",
        ));
    };
    // The scheme's name is case-insensitive (RFC 9110, 11.1).
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| unauthenticated("the Authorization header is not Bearer <token>"))?;
    let presented = hash(token);
    if let Some(id) = token_id(token) {
        return Ok(Caller::Token {
            id,
            hash: presented,
        });
    }
    if bool::from(presented.ct_eq(&auth.bootstrap)) {
        return Ok(Caller::Bootstrap);
    }
    Err(unauthenticated("the token is not valid"))
}

/// Puts the request's [`Caller`] into its extensions, or answers 401 when auth is on
/// and no token is there. `/healthz` and `/readyz` stay open, for load balancers, and
/// `/v1/openapi.json`, which is the same for every deployment and holds no secret.
pub(crate) async fn authenticate(
    State(app): State<Arc<App>>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let caller = match &app.auth {
        _ if matches!(path, "/healthz" | "/readyz" | "/v1/openapi.json") => Caller::Anyone,
        None => Caller::Anyone,
        Some(auth) => match caller(auth, request.headers()) {
            // A token this node knows is checked at once, before its body is read or its
            // request forwarded; one it does not know may be new, and is checked where
            // the request is served.
            Ok(Caller::Token { id, hash })
                if app.reader.token(id).is_some_and(|t| !matches(&t, &hash)) =>
            {
                return unauthenticated("the token is not valid").into_response();
            }
            Ok(caller) => caller,
            Err(e) => return e.into_response(),
        },
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

impl App {
    /// [`App::authorize`] on the leader before it proposes a write: a token it does not
    /// know may have been created by an entry committed but not yet applied here (a
    /// new leader), so the check waits for this node to apply what is committed first.
    pub(crate) async fn authorize_write(
        &self,
        caller: &Caller,
        need: Need<'_>,
    ) -> Result<Option<Arc<Token>>, ApiError> {
        if let Caller::Token { id, .. } = caller {
            if self.reader.token(*id).is_none() && self.reads.confirm().await.is_err() {
                return Err(ApiError::new(
                    ErrorCode::Unavailable,
                    "leadership could not be confirmed to check the token; retry shortly",
                ));
            }
        }
        self.authorize(caller, need)
    }

    /// Checks that `caller` holds a live token on this node that grants `need`. Returns
    /// the stored token, to narrow a listing; `None` when the caller may do anything.
    pub(crate) fn authorize(
        &self,
        caller: &Caller,
        need: Need<'_>,
    ) -> Result<Option<Arc<Token>>, ApiError> {
        let (id, presented) = match caller {
            Caller::Anyone | Caller::Bootstrap => return Ok(None),
            Caller::Token { id, hash } => (*id, hash),
        };
        let token = self
            .reader
            .token(id)
            .filter(|t| matches(t, presented))
            .ok_or_else(|| unauthenticated("the token is not valid (unknown or revoked)"))?;
        let granted = match need {
            Need::Read(key) => token.can_read(key),
            Need::Write(key) => token.can_write(key),
            Need::DeletePrefix(prefix) => token.can_delete_prefix(prefix),
            Need::AnyToken => true,
            Need::Session => token.can_write_somewhere(),
            Need::Admin => token.admin,
        };
        if !granted {
            let what = match need {
                Need::Read(key) => format!("reading {key:?}"),
                Need::Write(key) => format!("writing {key:?}"),
                Need::DeletePrefix(prefix) => format!("deleting every key under {prefix:?}"),
                Need::AnyToken => unreachable!("granted to every token"),
                Need::Session => "opening a session (it grants no writes)".to_owned(),
                Need::Admin => "administering the cluster".to_owned(),
            };
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("this token does not grant {what}"),
            ));
        }
        Ok(Some(token))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    const ADMIN: &str = "0123456789abcdef0123456789abcdef";

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("ascii"),
        );
        headers
    }

    fn code(r: Result<Caller, ApiError>) -> ErrorCode {
        r.expect_err("refused").code()
    }

    #[test]
    fn a_token_string_round_trips_and_malformed_ones_are_refused() {
        let lower = caller(&Auth::new(ADMIN), &with(&format!("bearer {ADMIN}")));
        assert!(
            matches!(lower, Ok(Caller::Bootstrap)),
            "the scheme is case-insensitive"
        );
        let auth = Auth::new(ADMIN);
        let token = token_string(0x2a, &[0xab; 32]);
        assert_eq!(token.len(), 4 + 16 + 1 + 64);
        match caller(&auth, &with(&format!("Bearer {token}"))) {
            Ok(Caller::Token { id, hash: h }) => assert_eq!((id, h), (0x2a, hash(&token))),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            caller(&auth, &with(&format!("Bearer {ADMIN}"))),
            Ok(Caller::Bootstrap)
        ));
        let zero = token_string(BOOTSTRAP_TOKEN, &[1; 32]);
        for bad in [
            "Bearer",
            "Basic abc",
            "Bearer 0123456789abcdef0123456789abcdeX",
            &format!("Bearer {zero}"),
            &format!("Bearer {}", &token[..token.len() - 1]),
        ] {
            assert_eq!(
                code(caller(&auth, &with(bad))),
                ErrorCode::Unauthenticated,
                "{bad}"
            );
        }
        assert_eq!(
            code(caller(&auth, &HeaderMap::new())),
            ErrorCode::Unauthenticated
        );
        let mut two = with(&format!("Bearer {ADMIN}"));
        two.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(code(caller(&auth, &two)), ErrorCode::Unauthenticated);
    }

    #[test]
    fn idempotency_keys_and_sessions_are_scoped_per_token() {
        let a = Caller::Token {
            id: 1,
            hash: [0; 32],
        };
        let b = Caller::Token {
            id: 2,
            hash: [0; 32],
        };
        assert_eq!(Caller::Anyone.scoped_key("k".into()), "k");
        assert_ne!(a.scoped_key("k".into()), b.scoped_key("k".into()));
        assert_eq!(Caller::Anyone.scoped_session(7), 7);
        assert_ne!(a.scoped_session(7), b.scoped_session(7));
        assert_eq!(a.scoped_session(7), a.scoped_session(7));
        assert_ne!(Caller::Bootstrap.scoped_session(7), 7);
    }
}
