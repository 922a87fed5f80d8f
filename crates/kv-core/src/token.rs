//! Access tokens: who may read and write which keys, and who may administer the cluster.
//!
//! A token lives in the replicated state (created and revoked through the log, never
//! edited), so every node agrees on it. Only a hash of its secret is stored; checking a
//! presented secret against it is the HTTP layer's work, and apply checks only that the
//! token still exists and grants what the command does ([`Command::Authorized`]).
//!
//! [`Command::Authorized`]: crate::Command::Authorized

use serde::{Deserialize, Serialize};

/// The most tokens the state keeps; creating one more fails with `tokens_full`.
pub const MAX_TOKENS: u64 = 10_000;
/// The most grants one token carries.
pub const MAX_GRANTS: usize = 64;
/// The longest token name, in bytes.
pub const MAX_TOKEN_NAME_BYTES: usize = 128;
/// The id of the bootstrap token, which comes from the configuration and is never
/// stored: it is an admin with write access to every key.
pub const BOOTSTRAP_TOKEN: u64 = 0;

/// What a grant allows on the keys under its prefix. On-disk type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Access {
    /// Get and list.
    Read,
    /// Get, list, set, delete, and delete by prefix within the grant's prefix. Includes
    /// reading, because a failed conditional write answers with the current value.
    Write,
}

/// Access to every key starting with `prefix` (`""`: every key). On-disk type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub prefix: String,
    pub access: Access,
}

/// A stored token. On-disk type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// A name for people (which service or workspace holds it); not unique.
    pub name: String,
    /// SHA-256 of the secret part of the token.
    pub hash: [u8; 32],
    /// May manage tokens and read the cluster's state (`/v1/cluster`, digests).
    pub admin: bool,
    /// The keys it may read or write.
    pub grants: Vec<Grant>,
    /// The state machine's clock when it was created.
    pub created_ms: u64,
}

impl Token {
    /// Whether the token may read `key`.
    pub fn can_read(&self, key: &str) -> bool {
        self.grants.iter().any(|g| key.starts_with(&g.prefix))
    }

    /// Whether the token may set or delete `key`.
    pub fn can_write(&self, key: &str) -> bool {
        self.grants
            .iter()
            .any(|g| g.access == Access::Write && key.starts_with(&g.prefix))
    }

    /// Whether the token may write any key: what opening a client session needs, so a
    /// read-only token cannot spend the records every tenant shares.
    pub fn can_write_somewhere(&self) -> bool {
        self.grants.iter().any(|g| g.access == Access::Write)
    }

    /// Whether the token may delete every key under `prefix` at once: only within one
    /// of its write grants.
    pub fn can_delete_prefix(&self, prefix: &str) -> bool {
        self.grants
            .iter()
            .any(|g| g.access == Access::Write && prefix.starts_with(&g.prefix))
    }

    /// What a listing of `prefix` may show: `None` if every key under it is readable;
    /// otherwise the narrower prefixes under it that are, sorted and none under another
    /// (empty if none is).
    pub fn readable_within(&self, prefix: &str) -> Option<Vec<String>> {
        if self.can_read(prefix) {
            return None;
        }
        let mut under: Vec<&str> = self
            .grants
            .iter()
            .map(|g| g.prefix.as_str())
            .filter(|g| g.starts_with(prefix))
            .collect();
        under.sort_unstable();
        let mut kept: Vec<String> = Vec::with_capacity(under.len());
        for g in under {
            if !kept.last().is_some_and(|k| g.starts_with(k.as_str())) {
                kept.push(g.to_owned());
            }
        }
        Some(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(grants: &[(&str, Access)]) -> Token {
        Token {
            name: "t".into(),
            hash: [0; 32],
            admin: false,
            grants: grants
                .iter()
                .map(|(p, a)| Grant {
                    prefix: (*p).into(),
                    access: *a,
                })
                .collect(),
            created_ms: 0,
        }
    }

    #[test]
    fn an_empty_prefix_grants_every_key() {
        let t = token(&[("", Access::Read)]);
        assert!(t.can_read("a") && t.can_read("zz/y"));
        assert!(!t.can_write("a"));
        assert!(!t.can_delete_prefix("a"));
        assert!(!t.can_write_somewhere());
        assert_eq!(t.readable_within("anything"), None);
    }

    #[test]
    fn a_prefix_grant_covers_only_keys_under_it() {
        let t = token(&[("app1/", Access::Write)]);
        assert!(t.can_read("app1/x") && t.can_write("app1/x") && t.can_write_somewhere());
        assert!(!t.can_read("app2/x") && !t.can_write("app2/x"));
        // "app1" is not under "app1/": a grant is a prefix of bytes, not of words.
        assert!(!t.can_write("app1"));
        assert!(t.can_delete_prefix("app1/"));
        assert!(t.can_delete_prefix("app1/cache/"));
        assert!(!t.can_delete_prefix("app1"));
        assert!(!t.can_delete_prefix("app"));
    }

    #[test]
    fn write_access_needs_a_write_grant_over_the_key() {
        let t = token(&[("a", Access::Read), ("ab", Access::Write)]);
        assert!(t.can_read("a1") && !t.can_write("a1"));
        assert!(t.can_write("abc"));
        assert!(!t.can_delete_prefix("a"));
        assert!(t.can_delete_prefix("abc"));
    }

    #[test]
    fn listing_is_narrowed_to_the_readable_prefixes_under_it() {
        let t = token(&[
            ("b/2/", Access::Read),
            ("b/1/", Access::Write),
            ("b/1/x", Access::Read),
            ("c/", Access::Read),
        ]);
        assert_eq!(t.readable_within("b/1/"), None);
        assert_eq!(t.readable_within("b/1/q"), None);
        assert_eq!(
            t.readable_within("b/"),
            Some(vec!["b/1/".to_owned(), "b/2/".to_owned()])
        );
        assert_eq!(
            t.readable_within(""),
            Some(vec!["b/1/".to_owned(), "b/2/".to_owned(), "c/".to_owned()])
        );
        assert_eq!(t.readable_within("d/"), Some(vec![]));
    }
}
