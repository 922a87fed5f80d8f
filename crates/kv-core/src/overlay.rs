//! The view of state that applying a command reads and writes.
//!
//! A storage engine persists the effects of a whole apply call at once, so commands
//! later in the call must see the writes of earlier ones. [`Overlay`] holds those
//! pending writes on top of a [`StateView`] of the persisted state; the caller turns it
//! into one atomic write when the call ends.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use crate::entry::EntryMeta;
use crate::record::Record;
use crate::session::{session_key, Session};
use crate::token::Token;
use crate::Entry;

/// What an expiry-index entry points at: a key's entry, an idempotency record or a
/// client session.
/// On-disk: stored as one byte after the expiry time, so the index orders by time first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    /// A key in the data.
    Key = 0,
    /// An idempotency record.
    Record = 1,
    /// A client session, by [`session_key`].
    Session = 2,
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
            2 => Some(Self::Session),
            _ => None,
        }
    }
}

/// One expiry-index entry: when, what kind, which key or record id.
pub type Due = (u64, Slot, String);

/// A prefix delete whose keys are not all removed yet. Every entry under `prefix`
/// whose revision is below `revision` is deleted from the moment the delete applied;
/// `Purge` commands remove those entries a bounded number at a time, from `after` on,
/// and drop the tombstone when none is left. On-disk type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// Keys starting with this are covered.
    pub prefix: String,
    /// The prefix delete's revision: entries written before it are deleted.
    pub revision: u64,
    /// Keys up to and including this one have been purged.
    pub after: Option<String>,
}

impl Tombstone {
    /// Whether the entry of `key` last written at `revision` is deleted by this.
    pub fn covers(&self, key: &str, revision: u64) -> bool {
        revision < self.revision && key.starts_with(&self.prefix)
    }
}

/// Whether any of `tombstones` deletes the entry of `key` written at `revision`.
pub fn tombstoned(tombstones: &[Tombstone], key: &str, revision: u64) -> bool {
    tombstones.iter().any(|t| t.covers(key, revision))
}

/// Read access to the persisted state machine.
pub trait StateView {
    /// The storage engine's error.
    type Error;

    /// The stored entry of `key`, live or expired.
    fn get(&self, key: &str) -> Result<Option<Entry>, Self::Error>;

    /// The stored idempotency record `id`, live or expired.
    fn get_record(&self, id: &str) -> Result<Option<Record>, Self::Error>;

    /// The stored client session `id`, live or expired.
    fn get_session(&self, id: u128) -> Result<Option<Session>, Self::Error>;

    /// The stored token `id`.
    fn get_token(&self, id: u64) -> Result<Option<Token>, Self::Error>;

    /// Stored entries (live, expired or tombstoned) whose keys start with `prefix`,
    /// strictly after `after` if given, in key order, leaving out keys `skip` returns
    /// true for, until `limit` are found. Values are not read.
    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        skip: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Vec<(String, EntryMeta)>, Self::Error>;

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
    /// Key and value bytes of every stored entry after the commands applied so far.
    pub data_bytes: u64,
    /// Prefix deletes not yet purged, oldest first, after the commands applied so far.
    pub tombstones: Vec<Tombstone>,
    /// Idempotency records, sessions and session answers stored, after the commands
    /// applied so far (see [`Session::records`]).
    pub record_count: u64,
    /// Tokens stored, after the commands applied so far.
    pub token_count: u64,
    /// The limits the command being applied carries (`Command::WithinLimits`), if any.
    pub limits: Option<crate::Limits>,
    /// Pending entry changes: `Some` puts, `None` deletes.
    pub data: BTreeMap<String, Option<Entry>>,
    /// Pending idempotency-record changes: `Some` puts, `None` deletes.
    pub records: BTreeMap<String, Option<Record>>,
    /// Pending session changes: `Some` puts, `None` deletes.
    pub sessions: BTreeMap<u128, Option<Session>>,
    /// Pending expiry-index changes: `true` adds the entry, `false` removes it.
    pub index: BTreeMap<Due, bool>,
    /// Pending token changes: `Some` puts, `None` deletes.
    pub tokens: BTreeMap<u64, Option<Token>>,
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

