//! Reading requests of `/v1/kv`: the key, query parameters, preconditions, the body and
//! the idempotency key. Pure parsers over headers and strings, so they are tested here
//! rather than through a cluster.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Uri};
use kv_core::validate::{check_key, parse_ttl_seconds};
use kv_core::{ErrorCode, Precondition, Ttl};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::ApiError;

/// The key of `/v1/kv/{key}`, percent-decoded and checked by `check_key`.
pub(crate) struct Key(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Key {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(key) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::new(ErrorCode::InvalidKey, e.body_text()))?;
        check_key(&key)?;
        Ok(Key(key))
    }
}

/// Parses the query string into `T` (which denies unknown parameters); none is `T::default()`.
/// Escapes that decode to invalid UTF-8 are refused rather than read as U+FFFD, which
/// would turn a prefix or a cursor into another one.
pub(crate) fn parse_query<T: DeserializeOwned + Default>(uri: &Uri) -> Result<T, ApiError> {
    let Some(q) = uri.query() else {
        return Ok(T::default());
    };
    // Decoding the whole query at once is enough: an invalid sequence in one value
    // cannot become valid next to a separator.
    if percent_encoding::percent_decode_str(q)
        .decode_utf8()
        .is_err()
    {
        return Err(ApiError::new(
            ErrorCode::InvalidQuery,
            "the query's %-escapes do not decode to UTF-8",
        ));
    }
    serde_urlencoded::from_str(q).map_err(|e| ApiError::new(ErrorCode::InvalidQuery, e.to_string()))
}

/// Routes that take no query parameters.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoQuery {}

/// `GET /v1/kv/{key}`.
#[derive(Debug, Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct GetQuery {
    /// `linearizable` (the default: served by the leader after it confirms its
    /// leadership) or `stale` (this node's applied state).
    #[param(value_type = Option<Consistency>, inline)]
    pub consistency: Option<String>,
}

/// How fresh a read must be: the values of `consistency`.
#[derive(Debug, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Consistency {
    Linearizable,
    Stale,
}

/// `PUT /v1/kv/{key}`.
#[derive(Debug, Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct PutQuery {
    /// Seconds until the key expires; without `ttl` or `keep_ttl=true` it never expires.
    #[param(value_type = Option<u64>, minimum = 1, maximum = 315_360_000)]
    pub ttl: Option<String>,
    /// `true` keeps the key's current expiry; not with `ttl`.
    #[param(value_type = Option<bool>)]
    pub keep_ttl: Option<String>,
}

impl PutQuery {
    /// What the write does to the key's TTL: `ttl=N` sets it, `keep_ttl=true` keeps the
    /// current one, neither clears it.
    pub(crate) fn ttl(&self) -> Result<Ttl, ApiError> {
        let keep = parse_bool(
            self.keep_ttl.as_deref(),
            "keep_ttl",
            ErrorCode::InvalidKeepTtl,
        )?;
        match (&self.ttl, keep) {
            (Some(_), true) => Err(ApiError::new(
                ErrorCode::ConflictingTtl,
                "ttl and keep_ttl=true contradict each other: send one",
            )),
            (Some(raw), false) => Ok(Ttl::AfterMs(parse_ttl_seconds(raw)?)),
            (None, true) => Ok(Ttl::Keep),
            (None, false) => Ok(Ttl::Clear),
        }
    }
}

/// `GET /v1/kv?prefix=P&limit=N&after=K&keys_only=true&consistency=C`.
#[derive(Debug, Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only keys that begin with it; every key when absent or empty.
    pub prefix: Option<String>,
    /// The most entries in the page (a page also ends before it passes 4 MiB).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 100)]
    pub limit: Option<String>,
    /// Only keys after this one: the previous page's `next`.
    pub after: Option<String>,
    /// `true` leaves the values out.
    #[param(value_type = Option<bool>)]
    pub keys_only: Option<String>,
    /// `linearizable` (the default) or `stale`.
    #[param(value_type = Option<Consistency>, inline)]
    pub consistency: Option<String>,
}

/// The most entries one list page returns.
pub(crate) const MAX_LIST_LIMIT: usize = 1000;
/// Entries per list page when the request names no limit.
const DEFAULT_LIST_LIMIT: usize = 100;

