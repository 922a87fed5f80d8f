//! The linearizability checker: the shared test vectors, hand-made TTL and version
//! cases, and histories of a simulated store with and without injected bugs.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::PathBuf;

use kv_tests::checker::{check, CheckOptions};
use kv_tests::history::{self, Op, OpKind, Outcome};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The vectors beside this test. The path is taken when the test runs (cargo sets
/// CARGO_MANIFEST_DIR then too), not when it was compiled: a binary built from another
/// checkout sharing the target directory must still read this checkout's files.
fn histories_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("histories")
}

fn verdict_of(text: &str) -> bool {
    check(
        &history::parse(text).expect("valid history"),
        CheckOptions::default(),
    )
    .ok()
}

#[test]
fn accepts_every_ok_vector_and_rejects_every_bad_one() {
    let mut seen = (0, 0);
    for entry in std::fs::read_dir(histories_dir()).expect("tests/histories") {
        let path = entry.expect("dir entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let ops = history::read(&path).expect("vector parses");
        let verdict = check(&ops, CheckOptions::default());
        if name.starts_with("ok-") {
            assert!(verdict.ok(), "{name} is linearizable but was rejected");
            seen.0 += 1;
        } else if name.starts_with("bad-") {
            assert!(!verdict.ok(), "{name} is not linearizable but was accepted");
            seen.1 += 1;
        }
    }
    assert!(seen.0 >= 3 && seen.1 >= 7, "vectors found: {seen:?}");
}

#[test]
fn rejects_unknown_fields_and_inconsistent_lines() {
    let good = r#"{"client":0,"op":"put","key":"x","value":"a","call":1,"return":2,"result":"ok"}"#;
    assert!(history::parse(good).is_ok());
    for bad in [
        r#"{"client":0,"op":"put","key":"x","value":"a","call":1,"return":2,"result":"ok","extra":1}"#,
        r#"{"client":0,"op":"put","key":"x","call":1,"return":2,"result":"ok"}"#,
        r#"{"client":0,"op":"get","key":"x","call":1,"return":2,"result":"ok"}"#,
        r#"{"client":0,"op":"cas","key":"x","value":"b","call":1,"return":2,"result":"ok"}"#,
        r#"{"client":0,"op":"put","key":"x","value":"a","call":1,"result":"ok"}"#,
        r#"{"client":0,"op":"put","key":"x","value":"a","call":5,"return":2,"result":"ok"}"#,
        r#"{"client":0,"op":"scan","key":"x","call":1,"return":2,"result":"ok"}"#,
        r#"{"client":0,"op":"put","key":"x","value":"a","call":1,"return":2,"result":"maybe"}"#,
    ] {
        assert!(history::parse(bad).is_err(), "accepted: {bad}");
    }
    let aliases = r#"{"client":0,"op":"put","key":"x","value":"a","call":1,"result":"timeout"}
{"client":0,"op":"put","key":"x","value":"b","call":1,"result":"info"}
{"client":0,"op":"put","key":"x","value":"c","call":1,"result":"indeterminate"}"#;
    let ops = history::parse(aliases).expect("aliases of unknown");
    assert!(ops.iter().all(|o| o.result == Outcome::Unknown));
}

const MS: u64 = 1_000_000;

/// A put of `v` with a 1000 ms TTL over [0, 10 ms], then a get at `[at, at + 1 ms]`.
fn ttl_case(at_ms: u64, found: bool) -> bool {
    let get = if found {
        r#""found":true,"value":"v""#
    } else {
        r#""found":false"#
    };
    verdict_of(&format!(
        r#"{{"client":0,"op":"put","key":"k","value":"v","ttl_ms":1000,"call":0,"return":{},"result":"ok"}}
{{"client":1,"op":"get","key":"k","call":{},"return":{},"result":"ok",{get}}}"#,
        10 * MS,
        at_ms * MS,
        (at_ms + 1) * MS
    ))
}

#[test]
fn ttl_expiry_is_checked_against_its_window() {
    // The window is [0 + 1000 - 250, 10 + 1000 + 250] ms.
    assert!(ttl_case(500, true));
    assert!(!ttl_case(500, false), "absent before the window opens");
    assert!(ttl_case(1000, true));
    assert!(ttl_case(1000, false));
    assert!(!ttl_case(1300, true), "present after the window closed");
    assert!(ttl_case(1300, false));
    // Once seen absent, it stays absent until the next write.
    let flip = format!(
        r#"{{"client":0,"op":"put","key":"k","value":"v","ttl_ms":1000,"call":0,"return":{},"result":"ok"}}
{{"client":1,"op":"get","key":"k","call":{},"return":{},"result":"ok","found":false}}
{{"client":1,"op":"get","key":"k","call":{},"return":{},"result":"ok","found":true,"value":"v"}}"#,
        10 * MS,
        900 * MS,
        901 * MS,
        950 * MS,
        951 * MS
    );
    assert!(!verdict_of(&flip));
    // An overwrite without TTL is not expired by the earlier write's TTL.
    let overwritten = format!(
        r#"{{"client":0,"op":"put","key":"k","value":"v","ttl_ms":1000,"call":0,"return":{},"result":"ok"}}
{{"client":0,"op":"put","key":"k","value":"w","call":{},"return":{},"result":"ok"}}
{{"client":1,"op":"get","key":"k","call":{},"return":{},"result":"ok","found":true,"value":"w"}}"#,
        10 * MS,
        20 * MS,
        30 * MS,
        5000 * MS,
        5001 * MS
    );
    assert!(verdict_of(&overwritten));
}

/// A put with `ttl_ms` over `[0, write_ms]`, then a get at `[at, at + 1 ms]` that sees
/// the value, checked with `slack_ms`.
fn late_read_accepted(ttl_ms: u64, write_ms: u64, at_ms: u64, slack_ms: u64) -> bool {
    let text = format!(
        r#"{{"client":0,"op":"put","key":"k","value":"v","ttl_ms":{ttl_ms},"call":0,"return":{},"result":"ok"}}
{{"client":1,"op":"get","key":"k","call":{},"return":{},"result":"ok","found":true,"value":"v"}}"#,
        write_ms * MS,
        at_ms * MS,
        (at_ms + 1) * MS
    );
    let ops = history::parse(&text).expect("valid");
    check(
        &ops,
        CheckOptions {
            ttl_slack_ms: slack_ms,
        },
    )
    .ok()
}

#[test]
fn expiry_windows_that_open_before_the_write_returns_still_close() {
    // The window opens at call + ttl - slack, before the write returned (a slow write, or
    // a slack as large as the TTL): the expiry may not be placed before the write and
    // thereby never happen.
    assert!(late_read_accepted(100, 500, 700, 250));
    assert!(!late_read_accepted(100, 500, 900, 250));
    assert!(late_read_accepted(1000, 9, 1500, 1000));
    assert!(!late_read_accepted(1000, 9, 3200, 1000));
    // An unknown TTL write that shows up may expire (its window never closes: its\n    // answer, the window's end, never came).
    let unknown = format!(
        r#"{{"client":0,"op":"put","key":"k","value":"v","ttl_ms":1000,"call":0,"result":"unknown"}}
{{"client":1,"op":"get","key":"k","call":{},"return":{},"result":"ok","found":true,"value":"v"}}
{{"client":1,"op":"get","key":"k","call":{},"return":{},"result":"ok","found":false}}"#,
        100 * MS,
        101 * MS,
        2000 * MS,
        2001 * MS
    );
    assert!(verdict_of(&unknown));
    // Seen absent before its window opens (call + 1000 - 250 ms): too early.
    let too_early = unknown
        .replace(&format!("{}", 2000 * MS), &format!("{}", 500 * MS))
        .replace(&format!("{}", 2001 * MS), &format!("{}", 501 * MS));
    assert!(!verdict_of(&too_early));
}

#[test]
fn versions_revealed_late_and_cas_on_unknown_versions() {
    // An unknown put's version is learnt from a read; a cas on a stale version must fail.
    let h = r#"{"client":0,"op":"put","key":"k","value":"a","call":10,"return":20,"result":"ok","version":3}
{"client":1,"op":"put","key":"k","value":"b","call":30,"result":"unknown"}
{"client":2,"op":"get","key":"k","call":40,"return":50,"result":"ok","found":true,"value":"b","version":8}
{"client":2,"op":"cas","key":"k","expected":"a","expected_version":3,"value":"c","call":60,"return":70,"result":"fail"}
{"client":2,"op":"cas","key":"k","expected":"b","expected_version":8,"value":"d","call":80,"return":90,"result":"ok","version":9}"#;
    assert!(verdict_of(h));
    let read_older_version = h.replace(r#""version":8"#, r#""version":2"#);
    assert!(!verdict_of(&read_older_version));
    let cas_succeeds_on_stale = h.replace(
        r#""value":"c","call":60,"return":70,"result":"fail""#,
        r#""value":"c","call":60,"return":70,"result":"ok""#,
    );
    assert!(!verdict_of(&cas_succeeds_on_stale));
    // The same value read at two versions: one write applied twice.
    let twice = r#"{"client":0,"op":"put","key":"k","value":"a","call":10,"return":20,"result":"ok","version":3}
{"client":1,"op":"get","key":"k","call":30,"return":40,"result":"ok","found":true,"value":"a","version":5}"#;
    let ops = history::parse(twice).expect("valid");
    let verdict = check(&ops, CheckOptions::default());
    assert_eq!(verdict.reapplied.len(), 1);
    assert!(!verdict.ok());
}

// ---- A simulated store, correct or with one injected bug ----

/// The TTL slack the simulated histories are checked with (its clock is exact).
const SIM_SLACK_MS: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    None,
    /// A read sometimes answers from the key's state before its last write.
    StaleRead,
    /// An acknowledged put is sometimes not applied.
    LostWrite,
    /// A retried put is sometimes applied again when the retry arrives.
    DoubleAppliedRetry,
    /// Keys stay readable twice the checker's slack after their TTL.
    LongTtl,
}

#[derive(Debug, Clone)]
struct Stored {
    value: String,
    version: u64,
    expires_at: Option<u64>,
}

/// One client operation in flight.
#[derive(Debug, Clone)]
struct Flight {
    op: Op,
    /// The result as the client will see it.
    answered: bool,
    /// When the retry of a retried put arrives (it is applied again under DoubleApply).
    retry_at: Option<u64>,
}

#[derive(Debug)]
enum Event {
    Call(u64),
    Apply(usize),
    Retry(usize),
    Return(usize),
}

struct Sim {
    rng: StdRng,
    bug: Bug,
    store: HashMap<String, Stored>,
    /// Each key's state before its last write, for stale reads.
    previous: HashMap<String, Option<Stored>>,
    version: u64,
    flights: Vec<Flight>,
    /// What each client last saw of each key: (value, version).
    seen: HashMap<(u64, String), (String, u64)>,
    ops_started: u64,
}

impl Sim {
    fn live(&self, key: &str, now: u64) -> Option<Stored> {
        let grace = if self.bug == Bug::LongTtl {
            SIM_SLACK_MS * 2
        } else {
            0
        };
        self.store
            .get(key)
            .filter(|s| s.expires_at.is_none_or(|e| now < e + grace))
            .cloned()
    }

    fn write(&mut self, key: &str, value: &str, ttl: Option<u64>, now: u64) -> u64 {
        let before = self.live(key, now);
        self.previous.insert(key.to_owned(), before);
        self.version += 1;
        self.store.insert(
            key.to_owned(),
            Stored {
                value: value.to_owned(),
                version: self.version,
                expires_at: ttl.map(|t| now + t),
            },
        );
        self.version
    }

    fn new_op(&mut self, client: u64, now: u64) -> Flight {
        self.ops_started += 1;
        // Three keys written often, and one written rarely with a TTL and read often,
        // so expiries are observed.
        let slot = self.rng.gen_range(0..4);
        let key = format!("g{}-k{slot}", self.ops_started / 150);
        let value = format!("c{client}-{}", self.ops_started);
        let mut op = Op {
            client,
            op: OpKind::Get,
            key: key.clone(),
            value: None,
            expected: None,
            expected_version: None,
            ttl_ms: None,
            call: now * MS,
            ret: None,
            result: Outcome::Ok,
            found: None,
            version: None,
            note: None,
        };
        let roll = self.rng.gen_range(0..100);
        let seen = self.seen.get(&(client, key)).cloned();
        match (roll, seen) {
            _ if slot == 3 => {
                if roll < 10 {
                    op.op = OpKind::Put;
                    op.value = Some(value);
                    op.ttl_ms = Some(self.rng.gen_range(30..80));
                }
            }
            (0..40, _) => {}
            (40..65, _) => {
                op.op = OpKind::Put;
                op.value = Some(value);
                if self.rng.gen_bool(0.2) {
                    op.ttl_ms = Some(self.rng.gen_range(30..80));
                }
            }
            (65..75, _) => {
                op.op = OpKind::Create;
                op.value = Some(value);
            }
            (75..90, Some((expected, version))) => {
                op.op = OpKind::Cas;
                op.value = Some(value);
                op.expected = Some(expected);
                op.expected_version = Some(version);
            }
            (75..90, None) => {}
            _ => op.op = OpKind::Delete,
        }
        let retry_at = (op.op == OpKind::Put && self.rng.gen_bool(0.1))
            .then(|| now + self.rng.gen_range(30..60));
        Flight {
            op,
            answered: true,
            retry_at,
        }
    }

    /// Applies flight `i` at `now`, filling in its answer.
    fn apply(&mut self, i: usize, now: u64) {
        let mut op = self.flights[i].op.clone();
        let unknown = op.op != OpKind::Get && self.rng.gen_bool(0.03);
        if unknown && self.rng.gen_bool(0.5) {
            // Lost in flight before it reached the store.
            op.result = Outcome::Unknown;
            self.flights[i].op = op;
            self.flights[i].answered = false;
            return;
        }
        let current = self.live(&op.key, now);
        match op.op {
            OpKind::Get => {
                let shown = if self.bug == Bug::StaleRead && self.rng.gen_bool(0.3) {
                    self.previous.get(&op.key).cloned().flatten()
                } else {
                    current
                };
                op.found = Some(shown.is_some());
                if let Some(s) = shown {
                    op.value = Some(s.value);
                    op.version = Some(s.version);
                }
            }
            OpKind::Put => {
                if self.bug == Bug::LostWrite && self.rng.gen_bool(0.1) {
                    self.version += 1;
                    op.version = Some(self.version);
                } else {
                    let value = op.value.clone().unwrap_or_default();
                    op.version = Some(self.write(&op.key, &value, op.ttl_ms, now));
                }
            }
            OpKind::Create => {
                if current.is_none() {
                    let value = op.value.clone().unwrap_or_default();
                    op.version = Some(self.write(&op.key, &value, None, now));
                } else {
                    op.result = Outcome::Fail;
                }
            }
            OpKind::Cas => {
                if current.is_some_and(|c| Some(c.version) == op.expected_version) {
                    let value = op.value.clone().unwrap_or_default();
                    op.version = Some(self.write(&op.key, &value, None, now));
                } else {
                    op.result = Outcome::Fail;
                }
            }
            OpKind::Delete => {
                op.found = Some(current.is_some());
                let before = self.live(&op.key, now);
                self.previous.insert(op.key.clone(), before);
                self.store.remove(&op.key);
            }
        }
        if unknown {
            // Applied, but the answer never arrived.
            op.result = Outcome::Unknown;
            op.found = None;
            op.version = None;
            self.flights[i].answered = false;
        }
        self.flights[i].op = op;
    }

    fn retry(&mut self, i: usize, now: u64) {
        let op = self.flights[i].op.clone();
        if self.bug == Bug::DoubleAppliedRetry && op.result == Outcome::Ok {
            let value = op.value.clone().unwrap_or_default();
            self.write(&op.key, &value, op.ttl_ms, now);
        }
    }

    fn observe(&mut self, op: &Op) {
        let (Outcome::Ok, Some(value), Some(version)) = (op.result, &op.value, op.version) else {
            return;
        };
        self.seen
            .insert((op.client, op.key.clone()), (value.clone(), version));
    }
}

/// Runs 4 clients for 500 operations each against the simulated store.
fn simulate(bug: Bug, seed: u64) -> Vec<Op> {
    let mut sim = Sim {
        rng: StdRng::seed_from_u64(seed),
        bug,
        store: HashMap::new(),
        previous: HashMap::new(),
        version: 0,
        flights: vec![],
        seen: HashMap::new(),
        ops_started: 0,
    };
    let mut queue = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |queue: &mut BinaryHeap<_>, at: u64, e: Event| {
        seq += 1;
        queue.push(Reverse((at, seq, EventBox(e))));
    };
    let clients = 4;
    let mut remaining = vec![500; clients as usize];
    for c in 0..clients {
        push(&mut queue, c, Event::Call(c));
    }
    let mut history = vec![];
    while let Some(Reverse((now, _, EventBox(event)))) = queue.pop() {
        match event {
            Event::Call(c) => {
                if remaining[c as usize] == 0 {
                    continue;
                }
                remaining[c as usize] -= 1;
                let flight = sim.new_op(c, now);
                sim.flights.push(flight);
                let i = sim.flights.len() - 1;
                let apply_at = now + sim.rng.gen_range(1..10);
                push(&mut queue, apply_at, Event::Apply(i));
            }
            Event::Apply(i) => {
                sim.apply(i, now);
                let mut end = now + sim.rng.gen_range(1..10);
                if let Some(at) = sim.flights[i].retry_at {
                    let at = at.max(now + 1);
                    push(&mut queue, at, Event::Retry(i));
                    end = at + 1;
                }
                push(&mut queue, end, Event::Return(i));
            }
            Event::Retry(i) => sim.retry(i, now),
            Event::Return(i) => {
                let mut op = sim.flights[i].op.clone();
                if sim.flights[i].answered {
                    op.ret = Some(now * MS);
                    sim.observe(&op);
                }
                let client = op.client;
                history.push(op);
                let next = now + sim.rng.gen_range(0..5);
                push(&mut queue, next, Event::Call(client));
            }
        }
    }
    history
}

/// Events are ordered by time and sequence only.
struct EventBox(Event);

impl PartialEq for EventBox {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for EventBox {}
impl PartialOrd for EventBox {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for EventBox {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

fn simulated_verdicts(bug: Bug) -> Vec<bool> {
    (0..6)
        .map(|seed| {
            let ops = simulate(bug, seed);
            // Round-trip through the file format, as the chaos suite does.
            let mut text = vec![];
            for op in &ops {
                history::write_line(&mut text, op).expect("write");
            }
            let parsed = history::parse(&String::from_utf8(text).expect("utf8")).expect("parse");
            assert_eq!(parsed, ops);
            // The simulation's clock is exact: a small slack checks expiry tightly.
            let options = CheckOptions {
                ttl_slack_ms: SIM_SLACK_MS,
            };
            check(&parsed, options).ok()
        })
        .collect()
}

#[test]
fn simulated_correct_store_is_linearizable() {
    let verdicts = simulated_verdicts(Bug::None);
    assert!(verdicts.iter().all(|ok| *ok), "false alarms: {verdicts:?}");
}

#[test]
fn simulated_stale_reads_are_caught() {
    let verdicts = simulated_verdicts(Bug::StaleRead);
    assert!(verdicts.iter().all(|ok| !ok), "missed: {verdicts:?}");
}

#[test]
fn simulated_lost_writes_are_caught() {
    let verdicts = simulated_verdicts(Bug::LostWrite);
    assert!(verdicts.iter().all(|ok| !ok), "missed: {verdicts:?}");
}

#[test]
fn simulated_double_applied_retries_are_caught() {
    let verdicts = simulated_verdicts(Bug::DoubleAppliedRetry);
    assert!(verdicts.iter().all(|ok| !ok), "missed: {verdicts:?}");
}

#[test]
fn simulated_ttl_honoured_too_long_is_caught() {
    let verdicts = simulated_verdicts(Bug::LongTtl);
    assert!(verdicts.iter().all(|ok| !ok), "missed: {verdicts:?}");
}
