//! A per-key linearizability checker for histories in the HISTORY-FORMAT.md format.
//!
//! The search is todc-utils' Wing–Gong/Lowe checker (`WGLChecker`, memoizing on the
//! set of linearized operations and the model state); this module supplies the
//! sequential model of one key and turns a history into the call/response sequence the
//! search takes:
//!
//! - Every logical operation is its own "process", so an operation whose outcome is
//!   `unknown` can stay open to the end of the history (its response is placed after
//!   every other event) while its client goes on. Linearizing it last is the same as
//!   never applying it, so "at any point after its call, or never" holds.
//! - Expiry is an operation too: a write with `ttl_ms = T` at `[call, return]` adds an
//!   `expire` operation open over `[call + T − slack, return + T + slack]` (to the end
//!   for an unknown write) that removes the key if it still holds that write's value.
//!   The search places it anywhere in that window, which is exactly the model's "expires
//!   at some instant in the window; once seen absent it stays absent". When it is placed
//!   before its own write (possible when the write took longer than `T − slack`, or its
//!   answer never came), the write finds its TTL run out and leaves the key absent (the
//!   state remembers such early expiries).
//! - Versions are `-versions monotonic`: they strictly increase while a key exists; a
//!   write without a reported version leaves the version unknown (above the previous
//!   one) until a read or a successful cas reveals it.
//!
//! Operations that definitely did not happen (`error`, `fail` of get/put/delete) and
//! `unknown` gets are dropped, as the format says.

use std::collections::{BTreeMap, HashMap};

use todc_utils::linearizability::history::{Action, History};
use todc_utils::{Specification, WGLChecker};

use crate::history::{Op, OpKind, Outcome};

/// The default `-ttl-slack`.
pub const DEFAULT_TTL_SLACK_MS: u64 = 250;

/// What the checker knows of a key's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Version {
    Known(u64),
    /// Not reported yet; strictly above this bound.
    Above(u64),
}

impl Version {
    fn bound(self) -> u64 {
        match self {
            Version::Known(v) | Version::Above(v) => v,
        }
    }

    fn admits(self, v: u64) -> bool {
        match self {
            Version::Known(k) => k == v,
            Version::Above(lb) => v > lb,
        }
    }
}

/// What one key holds. Values are interned per key (every write's value is unique, so
/// a value names the write that put it there).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Held {
    Absent,
    Present { value: u32, version: Version },
}

/// The model state of one key: what it holds, and the expiries that were placed before
/// their own write (sorted; see [`ModelOp::Expire`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct KeyState {
    held: Held,
    early: Vec<u32>,
}

fn insert_sorted(set: &mut Vec<u32>, v: u32) {
    if let Err(i) = set.binary_search(&v) {
        set.insert(i, v);
    }
}

fn remove_sorted(set: &mut Vec<u32>, v: u32) -> bool {
    match set.binary_search(&v) {
        Ok(i) => {
            set.remove(i);
            true
        }
        Err(_) => false,
    }
}

impl Held {
    fn version_bound(&self) -> u64 {
        match self {
            Held::Absent => 0,
            Held::Present { version, .. } => version.bound(),
        }
    }
}

/// How a write ended, as far as the model cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Ok,
    Fail,
    Unknown,
}

/// One operation of the model.
#[derive(Debug, Clone)]
enum ModelOp {
    /// A get or a write; `ttl` when it writes with a TTL.
    Client { op: KeyOp, ttl: bool },
    /// The TTL of the write of `value` ran out. `may_precede_write` when its window opens
    /// before that write returned (a slow write, or one whose answer never came): placed
    /// before the write, it is remembered in [`KeyState::early`] and the write, when
    /// placed, finds its TTL run out. Otherwise real-time order places the write first.
    Expire { value: u32, may_precede_write: bool },
}

/// What one operation does to the key's content.
#[derive(Debug, Clone)]
enum KeyOp {
    /// An ok get: absent, or a value with the version read (if reported).
    Get(Option<(u32, Option<u64>)>),
    /// An ok or unknown put (an unknown one that is linearized took effect).
    Put { value: u32, version: Option<u64> },
    Create {
        value: u32,
        version: Option<u64>,
        ended: Ended,
    },
    Cas {
        expected: Option<u32>,
        expected_version: Option<u64>,
        value: u32,
        version: Option<u64>,
        ended: Ended,
    },
    /// An ok delete (with `found` if reported) or an unknown one (`None`).
    Delete(Option<bool>),
}

