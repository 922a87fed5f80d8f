//! The stable error codes of API v1: the one list the server answers with, the client
//! matches on, and README documents (a kv-server test ties README to [`ErrorCode::ALL`]).

use std::fmt;

/// Defines [`ErrorCode`] and its tables from one list, so a code cannot be added to the
/// enum without its wire name, its status and its place in [`ErrorCode::ALL`].
macro_rules! error_codes {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal, $status:literal;)*) => {
        /// Every `error.code` an answer of API v1 can carry, with its HTTP status.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[doc = $doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in the order README lists them.
            pub const ALL: &'static [ErrorCode] = &[$(Self::$variant),*];

            /// The snake_case code on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }

            /// The HTTP status every answer with this code has.
            pub const fn status(self) -> u16 {
                match self {
                    $(Self::$variant => $status,)*
                }
            }
        }
    };
}

error_codes! {
    /// The key is empty, too long, or has a `.` or `..` part.
    InvalidKey = "invalid_key", 400;
    /// `ttl` is not a positive whole number of seconds within the limit.
    InvalidTtl = "invalid_ttl", 400;
    /// `keep_ttl` is not `true` or `false`.
    InvalidKeepTtl = "invalid_keep_ttl", 400;
    /// Both `ttl` and `keep_ttl=true`.
    ConflictingTtl = "conflicting_ttl", 400;
    /// The body is not JSON, not UTF-8, or nested too deep.
    InvalidJson = "invalid_json", 400;
    /// An unknown or malformed query parameter.
    InvalidQuery = "invalid_query", 400;
    /// `consistency` is neither `linearizable` nor `stale`.
    InvalidConsistency = "invalid_consistency", 400;
    /// `limit` is out of range.
    InvalidLimit = "invalid_limit", 400;
    /// A prefix delete without a non-empty prefix.
    InvalidPrefix = "invalid_prefix", 400;
    /// A malformed `If-Match` or `If-None-Match`, or one where it cannot apply.
    InvalidPrecondition = "invalid_precondition", 400;
    /// Both `If-Match` and `If-None-Match`.
    ConflictingPreconditions = "conflicting_preconditions", 400;
    /// A malformed `Idempotency-Key`.
    InvalidIdempotencyKey = "invalid_idempotency_key", 400;
    /// A malformed `Kv-Session`, one beside an `Idempotency-Key`, or a write numbered
    /// past the session's window.
    InvalidSession = "invalid_session", 400;
    /// A token request with a bad name, too many grants or a bad grant.
    InvalidTokenRequest = "invalid_token_request", 400;
    /// A membership request with a bad address or node id.
    InvalidMemberRequest = "invalid_member_request", 400;
    /// No valid bearer token: none sent, malformed, unknown, or revoked.
    Unauthenticated = "unauthenticated", 401;
    /// The token does not grant this on this key, prefix or route.
    Forbidden = "forbidden", 403;
    /// The key is absent or expired.
    KeyNotFound = "key_not_found", 404;
    /// No such route.
    RouteNotFound = "route_not_found", 404;
    /// The node is not a member of the cluster.
    NodeNotFound = "node_not_found", 404;
    /// The route does not take this method.
    MethodNotAllowed = "method_not_allowed", 405;
    /// The body did not arrive within `limits.body_timeout_ms`.
    RequestTimeout = "request_timeout", 408;
    /// Another membership change has not completed; nothing changed.
    MembershipChangeInProgress = "membership_change_in_progress", 409;
    /// The node id belongs to a current or former member: ids are never reused.
    NodeIdUsed = "node_id_used", 409;
    /// A current member uses the address.
    AddressInUse = "address_in_use", 409;
    /// The learner is too far behind the leader to become a voter yet.
    NotCaughtUp = "not_caught_up", 409;
    /// The change would leave the cluster unable to work (or is no change).
    MembershipRefused = "membership_refused", 409;
    /// A leadership handover ended without the named node leading: it did not campaign,
    /// another node was elected, or none was in time and the old leader still leads.
    LeaderNotMoved = "leader_not_moved", 409;
    /// Create-if-absent found the key.
    KeyExists = "key_exists", 412;
    /// The key is not at the expected revision.
    RevisionMismatch = "revision_mismatch", 412;
    /// The value is larger than `limits.max_value_bytes`.
    ValueTooLarge = "value_too_large", 413;
    /// The request target is longer than the API accepts.
    UriTooLong = "uri_too_long", 414;
    /// The body is not declared as JSON.
    UnsupportedMediaType = "unsupported_media_type", 415;
    /// The Idempotency-Key was used for a different request.
    IdempotencyKeyReused = "idempotency_key_reused", 422;
    /// The session ended (or never began), or the write's answer was acknowledged; not
    /// applied.
    SessionExpired = "session_expired", 422;
    /// The request's headers are larger than the API accepts.
    HeadersTooLarge = "headers_too_large", 431;
    /// A failure inside the node.
    Internal = "internal", 500;
    /// No leader is known; nothing was applied.
    NoLeader = "no_leader", 503;
    /// The request could not be served now; nothing was applied.
    Unavailable = "unavailable", 503;
    /// A write was proposed but its commit was not seen.
    OutcomeUnknown = "outcome_unknown", 504;
    /// The leader's disk is too full for writes that grow the data.
    InsufficientStorage = "insufficient_storage", 507;
    /// The write would take the stored keys and values past `limits.max_data_bytes`.
    QuotaExceeded = "quota_exceeded", 507;
    /// Recording the write's answer would pass `limits.max_records`.
    RecordsFull = "records_full", 507;
    /// As many tokens as the cluster keeps exist.
    TokensFull = "tokens_full", 507;
}

impl ErrorCode {
    /// The code named `code` on the wire, if this version knows it.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == code)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_listed_once_and_parses_back() {
        let mut seen = std::collections::HashSet::new();
        for &code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "{code} is listed twice");
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert!(code
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
        assert_eq!(ErrorCode::parse("no_such_code"), None);
    }

    #[test]
    fn statuses_are_client_or_server_errors() {
        for &code in ErrorCode::ALL {
            assert!((400..600).contains(&code.status()), "{code}");
        }
    }
}