    /// `stored`, the stored entry of `key`, if it is live at the clock: neither expired
    /// nor deleted by a prefix delete.
    pub fn live<'e>(&self, key: &str, stored: Option<&'e Entry>) -> Option<&'e Entry> {
        stored.filter(|e| {
            e.is_live_at(self.clock_ms) && !tombstoned(&self.tombstones, key, e.revision)
        })
    }

    /// Replaces the entry of `key`; `old` is its stored entry, so its index entry goes.
    pub fn put(&mut self, key: &str, entry: Entry, old: Option<&Entry>) {
        self.forget(key, old.map(|e| e.meta(key)));
        if let Some(at) = entry.expires_at_ms {
            self.index.insert((at, Slot::Key, key.to_owned()), true);
        }
        self.data_bytes += entry.meta(key).bytes;
        self.data.insert(key.to_owned(), Some(entry));
    }

    /// Removes the entry of `key`; `old` is its stored entry.
    pub fn delete(&mut self, key: &str, old: Option<&Entry>) {
        self.remove(key, old.map(|e| e.meta(key)));
    }

    /// [`Overlay::delete`] knowing only the stored entry's metadata.
    pub fn remove(&mut self, key: &str, old: Option<EntryMeta>) {
        self.forget(key, old);
        self.data.insert(key.to_owned(), None);
    }

    /// Drops the index entry and the bytes of `key`'s stored entry `old`.
    fn forget(&mut self, key: &str, old: Option<EntryMeta>) {
        let Some(old) = old else { return };
        if let Some(at) = old.expires_at_ms {
            self.index.insert((at, Slot::Key, key.to_owned()), false);
        }
        // Saturating: a state the books disagree with must not stop apply.
        self.data_bytes = self.data_bytes.saturating_sub(old.bytes);
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
        } else {
            self.record_count += 1;
        }
        self.index
            .insert((record.expires_at_ms, Slot::Record, id.to_owned()), true);
        self.records.insert(id.to_owned(), Some(record));
    }

    /// Removes record `id`; `old` is its stored record.
    pub fn delete_record(&mut self, id: &str, old: &Record) {
        self.index
            .insert((old.expires_at_ms, Slot::Record, id.to_owned()), false);
        self.record_count = self.record_count.saturating_sub(1);
        self.records.insert(id.to_owned(), None);
    }

    /// Whether storing `more` records would pass the limit the command carries.
    pub fn records_full(&self, more: u64) -> bool {
        self.limits
            .is_some_and(|l| self.record_count.saturating_add(more) > l.max_records)
    }

    /// Whether a new session would pass the limit less a tenth kept for the answers of
    /// sessions already open: opening sessions alone cannot stop their writes.
    pub fn sessions_full(&self) -> bool {
        self.limits.is_some_and(|l| {
            self.record_count.saturating_add(1) > l.max_records - l.max_records / 10
        })
    }

    /// The session `id` as the next command sees it, live or expired.
    pub fn get_session<V: StateView>(
        &self,
        view: &V,
        id: u128,
    ) -> Result<Option<Session>, V::Error> {
        match self.sessions.get(&id) {
            Some(pending) => Ok(pending.clone()),
            None => view.get_session(id),
        }
    }

    /// Stores session `id`; `old` is its stored state, whose index entry goes.
    pub fn put_session(&mut self, id: u128, session: Session, old: Option<&Session>) {
        let key = session_key(id);
        if let Some(old) = old {
            self.index
                .insert((old.expires_at_ms, Slot::Session, key.clone()), false);
            self.record_count = self.record_count.saturating_sub(old.records());
        }
        self.index
            .insert((session.expires_at_ms, Slot::Session, key), true);
        self.record_count += session.records();
        self.sessions.insert(id, Some(session));
    }

    /// Removes session `id` and its answers; `old` is its stored state.
    pub fn delete_session(&mut self, id: u128, old: &Session) {
        self.index
            .insert((old.expires_at_ms, Slot::Session, session_key(id)), false);
        self.record_count = self.record_count.saturating_sub(old.records());
        self.sessions.insert(id, None);
    }

    /// The token `id` as the next command sees it.
    pub fn get_token<V: StateView>(&self, view: &V, id: u64) -> Result<Option<Token>, V::Error> {
        match self.tokens.get(&id) {
            Some(pending) => Ok(pending.clone()),
            None => view.get_token(id),
        }
    }

    /// Stores token `id`, which is not stored yet.
    pub fn put_token(&mut self, id: u64, token: Token) {
        self.token_count += 1;
        self.tokens.insert(id, Some(token));
    }

    /// Removes token `id`, which is stored.
    pub fn delete_token(&mut self, id: u64) {
        self.token_count = self.token_count.saturating_sub(1);
        self.tokens.insert(id, None);
    }

    /// The first `limit` stored entries under `prefix` strictly after `after`, in key
    /// order, as the next command sees them; and the key to continue after, or `None`
    /// when no entry under `prefix` follows the last one returned.
    #[allow(clippy::type_complexity)]
    pub fn scan<V: StateView>(
        &self,
        view: &V,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, EntryMeta)>, Option<String>), V::Error> {
        // Persisted keys this overlay touched are decided by the overlay alone. One key
        // more than `limit` from the view says whether more follow whatever is pending,
        // so the answer depends only on the state the next command sees.
        let mut skip = |key: &str| self.data.contains_key(key);
        let persisted = view.scan(prefix, after, limit + 1, &mut skip)?;
        let upper = persisted.get(limit).map(|(k, _)| k.clone());
        let lower = match after {
            Some(a) if a >= prefix => Bound::Excluded(a.to_owned()),
            _ => Bound::Included(prefix.to_owned()),
        };
        let mut found: BTreeMap<String, EntryMeta> = persisted.into_iter().collect();
        for (key, entry) in self.data.range((lower, Bound::Unbounded)) {
            if !key.starts_with(prefix) || upper.as_ref().is_some_and(|u| key > u) {
                break;
            }
            if let Some(entry) = entry {
                found.insert(key.clone(), entry.meta(key));
            }
        }
        // Past `upper` nothing is known, but `found` then holds more than `limit` keys.
        let complete = found.len() <= limit;
        let found: Vec<_> = found.into_iter().take(limit).collect();
        let next = if complete {
            None
        } else {
            found.last().map(|(k, _)| k.clone())
        };
        Ok((found, next))
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