impl ListQuery {
    /// The page size: 1 to [`MAX_LIST_LIMIT`], [`DEFAULT_LIST_LIMIT`] when absent.
    pub(crate) fn limit(&self) -> Result<usize, ApiError> {
        let Some(raw) = self.limit.as_deref() else {
            return Ok(DEFAULT_LIST_LIMIT);
        };
        raw.parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidLimit,
                    format!("limit must be a whole number from 1 to {MAX_LIST_LIMIT}, got {raw:?}"),
                )
            })
    }
}

/// `DELETE /v1/kv?prefix=P`.
#[derive(Debug, Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct PrefixQuery {
    /// Every key that begins with it is deleted; required and non-empty.
    #[param(value_type = String, required = true, min_length = 1)]
    pub prefix: Option<String>,
}

impl PrefixQuery {
    /// The prefix to delete: required and non-empty, so the whole store cannot go at once.
    pub(crate) fn prefix(self) -> Result<String, ApiError> {
        self.prefix.filter(|p| !p.is_empty()).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidPrefix,
                "a non-empty prefix is required: DELETE /v1/kv?prefix=P (the whole store cannot be deleted at once)",
            )
        })
    }
}

/// Reads a `true`/`false` query flag (absent = false); anything else is `code`.
pub(crate) fn parse_bool(raw: Option<&str>, name: &str, code: ErrorCode) -> Result<bool, ApiError> {
    match raw {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::new(
            code,
            format!("{name} must be true or false, got {other:?}"),
        )),
    }
}

/// Whether a read asked for `consistency=stale` (default: linearizable).
pub(crate) fn wants_stale(consistency: Option<&str>) -> Result<bool, ApiError> {
    let asked = match consistency {
        Some("stale") => Consistency::Stale,
        None | Some("linearizable") => Consistency::Linearizable,
        Some(other) => {
            return Err(ApiError::new(
                ErrorCode::InvalidConsistency,
                format!("consistency must be linearizable or stale, got {other:?}"),
            ))
        }
    };
    Ok(asked == Consistency::Stale)
}

// The request headers as the OpenAPI description shows them. The handlers read them with
// `precondition` and `idempotency`, which take the whole header map; these types only
// describe them, so they are never built.

/// `If-Match`: compare-and-set on the key's revision.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code, reason = "describes a header that `precondition` reads")]
pub(crate) struct IfMatch {
    /// Apply only if the key is at this revision (its ETag, quoted); else `412
    /// revision_mismatch`. Not with `If-None-Match`.
    #[param(rename = "If-Match", value_type = String, required = false, pattern = r#"^"[0-9]{1,20}"$"#)]
    if_match: Option<String>,
}

/// `If-None-Match: *`: create-if-absent.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code, reason = "describes a header that `precondition` reads")]
pub(crate) struct IfNoneMatch {
    /// `*`: create the key only if it is absent (`201`); else `412 key_exists`. Not with
    /// `If-Match`.
    #[param(rename = "If-None-Match", value_type = String, required = false, pattern = r"^\*$")]
    if_none_match: Option<String>,
}

/// `Idempotency-Key` or `Kv-Session`: a retried write applies at most once.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code, reason = "describes headers that `idempotency` reads")]
pub(crate) struct AtMostOnce {
    /// The write's answer is recorded under this key; a retry gets it again (with
    /// `Idempotency-Replayed: true`). Not with `Kv-Session`.
    #[param(rename = "Idempotency-Key", value_type = String, required = false, pattern = "^[!-~]{1,255}$")]
    idempotency_key: Option<String>,
    /// `<session id>; seq=<n>; ack=<k>`: write `n` of a session from `POST
    /// /v1/sessions`, with every write below `k` done (`1 <= k <= n < k + 256`). Not
    /// with `Idempotency-Key`.
    #[param(
        rename = "Kv-Session",
        value_type = String,
        required = false,
        pattern = r"^[0-9a-fA-F]{32}[ \t]*;[ \t]*seq=[0-9]{1,20}[ \t]*;[ \t]*ack=[0-9]{1,20}$"
    )]
    kv_session: Option<String>,
}

