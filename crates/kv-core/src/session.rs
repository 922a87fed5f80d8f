//! Client sessions (Ongaro's dissertation, §6.3): a client numbers its writes within a
//! session and says which answers it no longer needs; the state machine keeps the
//! answers of the writes it may still retry and forgets the rest, so at-most-once costs
//! memory per live client, not per write. Sessions end after a time without writes,
//! through the log like expired keys.

use serde::{Deserialize, Serialize};

use crate::OpResult;

/// Most writes of one session that may be unacknowledged at once: a write's `seq` must be
/// below its `ack` plus this, so a session keeps at most this many answers.
pub const SESSION_WINDOW: u64 = 256;

/// A recorded answer keeps the value of a failed write's `current` entry only up to this
/// many bytes; a larger one is filled in again from the key when the answer is replayed.
pub const RECORDED_VALUE_LIMIT: usize = 1024;

/// One client session. On-disk type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// When the session ends unless a write extends it, milliseconds since the epoch.
    pub expires_at_ms: u64,
    /// Every write numbered below this has been acknowledged by the client.
    pub acked: u64,
    /// The answers of writes at or above `acked`, in the order they applied.
    pub answers: Vec<Answer>,
}

impl Session {
    /// Whether the session still counts at `now_ms`.
    pub fn is_live_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms > now_ms
    }

    /// How many records the session counts for against `limits.max_records`: itself and
    /// each answer it keeps.
    pub fn records(&self) -> u64 {
        1 + self.answers.len() as u64
    }
}

/// The answer to one write of a session. On-disk type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The write's number within the session.
    pub seq: u64,
    /// Fingerprint of the request (see [`crate::fingerprint`]).
    pub fingerprint: u128,
    /// What applying it answered, as [`recordable`] keeps it.
    pub result: OpResult,
}

/// `result` as an answer is kept: a failed write's `current` entry without its value
/// when that is larger than [`RECORDED_VALUE_LIMIT`] (a value is never empty JSON, so
/// an empty one means "left out").
pub fn recordable(mut result: OpResult) -> OpResult {
    if let OpResult::Failed {
        current: Some(entry),
        ..
    } = &mut result
    {
        if entry.value.len() > RECORDED_VALUE_LIMIT {
            entry.value = Vec::new();
        }
    }
    result
}

/// Whether a recorded answer left out a value that replaying it must fill in.
pub fn value_left_out(result: &OpResult) -> bool {
    matches!(result, OpResult::Failed { current: Some(entry), .. } if entry.value.is_empty())
}

/// The session id as it appears in the expiry index: 32 hex digits.
pub fn session_key(id: u128) -> String {
    format!("{id:032x}")
}

/// The session id written as [`session_key`] writes it (32 hex digits, either case).
pub fn parse_session_key(key: &str) -> Option<u128> {
    let hex = key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit());
    hex.then(|| u128::from_str_radix(key, 16).ok()).flatten()
}

/// The `Kv-Session` header of write `seq` of session `id`, acknowledging every write
/// numbered below `ack`.
pub fn session_header(id: u128, seq: u64, ack: u64) -> String {
    format!("{}; seq={seq}; ack={ack}", session_key(id))
}

/// Parses a `Kv-Session` header, `<32 hex digits>; seq=<n>; ack=<k>`, with `1 <= ack <=
/// seq < ack + SESSION_WINDOW`: (id, seq, ack).
pub fn parse_session_header(text: &str) -> Option<(u128, u64, u64)> {
    let mut parts = text.split(';').map(str::trim);
    let id = parse_session_key(parts.next()?)?;
    let number = |name: &str, part: Option<&str>| -> Option<u64> {
        let value = part?.strip_prefix(name)?.strip_prefix('=')?;
        value
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| value.parse().ok())
            .flatten()
    };
    let seq = number("seq", parts.next())?;
    let ack = number("ack", parts.next())?;
    let in_window = 1 <= ack && ack <= seq && seq - ack < SESSION_WINDOW;
    (parts.next().is_none() && in_window).then_some((id, seq, ack))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Entry, Failure};

    fn failed_with(value_len: usize) -> OpResult {
        OpResult::Failed {
            failure: Failure::KeyExists,
            current: Some(Entry {
                value: vec![b'1'; value_len],
                revision: 3,
                create_revision: 3,
                version: 1,
                expires_at_ms: None,
            }),
        }
    }

    #[test]
    fn recorded_answers_leave_out_large_values_only() {
        let small = recordable(failed_with(RECORDED_VALUE_LIMIT));
        assert_eq!(small, failed_with(RECORDED_VALUE_LIMIT));
        assert!(!value_left_out(&small));
        let large = recordable(failed_with(RECORDED_VALUE_LIMIT + 1));
        assert!(value_left_out(&large));
    }

    #[test]
    fn session_keys_round_trip() {
        for id in [0, 1, u128::MAX, 0x0123_4567_89ab_cdef] {
            assert_eq!(parse_session_key(&session_key(id)), Some(id));
        }
        assert_eq!(parse_session_key("xyz"), None);
        assert_eq!(parse_session_key(&format!("+{}", "0".repeat(31))), None);
    }

    #[test]
    fn session_headers_round_trip() {
        let header = session_header(0xab, 7, 3);
        assert_eq!(header, format!("{:032x}; seq=7; ack=3", 0xab));
        assert_eq!(parse_session_header(&header), Some((0xab, 7, 3)));
    }
}