struct KeyModel;

/// A write's new version: the reported one if it is above `bound`, else invalid.
fn next_version(reported: Option<u64>, bound: u64) -> Option<Version> {
    match reported {
        Some(v) if v > bound => Some(Version::Known(v)),
        Some(_) => None,
        None => Some(Version::Above(bound)),
    }
}

/// Whether a cas matches: `Some(true)` surely, `Some(false)` surely not, `None` when the
/// version is unknown and the expected version could be it.
fn cas_matches(state: &Held, expected: Option<u32>, expected_version: Option<u64>) -> Option<bool> {
    let Held::Present { value, version } = state else {
        return Some(false);
    };
    if expected.is_some_and(|e| e != *value) {
        return Some(false);
    }
    match (expected_version, version) {
        (None, _) => Some(true),
        (Some(e), Version::Known(k)) => Some(e == *k),
        (Some(e), Version::Above(lb)) if e <= *lb => Some(false),
        // Values are unique, so a matching value pins the version the client saw with
        // it; without an expected value the answer could go either way.
        (Some(_), Version::Above(_)) if expected.is_some() => Some(true),
        (Some(_), Version::Above(_)) => None,
    }
}

impl Specification for KeyModel {
    type State = KeyState;
    type Operation = ModelOp;

    fn init() -> KeyState {
        KeyState {
            held: Held::Absent,
            early: vec![],
        }
    }

    fn apply(op: &ModelOp, state: &KeyState) -> (bool, KeyState) {
        let mut next = state.clone();
        let (op, ttl) = match *op {
            ModelOp::Expire {
                value: expiring,
                may_precede_write,
            } => {
                if matches!(next.held, Held::Present { value, .. } if value == expiring) {
                    next.held = Held::Absent;
                } else if may_precede_write {
                    // Its write may not have been placed yet: if it is placed later, it
                    // finds its TTL run out. (If it was placed and overwritten, the value
                    // never comes back, so remembering it changes nothing.)
                    insert_sorted(&mut next.early, expiring);
                }
                return (true, next);
            }
            ModelOp::Client { ref op, ttl } => (op, ttl),
        };
        let (valid, held) = apply_to_content(op, &state.held);
        if !valid {
            return (false, next);
        }
        next.held = held;
        if ttl {
            // Values are unique: holding this op's value means this op just wrote it.
            if let Held::Present { value, .. } = next.held {
                if remove_sorted(&mut next.early, value) {
                    next.held = Held::Absent;
                }
            }
        }
        (true, next)
    }
}

/// Applies a get or a write to what the key holds: whether the operation's answer is
/// possible, and the content after it.
fn apply_to_content(op: &KeyOp, state: &Held) -> (bool, Held) {
    {
        let invalid = (false, state.clone());
        let present = |value: u32, version: Version| (true, Held::Present { value, version });
        match op {
            KeyOp::Get(None) => (*state == Held::Absent, state.clone()),
            KeyOp::Get(Some((read, reported))) => match state {
                Held::Present { value, version } if value == read => match reported {
                    None => (true, state.clone()),
                    Some(v) if version.admits(*v) => present(*value, Version::Known(*v)),
                    Some(_) => invalid,
                },
                _ => invalid,
            },
            KeyOp::Put { value, version } => match next_version(*version, state.version_bound()) {
                Some(v) => present(*value, v),
                None => invalid,
            },
            KeyOp::Create {
                value,
                version,
                ended,
            } => match (ended, state) {
                (Ended::Ok | Ended::Unknown, Held::Absent) => match next_version(*version, 0) {
                    Some(v) => present(*value, v),
                    None => invalid,
                },
                (Ended::Fail | Ended::Unknown, Held::Present { .. }) => (true, state.clone()),
                _ => invalid,
            },
            KeyOp::Cas {
                expected,
                expected_version,
                value,
                version,
                ended,
            } => {
                let matches = cas_matches(state, *expected, *expected_version);
                let write = || {
                    let bound = state.version_bound().max(expected_version.unwrap_or(0));
                    match next_version(*version, bound) {
                        Some(v) => present(*value, v),
                        None => (false, state.clone()),
                    }
                };
                match (ended, matches) {
                    (Ended::Ok, Some(true) | None) => write(),
                    (Ended::Ok, Some(false)) => invalid,
                    (Ended::Fail, Some(true)) => invalid,
                    (Ended::Fail, Some(false) | None) => (true, state.clone()),
                    (Ended::Unknown, Some(true) | None) => write(),
                    (Ended::Unknown, Some(false)) => (true, state.clone()),
                }
            }
            KeyOp::Delete(found) => {
                let was_present = *state != Held::Absent;
                if found.is_some_and(|f| f != was_present) {
                    invalid
                } else {
                    (true, Held::Absent)
                }
            }
        }
    }
}