/// Reads `If-None-Match: *` (create-if-absent, PUT only) or `If-Match: "<revision>"`.
pub(crate) fn precondition(
    headers: &HeaderMap,
    allow_create: bool,
) -> Result<Precondition, ApiError> {
    let none_match: Vec<_> = headers.get_all(header::IF_NONE_MATCH).iter().collect();
    let if_match: Vec<_> = headers.get_all(header::IF_MATCH).iter().collect();
    let invalid = |m: &str| Err(ApiError::new(ErrorCode::InvalidPrecondition, m));
    match (none_match.as_slice(), if_match.as_slice()) {
        ([], []) => Ok(Precondition::Always),
        ([_, ..], [_, ..]) => Err(ApiError::new(
            ErrorCode::ConflictingPreconditions,
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

/// Refuses `If-Match` and `If-None-Match` on a request they cannot apply to, rather than
/// ignoring a condition the caller relies on.
pub(crate) fn no_precondition(headers: &HeaderMap) -> Result<(), ApiError> {
    if headers.contains_key(header::IF_MATCH) || headers.contains_key(header::IF_NONE_MATCH) {
        return Err(ApiError::new(
            ErrorCode::InvalidPrecondition,
            "If-Match and If-None-Match apply only to PUT and DELETE of one key",
        ));
    }
    Ok(())
}

/// Accepts a body declared as JSON (`application/json` or `application/*+json`) or not
/// declared at all.
pub(crate) fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
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
        Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("values are JSON: send content-type application/json, not {mime:?}"),
        ))
    }
}

/// How far past the limit a too-large body is still read (and discarded) before the
/// 413 goes out: a client still sending when the server answers and closes would see a
/// broken pipe instead of the 413. Bodies larger than this are cut off.
const TOO_LARGE_DRAIN: usize = 4 * 1024 * 1024;

/// Reads a body of at most `limit` bytes within `timeout`; a larger one is
/// `value_too_large`, a slower one `request_timeout`.
pub(crate) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::ValueTooLarge,
            format!("values may be at most {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit + TOO_LARGE_DRAIN) {
        return Err(too_large());
    }
    match tokio::time::timeout(timeout, read_at_most(body, limit)).await {
        Ok(Ok(Some(bytes))) => Ok(bytes),
        // A broken connection's answer nobody reads; anything else here is the limit.
        Ok(Ok(None) | Err(_)) => Err(too_large()),
        Err(_) => Err(ApiError::new(
            ErrorCode::RequestTimeout,
            format!("the body did not arrive within {timeout:?}"),
        )),
    }
}

/// The body if it is at most `limit` bytes; `None` if it is longer, after reading (and
/// dropping) at most [`TOO_LARGE_DRAIN`] bytes past the limit.
async fn read_at_most(body: Body, limit: usize) -> Result<Option<Bytes>, axum::Error> {
    use futures_core::Stream;
    let mut stream = body.into_data_stream();
    let mut kept = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut stream).poll_next(cx)).await
    {
        let chunk = chunk?;
        total += chunk.len();
        if total <= limit {
            kept.extend_from_slice(&chunk);
        } else if total > limit + TOO_LARGE_DRAIN {
            break;
        }
    }
    Ok((total <= limit).then(|| Bytes::from(kept)))
}

/// The deepest nesting of arrays and objects a value may have.
pub(crate) const MAX_JSON_DEPTH: usize = 64;

/// Checks that a value is one JSON text that every reader can parse: UTF-8 throughout,
/// no lone surrogate escapes, nested at most [`MAX_JSON_DEPTH`] deep. Values are stored
/// and served as sent, so what passes here is what readers get. Streams through the text
/// without building it.
pub(crate) fn check_json(body: &[u8]) -> Result<(), ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde::de::DeserializeSeed::deserialize(JsonCheck { depth: 0 }, &mut de)
        .and_then(|()| de.end())
        .map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidJson,
                format!("the value is not valid JSON: {e}"),
            )
        })
}

