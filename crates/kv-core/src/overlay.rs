//! The view of state that applying a command reads and writes.
//!
//! A storage engine persists the effects of a whole apply call at once, so commands
//! later in the call must see the writes of earlier ones. [`Overlay`] holds those
//! pending writes on top of a [`StateView`] of the persisted state; the caller turns it
//! into one atomic write when the call ends.

use std::collections::BTreeMap;

use crate::Entry;

/// Read access to the persisted state machine.
pub trait StateView {
    /// The storage engine's error.
    type Error;

    /// The stored entry of `key`, live or expired.
    fn get(&self, key: &str) -> Result<Option<Entry>, Self::Error>;

    /// Every stored key starting with `prefix`, live or expired, in key order.
    fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, Self::Error>;

    /// Expiry-index entries `(expires_at_ms, key)` with `expires_at_ms <= up_to_ms`, in
    /// index order, leaving out those `skip` returns true for, until `limit` are found.
    fn due(
        &self,
        up_to_ms: u64,
        limit: usize,
        skip: &mut dyn FnMut(u64, &str) -> bool,
    ) -> Result<Vec<(u64, String)>, Self::Error>;
}

/// Writes made by an apply call that are not yet persisted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// The state machine's clock after the commands applied so far.
    pub clock_ms: u64,
    /// Pending entry changes: `Some` puts, `None` deletes.
    pub data: BTreeMap<String, Option<Entry>>,
    /// Pending expiry-index changes: `true` adds `(expires_at_ms, key)`, `false` removes it.
    pub index: BTreeMap<(u64, String), bool>,
}

impl Overlay {
    /// An empty overlay over a state machine whose clock reads `clock_ms`.
    pub fn new(clock_ms: u64) -> Self {
        Self {
            clock_ms,
            ..Self::default()
        }
    }

    /// The entry of `key` as the next command sees it, live or expired.
    pub fn get<V: StateView>(&self, view: &V, key: &str) -> Result<Option<Entry>, V::Error> {
        match self.data.get(key) {
            Some(pending) => Ok(pending.clone()),
            None => view.get(key),
        }
    }

    /// Replaces the entry of `key`; `old` is its stored entry, so its index entry goes.
    pub fn put(&mut self, key: &str, entry: Entry, old: Option<&Entry>) {
        self.unindex(key, old);
        if let Some(at) = entry.expires_at_ms {
            self.index.insert((at, key.to_owned()), true);
        }
        self.data.insert(key.to_owned(), Some(entry));
    }

    /// Removes the entry of `key`; `old` is its stored entry.
    pub fn delete(&mut self, key: &str, old: Option<&Entry>) {
        self.unindex(key, old);
        self.data.insert(key.to_owned(), None);
    }

    fn unindex(&mut self, key: &str, old: Option<&Entry>) {
        if let Some(at) = old.and_then(|e| e.expires_at_ms) {
            self.index.insert((at, key.to_owned()), false);
        }
    }

    /// Every key starting with `prefix` that the next command sees, live or expired,
    /// in key order.
    pub fn keys_with_prefix<V: StateView>(
        &self,
        view: &V,
        prefix: &str,
    ) -> Result<Vec<String>, V::Error> {
        let mut keys: Vec<String> = view
            .keys_with_prefix(prefix)?
            .into_iter()
            .filter(|k| !self.data.contains_key(k))
            .collect();
        keys.extend(
            self.data
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .filter(|(_, e)| e.is_some())
                .map(|(k, _)| k.clone()),
        );
        keys.sort();
        Ok(keys)
    }

    /// The first `limit` expiry-index entries due at `up_to_ms`, in index order, as the
    /// next command sees the index.
    pub fn due<V: StateView>(
        &self,
        view: &V,
        up_to_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, V::Error> {
        // Persisted index entries this overlay touched are decided by the overlay alone.
        let mut skip = |at: u64, key: &str| self.index.contains_key(&(at, key.to_owned()));
        let mut due = view.due(up_to_ms, limit, &mut skip)?;
        due.extend(
            self.index
                .iter()
                .take_while(|((at, _), _)| *at <= up_to_ms)
                .filter(|(_, added)| **added)
                .map(|(k, _)| k.clone()),
        );
        due.sort();
        due.dedup();
        due.truncate(limit);
        Ok(due)
    }
}
