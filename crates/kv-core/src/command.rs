//! Commands replicated through the log, and what applying them means.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::entry::data_bytes;
use crate::overlay::{tombstoned, Slot, Tombstone};
use crate::record::Record;
use crate::session::{
    parse_session_key, recordable, value_left_out, Answer, Session, SESSION_WINDOW,
};
use crate::token::{Token, BOOTSTRAP_TOKEN, MAX_TOKENS};
use crate::{Entry, Overlay, StateView};

/// The most keys one `Expire` command removes, so one log entry stays small.
pub const EXPIRE_LIMIT: usize = 1000;
/// The most keys one `Purge` command looks at, so applying it takes milliseconds.
pub const PURGE_LIMIT: usize = 1000;
/// The most prefix deletes whose keys are still being purged; past it a prefix delete
/// is refused until the purges catch up.
pub const MAX_TOMBSTONES: usize = 64;

/// One log entry's payload: a command and the time stamp of the node that proposed it.
/// Wire and on-disk type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Proposer's wall clock, milliseconds since the Unix epoch.
    pub stamp_ms: u64,
    /// What to do.
    pub command: Command,
}

/// When a write applies. Wire and on-disk type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precondition {
    /// Unconditionally.
    #[default]
    Always,
    /// Only if the key is absent (an expired key is absent): create-if-absent.
    Absent,
    /// Only if the key's current revision is this one: compare-and-swap.
    Revision(u64),
}

/// What a write does to the key's expiry. Wire and on-disk type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ttl {
    /// The key never expires (an earlier expiry is cleared).
    #[default]
    Clear,
    /// The key expires this many milliseconds after the write's time.
    AfterMs(u64),
    /// The key keeps its current expiry (none if it had none or was absent).
    Keep,
}

/// Why a conditional write did not apply. Wire and on-disk type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failure {
    /// Create-if-absent found a live key.
    KeyExists,
    /// The key's revision was not the expected one, or the key was absent.
    RevisionMismatch,
    /// The write would take the stored data past `limits.max_data_bytes`.
    QuotaExceeded,
    /// [`MAX_TOMBSTONES`] prefix deletes are still being purged.
    PrefixDeletesPending,
    /// Recording the answer would take the stored idempotency records, sessions and
    /// session answers past `limits.max_records`.
    RecordsFull,
    /// The session already keeps [`SESSION_WINDOW`] unacknowledged answers.
    SessionWindowFull,
    /// The token the command was authorized by no longer exists (it was revoked).
    Unauthenticated,
    /// The token does not grant what the command does.
    Forbidden,
    /// [`MAX_TOKENS`] tokens exist.
    TokensFull,
}

impl Failure {
    /// The stable snake_case code clients match on.
    pub fn code(self) -> crate::ErrorCode {
        match self {
            Self::KeyExists => crate::ErrorCode::KeyExists,
            Self::RevisionMismatch => crate::ErrorCode::RevisionMismatch,
            Self::QuotaExceeded => crate::ErrorCode::QuotaExceeded,
            Self::PrefixDeletesPending => crate::ErrorCode::Unavailable,
            Self::RecordsFull => crate::ErrorCode::RecordsFull,
            Self::SessionWindowFull => crate::ErrorCode::InvalidSession,
            Self::Unauthenticated => crate::ErrorCode::Unauthenticated,
            Self::Forbidden => crate::ErrorCode::Forbidden,
            Self::TokensFull => crate::ErrorCode::TokensFull,
        }
    }

    /// Whether the same request may succeed later without anything else changing its
    /// key: such failures are not kept as an idempotency record's answer.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::QuotaExceeded
                | Self::PrefixDeletesPending
                | Self::RecordsFull
                | Self::SessionWindowFull
                | Self::Unauthenticated
                | Self::Forbidden
                | Self::TokensFull
        )
    }
}

/// Checks `precondition` against the key's live entry.
pub fn check_precondition(precondition: Precondition, live: Option<&Entry>) -> Result<(), Failure> {
    match (precondition, live) {
        (Precondition::Always, _) | (Precondition::Absent, None) => Ok(()),
        (Precondition::Absent, Some(_)) => Err(Failure::KeyExists),
        (Precondition::Revision(r), Some(e)) if e.revision == r => Ok(()),
        (Precondition::Revision(_), _) => Err(Failure::RevisionMismatch),
    }
}

/// A state-machine command. Wire and on-disk type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Write `value` (JSON text) to `key` if `precondition` holds.
    Set {
        key: String,
        // As bytes, for speed; same encoding as a `Vec<u8>` (see `Entry::value`).
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        ttl: Ttl,
        precondition: Precondition,
    },
    /// Remove `key` if `precondition` holds.
    Delete {
        key: String,
        precondition: Precondition,
    },
    /// Physically remove keys whose expiry is at or before `up_to_ms`, at most
    /// [`EXPIRE_LIMIT`], in expiry-index order.
    Expire { up_to_ms: u64 },
    /// Delete every key starting with `prefix` (never empty: the API refuses that) by
    /// adding a [`Tombstone`]; `Purge` removes the entries later.
    DeletePrefix { prefix: String },
    /// Several commands in one log entry, applied in order.
    Batch(Vec<Command>),
    /// Applies `command` at most once for idempotency key `id`: the first time its
    /// result is recorded with the request's `fingerprint` for `retain_ms`; later the
    /// record answers instead (or refuses a different request under the same key).
    Idempotent {
        id: String,
        fingerprint: u128,
        retain_ms: u64,
        command: Box<Command>,
    },
    /// Physically removes up to [`PURGE_LIMIT`] entries of the oldest tombstone.
    Purge,
    /// Applies `command` unless it is a write that would take the stored data past
    /// `max_data_bytes`. Logged by proposers before `WithinLimits`; applied as that with
    /// no bound on records.
    WithinQuota {
        max_data_bytes: u64,
        command: Box<Command>,
    },
    /// Applies `command`, write number `seq` (from 1) of client session `id`, at most
    /// once: the first time its answer is kept in the session until the client
    /// acknowledges it (`ack`: every write numbered below it is acknowledged); a retry
    /// gets the kept answer. The session ends `idle_ms` after its last write; a write in
    /// an unknown session is not applied.
    Session {
        id: u128,
        seq: u64,
        ack: u64,
        fingerprint: u128,
        idle_ms: u64,
        command: Box<Command>,
    },
    /// Begins client session `id` (or extends it if it is live), to end `idle_ms` after
    /// its last write.
    OpenSession { id: u128, idle_ms: u64 },
    /// Applies `command` with `limits`, the proposer's, in force: writes that would take
    /// the stored data past `max_data_bytes`, or records past `max_records`, fail.
    WithinLimits {
        limits: Limits,
        command: Box<Command>,
    },
    /// Creates token `id` (chosen by the proposer; an existing id fails with
    /// `KeyExists`), stamped with the state machine's clock.
    PutToken { id: u64, token: Token },
    /// Removes token `id`: every later command it authorized fails.
    RevokeToken { id: u64 },
    /// Applies `command` if token `token` exists and grants what it does
    /// ([`BOOTSTRAP_TOKEN`] grants everything: only a node that checked its secret
    /// proposes it).
    Authorized { token: u64, command: Box<Command> },
}

/// Bounds a proposer puts on what a write may store. Wire and on-disk type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Most key and value bytes stored.
    pub max_data_bytes: u64,
    /// Most idempotency records, sessions and session answers stored.
    pub max_records: u64,
}

impl Command {
    /// The one key this command may change, or `None` if it may change keys it does not
    /// name (a prefix delete, an expiry, a nested batch).
    pub fn named_key(&self) -> Option<&str> {
        match self {
            Self::Set { key, .. } | Self::Delete { key, .. } => Some(key),
            Self::Idempotent { command, .. }
            | Self::WithinQuota { command, .. }
            | Self::WithinLimits { command, .. }
            | Self::Session { command, .. }
            | Self::Authorized { command, .. } => command.named_key(),
            Self::Expire { .. }
            | Self::DeletePrefix { .. }
            | Self::Batch(_)
            | Self::Purge
            | Self::OpenSession { .. }
            | Self::PutToken { .. }
            | Self::RevokeToken { .. } => None,
        }
    }
}

/// The keys a batch being built may change. A batch is one log entry, and its index is
/// the revision of every change it makes, so no key may change twice in one: commands
/// naming a key join only if no other command names it, and a command naming no key
/// (which may change any key) is a batch of its own.
#[derive(Debug, Default)]
pub struct BatchKeys {
    keys: HashSet<String>,
    commands: usize,
    unnamed: bool,
}

impl BatchKeys {
    /// Whether `command` can join the batch without a key changing twice in it.
    pub fn admits(&self, command: &Command) -> bool {
        match command.named_key() {
            _ if self.unnamed => false,
            Some(key) => !self.keys.contains(key),
            None => self.commands == 0,
        }
    }

    /// Records that `command` joined the batch.
    pub fn add(&mut self, command: &Command) {
        match command.named_key() {
            Some(key) => {
                self.keys.insert(key.to_owned());
            }
            None => self.unnamed = true,
        }
        self.commands += 1;
    }
}

/// Whether `commands`, applied as one batch, change every key at most once.
pub fn changes_keys_once(commands: &[Command]) -> bool {
    let mut keys = BatchKeys::default();
    commands.iter().all(|c| {
        let admitted = keys.admits(c);
        keys.add(c);
        admitted
    })
}