/// Checker settings.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// Expiry may happen this much before `call + ttl` or after `return + ttl`.
    pub ttl_slack_ms: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            ttl_slack_ms: DEFAULT_TTL_SLACK_MS,
        }
    }
}

/// The verdict on one key.
#[derive(Debug, Clone)]
pub struct KeyVerdict {
    pub key: String,
    /// Operations the search considered (expiries included).
    pub operations: usize,
    pub linearizable: bool,
}

/// The verdict on a whole history.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// Every key, in key order.
    pub keys: Vec<KeyVerdict>,
    /// Values reported with two different versions: a write applied twice.
    pub reapplied: Vec<String>,
}

impl Verdict {
    /// True when every key is linearizable and no write was applied twice.
    pub fn ok(&self) -> bool {
        self.reapplied.is_empty() && self.keys.iter().all(|k| k.linearizable)
    }

    /// The keys that are not linearizable.
    pub fn failing_keys(&self) -> Vec<&str> {
        self.keys
            .iter()
            .filter(|k| !k.linearizable)
            .map(|k| k.key.as_str())
            .collect()
    }
}

/// Checks every key of `history` independently.
pub fn check(history: &[Op], options: CheckOptions) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut verdict = Verdict {
        reapplied: reapplied_values(history),
        ..Verdict::default()
    };
    for (key, ops) in by_key {
        let (operations, linearizable) = check_key(&ops, options);
        verdict.keys.push(KeyVerdict {
            key: key.to_owned(),
            operations,
            linearizable,
        });
    }
    verdict
}

/// A model operation open over `[call, ret]` (`None`: to the end of the history).
struct Timed {
    op: ModelOp,
    call: u64,
    ret: Option<u64>,
}

