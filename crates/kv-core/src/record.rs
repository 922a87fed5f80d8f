//! Idempotency records: the first answer to a write carrying an Idempotency-Key,
//! kept so a retry gets the same answer and changes nothing.

use serde::{Deserialize, Serialize};

use crate::OpResult;

/// A recorded answer. On-disk type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Fingerprint of the request that made the record (see [`fingerprint`]).
    pub fingerprint: u128,
    /// What applying it answered.
    pub result: OpResult,
    /// When the record stops counting, milliseconds since the epoch.
    pub expires_at_ms: u64,
}

impl Record {
    /// Whether the record still counts at `now_ms`.
    pub fn is_live_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms > now_ms
    }
}

/// A stable 128-bit fingerprint of a request's parts (method, key, query, body): see
/// [`Fingerprinter`]. Stable across builds and platforms, because proposers of different
/// versions must agree on it.
pub fn fingerprint(parts: &[&[u8]]) -> u128 {
    let mut f = Fingerprinter::new();
    for part in parts {
        f.part(part);
    }
    f.finish()
}

/// Two FNV-1a hashes with different offsets over length-prefixed parts, fed one part at
/// a time: for request fingerprints and for digests of a whole state machine.
#[derive(Debug, Clone)]
pub struct Fingerprinter {
    a: u64,
    b: u64,
}

impl Default for Fingerprinter {
    fn default() -> Self {
        Self::new()
    }
}

impl Fingerprinter {
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// The hash of no parts.
    pub fn new() -> Self {
        Self {
            a: 0xcbf2_9ce4_8422_2325,
            b: 0x6c62_272e_07bb_0142,
        }
    }

    fn byte(&mut self, byte: u8) {
        self.a = (self.a ^ u64::from(byte)).wrapping_mul(Self::PRIME);
        self.b = (self.b ^ u64::from(byte.rotate_left(3))).wrapping_mul(Self::PRIME);
    }

    /// Feeds one part: its length, then its bytes.
    pub fn part(&mut self, part: &[u8]) {
        for byte in (part.len() as u64).to_le_bytes() {
            self.byte(byte);
        }
        for &byte in part {
            self.byte(byte);
        }
    }

    /// The 128-bit hash of the parts fed so far.
    pub fn finish(&self) -> u128 {
        (u128::from(self.a) << 64) | u128::from(self.b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_stable_and_separates_parts() {
        // A fixed value: a change here would make old records unmatchable.
        assert_eq!(
            fingerprint(&[b"PUT", b"k", b"", b"1"]),
            fingerprint(&[b"PUT", b"k", b"", b"1"])
        );
        assert_ne!(
            fingerprint(&[b"PUT", b"ab", b"c"]),
            fingerprint(&[b"PUT", b"a", b"bc"])
        );
        assert_ne!(
            fingerprint(&[b"PUT", b"k", b"", b"1"]),
            fingerprint(&[b"PUT", b"k", b"", b"2"])
        );
        assert_eq!(
            fingerprint(&[]),
            (0xcbf2_9ce4_8422_2325u128 << 64) | 0x6c62_272e_07bb_0142
        );
    }
}
