//! Checks on client input shared by the server and the client.

use thiserror::Error;

use crate::ErrorCode;

/// The longest key, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 4096;

/// Why a key or a TTL was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InputError {
    #[error("the key is empty")]
    EmptyKey,
    #[error("the key is {0} bytes long; at most {MAX_KEY_BYTES} are allowed")]
    KeyTooLong(usize),
    #[error(
        "a key's /-separated parts may not be . or .. (HTTP clients and proxies resolve them)"
    )]
    DotSegment,
    #[error("ttl must be a positive whole number of seconds, got {0:?}")]
    BadTtl(String),
    #[error("an idempotency key is 1 to 255 visible ASCII characters")]
    BadIdempotencyKey,
}

impl InputError {
    /// The stable snake_case code clients match on.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::EmptyKey | Self::KeyTooLong(_) | Self::DotSegment => ErrorCode::InvalidKey,
            Self::BadTtl(_) => ErrorCode::InvalidTtl,
            Self::BadIdempotencyKey => ErrorCode::InvalidIdempotencyKey,
        }
    }
}

/// Checks a decoded key: non-empty, at most [`MAX_KEY_BYTES`], and no `/`-separated part
/// that is `.` or `..`: URL parsers (the client's, a proxy's, the forwarding node's)
/// resolve those, so such a key would name another key on the way to the leader.
pub fn check_key(key: &str) -> Result<(), InputError> {
    match key.len() {
        0 => Err(InputError::EmptyKey),
        n if n > MAX_KEY_BYTES => Err(InputError::KeyTooLong(n)),
        _ if key.split('/').any(|part| part == "." || part == "..") => Err(InputError::DotSegment),
        _ => Ok(()),
    }
}

/// Checks an idempotency key: 1 to 255 visible ASCII characters.
pub fn check_idempotency_key(key: &[u8]) -> Result<(), InputError> {
    let visible = key.iter().all(|b| (0x21..=0x7e).contains(b));
    if (1..=255).contains(&key.len()) && visible {
        Ok(())
    } else {
        Err(InputError::BadIdempotencyKey)
    }
}

/// The longest TTL we accept: ten years, far below where milliseconds could overflow.
pub const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// Parses a `ttl` query value (seconds, a positive integer) into milliseconds.
pub fn parse_ttl_seconds(raw: &str) -> Result<u64, InputError> {
    match raw.parse::<u64>() {
        Ok(s) if (1..=MAX_TTL_SECONDS).contains(&s) && !raw.starts_with('+') => Ok(s * 1000),
        _ => Err(InputError::BadTtl(raw.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_may_hold_slashes_and_colons_up_to_the_limit() {
        assert_eq!(check_key("users/1:profile"), Ok(()));
        assert_eq!(check_key(&"k".repeat(MAX_KEY_BYTES)), Ok(()));
        assert_eq!(
            check_key(&"k".repeat(MAX_KEY_BYTES + 1)),
            Err(InputError::KeyTooLong(4097))
        );
        assert_eq!(check_key(""), Err(InputError::EmptyKey));
    }

    #[test]
    fn keys_may_not_hold_dot_segments_that_urls_resolve() {
        for bad in ["..", ".", "a/../b", "a/./b", "../a", "a/..", "./"] {
            assert_eq!(check_key(bad), Err(InputError::DotSegment), "{bad:?}");
        }
        for ok in ["...", ".a", "a.", "a..b", "a/.b/c", "v1.2/..x"] {
            assert_eq!(check_key(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn idempotency_keys_are_short_visible_ascii() {
        assert_eq!(check_idempotency_key(b"evt_123"), Ok(()));
        assert_eq!(check_idempotency_key(&[b'k'; 255]), Ok(()));
        for bad in [&b""[..], b"has space", &[b'k'; 256], "é".as_bytes()] {
            assert_eq!(
                check_idempotency_key(bad),
                Err(InputError::BadIdempotencyKey),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ttl_must_be_a_positive_integer_of_seconds() {
        assert_eq!(parse_ttl_seconds("3600"), Ok(3_600_000));
        for bad in [
            "0",
            "-1",
            "abc",
            "",
            "1.5",
            "+5",
            " 5",
            "99999999999999999999",
        ] {
            assert!(parse_ttl_seconds(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(
            parse_ttl_seconds("0").map_err(|e| e.code()),
            Err(ErrorCode::InvalidTtl)
        );
    }
}