/// A JSON value checked and dropped as it is read, `depth` levels down.
#[derive(Clone, Copy)]
struct JsonCheck {
    depth: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for JsonCheck {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        // Any, not IgnoredAny: serde_json skips ignored strings without checking them.
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for JsonCheck {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    // serde_json hands over strings only once they are valid UTF-8 with their escapes
    // (lone surrogates included) checked.
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.nested()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.nested()?;
        while map.next_key_seed(inner)?.is_some() {
            map.next_value_seed(inner)?;
        }
        Ok(())
    }
}

impl JsonCheck {
    fn nested<E: serde::de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_JSON_DEPTH {
            return Err(E::custom(format!(
                "arrays and objects are nested more than {MAX_JSON_DEPTH} deep"
            )));
        }
        Ok(Self {
            depth: self.depth + 1,
        })
    }
}

/// Header naming a write's idempotency key.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Header naming a write's client session, its number and the session's acknowledgment.
const SESSION: &str = "kv-session";

/// How a write asks to be applied at most once, with the fingerprint of the request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Idempotency {
    /// An `Idempotency-Key` the caller chose.
    Key { id: String, fingerprint: u128 },
    /// Write `seq` of client session `id`; every write numbered below `ack` is done.
    Session {
        id: u128,
        seq: u64,
        ack: u64,
        fingerprint: u128,
    },
}

/// The one value of header `name`, if sent; two or more are `error`.
fn one_header<'h>(
    headers: &'h HeaderMap,
    name: &str,
    error: impl Fn() -> ApiError,
) -> Result<Option<&'h [u8]>, ApiError> {
    let values: Vec<_> = headers.get_all(name).iter().collect();
    match values.as_slice() {
        [] => Ok(None),
        [v] => Ok(Some(v.as_bytes())),
        _ => Err(error()),
    }
}