/// What applying one command answered. Wire and on-disk type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// The key now holds an entry with this metadata.
    Written {
        revision: u64,
        create_revision: u64,
        version: u64,
        expires_at_ms: Option<u64>,
    },
    /// `deleted` tells whether a live entry was there; `revision` is the command's.
    Deleted { deleted: bool, revision: u64 },
    /// How many expired keys were removed.
    Expired { removed: u64 },
    /// How many live keys a prefix delete removed; `revision` is the command's.
    DeletedPrefix { deleted: u64, revision: u64 },
    /// The precondition did not hold; nothing changed. `current` is the key's live
    /// entry, so a loser learns the winner without asking again.
    Failed {
        failure: Failure,
        current: Option<Entry>,
    },
    /// One result per command of a batch, in order.
    Batch(Vec<OpResult>),
    /// The idempotency key was used before by the same request: its recorded result.
    Replayed(Box<OpResult>),
    /// The idempotency key was used before by a different request; nothing changed.
    IdempotencyKeyReused,
    /// Every key under the prefix is deleted as of `revision`, the command's.
    PrefixDeleted { revision: u64 },
    /// How many deleted entries a purge removed, and how many prefix deletes remain.
    Purged { removed: u64, pending: u64 },
    /// The session is unknown (it ended, or never began), or the write's answer was
    /// acknowledged and forgotten; nothing changed.
    SessionExpired,
    /// The session is open until `expires_at_ms` unless a write extends it.
    SessionOpened { expires_at_ms: u64 },
    /// The token was created at `revision`, the command's.
    TokenCreated { revision: u64 },
    /// `existed` tells whether the token was there to revoke.
    TokenRevoked { existed: bool, revision: u64 },
}

/// What applying one log entry answered. Wire type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A membership change or a blank entry: nothing for a client.
    None,
    /// The result of a [`Request`].
    Applied(OpResult),
}

/// Applies one request at log index `revision`. Pure: reads go through `overlay` over
/// `view`, writes go into `overlay`, and the result depends only on the inputs.
pub fn apply_request<V: StateView>(
    view: &V,
    overlay: &mut Overlay,
    request: &Request,
    revision: u64,
) -> Result<OpResult, V::Error> {
    overlay.clock_ms = overlay.clock_ms.max(request.stamp_ms);
    apply_command(view, overlay, &request.command, revision)
}

fn apply_command<V: StateView>(
    view: &V,
    overlay: &mut Overlay,
    command: &Command,
    revision: u64,
) -> Result<OpResult, V::Error> {
    let now = overlay.clock_ms;
    Ok(match command {
        Command::Set { .. } => set(view, overlay, command, revision)?,
        Command::WithinQuota {
            max_data_bytes,
            command,
        } => {
            let limits = Limits {
                max_data_bytes: *max_data_bytes,
                max_records: u64::MAX,
            };
            within(view, overlay, limits, command, revision)?
        }
        Command::WithinLimits { limits, command } => {
            within(view, overlay, *limits, command, revision)?
        }
        Command::Session {
            id,
            seq,
            ack,
            fingerprint,
            idle_ms,
            command,
        } => {
            let call = SessionCall {
                id: *id,
                seq: *seq,
                ack: *ack,
                fingerprint: *fingerprint,
                idle_ms: *idle_ms,
            };
            session(view, overlay, call, command, revision)?
        }
        Command::OpenSession { id, idle_ms } => {
            let stored = overlay.get_session(view, *id)?;
            let mut session = match stored.as_ref().filter(|s| s.is_live_at(now)) {
                Some(live) => live.clone(),
                None if overlay.sessions_full() => {
                    return Ok(OpResult::Failed {
                        failure: Failure::RecordsFull,
                        current: None,
                    })
                }
                None => Session {
                    expires_at_ms: 0,
                    acked: 1,
                    answers: Vec::new(),
                },
            };
            session.expires_at_ms = now.saturating_add(*idle_ms);
            let expires_at_ms = session.expires_at_ms;
            overlay.put_session(*id, session, stored.as_ref());
            OpResult::SessionOpened { expires_at_ms }
        }
        Command::Delete { key, precondition } => {
            let stored = overlay.get(view, key)?;
            let live = overlay.live(key, stored.as_ref());
            if let Err(failure) = check_precondition(*precondition, live) {
                return Ok(OpResult::Failed {
                    failure,
                    current: live.cloned(),
                });
            }
            let deleted = live.is_some();
            if stored.is_some() {
                overlay.delete(key, stored.as_ref());
            }
            OpResult::Deleted { deleted, revision }
        }
        Command::DeletePrefix { prefix } => {
            // A tombstone under this prefix covers nothing this one does not.
            let mut kept: Vec<Tombstone> = overlay
                .tombstones
                .iter()
                .filter(|t| !t.prefix.starts_with(prefix.as_str()))
                .cloned()
                .collect();
            if kept.len() >= MAX_TOMBSTONES {
                return Ok(OpResult::Failed {
                    failure: Failure::PrefixDeletesPending,
                    current: None,
                });
            }
            kept.push(Tombstone {
                prefix: prefix.clone(),
                revision,
                after: None,
            });
            overlay.tombstones = kept;
            OpResult::PrefixDeleted { revision }
        }
        Command::Purge => {
            let Some(oldest) = overlay.tombstones.first().cloned() else {
                return Ok(OpResult::Purged {
                    removed: 0,
                    pending: 0,
                });
            };
            let (found, next) =
                overlay.scan(view, &oldest.prefix, oldest.after.as_deref(), PURGE_LIMIT)?;
            let mut removed = 0;
            for (key, meta) in found {
                if tombstoned(&overlay.tombstones, &key, meta.revision) {
                    overlay.remove(&key, Some(meta));
                    removed += 1;
                }
            }
            match next {
                Some(key) => overlay.tombstones[0].after = Some(key),
                None => {
                    overlay.tombstones.remove(0);
                }
            }
            OpResult::Purged {
                removed,
                pending: overlay.tombstones.len() as u64,
            }
        }
        Command::Expire { up_to_ms } => {
            let up_to = (*up_to_ms).min(now);
            let mut removed = 0;
            for (at, slot, key) in overlay.due(view, up_to, EXPIRE_LIMIT)? {
                // Re-check: the key may have been rewritten with another expiry since
                // the index entry was made.
                match slot {
                    Slot::Key => {
                        let stored = overlay.get(view, &key)?;
                        if stored.as_ref().is_some_and(|e| e.expires_at_ms == Some(at)) {
                            overlay.delete(&key, stored.as_ref());
                            removed += 1;
                        }
                    }
                    Slot::Record => {
                        if let Some(record) = overlay.get_record(view, &key)? {
                            if record.expires_at_ms == at {
                                overlay.delete_record(&key, &record);
                                removed += 1;
                            }
                        }
                    }
                    Slot::Session => {
                        let Some(id) = parse_session_key(&key) else {
                            continue;
                        };
                        if let Some(session) = overlay.get_session(view, id)? {
                            if session.expires_at_ms == at {
                                overlay.delete_session(id, &session);
                                removed += 1;
                            }
                        }
                    }
                }
            }
            OpResult::Expired { removed }
        }
        Command::Idempotent {
            id,
            fingerprint,
            retain_ms,
            command,
        } => {
            let stored = overlay.get_record(view, id)?;
            match stored.as_ref().filter(|r| r.is_live_at(now)) {
                Some(r) if r.fingerprint == *fingerprint => {
                    OpResult::Replayed(Box::new(replayed(view, overlay, command, &r.result)?))
                }
                Some(_) => OpResult::IdempotencyKeyReused,
                None if overlay.records_full(1) && !frees_data(command) => OpResult::Failed {
                    failure: Failure::RecordsFull,
                    current: None,
                },
                None => {
                    let result = apply_command(view, overlay, command, revision)?;
                    if let OpResult::Failed { failure, .. } = &result {
                        if failure.is_transient() {
                            // Not recorded: a retry once it can succeed must apply.
                            return Ok(result);
                        }
                    }
                    let record = Record {
                        fingerprint: *fingerprint,
                        result: recordable(result.clone()),
                        expires_at_ms: now.saturating_add(*retain_ms),
                    };
                    overlay.put_record(id, record, stored.as_ref());
                    result
                }
            }
        }
        Command::PutToken { id, token } => {
            if *id == BOOTSTRAP_TOKEN || overlay.get_token(view, *id)?.is_some() {
                return Ok(OpResult::Failed {
                    failure: Failure::KeyExists,
                    current: None,
                });
            }
            if overlay.token_count >= MAX_TOKENS {
                return Ok(OpResult::Failed {
                    failure: Failure::TokensFull,
                    current: None,
                });
            }
            let token = Token {
                created_ms: now,
                ..token.clone()
            };
            overlay.put_token(*id, token);
            OpResult::TokenCreated { revision }
        }
        Command::RevokeToken { id } => {
            let existed = overlay.get_token(view, *id)?.is_some();
            if existed {
                overlay.delete_token(*id);
            }
            OpResult::TokenRevoked { existed, revision }
        }
        Command::Authorized { token, command } => {
            if *token != BOOTSTRAP_TOKEN {
                let Some(stored) = overlay.get_token(view, *token)? else {
                    return Ok(OpResult::Failed {
                        failure: Failure::Unauthenticated,
                        current: None,
                    });
                };
                if !permits(&stored, command) {
                    return Ok(OpResult::Failed {
                        failure: Failure::Forbidden,
                        current: None,
                    });
                }
            }
            apply_command(view, overlay, command, revision)?
        }
        Command::Batch(commands) => {
            // Checked only in debug builds: a release build applies a batch that an
            // older proposer logged exactly as that version did, so replicas converge.
            debug_assert!(
                changes_keys_once(commands),
                "a batch at revision {revision} may change one key twice"
            );
            OpResult::Batch(
                commands
                    .iter()
                    .map(|c| apply_command(view, overlay, c, revision))
                    .collect::<Result<_, _>>()?,
            )
        }
    })
}

