//! The stored form of one key's entry.

use serde::{Deserialize, Serialize};

/// One key's current entry. On-disk type: its encoding is a promise to old data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The JSON document, as validated UTF-8 JSON text.
    // As bytes: postcard copies them whole instead of one element at a time, and
    // encodes them exactly as it did a `Vec<u8>` (pinned by tests/encoding.rs).
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Log index of the entry's last change.
    pub revision: u64,
    /// Log index of the write that created the key (since it was last absent).
    pub create_revision: u64,
    /// Number of writes since creation, starting at 1.
    pub version: u64,
    /// Milliseconds since the Unix epoch at which the entry stops existing, if ever.
    pub expires_at_ms: Option<u64>,
}

impl Entry {
    /// Whether the entry is live at `now_ms`: an entry whose expiry is at or before
    /// `now_ms` is absent.
    pub fn is_live_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|at| at > now_ms)
    }

    /// Milliseconds left until expiry at `now_ms`, if the entry expires.
    pub fn ttl_ms_at(&self, now_ms: u64) -> Option<u64> {
        self.expires_at_ms.map(|at| at.saturating_sub(now_ms))
    }

    /// What bookkeeping needs of the entry stored under `key`.
    pub fn meta(&self, key: &str) -> EntryMeta {
        EntryMeta {
            revision: self.revision,
            expires_at_ms: self.expires_at_ms,
            bytes: data_bytes(key, self.value.len()),
        }
    }
}

/// What a stored entry costs against `limits.max_data_bytes`: its key and value bytes.
pub fn data_bytes(key: &str, value_len: usize) -> u64 {
    (key.len() + value_len) as u64
}

/// A stored entry without its value: enough to remove it and keep the books.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    /// Log index of the entry's last change.
    pub revision: u64,
    /// When the entry expires, if ever (its expiry-index entry).
    pub expires_at_ms: Option<u64>,
    /// [`data_bytes`] of the key and value.
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(expires_at_ms: Option<u64>) -> Entry {
        Entry {
            value: b"1".to_vec(),
            revision: 1,
            create_revision: 1,
            version: 1,
            expires_at_ms,
        }
    }

    #[test]
    fn expired_key_is_absent_at_its_expiry_instant() {
        let e = entry(Some(1000));
        assert!(e.is_live_at(999));
        assert!(!e.is_live_at(1000));
        assert!(!e.is_live_at(1001));
    }

    #[test]
    fn entry_without_expiry_is_always_live() {
        assert!(entry(None).is_live_at(u64::MAX));
        assert_eq!(entry(None).ttl_ms_at(5), None);
    }

    #[test]
    fn remaining_ttl_never_underflows() {
        assert_eq!(entry(Some(1000)).ttl_ms_at(400), Some(600));
        assert_eq!(entry(Some(1000)).ttl_ms_at(4000), Some(0));
    }
}