/// Reads `Idempotency-Key` (1 to 255 visible ASCII characters) or `Kv-Session` (not
/// both) and fingerprints the request by what decides its effect: method, key or prefix,
/// query, preconditions, body.
pub(crate) fn idempotency(
    headers: &HeaderMap,
    method: &str,
    target: &str,
    uri: &Uri,
    body: &[u8],
) -> Result<Option<Idempotency>, ApiError> {
    let invalid_key = |message: &str| ApiError::new(ErrorCode::InvalidIdempotencyKey, message);
    let invalid_session = |message: &str| ApiError::new(ErrorCode::InvalidSession, message);
    let key = one_header(headers, IDEMPOTENCY_KEY, || {
        invalid_key("send one Idempotency-Key header")
    })?;
    let session = one_header(headers, SESSION, || {
        invalid_session("send one Kv-Session header")
    })?;
    let header = |name| headers.get(name).map_or(&b""[..], HeaderValue::as_bytes);
    let fingerprint = || {
        kv_core::fingerprint(&[
            method.as_bytes(),
            target.as_bytes(),
            uri.query().unwrap_or("").as_bytes(),
            header(header::IF_MATCH),
            header(header::IF_NONE_MATCH),
            body,
        ])
    };
    match (key, session) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(invalid_session(
            "send an Idempotency-Key or a Kv-Session, not both",
        )),
        (Some(raw), None) => {
            if kv_core::validate::check_idempotency_key(raw).is_err() {
                return Err(invalid_key(
                    "an Idempotency-Key is 1 to 255 visible ASCII characters",
                ));
            }
            let id = String::from_utf8_lossy(raw).into_owned();
            Ok(Some(Idempotency::Key {
                id,
                fingerprint: fingerprint(),
            }))
        }
        (None, Some(raw)) => {
            let parsed = std::str::from_utf8(raw)
                .ok()
                .and_then(kv_core::session::parse_session_header);
            let (id, seq, ack) = parsed.ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidSession,
                    format!(
                        "Kv-Session is `<32 hex digits>; seq=<n>; ack=<k>` with 1 <= ack <= seq < ack + {}",
                        kv_core::SESSION_WINDOW
                    ),
                )
            })?;
            Ok(Some(Idempotency::Session {
                id,
                seq,
                ack,
                fingerprint: fingerprint(),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderName;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
                HeaderValue::from_str(value).expect("test header value"),
            );
        }
        h
    }

    fn code<T: std::fmt::Debug>(r: Result<T, ApiError>) -> ErrorCode {
        r.expect_err("must be refused").code()
    }

    #[test]
    fn if_match_takes_one_quoted_revision() {
        let p = |v| precondition(&headers(&[("if-match", v)]), false);
        assert_eq!(p("\"42\"").ok(), Some(Precondition::Revision(42)));
        assert_eq!(p("\"0\"").ok(), Some(Precondition::Revision(0)));
        for bad in [
            "42",
            "\"\"",
            "\"4 2\"",
            "\"-1\"",
            "W/\"42\"",
            "*",
            "\"99999999999999999999\"",
        ] {
            assert_eq!(code(p(bad)), ErrorCode::InvalidPrecondition, "{bad}");
        }
        let two = headers(&[("if-match", "\"1\""), ("if-match", "\"2\"")]);
        assert_eq!(
            code(precondition(&two, false)),
            ErrorCode::InvalidPrecondition
        );
    }

    #[test]
    fn if_none_match_star_creates_on_put_only() {
        let star = headers(&[("if-none-match", "*")]);
        assert_eq!(precondition(&star, true).ok(), Some(Precondition::Absent));
        assert_eq!(
            code(precondition(&star, false)),
            ErrorCode::InvalidPrecondition
        );
        let etag = headers(&[("if-none-match", "\"3\"")]);
        assert_eq!(
            code(precondition(&etag, true)),
            ErrorCode::InvalidPrecondition
        );
        let both = headers(&[("if-none-match", "*"), ("if-match", "\"3\"")]);
        assert_eq!(
            code(precondition(&both, true)),
            ErrorCode::ConflictingPreconditions
        );
        assert_eq!(
            precondition(&HeaderMap::new(), true).ok(),
            Some(Precondition::Always)
        );
    }

    #[test]
    fn flags_are_true_or_false_and_absent_is_false() {
        let b = |raw| parse_bool(raw, "keys_only", ErrorCode::InvalidQuery);
        assert_eq!(b(None).ok(), Some(false));
        assert_eq!(b(Some("false")).ok(), Some(false));
        assert_eq!(b(Some("true")).ok(), Some(true));
        for bad in ["", "1", "yes", "TRUE", "True"] {
            assert_eq!(code(b(Some(bad))), ErrorCode::InvalidQuery, "{bad}");
        }
    }

    #[test]
    fn consistency_is_linearizable_unless_stale_is_asked_for() {
        assert_eq!(wants_stale(None).ok(), Some(false));
        assert_eq!(wants_stale(Some("linearizable")).ok(), Some(false));
        assert_eq!(wants_stale(Some("stale")).ok(), Some(true));
        for bad in ["", "STALE", "eventual"] {
            assert_eq!(code(wants_stale(Some(bad))), ErrorCode::InvalidConsistency);
        }
    }

    #[test]
    fn bodies_are_json_or_undeclared() {
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
        ] {
            assert!(
                check_content_type(&headers(&[("content-type", ok)])).is_ok(),
                "{ok}"
            );
        }
        assert!(check_content_type(&HeaderMap::new()).is_ok());
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "json",
            "",
        ] {
            let h = headers(&[("content-type", bad)]);
            assert_eq!(
                code(check_content_type(&h)),
                ErrorCode::UnsupportedMediaType,
                "{bad}"
            );
        }
        assert!(check_json(br#"{"a":[1,null]}"#).is_ok());
        assert_eq!(code(check_json(b"{")), ErrorCode::InvalidJson);
        assert_eq!(code(check_json(b"")), ErrorCode::InvalidJson);
    }

    #[test]
    fn values_are_json_that_every_reader_can_parse() {
        for ok in [
            &br#"{"a":[1,-2.5e3,true,false,null,"x\u00e9\ud83d\ude00"],"\u00e9":{}}"#[..],
            "\"caf\u{e9} \u{1f600}\"".as_bytes(),
            b" 7 ",
        ] {
            assert!(check_json(ok).is_ok(), "{}", String::from_utf8_lossy(ok));
        }
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes();
        assert!(check_json(&deep(MAX_JSON_DEPTH)).is_ok());
        let key_deep = format!(
            "{}1{}",
            "{\"k\":".repeat(MAX_JSON_DEPTH),
            "}".repeat(MAX_JSON_DEPTH)
        );
        assert!(check_json(key_deep.as_bytes()).is_ok());
        for bad in [
            deep(MAX_JSON_DEPTH + 1),
            vec![b'['; 1 << 20],
            b"\"\xff\"".to_vec(),
            b"{\"\xc3\":1}".to_vec(),
            br#""\ud800""#.to_vec(),
            br#"["\udc00x"]"#.to_vec(),
            br#"{"\ud83d":1}"#.to_vec(),
            b"1 2".to_vec(),
            b"[1,]".to_vec(),
        ] {
            assert_eq!(
                code(check_json(&bad)),
                ErrorCode::InvalidJson,
                "{}",
                String::from_utf8_lossy(&bad[..bad.len().min(40)])
            );
        }
    }

    #[test]
    fn preconditions_are_refused_where_they_cannot_apply() {
        assert!(no_precondition(&HeaderMap::new()).is_ok());
        for name in ["if-match", "if-none-match"] {
            let h = headers(&[(name, "*")]);
            assert_eq!(code(no_precondition(&h)), ErrorCode::InvalidPrecondition);
        }
    }

    #[test]
    fn query_escapes_must_decode_to_utf8() {
        let q = |s: &str| parse_query::<ListQuery>(&s.parse::<Uri>().expect("test uri"));
        assert_eq!(code(q("/v1/kv?prefix=%ff")), ErrorCode::InvalidQuery);
        assert_eq!(
            code(q("/v1/kv?prefix=a&after=%c3")),
            ErrorCode::InvalidQuery
        );
        let ok = q("/v1/kv?prefix=caf%C3%A9%2F&after=%25").expect("valid escapes");
        assert_eq!(ok.prefix.as_deref(), Some("café/"));
        assert_eq!(ok.after.as_deref(), Some("%"));
    }

    #[test]
    fn ttl_and_keep_ttl_exclude_each_other() {
        let q = |ttl: Option<&str>, keep: Option<&str>| PutQuery {
            ttl: ttl.map(str::to_owned),
            keep_ttl: keep.map(str::to_owned),
        };
        assert_eq!(q(None, None).ttl().ok(), Some(Ttl::Clear));
        assert_eq!(q(Some("2"), None).ttl().ok(), Some(Ttl::AfterMs(2000)));
        assert_eq!(q(None, Some("true")).ttl().ok(), Some(Ttl::Keep));
        assert_eq!(
            q(Some("2"), Some("false")).ttl().ok(),
            Some(Ttl::AfterMs(2000))
        );
        assert_eq!(
            code(q(Some("2"), Some("true")).ttl()),
            ErrorCode::ConflictingTtl
        );
        assert_eq!(code(q(None, Some("yes")).ttl()), ErrorCode::InvalidKeepTtl);
        assert_eq!(code(q(Some("0"), None).ttl()), ErrorCode::InvalidTtl);
    }

    #[test]
    fn list_limits_run_from_one_to_the_maximum() {
        let q = |limit: Option<&str>| ListQuery {
            limit: limit.map(str::to_owned),
            ..ListQuery::default()
        };
        assert_eq!(q(None).limit().ok(), Some(DEFAULT_LIST_LIMIT));
        assert_eq!(q(Some("1")).limit().ok(), Some(1));
        assert_eq!(q(Some("1000")).limit().ok(), Some(MAX_LIST_LIMIT));
        for bad in ["0", "1001", "-1", "ten", ""] {
            assert_eq!(code(q(Some(bad)).limit()), ErrorCode::InvalidLimit, "{bad}");
        }
    }

    #[test]
    fn unknown_query_parameters_are_refused() {
        let uri: Uri = "/v1/kv/a?consistency=stale&x=1".parse().expect("test uri");
        assert_eq!(code(parse_query::<GetQuery>(&uri)), ErrorCode::InvalidQuery);
        let uri: Uri = "/v1/kv/a?consistency=stale".parse().expect("test uri");
        let q: GetQuery = parse_query(&uri).expect("a known parameter");
        assert_eq!(q.consistency.as_deref(), Some("stale"));
        let uri: Uri = "/v1/kv/a".parse().expect("test uri");
        assert!(parse_query::<NoQuery>(&uri).is_ok());
    }

    #[test]
    fn idempotency_keys_are_one_short_visible_ascii_header() {
        let uri: Uri = "/v1/kv/a?ttl=5".parse().expect("test uri");
        let id = |h: &HeaderMap| idempotency(h, "PUT", "a", &uri, b"1");
        assert_eq!(id(&HeaderMap::new()).ok(), Some(None));
        let ok = id(&headers(&[("idempotency-key", "webhook-123")]))
            .expect("a valid key")
            .expect("present");
        assert!(matches!(ok, Idempotency::Key { id, .. } if id == "webhook-123"));
        let two = headers(&[("idempotency-key", "a"), ("idempotency-key", "b")]);
        assert_eq!(code(id(&two)), ErrorCode::InvalidIdempotencyKey);
        for bad in ["", "has space", &"k".repeat(256)] {
            let h = headers(&[("idempotency-key", bad)]);
            assert_eq!(code(id(&h)), ErrorCode::InvalidIdempotencyKey, "{bad:?}");
        }
        assert!(id(&headers(&[("idempotency-key", &"k".repeat(255))])).is_ok());
    }

    #[test]
    fn sessions_are_one_header_with_a_number_in_the_window() {
        let uri: Uri = "/v1/kv/a".parse().expect("test uri");
        let id = |h: &HeaderMap| idempotency(h, "PUT", "a", &uri, b"1");
        let hex = "0123456789abcdef0123456789ABCDEF";
        let ok = id(&headers(&[("kv-session", &format!("{hex}; seq=7; ack=3"))]))
            .expect("valid")
            .expect("present");
        assert!(matches!(
            ok,
            Idempotency::Session {
                id: 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
                seq: 7,
                ack: 3,
                ..
            }
        ));
        let window = kv_core::SESSION_WINDOW;
        for bad in [
            format!("{hex}; seq=3; ack=7"),
            format!("{hex}; seq=0; ack=0"),
            format!("{hex}; seq={}; ack=1", window + 1),
            format!("{hex}; seq=+2; ack=1"),
            format!("{hex}; ack=1; seq=2"),
            format!("{hex}; seq=2; ack=1; more=1"),
            format!("{}; seq=2; ack=1", &hex[1..]),
            format!("+{}; seq=2; ack=1", &hex[1..]),
            format!("{hex}; seq=; ack=1"),
            hex.to_owned(),
            "not a session".to_owned(),
        ] {
            let h = headers(&[("kv-session", &bad)]);
            assert_eq!(code(id(&h)), ErrorCode::InvalidSession, "{bad:?}");
        }
        let both = headers(&[
            ("kv-session", &format!("{hex}; seq=1; ack=1")),
            ("idempotency-key", "k"),
        ]);
        assert_eq!(code(id(&both)), ErrorCode::InvalidSession);
        let last = format!("{hex}; seq={}; ack=1", window);
        assert!(id(&headers(&[("kv-session", &last)])).is_ok());
    }

    #[test]
    fn the_fingerprint_covers_what_decides_a_writes_effect() {
        let key = headers(&[("idempotency-key", "k1")]);
        let uri: Uri = "/v1/kv/a?ttl=5".parse().expect("test uri");
        let fp = |h: &HeaderMap, method, target, uri: &Uri, body: &[u8]| match idempotency(
            h, method, target, uri, body,
        )
        .expect("valid")
        .expect("present")
        {
            Idempotency::Key { fingerprint, .. } | Idempotency::Session { fingerprint, .. } => {
                fingerprint
            }
        };
        let base = fp(&key, "PUT", "a", &uri, b"1");
        assert_eq!(base, fp(&key, "PUT", "a", &uri, b"1"));
        let other_uri: Uri = "/v1/kv/a?ttl=6".parse().expect("test uri");
        let with_match = headers(&[("idempotency-key", "k1"), ("if-match", "\"4\"")]);
        for other in [
            fp(&key, "DELETE", "a", &uri, b"1"),
            fp(&key, "PUT", "b", &uri, b"1"),
            fp(&key, "PUT", "a", &other_uri, b"1"),
            fp(&with_match, "PUT", "a", &uri, b"1"),
            fp(&key, "PUT", "a", &uri, b"2"),
        ] {
            assert_ne!(base, other);
        }
    }
}