/// Applies `command` if it is a `Set`, refusing it if it would take the stored data past
/// the limit in force (a write that does not grow the data always applies); applies any
/// other command as it is.
fn set<V: StateView>(
    view: &V,
    overlay: &mut Overlay,
    command: &Command,
    revision: u64,
) -> Result<OpResult, V::Error> {
    let Command::Set {
        key,
        value,
        ttl,
        precondition,
    } = command
    else {
        return apply_command(view, overlay, command, revision);
    };
    let now = overlay.clock_ms;
    let stored = overlay.get(view, key)?;
    let live = overlay.live(key, stored.as_ref());
    if let Err(failure) = check_precondition(*precondition, live) {
        return Ok(OpResult::Failed {
            failure,
            current: live.cloned(),
        });
    }
    if let Some(max) = overlay.limits.map(|l| l.max_data_bytes) {
        let old = stored.as_ref().map_or(0, |e| e.meta(key).bytes);
        let new = data_bytes(key, value.len());
        if new > old && overlay.data_bytes.saturating_add(new - old) > max {
            return Ok(OpResult::Failed {
                failure: Failure::QuotaExceeded,
                current: None,
            });
        }
    }
    let expires_at_ms = match ttl {
        Ttl::Clear => None,
        Ttl::AfterMs(ms) => Some(now.saturating_add(*ms)),
        Ttl::Keep => live.and_then(|e| e.expires_at_ms),
    };
    let entry = Entry {
        value: value.clone(),
        revision,
        create_revision: live.map_or(revision, |e| e.create_revision),
        version: live.map_or(1, |e| e.version + 1),
        expires_at_ms,
    };
    let result = OpResult::Written {
        revision,
        create_revision: entry.create_revision,
        version: entry.version,
        expires_at_ms: entry.expires_at_ms,
    };
    overlay.put(key, entry, stored.as_ref());
    Ok(result)
}

/// The header fields of a [`Command::Session`].
struct SessionCall {
    id: u128,
    seq: u64,
    ack: u64,
    fingerprint: u128,
    idle_ms: u64,
}

/// Applies `command` as write `call.seq` of session `call.id` (see [`Command::Session`]).
fn session<V: StateView>(
    view: &V,
    overlay: &mut Overlay,
    call: SessionCall,
    command: &Command,
    revision: u64,
) -> Result<OpResult, V::Error> {
    let now = overlay.clock_ms;
    let stored = overlay.get_session(view, call.id)?;
    let Some(mut session) = stored.clone().filter(|s| s.is_live_at(now)) else {
        return Ok(OpResult::SessionExpired);
    };
    if call.ack > session.acked {
        session.acked = call.ack;
        session.answers.retain(|a| a.seq >= call.ack);
    }
    let result = if call.seq < session.acked {
        // Acknowledged, so never sent again: a late copy of an earlier attempt.
        OpResult::SessionExpired
    } else if let Some(kept) = session.answers.iter().find(|a| a.seq == call.seq) {
        if kept.fingerprint == call.fingerprint {
            let kept = kept.result.clone();
            OpResult::Replayed(Box::new(replayed(view, overlay, command, &kept)?))
        } else {
            OpResult::IdempotencyKeyReused
        }
    } else if session.answers.len() as u64 >= SESSION_WINDOW {
        OpResult::Failed {
            failure: Failure::SessionWindowFull,
            current: None,
        }
    } else if !frees_data(command)
        && overlay.records_full(
            (session.records() + 1).saturating_sub(stored.as_ref().map_or(0, Session::records)),
        )
    {
        OpResult::Failed {
            failure: Failure::RecordsFull,
            current: None,
        }
    } else {
        let result = apply_command(view, overlay, command, revision)?;
        let transient =
            matches!(&result, OpResult::Failed { failure, .. } if failure.is_transient());
        if !transient {
            session.answers.push(Answer {
                seq: call.seq,
                fingerprint: call.fingerprint,
                result: recordable(result.clone()),
            });
        }
        result
    };
    session.expires_at_ms = now.saturating_add(call.idle_ms);
    overlay.put_session(call.id, session, stored.as_ref());
    Ok(result)
}

/// Applies `command` with `limits` in force, then the limits of the command around it.
fn within<V: StateView>(
    view: &V,
    overlay: &mut Overlay,
    limits: Limits,
    command: &Command,
    revision: u64,
) -> Result<OpResult, V::Error> {
    let outer = overlay.limits.replace(limits);
    let result = apply_command(view, overlay, command, revision);
    overlay.limits = outer;
    result
}

/// Whether `command` only removes data: its answer is recorded even past
/// `limits.max_records`, so deletes keep working when records are full (such answers are
/// still bounded, by the window of each session and by the age of keyed records).
fn frees_data(command: &Command) -> bool {
    match command {
        Command::Delete { .. } | Command::DeletePrefix { .. } => true,
        Command::WithinQuota { command, .. }
        | Command::WithinLimits { command, .. }
        | Command::Authorized { command, .. } => frees_data(command),
        _ => false,
    }
}

/// Whether `token` grants everything `command` does.
fn permits(token: &Token, command: &Command) -> bool {
    match command {
        Command::Set { key, .. } | Command::Delete { key, .. } => token.can_write(key),
        Command::DeletePrefix { prefix } => token.can_delete_prefix(prefix),
        Command::OpenSession { .. } => token.can_write_somewhere(),
        Command::PutToken { .. } | Command::RevokeToken { .. } => token.admin,
        Command::Idempotent { command, .. }
        | Command::Session { command, .. }
        | Command::WithinQuota { command, .. }
        | Command::WithinLimits { command, .. }
        | Command::Authorized { command, .. } => permits(token, command),
        Command::Batch(commands) => commands.iter().all(|c| permits(token, c)),
        Command::Expire { .. } | Command::Purge => false,
    }
}

