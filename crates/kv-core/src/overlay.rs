//! The view of state that applying a command reads and writes.
//!
//! A storage engine persists the effects of a whole apply call at once, so commands
//! later in the call must see the writes of earlier ones. [`Overlay`] holds those
//! pending writes on top of a [`StateView`] of the persisted state; the caller turns it
//! into one atomic write when the call ends.

use std::collections::BTreeMap;

use crate::record::Record;
use crate::Entry;

/// What an expiry-index entry points at: a key's entry or an idempotency record.
/// On-disk: stored as one byte after the expiry time, so the index orders by time first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    /// A key in the data.
    Key = 0,
    /// An idempotency record.
    Record = 1,
}

impl Slot {
    /// The byte that stands for the slot on disk.
    pub fn byte(self) -> u8 {
        self as u8
    }

    /// The slot a stored byte stands for.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Key),
            1 => Some(Self::Record),
            _ => None,
        }
    }
}

/// One expiry-index entry: when, what kind, which key or record id.
pub type Due = (u64, Slot, String);

/// Read access to the persisted state machine.
pub trait StateView {
    /// The storage engine's error.
    type Error;

    /// The stored entry of `key`, live or expired.
    fn get(&self, key: &str) -> Result<Option<Entry>, Self::Error>;

    /// The stored idempotency record `id`, live or expired.
    fn get_record(&self, id: &str) -> Result<Option<Record>, Self::Error>;

    /// Every stored key starting with `prefix`, live or expired, in key order.
    fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, Self::Error>;

    /// Expiry-index entries with `expires_at_ms <= up_to_ms`, in index order, leaving
    /// out those `skip` returns true for, until `limit` are found.
    fn due(
        &self,
        up_to_ms: u64,
        limit: usize,
        skip: &mut dyn FnMut(&Due) -> bool,
    ) -> Result<Vec<Due>, Self::Error>;
}

/// Writes made by an apply call that are not yet persisted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// The state machine's clock after the commands applied so far.
    pub clock_ms: u64,
    /// Pending entry changes: `Some` puts, `None` deletes.
    pub data: BTreeMap<String, Option<Entry>>,
    /// Pending idempotency-record changes: `Some` puts, `None` deletes.
    pub records: BTreeMap<String, Option<Record>>,
    /// Pending expiry-index changes: `true` adds the entry, `false` removes it.
    pub index: BTreeMap<Due, bool>,
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
            self.index.insert((at, Slot::Key, key.to_owned()), true);
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
            self.index.insert((at, Slot::Key, key.to_owned()), false);
        }
    }

    /// The idempotency record `id` as the next command sees it, live or expired.
    pub fn get_record<V: StateView>(&self, view: &V, id: &str) -> Result<Option<Record>, V::Error> {
        match self.records.get(id) {
            Some(pending) => Ok(pending.clone()),
            None => view.get_record(id),
        }
    }

    /// Stores record `id`; `old` is its stored record, whose index entry goes.
    pub fn put_record(&mut self, id: &str, record: Record, old: Option<&Record>) {
        if let Some(old) = old {
            self.index
                .insert((old.expires_at_ms, Slot::Record, id.to_owned()), false);
        }
        self.index
            .insert((record.expires_at_ms, Slot::Record, id.to_owned()), true);
        self.records.insert(id.to_owned(), Some(record));
    }

    /// Removes record `id`; `old` is its stored record.
    pub fn delete_record(&mut self, id: &str, old: &Record) {
        self.index
            .insert((old.expires_at_ms, Slot::Record, id.to_owned()), false);
        self.records.insert(id.to_owned(), None);
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
    ) -> Result<Vec<Due>, V::Error> {
        // Persisted index entries this overlay touched are decided by the overlay alone.
        let mut skip = |due: &Due| self.index.contains_key(due);
        let mut due = view.due(up_to_ms, limit, &mut skip)?;
        due.extend(
            self.index
                .iter()
                .take_while(|((at, _, _), _)| *at <= up_to_ms)
                .filter(|(_, added)| **added)
                .map(|(k, _)| k.clone()),
        );
        due.sort();
        due.dedup();
        due.truncate(limit);
        Ok(due)
    }
}
