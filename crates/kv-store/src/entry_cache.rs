//! Recently written entries, kept in memory so apply reads a key it wrote lately
//! without a RocksDB lookup.
//!
//! Apply reads every key it writes (for its revision, version, create revision and
//! expiry). At 64 connections those lookups, skiplist searches through a memtable full
//! of older versions, were a tenth of every node's CPU. The cache mirrors RocksDB
//! exactly for the keys it holds: the state machine alone writes entries, puts every
//! entry it has written into the cache after the write succeeds, and clears the cache
//! when a snapshot replaces the data. `None` means the key is absent (deleted), which
//! saves a lookup when it is created again.

use kv_core::Entry;
use lru::LruCache;

/// Bytes counted for one cached entry beyond its key and value: the map's and list's
/// own bookkeeping and the entry's other fields.
const OVERHEAD_BYTES: usize = 96;

/// An LRU map from key to its stored entry (or its absence), bounded in bytes.
pub(crate) struct EntryCache {
    lru: LruCache<String, Option<Entry>>,
    bytes: usize,
    budget: usize,
}

fn cost(key: &str, entry: &Option<Entry>) -> usize {
    key.len() + entry.as_ref().map_or(0, |e| e.value.len()) + OVERHEAD_BYTES
}

impl EntryCache {
    /// An empty cache that holds at most `budget` bytes of keys and values.
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            lru: LruCache::unbounded(),
            bytes: 0,
            budget,
        }
    }

    /// The stored entry of `key` (`Some(None)`: absent), or `None` if not cached.
    pub(crate) fn get(&self, key: &str) -> Option<&Option<Entry>> {
        self.lru.peek(key)
    }

    /// Records what is now stored for `key`, evicting the least recently written keys
    /// while the cache is over its budget. An entry larger than the whole budget is not
    /// kept (and drops an older copy of its key).
    pub(crate) fn put(&mut self, key: String, entry: Option<Entry>) {
        let added = cost(&key, &entry);
        if added > self.budget {
            if let Some(old) = self.lru.pop(key.as_str()) {
                self.bytes -= cost(&key, &old);
            }
            return;
        }
        if let Some((old_key, old)) = self.lru.push(key, entry) {
            self.bytes -= cost(&old_key, &old);
        }
        self.bytes += added;
        while self.bytes > self.budget {
            match self.lru.pop_lru() {
                Some((k, e)) => self.bytes -= cost(&k, &e),
                None => break,
            }
        }
    }

    /// Forgets everything (the stored data was replaced, or may not match).
    pub(crate) fn clear(&mut self) {
        self.lru.clear();
        self.bytes = 0;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lru.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(value: &str, revision: u64) -> Option<Entry> {
        Some(Entry {
            value: value.as_bytes().to_vec(),
            revision,
            create_revision: 1,
            version: revision,
            expires_at_ms: None,
        })
    }

    #[test]
    fn holds_the_latest_entry_or_absence_of_each_key() {
        let mut c = EntryCache::new(10_000);
        assert_eq!(c.get("a"), None, "not cached");
        c.put("a".into(), entry("1", 1));
        c.put("a".into(), entry("22", 2));
        c.put("b".into(), None);
        assert_eq!(c.get("a"), Some(&entry("22", 2)));
        assert_eq!(c.get("b"), Some(&None), "cached as absent");
        assert_eq!(c.bytes, cost("a", &entry("22", 2)) + cost("b", &None));
        c.clear();
        assert_eq!((c.get("a"), c.bytes, c.len()), (None, 0, 0));
    }

    #[test]
    fn evicts_the_least_recently_written_keys_to_stay_in_budget() {
        let one = cost("k0", &entry("v", 1));
        let mut c = EntryCache::new(3 * one);
        for i in 0..3 {
            c.put(format!("k{i}"), entry("v", 1));
        }
        assert_eq!((c.len(), c.bytes), (3, 3 * one));
        c.put("k0".into(), entry("v", 2)); // k1 is now the least recent
        c.put("k3".into(), entry("v", 1));
        assert_eq!(c.get("k1"), None, "evicted");
        for k in ["k0", "k2", "k3"] {
            assert!(c.get(k).is_some(), "{k} kept");
        }
        assert_eq!(c.bytes, 3 * one);
    }

    #[test]
    fn an_entry_larger_than_the_budget_is_not_kept_and_drops_its_older_copy() {
        let mut c = EntryCache::new(200);
        c.put("a".into(), entry("small", 1));
        c.put("b".into(), entry("small", 1));
        c.put("a".into(), entry(&"x".repeat(300), 2));
        assert_eq!(c.get("a"), None);
        assert_eq!(c.get("b"), Some(&entry("small", 1)), "others stay");
        assert_eq!(c.bytes, cost("b", &entry("small", 1)));
    }
}