fn check_key(ops: &[&Op], options: CheckOptions) -> (usize, bool) {
    let mut values: HashMap<String, u32> = HashMap::new();
    let mut intern = |v: Option<&String>| -> u32 {
        let v = v.map_or("", String::as_str);
        let next = values.len() as u32;
        *values.entry(v.to_owned()).or_insert(next)
    };
    let slack_ns = options.ttl_slack_ms * 1_000_000;
    let overwritten = Overwrites::new(ops);
    let mut timed = vec![];
    for op in ops {
        let ended = match op.result {
            Outcome::Ok => Ended::Ok,
            Outcome::Fail if matches!(op.op, OpKind::Cas | OpKind::Create) => Ended::Fail,
            Outcome::Unknown if op.op != OpKind::Get => Ended::Unknown,
            // Definitely not executed, or a read whose answer never arrived.
            _ => continue,
        };
        let ret = if ended == Ended::Unknown {
            None
        } else {
            op.ret
        };
        let model = match op.op {
            OpKind::Get => KeyOp::Get(
                op.found
                    .unwrap_or(false)
                    .then(|| (intern(op.value.as_ref()), op.version)),
            ),
            OpKind::Put => KeyOp::Put {
                value: intern(op.value.as_ref()),
                version: op.version.filter(|_| ended == Ended::Ok),
            },
            OpKind::Create => KeyOp::Create {
                value: intern(op.value.as_ref()),
                version: op.version.filter(|_| ended == Ended::Ok),
                ended,
            },
            OpKind::Cas => KeyOp::Cas {
                expected: op.expected.as_ref().map(|e| intern(Some(e))),
                expected_version: op.expected_version,
                value: intern(op.value.as_ref()),
                version: op.version.filter(|_| ended == Ended::Ok),
                ended,
            },
            OpKind::Delete => KeyOp::Delete(op.found.filter(|_| ended == Ended::Ok)),
        };
        let wrote =
            matches!(op.op, OpKind::Put | OpKind::Create | OpKind::Cas) && ended != Ended::Fail;
        let ttl = op.ttl_ms.filter(|t| *t > 0 && wrote);
        if let Some(ttl) = ttl {
            let ttl_ns = ttl * 1_000_000;
            let opens = (op.call + ttl_ns).saturating_sub(slack_ns);
            // An expiry that surely comes after an overwrite changes nothing; leaving it
            // out keeps the search from trying it at every point of a wide window.
            let moot = ret.is_some_and(|r| overwritten.between(r, opens));
            if !moot {
                timed.push(Timed {
                    op: ModelOp::Expire {
                        value: intern(op.value.as_ref()),
                        may_precede_write: ret.is_none_or(|r| opens <= r),
                    },
                    call: opens,
                    ret: ret.map(|r| r + ttl_ns + slack_ns),
                });
            }
        }
        timed.push(Timed {
            op: ModelOp::Client {
                op: model,
                ttl: ttl.is_some(),
            },
            call: op.call,
            ret,
        });
    }
    if timed.is_empty() {
        return (0, true);
    }
    // Calls before returns at equal times: touching operations count as concurrent,
    // which can only accept more.
    let mut events: Vec<(u64, bool, usize)> = vec![];
    for (i, t) in timed.iter().enumerate() {
        events.push((t.call, false, i));
        events.push((t.ret.unwrap_or(u64::MAX), true, i));
    }
    events.sort_unstable();
    let actions = events
        .into_iter()
        .map(|(_, is_return, i)| {
            let op = timed[i].op.clone();
            (
                i,
                if is_return {
                    Action::Response(op)
                } else {
                    Action::Call(op)
                },
            )
        })
        .collect();
    (
        timed.len(),
        WGLChecker::<KeyModel>::is_linearizable(History::from_actions(actions)),
    )
}

/// The definite overwrites of one key (ok put, create, cas, delete), for finding
/// expiries that cannot matter.
struct Overwrites {
    /// (call, return), by call.
    spans: Vec<(u64, u64)>,
    /// `min_return_from[i]`: the earliest return among `spans[i..]`.
    min_return_from: Vec<u64>,
}

impl Overwrites {
    fn new(ops: &[&Op]) -> Self {
        let mut spans: Vec<(u64, u64)> = ops
            .iter()
            .filter(|o| o.result == Outcome::Ok && o.op != OpKind::Get)
            .filter_map(|o| Some((o.call, o.ret?)))
            .collect();
        spans.sort_unstable();
        let mut min_return_from = vec![u64::MAX; spans.len() + 1];
        for i in (0..spans.len()).rev() {
            min_return_from[i] = min_return_from[i + 1].min(spans[i].1);
        }
        Self {
            spans,
            min_return_from,
        }
    }

    /// Whether some overwrite is called at or after `after` and returns before
    /// `before`: every linearization then places it between the two.
    fn between(&self, after: u64, before: u64) -> bool {
        let first = self.spans.partition_point(|(call, _)| *call < after);
        self.min_return_from[first] < before
    }
}

/// Values that were reported (by a write's answer or a read) with two different
/// versions. Every write's value is unique, so this is one write applied twice.
fn reapplied_values(history: &[Op]) -> Vec<String> {
    let mut seen: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut twice = vec![];
    for op in history {
        let (Outcome::Ok, Some(value), Some(version)) = (op.result, &op.value, op.version) else {
            continue;
        };
        match seen.insert((op.key.as_str(), value.as_str()), version) {
            Some(earlier) if earlier != version => twice.push(format!(
                "key {:?} value {value:?} at versions {earlier} and {version}",
                op.key
            )),
            _ => {}
        }
    }
    twice
}