/// A kept answer as a retry of `command` gets it: a failed write's entry whose value was
/// left out ([`recordable`]) is read again from the key, as it is now.
fn replayed<V: StateView>(
    view: &V,
    overlay: &Overlay,
    command: &Command,
    kept: &OpResult,
) -> Result<OpResult, V::Error> {
    if !value_left_out(kept) {
        return Ok(kept.clone());
    }
    let (OpResult::Failed { failure, .. }, Some(key)) = (kept, command.named_key()) else {
        return Ok(kept.clone());
    };
    let stored = overlay.get(view, key)?;
    Ok(OpResult::Failed {
        failure: *failure,
        current: overlay.live(key, stored.as_ref()).cloned(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::convert::Infallible;

    use super::*;

    /// A persisted state machine in memory, as kv-store keeps it in RocksDB.
    #[derive(Default, Debug, PartialEq)]
    struct Mem {
        clock_ms: u64,
        data_bytes: u64,
        tombstones: Vec<Tombstone>,
        data: BTreeMap<String, Entry>,
        records: BTreeMap<String, Record>,
        sessions: BTreeMap<u128, crate::Session>,
        record_count: u64,
        index: BTreeMap<crate::overlay::Due, ()>,
        tokens: BTreeMap<u64, Token>,
    }

    impl StateView for Mem {
        type Error = Infallible;
        fn get(&self, key: &str) -> Result<Option<Entry>, Infallible> {
            Ok(self.data.get(key).cloned())
        }
        fn scan(
            &self,
            prefix: &str,
            after: Option<&str>,
            limit: usize,
            skip: &mut dyn FnMut(&str) -> bool,
        ) -> Result<Vec<(String, crate::EntryMeta)>, Infallible> {
            Ok(self
                .data
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
                .filter(|(k, _)| !skip(k))
                .take(limit)
                .map(|(k, e)| (k.clone(), e.meta(k)))
                .collect())
        }
        fn get_record(&self, id: &str) -> Result<Option<Record>, Infallible> {
            Ok(self.records.get(id).cloned())
        }
        fn get_session(&self, id: u128) -> Result<Option<crate::Session>, Infallible> {
            Ok(self.sessions.get(&id).cloned())
        }
        fn get_token(&self, id: u64) -> Result<Option<Token>, Infallible> {
            Ok(self.tokens.get(&id).cloned())
        }
        fn due(
            &self,
            up_to_ms: u64,
            limit: usize,
            skip: &mut dyn FnMut(&crate::overlay::Due) -> bool,
        ) -> Result<Vec<crate::overlay::Due>, Infallible> {
            Ok(self
                .index
                .keys()
                .take_while(|(at, _, _)| *at <= up_to_ms)
                .filter(|due| !skip(due))
                .take(limit)
                .cloned()
                .collect())
        }
    }

    impl Mem {
        fn persist(&mut self, overlay: Overlay) {
            self.clock_ms = overlay.clock_ms;
            self.data_bytes = overlay.data_bytes;
            self.tombstones = overlay.tombstones;
            self.record_count = overlay.record_count;
            for (id, token) in overlay.tokens {
                match token {
                    Some(t) => self.tokens.insert(id, t),
                    None => self.tokens.remove(&id),
                };
            }
            for (id, session) in overlay.sessions {
                match session {
                    Some(s) => self.sessions.insert(id, s),
                    None => self.sessions.remove(&id),
                };
            }
            for (k, e) in overlay.data {
                match e {
                    Some(e) => self.data.insert(k, e),
                    None => self.data.remove(&k),
                };
            }
            for (id, r) in overlay.records {
                match r {
                    Some(r) => self.records.insert(id, r),
                    None => self.records.remove(&id),
                };
            }
            for (k, added) in overlay.index {
                if added {
                    self.index.insert(k, ());
                } else {
                    self.index.remove(&k);
                }
            }
        }

        /// Applies `requests` (log indexes from 1) in apply calls of `group` entries.
        fn apply_grouped(requests: &[Request], group: usize) -> (Mem, Vec<OpResult>) {
            let mut mem = Mem::default();
            let mut results = vec![];
            for (n, chunk) in requests.chunks(group).enumerate() {
                let mut overlay = Overlay::new(mem.clock_ms);
                overlay.data_bytes = mem.data_bytes;
                overlay.tombstones = mem.tombstones.clone();
                overlay.record_count = mem.record_count;
                overlay.token_count = mem.tokens.len() as u64;
                for (i, r) in chunk.iter().enumerate() {
                    let index = (n * group + i + 1) as u64;
                    results.push(
                        apply_request(&mem, &mut overlay, r, index).unwrap_or_else(|e| match e {}),
                    );
                }
                mem.persist(overlay);
            }
            (mem, results)
        }

        fn run(requests: &[Request]) -> (Mem, Vec<OpResult>) {
            Self::apply_grouped(requests, 1)
        }
    }

    fn set(at: u64, key: &str, value: &str, ttl_ms: Option<u64>) -> Request {
        let ttl = ttl_ms.map_or(Ttl::Clear, Ttl::AfterMs);
        set_with(at, key, value, ttl, Precondition::Always)
    }
    fn set_with(at: u64, key: &str, value: &str, ttl: Ttl, precondition: Precondition) -> Request {
        Request {
            stamp_ms: at,
            command: Command::Set {
                key: key.into(),
                value: value.as_bytes().to_vec(),
                ttl,
                precondition,
            },
        }
    }
    fn del(at: u64, key: &str) -> Request {
        del_if(at, key, Precondition::Always)
    }
    fn del_if(at: u64, key: &str, precondition: Precondition) -> Request {
        Request {
            stamp_ms: at,
            command: Command::Delete {
                key: key.into(),
                precondition,
            },
        }
    }
    fn expire(at: u64) -> Request {
        Request {
            stamp_ms: at,
            command: Command::Expire { up_to_ms: at },
        }
    }
    fn written(
        revision: u64,
        create_revision: u64,
        version: u64,
        expires_at_ms: Option<u64>,
    ) -> OpResult {
        OpResult::Written {
            revision,
            create_revision,
            version,
            expires_at_ms,
        }
    }

    #[test]
    fn set_creates_then_updates_with_revision_and_version() {
        let (mem, results) = Mem::run(&[
            set(10, "a", "1", None),
            set(11, "b", "2", None),
            set(12, "a", "3", None),
        ]);
        assert_eq!(
            results,
            vec![
                written(1, 1, 1, None),
                written(2, 2, 1, None),
                written(3, 1, 2, None)
            ]
        );
        let a = &mem.data["a"];
        assert_eq!(
            (a.value.as_slice(), a.revision, a.create_revision, a.version),
            (&b"3"[..], 3, 1, 2)
        );
    }

    #[test]
    fn delete_reports_whether_a_live_key_was_there() {
        let (mem, results) = Mem::run(&[set(10, "a", "1", None), del(11, "a"), del(12, "a")]);
        assert_eq!(
            results[1..],
            [
                OpResult::Deleted {
                    deleted: true,
                    revision: 2
                },
                OpResult::Deleted {
                    deleted: false,
                    revision: 3
                }
            ]
        );
        assert!(mem.data.is_empty());
    }

    #[test]
    fn recreating_a_deleted_key_restarts_version_and_create_revision() {
        let (_, results) = Mem::run(&[
            set(10, "a", "1", None),
            del(11, "a"),
            set(12, "a", "2", None),
        ]);
        assert_eq!(results[2], written(3, 3, 1, None));
    }

    #[test]
    fn ttl_counts_from_the_state_machine_clock() {
        let (mem, results) = Mem::run(&[set(1000, "a", "1", Some(500))]);
        assert_eq!(results[0], written(1, 1, 1, Some(1500)));
        assert_eq!(
            mem.index.keys().collect::<Vec<_>>(),
            vec![&(1500, Slot::Key, "a".to_string())]
        );
    }

    #[test]
    fn clock_never_goes_backwards_when_a_stamp_is_behind() {
        // A new leader whose clock is 400 ms behind must not extend anybody's TTL.
        let (mem, results) = Mem::run(&[set(1000, "a", "1", None), set(600, "b", "2", Some(100))]);
        assert_eq!(results[1], written(2, 2, 1, Some(1100)));
        assert_eq!(mem.clock_ms, 1000);
    }

    #[test]
    fn expired_key_is_absent_at_its_expiry_stamp_and_present_just_before() {
        // Written at 1000 with ttl 100: expires_at = 1100.
        let before = Mem::run(&[set(1000, "a", "1", Some(100)), set(1099, "a", "2", None)]).1;
        assert_eq!(
            before[1],
            written(2, 1, 2, None),
            "at 1099 the key is live: an update"
        );
        let at = Mem::run(&[set(1000, "a", "1", Some(100)), set(1100, "a", "2", None)]).1;
        assert_eq!(
            at[1],
            written(2, 2, 1, None),
            "at 1100 the key is absent: a fresh create"
        );
    }

    #[test]
    fn deleting_an_expired_key_reports_not_deleted_and_drops_it() {
        let (mem, results) = Mem::run(&[set(1000, "a", "1", Some(100)), del(1100, "a")]);
        assert_eq!(
            results[1],
            OpResult::Deleted {
                deleted: false,
                revision: 2
            }
        );
        assert!(mem.data.is_empty() && mem.index.is_empty());
    }

    #[test]
    fn set_without_ttl_clears_an_earlier_expiry() {
        let (mem, _) = Mem::run(&[
            set(1000, "a", "1", Some(100)),
            set(1001, "a", "2", None),
            expire(5000),
        ]);
        assert_eq!(mem.data["a"].expires_at_ms, None);
        assert!(mem.index.is_empty());
    }

    #[test]
    fn expire_removes_only_due_keys_in_index_order() {
        let (mem, results) = Mem::run(&[
            set(1000, "late", "1", Some(900)),
            set(1000, "b", "1", Some(100)),
            set(1000, "a", "1", Some(100)),
            set(1000, "forever", "1", None),
            expire(1100),
        ]);
        assert_eq!(results[4], OpResult::Expired { removed: 2 });
        assert_eq!(mem.data.keys().collect::<Vec<_>>(), vec!["forever", "late"]);
        assert_eq!(
            mem.index.keys().collect::<Vec<_>>(),
            vec![&(1900, Slot::Key, "late".to_string())]
        );
    }

    #[test]
    fn expire_keeps_a_key_refreshed_with_a_later_expiry() {
        let (mem, results) = Mem::run(&[
            set(1000, "a", "1", Some(100)),
            set(1050, "a", "2", Some(1000)),
            expire(1200),
        ]);
        assert_eq!(results[2], OpResult::Expired { removed: 0 });
        assert_eq!(mem.data["a"].expires_at_ms, Some(2050));
    }

    #[test]
    fn expire_never_looks_past_its_own_time() {
        // The stamp says 1100 but the command asks only up to 1050.
        let request = Request {
            stamp_ms: 1100,
            command: Command::Expire { up_to_ms: 1050 },
        };
        let (mem, results) = Mem::run(&[set(1000, "a", "1", Some(60)), request]);
        assert_eq!(results[1], OpResult::Expired { removed: 0 });
        assert!(mem.data.contains_key("a"));
    }

    #[test]
    fn expire_removes_at_most_the_limit_per_command() {
        let mut requests: Vec<Request> = (0..EXPIRE_LIMIT + 5)
            .map(|i| set(1000, &format!("k{i:05}"), "1", Some(1)))
            .collect();
        requests.push(expire(2000));
        requests.push(expire(2001));
        let (mem, results) = Mem::run(&requests);
        assert_eq!(
            results[EXPIRE_LIMIT + 5],
            OpResult::Expired {
                removed: EXPIRE_LIMIT as u64
            }
        );
        assert_eq!(results[EXPIRE_LIMIT + 6], OpResult::Expired { removed: 5 });
        assert!(mem.data.is_empty());
    }

    #[test]
    fn batch_applies_every_command_at_the_entry_revision() {
        let batch = Request {
            stamp_ms: 10,
            command: Command::Batch(vec![
                set(10, "a", "1", None).command,
                del(10, "b").command,
                set(10, "c", "2", Some(5)).command,
            ]),
        };
        let (_, results) = Mem::run(&[batch]);
        assert_eq!(
            results[0],
            OpResult::Batch(vec![
                written(1, 1, 1, None),
                OpResult::Deleted {
                    deleted: false,
                    revision: 1
                },
                written(1, 1, 1, Some(15)),
            ])
        );
    }

    /// Groups `commands` greedily into batches as [`BatchKeys`] allows.
    fn batched(commands: &[Command]) -> Vec<Vec<Command>> {
        let mut batches: Vec<(BatchKeys, Vec<Command>)> = vec![];
        for c in commands {
            match batches.last_mut() {
                Some((keys, batch)) if keys.admits(c) => {
                    keys.add(c);
                    batch.push(c.clone());
                }
                _ => {
                    let mut keys = BatchKeys::default();
                    keys.add(c);
                    batches.push((keys, vec![c.clone()]));
                }
            }
        }
        batches.into_iter().map(|(_, b)| b).collect()
    }

    #[test]
    fn batches_hold_each_named_key_once_and_unnamed_commands_alone() {
        let commands = [
            set(10, "a", "1", None).command,
            set(10, "b", "1", None).command,
            idempotent(10, "req", 1, del(10, "a")).command,
            delete_prefix(10, "a").command,
            set(10, "c", "1", None).command,
            expire(10).command,
            expire(10).command,
        ];
        let sizes: Vec<usize> = batched(&commands).iter().map(Vec::len).collect();
        assert_eq!(
            sizes,
            vec![2, 1, 1, 1, 1, 1],
            "a batch closes at a second write of `a` and around each command naming no key"
        );
        assert!(changes_keys_once(&commands[..2]));
        assert!(!changes_keys_once(&commands[..3]));
        assert!(!changes_keys_once(&commands[3..5]));
        assert!(!changes_keys_once(&[
            set(10, "c", "1", None).command,
            expire(10).command
        ]));
        assert!(changes_keys_once(&commands[3..4]));
    }

    #[test]
    fn a_write_and_a_prefix_delete_covering_it_get_their_own_revisions() {
        let commands = [
            set(10, "a/x", "1", None).command,
            delete_prefix(10, "a/").command,
        ];
        let requests: Vec<Request> = batched(&commands)
            .into_iter()
            .map(|b| Request {
                stamp_ms: 10,
                command: Command::Batch(b),
            })
            .collect();
        let (mem, results) = Mem::run(&requests);
        assert_eq!(
            results,
            vec![
                OpResult::Batch(vec![written(1, 1, 1, None)]),
                OpResult::Batch(vec![OpResult::PrefixDeleted { revision: 2 }]),
            ]
        );
        assert_eq!(
            mem.tombstones[0].revision, 2,
            "a/x at revision 1 is covered"
        );
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "a batch at revision 1 may change one key twice")]
    fn debug_builds_refuse_to_apply_a_batch_that_changes_a_key_twice() {
        let batch = Request {
            stamp_ms: 10,
            command: Command::Batch(vec![
                set(10, "a/x", "1", None).command,
                delete_prefix(10, "a/").command,
            ]),
        };
        Mem::run(&[batch]);
    }

    #[test]
    fn grouping_of_apply_calls_does_not_change_results_or_state() {
        // Writes, rewrites with other expiries, deletes and expiries interleaved: every
        // grouping into apply calls must give the same answers and the same state.
        let mut requests = vec![];
        for i in 0..60u64 {
            let key = format!("k{}", i % 7);
            let at = 1000 + i * 10;
            requests.push(match i % 5 {
                0 => set(at, &key, &i.to_string(), Some(25)),
                1 => set(at, &key, &i.to_string(), None),
                2 => del(at, &key),
                3 => expire(at),
                _ => set(at, &key, &i.to_string(), Some(5 + i % 3)),
            });
            if i % 13 == 0 {
                requests.push(delete_prefix(at, &format!("k{}", i % 3)));
            }
            if i % 17 == 0 {
                requests.push(purge(at));
            }
        }
        let reference = Mem::apply_grouped(&requests, 1);
        assert_eq!(reference.0.data_bytes, reference.0.counted_bytes());
        for group in [2, 3, 7, 60] {
            assert_eq!(
                Mem::apply_grouped(&requests, group),
                reference,
                "grouping by {group}"
            );
        }
    }

    fn failed(failure: Failure, current: Option<&Entry>) -> OpResult {
        OpResult::Failed {
            failure,
            current: current.cloned(),
        }
    }

    #[test]
    fn create_if_absent_creates_a_missing_key() {
        let (_, results) = Mem::run(&[set_with(10, "a", "1", Ttl::Clear, Precondition::Absent)]);
        assert_eq!(results[0], written(1, 1, 1, None));
    }

    #[test]
    fn create_if_absent_loses_to_existing_key_and_learns_the_winner() {
        let (mem, results) = Mem::run(&[
            set(10, "a", "winner", Some(1000)),
            set_with(11, "a", "loser", Ttl::Clear, Precondition::Absent),
        ]);
        assert_eq!(results[1], failed(Failure::KeyExists, Some(&mem.data["a"])));
        assert_eq!(mem.data["a"].value, b"winner");
        assert_eq!(mem.data["a"].version, 1, "the loser changed nothing");
    }

    #[test]
    fn create_if_absent_treats_an_expired_key_as_absent() {
        let (mem, results) = Mem::run(&[
            set(1000, "a", "old", Some(100)),
            set_with(1100, "a", "new", Ttl::Clear, Precondition::Absent),
        ]);
        assert_eq!(results[1], written(2, 2, 1, None));
        assert_eq!(mem.data["a"].value, b"new");
        assert!(mem.index.is_empty(), "the old expiry's index entry is gone");
    }

    #[test]
    fn compare_and_swap_applies_only_at_the_expected_revision() {
        let (mem, results) = Mem::run(&[
            set(10, "a", "1", None),
            set_with(11, "a", "2", Ttl::Clear, Precondition::Revision(1)),
            set_with(12, "a", "3", Ttl::Clear, Precondition::Revision(1)),
        ]);
        assert_eq!(results[1], written(2, 1, 2, None));
        assert_eq!(
            results[2],
            failed(Failure::RevisionMismatch, Some(&mem.data["a"]))
        );
        assert_eq!(mem.data["a"].value, b"2");
    }

    #[test]
    fn compare_and_swap_on_an_absent_or_expired_key_fails_with_no_current_entry() {
        let (_, results) = Mem::run(&[
            set_with(10, "missing", "1", Ttl::Clear, Precondition::Revision(1)),
            set(1000, "a", "1", Some(100)),
            set_with(1100, "a", "2", Ttl::Clear, Precondition::Revision(2)),
        ]);
        assert_eq!(results[0], failed(Failure::RevisionMismatch, None));
        assert_eq!(results[2], failed(Failure::RevisionMismatch, None));
    }

    #[test]
    fn conditional_delete_applies_only_at_the_expected_revision() {
        let (mem, results) = Mem::run(&[
            set(10, "a", "1", None),
            del_if(11, "a", Precondition::Revision(7)),
            del_if(12, "a", Precondition::Revision(1)),
        ]);
        assert!(matches!(
            results[1],
            OpResult::Failed {
                failure: Failure::RevisionMismatch,
                current: Some(_)
            }
        ));
        assert_eq!(
            results[2],
            OpResult::Deleted {
                deleted: true,
                revision: 3
            }
        );
        assert!(mem.data.is_empty());
    }

    #[test]
    fn keep_ttl_keeps_the_current_expiry_and_none_for_an_absent_key() {
        let (mem, results) = Mem::run(&[
            set(1000, "a", "1", Some(500)),
            set_with(1200, "a", "2", Ttl::Keep, Precondition::Always),
            set_with(1200, "b", "1", Ttl::Keep, Precondition::Always),
        ]);
        assert_eq!(results[1], written(2, 1, 2, Some(1500)));
        assert_eq!(results[2], written(3, 3, 1, None));
        assert_eq!(mem.index.len(), 1);
    }

    fn delete_prefix(at: u64, prefix: &str) -> Request {
        Request {
            stamp_ms: at,
            command: Command::DeletePrefix {
                prefix: prefix.into(),
            },
        }
    }

    fn purge(at: u64) -> Request {
        Request {
            stamp_ms: at,
            command: Command::Purge,
        }
    }

    fn within_limits(limits: Limits, inner: Request) -> Request {
        Request {
            stamp_ms: inner.stamp_ms,
            command: Command::WithinLimits {
                limits,
                command: Box::new(inner.command),
            },
        }
    }

    fn within_quota(max_data_bytes: u64, inner: Request) -> Request {
        let limits = Limits {
            max_data_bytes,
            max_records: u64::MAX,
        };
        within_limits(limits, inner)
    }

    impl Mem {
        /// Key and value bytes of every stored entry, counted from scratch.
        fn counted_bytes(&self) -> u64 {
            self.data
                .iter()
                .map(|(k, e)| crate::data_bytes(k, e.value.len()))
                .sum()
        }
    }

    #[test]
    fn delete_prefix_hides_exactly_the_matching_keys_at_once_and_purge_removes_them() {
        let (mem, results) = Mem::run(&[
            set(1000, "app/a", "1", None),
            set(1000, "app/b", "1", Some(10)),
            set(1000, "apple", "1", None),
            set(1000, "ap", "1", None),
            set(1000, "app/c", "1", None),
            delete_prefix(2000, "app/"),
            del(2000, "app/a"),
            set_with(2000, "app/c", "2", Ttl::Clear, Precondition::Revision(5)),
            set_with(2000, "app/c", "3", Ttl::Clear, Precondition::Absent),
            purge(2000),
            purge(2000),
        ]);
        assert_eq!(results[5], OpResult::PrefixDeleted { revision: 6 });
        let gone = OpResult::Deleted {
            deleted: false,
            revision: 7,
        };
        assert_eq!(results[6], gone, "app/a is deleted before any purge");
        assert_eq!(results[7], failed(Failure::RevisionMismatch, None));
        assert_eq!(results[8], written(9, 9, 1, None), "app/c is created anew");
        assert_eq!(
            results[9],
            OpResult::Purged {
                removed: 1,
                pending: 0
            },
            "app/b is left; app/c was rewritten after the delete"
        );
        assert_eq!(
            results[10],
            OpResult::Purged {
                removed: 0,
                pending: 0
            }
        );
        assert_eq!(
            mem.data.keys().collect::<Vec<_>>(),
            vec!["ap", "app/c", "apple"]
        );
        assert!(mem.index.is_empty() && mem.tombstones.is_empty());
        assert_eq!(mem.data_bytes, mem.counted_bytes());
    }

    #[test]
    fn purges_go_a_bounded_number_of_keys_at_a_time_and_keep_later_writes() {
        let n = PURGE_LIMIT * 2 + 10;
        let mut requests: Vec<Request> = (0..n)
            .map(|i| set(1000, &format!("p/{i:05}"), "1", Some(1_000_000)))
            .collect();
        requests.push(delete_prefix(1000, "p/"));
        requests.push(set(1000, "p/00500", "kept", None));
        requests.push(purge(1000));
        requests.push(set(1000, "p/99999", "kept", None));
        requests.push(purge(1000));
        requests.push(del(1000, "p/00500"));
        requests.push(set(1000, "p/00501", "kept", None));
        requests.push(purge(1000));
        let reference = Mem::apply_grouped(&requests, 1);
        for group in [2, 7, 64, requests.len()] {
            assert_eq!(
                Mem::apply_grouped(&requests, group),
                reference,
                "grouping by {group}"
            );
        }
        let (mem, results) = reference;
        let purged: Vec<_> = results
            .iter()
            .filter(|r| matches!(r, OpResult::Purged { .. }))
            .collect();
        let purged_of = |removed, pending| OpResult::Purged { removed, pending };
        assert_eq!(
            purged,
            vec![&purged_of(999, 1), &purged_of(1000, 1), &purged_of(10, 0)]
        );
        assert_eq!(
            mem.data.keys().collect::<Vec<_>>(),
            vec!["p/00501", "p/99999"]
        );
        assert!(mem.index.is_empty());
        assert_eq!(mem.data_bytes, mem.counted_bytes());
    }

    #[test]
    fn a_purge_that_ends_at_exactly_its_limit_decides_alike_in_every_grouping() {
        // The last covered key is rewritten just before the purge: grouped with it, the
        // rewrite is pending in the overlay, not persisted, and the purge must still see
        // that nothing follows its 999 removals.
        let mut requests: Vec<Request> = (0..PURGE_LIMIT)
            .map(|i| set(10, &format!("p/{i:04}"), "1", None))
            .collect();
        requests.push(delete_prefix(10, "p/"));
        requests.push(set(10, "p/0999", "new", None));
        requests.push(purge(10));
        let reference = Mem::apply_grouped(&requests, 1);
        assert_eq!(
            reference.1.last(),
            Some(&OpResult::Purged {
                removed: 999,
                pending: 0
            })
        );
        for group in [2, 7, requests.len()] {
            assert_eq!(
                Mem::apply_grouped(&requests, group),
                reference,
                "grouping by {group}"
            );
        }
    }

    /// A small deterministic generator, so a failing seed can be replayed.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    /// About a purge's worth of keys under `p/`, then random writes, deletes, prefix
    /// deletes, purges, expiries, quota-bound and idempotent writes near the purge
    /// boundary.
    fn random_log(seed: u64) -> Vec<Request> {
        let mut r = Lcg(seed);
        let n = PURGE_LIMIT as u64 - 5 + r.below(11);
        let mut requests: Vec<Request> = (0..n)
            .map(|i| set(10, &format!("p/{i:04}"), "1", Some(50 + i % 7)))
            .collect();
        let mut at = 10;
        for _ in 0..80 {
            at += r.below(4);
            let key = format!("p/{:04}", n - 8 + r.below(12));
            let other = format!("q/{}", r.below(5));
            let value = "v".repeat(1 + r.below(3) as usize);
            requests.push(match r.below(13) {
                0 => delete_prefix(at, ["p/", "p/09", "q/", "p/099"][r.below(4) as usize]),
                1..=3 => purge(at),
                4 => del(at, &key),
                5 => expire(at),
                6 => within_quota(9_000, set(at, &key, &value, None)),
                7 => idempotent(
                    at,
                    &format!("i{}", r.below(3)),
                    u128::from(r.below(2)),
                    within_quota(9_000, set(at, &other, &value, None)),
                ),
                8 => set_with(at, &key, &value, Ttl::Keep, Precondition::Absent),
                9 if r.below(3) == 0 => within_limits(
                    Limits {
                        max_data_bytes: 9_000,
                        max_records: 6,
                    },
                    open(at, r.below(3).into()),
                ),
                9 => {
                    let seq = 1 + r.below(4);
                    let ack = seq - r.below(2).min(seq - 1);
                    let inner = set(at, &other, &value, None);
                    let limits = Limits {
                        max_data_bytes: 9_000,
                        max_records: 6,
                    };
                    within_limits(limits, in_session(at, r.below(3).into(), seq, ack, inner))
                }
                _ => set(at, &other, &value, Some(r.below(30))),
            });
        }
        requests
    }

    #[test]
    fn random_logs_near_the_purge_limit_apply_alike_in_every_grouping() {
        for seed in 0..40 {
            let requests = random_log(seed);
            let reference = Mem::apply_grouped(&requests, 1);
            assert_eq!(
                reference.0.data_bytes,
                reference.0.counted_bytes(),
                "seed {seed}"
            );
            assert_eq!(
                reference.0.record_count,
                reference.0.counted_records(),
                "seed {seed}"
            );
            for group in [2, 3, 7, 64, requests.len()] {
                assert!(
                    Mem::apply_grouped(&requests, group) == reference,
                    "seed {seed}, grouping by {group}"
                );
            }
        }
    }

    #[test]
    fn a_prefix_delete_absorbs_the_ones_it_covers_and_refuses_past_the_cap() {
        let mut requests: Vec<Request> = (0..MAX_TOMBSTONES)
            .map(|i| delete_prefix(10, &format!("t/{i:03}/")))
            .collect();
        requests.push(delete_prefix(10, "u/"));
        requests.push(delete_prefix(10, "t/"));
        requests.push(delete_prefix(10, "u/"));
        let (mem, results) = Mem::run(&requests);
        assert_eq!(
            results[MAX_TOMBSTONES],
            failed(Failure::PrefixDeletesPending, None)
        );
        let prefixes: Vec<_> = mem.tombstones.iter().map(|t| t.prefix.as_str()).collect();
        assert_eq!(prefixes, vec!["t/", "u/"]);
    }

    #[test]
    fn the_quota_refuses_growth_only_and_lets_writes_resume_after_deletes() {
        // Each entry below is 2 bytes of key and 2 of value.
        let (mem, results) = Mem::run(&[
            within_quota(8, set(10, "k1", "11", None)),
            within_quota(8, set(10, "k2", "22", None)),
            within_quota(8, set(10, "k3", "33", None)),
            within_quota(8, set(10, "k2", "2", None)),
            within_quota(8, set(10, "k1", "1", None)),
            within_quota(
                8,
                set_with(10, "k9", "9", Ttl::Clear, Precondition::Revision(3)),
            ),
            del(10, "k2"),
            within_quota(8, set(10, "k3", "33", None)),
        ]);
        assert_eq!(results[2], failed(Failure::QuotaExceeded, None));
        assert!(matches!(results[3], OpResult::Written { .. }), "shrinks");
        assert!(matches!(results[4], OpResult::Written { .. }), "shrinks");
        assert_eq!(
            results[5],
            failed(Failure::RevisionMismatch, None),
            "a failed precondition answers first"
        );
        assert!(matches!(results[7], OpResult::Written { .. }), "room again");
        assert_eq!(mem.data_bytes, 7);
        assert_eq!(mem.data_bytes, mem.counted_bytes());
    }

    #[test]
    fn a_write_refused_by_the_quota_leaves_no_idempotency_record() {
        let write = || within_quota(3, set(10, "k", "big", None));
        let (mem, results) = Mem::run(&[
            idempotent(10, "req", 1, write()),
            idempotent(10, "req", 1, within_quota(100, set(10, "k", "big", None))),
        ]);
        assert_eq!(results[0], failed(Failure::QuotaExceeded, None));
        assert_eq!(results[1], written(2, 2, 1, None), "the retry applies");
        assert_eq!(mem.records.len(), 1);
    }

    #[test]
    fn delete_prefix_sees_writes_earlier_in_the_same_apply_call() {
        let requests = [
            set(1000, "p/1", "1", None),
            set(1000, "p/2", "1", None),
            delete_prefix(1000, "p/"),
            set(1000, "p/3", "1", None),
            purge(1000),
        ];
        let reference = Mem::apply_grouped(&requests, 1);
        assert_eq!(Mem::apply_grouped(&requests, 5), reference);
        assert_eq!(reference.0.data.keys().collect::<Vec<_>>(), vec!["p/3"]);
    }

    fn in_session(at: u64, id: u128, seq: u64, ack: u64, inner: Request) -> Request {
        Request {
            stamp_ms: at,
            command: Command::Session {
                id,
                seq,
                ack,
                fingerprint: u128::from(seq) * 1000 + id,
                idle_ms: 1000,
                command: Box::new(inner.command),
            },
        }
    }

    impl Mem {
        /// Records, sessions and session answers, counted from scratch.
        fn counted_records(&self) -> u64 {
            self.records.len() as u64
                + self
                    .sessions
                    .values()
                    .map(crate::Session::records)
                    .sum::<u64>()
        }
    }

    fn open(at: u64, id: u128) -> Request {
        Request {
            stamp_ms: at,
            command: Command::OpenSession { id, idle_ms: 1000 },
        }
    }

    #[test]
    fn a_session_write_applies_once_and_its_answer_lives_until_acknowledged() {
        let (mem, results) = Mem::run(&[
            open(9, 7),
            in_session(10, 7, 1, 1, set(10, "a", "1", None)),
            in_session(11, 7, 1, 1, set(11, "a", "1", None)),
            in_session(12, 7, 2, 1, set(12, "b", "1", None)),
            in_session(13, 7, 3, 3, set(13, "c", "1", None)),
            in_session(14, 7, 1, 1, set(14, "a", "1", None)),
            in_session(15, 7, 2, 2, set(15, "b", "1", None)),
            open(16, 7),
        ]);
        assert_eq!(
            results[0],
            OpResult::SessionOpened {
                expires_at_ms: 1009
            }
        );
        assert_eq!(results[1], written(2, 2, 1, None));
        assert_eq!(
            results[2],
            OpResult::Replayed(Box::new(written(2, 2, 1, None)))
        );
        assert_eq!(results[4], written(5, 5, 1, None));
        assert_eq!(
            results[5..7],
            [OpResult::SessionExpired, OpResult::SessionExpired],
            "late copies of acknowledged writes change nothing"
        );
        assert_eq!(
            results[7],
            OpResult::SessionOpened {
                expires_at_ms: 1016
            },
            "opening a live session again extends it and keeps its answers"
        );
        assert_eq!(mem.data["a"].version, 1);
        assert_eq!(mem.data["b"].version, 1);
        let session = &mem.sessions[&7];
        assert_eq!((session.acked, session.answers.len()), (3, 1));
        assert_eq!(mem.record_count, 2);
    }

    #[test]
    fn a_write_in_an_unknown_or_ended_session_is_not_applied() {
        let (mem, results) = Mem::run(&[
            in_session(10, 1, 1, 1, set(10, "a", "1", None)),
            open(10, 2),
            in_session(10, 2, 1, 1, set(10, "b", "1", None)),
            expire(1009),
            in_session(1009, 2, 2, 2, set(1009, "b", "2", None)),
            expire(2009),
            in_session(2010, 2, 3, 3, set(2010, "b", "3", None)),
        ]);
        assert_eq!(results[0], OpResult::SessionExpired, "never opened");
        assert!(!mem.data.contains_key("a"));
        assert_eq!(results[3], OpResult::Expired { removed: 0 });
        assert_eq!(results[4], written(5, 3, 2, None));
        assert_eq!(results[5], OpResult::Expired { removed: 1 });
        assert_eq!(results[6], OpResult::SessionExpired, "ended after 1 s idle");
        assert_eq!(mem.data["b"].version, 2);
        assert!(mem.sessions.is_empty() && mem.index.is_empty());
        assert_eq!(mem.record_count, 0);
    }

    #[test]
    fn a_session_keeps_at_most_its_window_of_unacknowledged_answers() {
        let window = crate::SESSION_WINDOW;
        let mut requests = vec![open(10, 3)];
        requests.extend(
            (1..=window + 1)
                .map(|seq| in_session(10, 3, seq, 1, set(10, &format!("k{seq}"), "1", None))),
        );
        requests.push(in_session(10, 3, window + 1, 2, set(10, "k", "1", None)));
        let (mem, results) = Mem::run(&requests);
        assert_eq!(
            results[window as usize + 1],
            failed(Failure::SessionWindowFull, None)
        );
        assert!(matches!(results.last(), Some(OpResult::Written { .. })));
        assert_eq!(mem.sessions[&3].answers.len() as u64, window);
        assert_eq!(mem.record_count, mem.counted_records());
    }

    #[test]
    fn records_past_the_limit_are_refused_and_not_applied() {
        let limits = Limits {
            max_data_bytes: u64::MAX,
            max_records: 2,
        };
        let (mem, results) = Mem::run(&[
            within_limits(limits, open(10, 4)),
            within_limits(limits, in_session(10, 4, 1, 1, set(10, "a", "1", None))),
            within_limits(limits, in_session(10, 4, 2, 1, set(10, "b", "1", None))),
            within_limits(limits, idempotent(10, "r", 1, set(10, "c", "1", None))),
            within_limits(limits, open(10, 5)),
            within_limits(limits, in_session(10, 4, 2, 2, set(10, "b", "1", None))),
        ]);
        assert_eq!(results[1], written(2, 2, 1, None));
        let full = failed(Failure::RecordsFull, None);
        assert_eq!(results[2..5], [full.clone(), full.clone(), full]);
        assert_eq!(results[5], written(6, 6, 1, None), "the ack made room");
        assert!(!mem.data.contains_key("c"));
        assert_eq!(mem.record_count, 2);
    }

    #[test]
    fn opening_sessions_leaves_a_tenth_of_the_records_to_the_sessions_open() {
        let limits = Limits {
            max_data_bytes: u64::MAX,
            max_records: 10,
        };
        let mut requests: Vec<Request> = (1..=10)
            .map(|id| within_limits(limits, open(10, id)))
            .collect();
        requests.push(within_limits(
            limits,
            in_session(10, 1, 1, 1, set(10, "a", "1", None)),
        ));
        let (mem, results) = Mem::run(&requests);
        assert!(results[..9]
            .iter()
            .all(|r| matches!(r, OpResult::SessionOpened { .. })));
        assert_eq!(results[9], failed(Failure::RecordsFull, None));
        assert_eq!(
            results[10],
            written(11, 11, 1, None),
            "an open session still writes"
        );
        assert_eq!(mem.record_count, 10);
    }

    #[test]
    fn deletes_keep_their_answers_when_records_are_full() {
        let limits = Limits {
            max_data_bytes: u64::MAX,
            max_records: 2,
        };
        let (mem, results) = Mem::run(&[
            within_limits(limits, open(10, 4)),
            within_limits(limits, in_session(10, 4, 1, 1, set(10, "a", "1", None))),
            within_limits(limits, in_session(10, 4, 2, 1, del(10, "a"))),
            within_limits(limits, in_session(10, 4, 2, 1, del(10, "a"))),
            within_limits(limits, idempotent(10, "d", 1, del(10, "b"))),
        ]);
        let deleted = OpResult::Deleted {
            deleted: true,
            revision: 3,
        };
        assert_eq!(results[2], deleted);
        assert_eq!(results[3], OpResult::Replayed(Box::new(deleted)));
        assert!(matches!(results[4], OpResult::Deleted { .. }));
        assert_eq!(mem.record_count, 4, "past the limit, by deletes only");
        assert_eq!(mem.record_count, mem.counted_records());
    }

    #[test]
    fn a_kept_failure_leaves_out_a_large_value_and_its_replay_reads_it_again() {
        let big = format!("\"{}\"", "x".repeat(crate::session::RECORDED_VALUE_LIMIT));
        let create = |at| set_with(at, "lock", "\"me\"", Ttl::Clear, Precondition::Absent);
        let (mem, results) = Mem::run(&[
            set(10, "lock", &big, None),
            open(10, 9),
            in_session(11, 9, 1, 1, create(11)),
            in_session(12, 9, 1, 1, create(12)),
            idempotent(13, "r", 1, create(13)),
            idempotent(14, "r", 1, create(14)),
        ]);
        let original = failed(Failure::KeyExists, Some(&mem.data["lock"]));
        assert_eq!(results[2], original);
        assert!(crate::session::value_left_out(
            &mem.sessions[&9].answers[0].result
        ));
        assert_eq!(results[3], OpResult::Replayed(Box::new(original.clone())));
        assert!(crate::session::value_left_out(&mem.records["r"].result));
        assert_eq!(results[5], OpResult::Replayed(Box::new(original)));
    }

    fn idempotent(at: u64, id: &str, fingerprint: u128, inner: Request) -> Request {
        Request {
            stamp_ms: at,
            command: Command::Idempotent {
                id: id.into(),
                fingerprint,
                retain_ms: 1000,
                command: Box::new(inner.command),
            },
        }
    }

    #[test]
    fn idempotent_retry_replays_the_recorded_result_and_changes_nothing() {
        let create = || set_with(10, "a", "1", Ttl::Clear, Precondition::Absent);
        let (mem, results) = Mem::run(&[
            idempotent(10, "req-1", 7, create()),
            idempotent(20, "req-1", 7, create()),
        ]);
        assert_eq!(results[0], written(1, 1, 1, None));
        assert_eq!(
            results[1],
            OpResult::Replayed(Box::new(written(1, 1, 1, None)))
        );
        assert_eq!(mem.data["a"].version, 1, "the retry did not apply again");
    }

    #[test]
    fn concurrent_copies_of_one_request_apply_once_in_log_order() {
        let copy = || {
            idempotent(
                10,
                "delivery-9",
                5,
                set_with(10, "d", "1", Ttl::Clear, Precondition::Absent),
            )
        };
        let (_, results) = Mem::apply_grouped(&[copy(), copy(), copy()], 3);
        assert_eq!(results[0], written(1, 1, 1, None));
        for r in &results[1..] {
            assert_eq!(r, &OpResult::Replayed(Box::new(written(1, 1, 1, None))));
        }
    }

    #[test]
    fn same_idempotency_key_with_another_request_is_refused() {
        let (mem, results) = Mem::run(&[
            idempotent(10, "k", 1, set(10, "a", "1", None)),
            idempotent(20, "k", 2, set(20, "a", "2", None)),
        ]);
        assert_eq!(results[1], OpResult::IdempotencyKeyReused);
        assert_eq!(mem.data["a"].value, b"1");
    }

    #[test]
    fn idempotency_record_lapses_after_retention_and_expire_removes_it() {
        // Recorded at 10 with 1000 ms retention: counts until 1009, not at 1010.
        let (_, within) = Mem::run(&[
            idempotent(10, "k", 1, set(10, "a", "1", None)),
            idempotent(1009, "k", 1, set(1009, "a", "1", None)),
        ]);
        assert!(matches!(within[1], OpResult::Replayed(_)));
        let (mem, after) = Mem::run(&[
            idempotent(10, "k", 1, set(10, "a", "1", None)),
            expire(1010),
            idempotent(1010, "k", 1, set(1010, "a", "1", None)),
        ]);
        assert_eq!(after[1], OpResult::Expired { removed: 1 });
        assert_eq!(
            after[2],
            written(3, 1, 2, None),
            "applied anew once the record lapsed"
        );
        assert_eq!(mem.records["k"].expires_at_ms, 2010);
        assert_eq!(mem.index.len(), 1);
    }

    #[test]
    fn a_failed_precondition_is_recorded_and_replayed_too() {
        let create = |v: &str| set_with(10, "a", v, Ttl::Clear, Precondition::Absent);
        let (mem, results) = Mem::run(&[
            set(5, "a", "winner", None),
            idempotent(10, "k", 3, create("loser")),
            set(11, "a", "newer", None),
            idempotent(12, "k", 3, create("loser")),
        ]);
        assert_eq!(results[3], OpResult::Replayed(Box::new(results[1].clone())));
        assert_eq!(mem.data["a"].value, b"newer");
    }

    fn put_token(at: u64, id: u64, admin: bool, grants: &[(&str, crate::Access)]) -> Request {
        let token = Token {
            name: format!("token {id}"),
            hash: [id as u8; 32],
            admin,
            grants: grants
                .iter()
                .map(|(prefix, access)| crate::Grant {
                    prefix: (*prefix).into(),
                    access: *access,
                })
                .collect(),
            created_ms: 0,
        };
        Request {
            stamp_ms: at,
            command: Command::PutToken { id, token },
        }
    }

    fn revoke(at: u64, id: u64) -> Request {
        Request {
            stamp_ms: at,
            command: Command::RevokeToken { id },
        }
    }

    fn authorized(token: u64, inner: Request) -> Request {
        Request {
            stamp_ms: inner.stamp_ms,
            command: Command::Authorized {
                token,
                command: Box::new(inner.command),
            },
        }
    }

    #[test]
    fn a_token_writes_only_under_its_write_grants() {
        use crate::Access::{Read, Write};
        let (mem, results) = Mem::run(&[
            put_token(10, 7, false, &[("app1/", Write), ("shared/", Read)]),
            authorized(7, set(11, "app1/a", "1", None)),
            authorized(7, set(12, "app2/a", "1", None)),
            authorized(7, set(13, "shared/a", "1", None)),
            authorized(7, del(14, "shared/a")),
            authorized(7, delete_prefix(15, "app1/")),
            authorized(7, delete_prefix(16, "app")),
            authorized(7, expire(17)),
            authorized(7, put_token(18, 8, true, &[])),
            put_token(19, 9, false, &[("", Read)]),
            authorized(9, open(20, 5)),
            authorized(7, open(21, 6)),
        ]);
        assert_eq!(results[0], OpResult::TokenCreated { revision: 1 });
        assert_eq!(
            mem.tokens[&7].created_ms, 10,
            "stamped by the state machine"
        );
        assert_eq!(results[1], written(2, 2, 1, None));
        for i in [2, 3, 4, 6, 7, 8] {
            assert_eq!(results[i], failed(Failure::Forbidden, None), "request {i}");
        }
        assert_eq!(results[5], OpResult::PrefixDeleted { revision: 6 });
        assert!(!mem.data.contains_key("app2/a") && !mem.tokens.contains_key(&8));
        assert_eq!(
            results[10],
            failed(Failure::Forbidden, None),
            "read-only: no session"
        );
        assert!(matches!(results[11], OpResult::SessionOpened { .. }));
    }

    #[test]
    fn a_revoked_token_authorizes_nothing_and_cannot_replay() {
        use crate::Access::Write;
        let keyed = |at| authorized(7, idempotent(at, "k", 1, set(at, "a", "1", None)));
        let (mem, results) = Mem::run(&[
            put_token(10, 7, false, &[("", Write)]),
            keyed(11),
            revoke(12, 7),
            keyed(13),
            authorized(7, open(14, 5)),
            revoke(15, 7),
        ]);
        assert_eq!(results[1], written(2, 2, 1, None));
        assert_eq!(
            results[2],
            OpResult::TokenRevoked {
                existed: true,
                revision: 3
            }
        );
        assert_eq!(results[3], failed(Failure::Unauthenticated, None));
        assert_eq!(results[4], failed(Failure::Unauthenticated, None));
        assert_eq!(
            results[5],
            OpResult::TokenRevoked {
                existed: false,
                revision: 6
            }
        );
        assert!(mem.tokens.is_empty() && mem.sessions.is_empty());
    }

    #[test]
    fn token_management_needs_an_admin_and_the_bootstrap_token_passes_everything() {
        use crate::Access::Read;
        let (mem, results) = Mem::run(&[
            authorized(BOOTSTRAP_TOKEN, put_token(10, 1, true, &[])),
            authorized(1, put_token(11, 2, false, &[("x/", Read)])),
            authorized(2, revoke(12, 1)),
            authorized(1, put_token(13, 2, false, &[])),
            put_token(14, BOOTSTRAP_TOKEN, true, &[]),
            authorized(BOOTSTRAP_TOKEN, set(15, "any", "1", None)),
            authorized(1, set(16, "any", "2", None)),
        ]);
        assert_eq!(results[1], OpResult::TokenCreated { revision: 2 });
        assert_eq!(results[2], failed(Failure::Forbidden, None));
        assert_eq!(
            results[3],
            failed(Failure::KeyExists, None),
            "ids are unique"
        );
        assert_eq!(
            results[4],
            failed(Failure::KeyExists, None),
            "0 is reserved"
        );
        assert_eq!(results[5], written(6, 6, 1, None));
        assert_eq!(
            results[6],
            failed(Failure::Forbidden, None),
            "admin is not data"
        );
        assert_eq!(mem.tokens.len(), 2);
    }

    #[test]
    fn tokens_past_the_cap_are_refused_until_one_is_revoked() {
        let mut requests: Vec<Request> = (1..=MAX_TOKENS)
            .map(|id| put_token(10, id, false, &[]))
            .collect();
        requests.push(put_token(11, MAX_TOKENS + 1, false, &[]));
        requests.push(revoke(12, 1));
        requests.push(put_token(13, MAX_TOKENS + 1, false, &[]));
        let (mem, results) = Mem::apply_grouped(&requests, 1000);
        let n = MAX_TOKENS as usize;
        assert_eq!(results[n], failed(Failure::TokensFull, None));
        assert!(matches!(results[n + 2], OpResult::TokenCreated { .. }));
        assert_eq!(mem.tokens.len() as u64, MAX_TOKENS);
    }

    #[test]
    fn token_changes_apply_alike_in_every_grouping() {
        use crate::Access::{Read, Write};
        let mut requests = vec![];
        for i in 0..40u64 {
            let at = 100 + i;
            let id = 1 + i % 4;
            requests.push(match i % 6 {
                0 => put_token(at, id, i % 3 == 0, &[("a/", Write), ("b/", Read)]),
                1 => revoke(at, id),
                2 => authorized(id, set(at, &format!("a/{i}"), "1", None)),
                3 => authorized(id, put_token(at, 10 + i, false, &[])),
                4 => authorized(id, delete_prefix(at, "a/")),
                _ => authorized(id, set(at, "b/x", "1", None)),
            });
        }
        let reference = Mem::apply_grouped(&requests, 1);
        assert!(!reference.0.tokens.is_empty());
        for group in [2, 3, 7, 40] {
            assert_eq!(
                Mem::apply_grouped(&requests, group),
                reference,
                "grouping by {group}"
            );
        }
    }

    /// Kept answers decode by the failure's place: a variant added anywhere but at the
    /// end would make every stored answer mean something else.
    #[test]
    fn failures_keep_their_encoding_tags() {
        let failures = [
            Failure::KeyExists,
            Failure::RevisionMismatch,
            Failure::QuotaExceeded,
            Failure::PrefixDeletesPending,
            Failure::RecordsFull,
            Failure::SessionWindowFull,
            Failure::Unauthenticated,
            Failure::Forbidden,
            Failure::TokensFull,
        ];
        for (tag, failure) in failures.iter().enumerate() {
            assert_eq!(
                usize::from(postcard::to_stdvec(failure).expect("encodes")[0]),
                tag,
                "{failure:?}"
            );
        }
    }
}
