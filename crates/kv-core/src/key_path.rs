//! How a key travels in the path of `/v1/kv/{key}`, for the client and for a node that
//! forwards a request to the leader alike.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Everything but unreserved characters and `/` is escaped, so no URL parser on the way
/// (reqwest's turns `\` into `/` and resolves `%2e%2e`) can make the path name another
/// key. Keys hold no `.` or `..` part ([`crate::validate::check_key`]).
const ESCAPES: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// The path `/v1/kv/{key}` of a checked key, escaped.
pub fn key_path(key: &str) -> String {
    format!("/v1/kv/{}", utf8_percent_encode(key, ESCAPES))
}
