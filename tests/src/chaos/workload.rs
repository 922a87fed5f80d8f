//! The clients of a chaos run: workers issuing gets, puts, creates, compare-and-swaps,
//! deletes and short-TTL puts over HTTP, each recorded as one history line.
//!
//! Some puts carry large values (100 KiB to 1 MiB), so that raft sends AppendEntries of
//! several MiB, above all to a follower catching up after a fault. A large value is
//! `{tag}:{len}:` and filler generated from the tag; the history names it `{tag}:{len}`
//! (a line per MiB would make histories of gigabytes), and every read checks the whole
//! value against the generator, so a torn or mixed-up value is recorded under a name no
//! write used and fails its key.
//!
//! Every written value is unique. Writes carry an Idempotency-Key and are retried with it
//! (on another node) after a timeout or a 5xx, so one logical write is one line; some are
//! re-sent on purpose after their answer, and the replay must repeat it. An answer that
//! never arrived makes the line `unknown`, never `fail`.

use std::collections::HashMap;
use std::io::{BufWriter, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::history::{self, Op, OpKind, Outcome};

/// Keys per generation; the last one is the TTL key (written rarely, with a TTL, and
/// read often, so expiries are observed).
const KEYS_PER_GENERATION: u64 = 6;
/// A single request's timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long a write is retried (with its idempotency key) before it is `unknown`.
const WRITE_DEADLINE: Duration = Duration::from_secs(4);
/// The key slot of a generation that takes large values (besides small ones): one slot,
/// so at most one large value per generation outlives it and snapshots stay small
/// enough to be taken every few hundred entries.
const LARGE_SLOT: u64 = 0;
/// Share of the puts on [`LARGE_SLOT`] that carry a large value.
const LARGE_SHARE: f64 = 0.3;
/// Sizes of a large value in bytes, as a JSON string: 100 KiB up to the server's
/// `max_value_bytes` (1 MiB of JSON, two of which are the quotes).
const LARGE_BYTES: std::ops::RangeInclusive<usize> = 100 * 1024..=1024 * 1024 - 2;

/// Filler bytes of a large value, a pseudo-random sequence seeded by its tag (so a
/// chunk of another value in its place does not match).
fn filler(tag: &str) -> impl Iterator<Item = u8> {
    // FNV-1a of the tag, then xorshift64.
    let mut x = tag.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) | 1;
    std::iter::repeat_with(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b'a' + (x % 26) as u8
    })
}

/// The large value of `len` bytes tagged `tag`.
fn large_value(tag: &str, len: usize) -> String {
    let mut v = format!("{tag}:{len}:").into_bytes();
    let head = v.len();
    v.extend(filler(tag).take(len.saturating_sub(head)));
    String::from_utf8(v).expect("filler is ASCII")
}

/// How the history names a value the server returned: a large value by `{tag}:{len}`
/// when every byte is as written, a value that only looks like one by a name no write
/// used, any other value as it is.
pub fn history_value(v: &str) -> String {
    let mut parts = v.splitn(3, ':');
    let (Some(tag), Some(len), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
        return v.to_owned();
    };
    let intact = len.parse::<usize>().is_ok_and(|len| {
        let head = tag.len() + len.to_string().len() + 2;
        v.len() == len.max(head)
            && v.bytes()
                .skip(head)
                .eq(filler(tag).take(len.saturating_sub(head)))
    });
    if intact {
        format!("{tag}:{len}")
    } else {
        let start: String = v.chars().take(40).collect();
        format!("garbled value of {} bytes starting {start:?}", v.len())
    }
}

/// The history being recorded: one monotonic clock, lines streamed to a file and kept
/// in memory for the checker.
pub struct Recorder {
    start: Instant,
    out: Mutex<(BufWriter<std::fs::File>, Vec<Op>)>,
}

impl Recorder {
    /// Records into `path` (created or truncated).
    pub fn create(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::File::create(path)
            .with_context(|| format!("creating history {}", path.display()))?;
        Ok(Self {
            start: Instant::now(),
            out: Mutex::new((BufWriter::new(file), vec![])),
        })
    }

    /// Nanoseconds on the history's clock.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Appends one line.
    pub fn record(&self, op: Op) -> Result<()> {
        let mut out = self.out.lock().expect("recorder lock");
        history::write_line(&mut out.0, &op)?;
        out.1.push(op);
        Ok(())
    }

    /// Flushes the file and returns every line so far.
    pub fn finish(&self) -> Result<Vec<Op>> {
        let mut out = self.out.lock().expect("recorder lock");
        out.0.flush()?;
        Ok(out.1.clone())
    }
}

/// How the workers reach the cluster: plain HTTP without a token, or https trusting the
/// cluster's CA with a token of their own.
#[derive(Default)]
pub struct Access {
    /// The cluster's CA certificate (PEM), when it runs TLS.
    pub ca_pem: Option<Vec<u8>>,
    /// The workers' token, when auth is on.
    pub token: Option<String>,
}

impl Access {
    /// A token for the workers, made by the cluster's admin: write access to every key,
    /// and admin to read `/v1/cluster`; and the cluster's CA.
    pub async fn secure(cluster: &crate::TestCluster) -> Result<Self> {
        let spec = serde_json::json!({
            "name": "chaos-workers",
            "admin": true,
            "grants": [{"prefix": "", "access": "write"}],
        });
        let r = cluster
            .http
            .post(cluster.url(1, "/v1/tokens"))
            .header("content-type", "application/json")
            .body(spec.to_string())
            .send()
            .await?;
        let (status, body) = crate::TestCluster::json(r).await?;
        anyhow::ensure!(
            status == 201,
            "creating the workers' token: {status} {body}"
        );
        let token = body["token"].as_str().map(str::to_owned);
        let ca = cluster
            .tls_dir()
            .ok_or_else(|| anyhow::anyhow!("the cluster has no folder"))?
            .join("ca.pem");
        Ok(Self {
            ca_pem: Some(std::fs::read(ca)?),
            token,
        })
    }
}

/// What the workers share.
pub struct Shared {
    pub recorder: Recorder,
    pub nodes: Vec<SocketAddr>,
    /// `https` with TLS, `http` without.
    pub scheme: &'static str,
    pub http: reqwest::Client,
    /// Prefix of every key and idempotency key of this run.
    pub run_id: String,
    /// Set when the workers must stop.
    pub stop: AtomicBool,
    /// Problems that are not linearizability questions (a replay that differs).
    pub violations: Mutex<Vec<String>>,
    /// Every key any worker used.
    pub keys: Mutex<std::collections::BTreeSet<String>>,
    started: Instant,
    retries: AtomicU64,
    large_writes: AtomicU64,
    large_bytes: AtomicU64,
    /// The shortest TTL written, in seconds.
    ttl_s: u64,
    /// A generation of keys lasts this long, so no key's history grows too long to
    /// check, yet long enough to see the TTL key expire.
    generation: Duration,
}

impl Shared {
    /// Workers' shared state for a cluster whose client addresses are `nodes`. TTLs are
    /// at least a second longer than the checker's `ttl_slack_ms`, so an expiry window
    /// opens after its write returned unless the write was slow: a window that opens
    /// earlier leaves the checker more orders to try.
    pub fn new(
        recorder: Recorder,
        nodes: Vec<SocketAddr>,
        run_id: String,
        ttl_slack_ms: u64,
        access: Access,
    ) -> Result<Self> {
        let ttl_s = 1 + ttl_slack_ms.div_ceil(1000);
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &access.token {
            let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?;
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let mut http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_millis(300))
            .pool_idle_timeout(Duration::from_secs(5))
            .default_headers(headers);
        if let Some(pem) = &access.ca_pem {
            http = http
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(pem)?);
        }
        let scheme = if access.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        Ok(Self {
            recorder,
            nodes,
            scheme,
            http: http.build()?,
            run_id,
            stop: AtomicBool::new(false),
            violations: Mutex::new(vec![]),
            keys: Mutex::new(Default::default()),
            started: Instant::now(),
            retries: AtomicU64::new(0),
            large_writes: AtomicU64::new(0),
            large_bytes: AtomicU64::new(0),
            ttl_s,
            generation: Duration::from_secs(4 * ttl_s),
        })
    }

    /// Writes re-sent on purpose so far.
    pub fn deliberate_retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Large values sent (first attempts) and their bytes.
    pub fn large_values(&self) -> (u64, u64) {
        (
            self.large_writes.load(Ordering::Relaxed),
            self.large_bytes.load(Ordering::Relaxed),
        )
    }

    fn violation(&self, what: String) {
        self.violations.lock().expect("violations lock").push(what);
    }

    fn url(&self, node: usize, key: &str) -> String {
        format!("{}://{}/v1/kv/{key}", self.scheme, self.nodes[node])
    }

    /// A linearizable read of `key` recorded as client `client` (used for the final
    /// reads after healing); returns whether it got an answer.
    pub async fn final_read(&self, client: u64, node: usize, key: &str) -> Result<bool> {
        let op = get(self, client, node, key).await;
        let answered = op.result == Outcome::Ok;
        self.recorder.record(op)?;
        Ok(answered)
    }
}

/// A request's answer, or why there is none.
enum Reply {
    /// Never sent (connection refused): certainly not executed.
    NotSent,
    /// Sent, no usable answer: may have been executed.
    Lost(String),
    Answer {
        status: u16,
        body: Value,
        replayed: bool,
    },
}

async fn send(req: reqwest::RequestBuilder) -> Reply {
    match req.send().await {
        Err(e) if e.is_connect() => Reply::NotSent,
        Err(e) => Reply::Lost(e.to_string()),
        Ok(r) => {
            let status = r.status().as_u16();
            let replayed = r
                .headers()
                .get("idempotency-replayed")
                .is_some_and(|v| v == "true");
            match r.bytes().await {
                Ok(b) => Reply::Answer {
                    status,
                    body: serde_json::from_slice(&b).unwrap_or(Value::Null),
                    replayed,
                },
                Err(e) => Reply::Lost(e.to_string()),
            }
        }
    }
}

fn blank(client: u64, op: OpKind, key: &str, call: u64) -> Op {
    Op {
        client,
        op,
        key: key.to_owned(),
        value: None,
        expected: None,
        expected_version: None,
        ttl_ms: None,
        call,
        ret: None,
        result: Outcome::Unknown,
        found: None,
        version: None,
        note: None,
    }
}

/// One linearizable get at `node`.
async fn get(shared: &Shared, client: u64, node: usize, key: &str) -> Op {
    let mut op = blank(client, OpKind::Get, key, shared.recorder.now());
    let reply = send(shared.http.get(shared.url(node, key))).await;
    op.note = Some(format!("n{}", node + 1));
    match reply {
        Reply::Answer {
            status: 200, body, ..
        } => {
            op.result = Outcome::Ok;
            op.found = Some(true);
            op.value = Some(history_value(&value_text(&body["value"])));
            op.version = body["revision"].as_u64();
        }
        Reply::Answer { status: 404, .. } => {
            op.result = Outcome::Ok;
            op.found = Some(false);
        }
        Reply::Answer { status, .. } => op.note = Some(format!("n{} status {status}", node + 1)),
        Reply::NotSent => op.result = Outcome::Error,
        Reply::Lost(e) => op.note = Some(format!("n{}: {e}", node + 1)),
    }
    op.ret = Some(shared.recorder.now());
    op
}

/// The first few attempts' failures, and how many more there were.
fn summarize(notes: &[String]) -> String {
    let mut s = notes.iter().take(3).cloned().collect::<Vec<_>>().join("; ");
    if notes.len() > 3 {
        s.push_str(&format!("; {} more failed attempts", notes.len() - 3));
    }
    s
}

/// The string a value was written as (every value is a JSON string).
fn value_text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// A write as the worker sends it.
struct WriteReq {
    kind: OpKind,
    key: String,
    /// The value sent.
    value: String,
    /// The value as the history names it (see [`history_value`]).
    name: String,
    ttl_s: Option<u64>,
    /// cas: the revision and value seen.
    expected: Option<(u64, String)>,
}

/// How a write asks to be applied at most once.
enum AtMostOnce<'a> {
    /// An Idempotency-Key.
    Key(&'a str),
    /// Write `seq` of client session `id` (the worker's earlier writes are all done).
    Session { id: &'a str, seq: u64 },
}

impl AtMostOnce<'_> {
    fn name(&self) -> String {
        match self {
            Self::Key(key) => (*key).to_owned(),
            Self::Session { id, seq } => format!("session {id} write {seq}"),
        }
    }
}

impl WriteReq {
    fn request(
        &self,
        shared: &Shared,
        node: usize,
        once: &AtMostOnce<'_>,
    ) -> reqwest::RequestBuilder {
        let mut url = shared.url(node, &self.key);
        if let Some(t) = self.ttl_s {
            url.push_str(&format!("?ttl={t}"));
        }
        let req = if self.kind == OpKind::Delete {
            shared.http.delete(url)
        } else {
            shared
                .http
                .put(url)
                .header("content-type", "application/json")
                .body(Value::String(self.value.clone()).to_string())
        };
        let req = match once {
            AtMostOnce::Key(key) => req.header("idempotency-key", *key),
            AtMostOnce::Session { id, seq } => {
                req.header("kv-session", format!("{id}; seq={seq}; ack={seq}"))
            }
        };
        match (&self.kind, &self.expected) {
            (OpKind::Create, _) => req.header("if-none-match", "*"),
            (OpKind::Cas, Some((rev, _))) => req.header("if-match", format!("\"{rev}\"")),
            _ => req,
        }
    }
}

/// One worker: its own lane (client id), random generator and view of the keys.
pub struct Worker {
    pub id: u64,
    rng: StdRng,
    seq: u64,
    /// Last (value, revision) this worker saw per key, for cas.
    seen: HashMap<String, (String, u64)>,
    /// Odd workers number their writes in a client session, as kv-client does; even
    /// ones send an Idempotency-Key per write.
    uses_session: bool,
    /// The open session and its last write number.
    session: Option<(String, u64)>,
}

impl Worker {
    /// Worker `id`, seeded from the run's seed.
    pub fn new(id: u64, seed: u64) -> Self {
        Self {
            id,
            rng: StdRng::seed_from_u64(seed ^ (id.wrapping_mul(0x9E37_79B9_7F4A_7C15))),
            seq: 0,
            seen: HashMap::new(),
            uses_session: id % 2 == 1,
            session: None,
        }
    }

    /// Opens a client session at any node, trying them in turn until `deadline`.
    async fn open_session(&mut self, shared: &Shared, deadline: Instant) -> Option<String> {
        let mut node = self.rng.gen_range(0..shared.nodes.len());
        while Instant::now() < deadline {
            let url = format!("{}://{}/v1/sessions", shared.scheme, shared.nodes[node]);
            if let Reply::Answer {
                status: 201, body, ..
            } = send(shared.http.post(url)).await
            {
                if let Some(id) = body["session"].as_str() {
                    return Some(id.to_owned());
                }
            }
            node = (node + 1) % shared.nodes.len();
            tokio::time::sleep(Duration::from_millis(self.rng.gen_range(20..80))).await;
        }
        None
    }

    /// Runs operations until `shared.stop` is set.
    pub async fn run(mut self, shared: Arc<Shared>) -> Result<()> {
        while !shared.stop.load(Ordering::Relaxed) {
            self.step(&shared).await?;
        }
        Ok(())
    }

    /// A key of the current generation, and its slot.
    fn pick_key(&mut self, shared: &Shared) -> (String, u64) {
        let generation = shared.started.elapsed().as_nanos() / shared.generation.as_nanos();
        let slot = self.rng.gen_range(0..KEYS_PER_GENERATION);
        let key = format!("{}/g{generation}/k{slot}", shared.run_id);
        shared.keys.lock().expect("keys lock").insert(key.clone());
        (key, slot)
    }

    async fn step(&mut self, shared: &Shared) -> Result<()> {
        self.seq += 1;
        let (key, slot) = self.pick_key(shared);
        let node = self.rng.gen_range(0..shared.nodes.len());
        let value = format!("w{}-{}", self.id, self.seq);
        let roll = self.rng.gen_range(0..100);
        let write = if slot == KEYS_PER_GENERATION - 1 {
            (roll < 8).then(|| WriteReq {
                kind: OpKind::Put,
                key: key.clone(),
                name: value.clone(),
                value,
                ttl_s: Some(shared.ttl_s),
                expected: None,
            })
        } else if slot == LARGE_SLOT && (35..60).contains(&roll) && self.rng.gen_bool(LARGE_SHARE) {
            // Half of them expire, which keeps the state (and so every snapshot) small.
            let len = self.rng.gen_range(LARGE_BYTES);
            shared.large_writes.fetch_add(1, Ordering::Relaxed);
            shared.large_bytes.fetch_add(len as u64, Ordering::Relaxed);
            Some(WriteReq {
                kind: OpKind::Put,
                key: key.clone(),
                name: format!("{value}:{len}"),
                value: large_value(&value, len),
                ttl_s: self
                    .rng
                    .gen_bool(0.5)
                    .then(|| self.rng.gen_range(shared.ttl_s..=shared.ttl_s + 1)),
                expected: None,
            })
        } else {
            let kind = match roll {
                0..35 => None,
                35..60 => Some(OpKind::Put),
                60..70 => Some(OpKind::Create),
                70..88 => self.seen.contains_key(&key).then_some(OpKind::Cas),
                _ => Some(OpKind::Delete),
            };
            kind.map(|kind| WriteReq {
                kind,
                ttl_s: (kind == OpKind::Put && self.rng.gen_bool(0.15))
                    .then(|| self.rng.gen_range(shared.ttl_s..=shared.ttl_s + 1)),
                expected: (kind == OpKind::Cas)
                    .then(|| self.seen.get(&key).map(|(v, r)| (*r, v.clone())))
                    .flatten(),
                key: key.clone(),
                name: value.clone(),
                value,
            })
        };
        let op = match write {
            None => {
                let op = get(shared, self.id, node, &key).await;
                if op.result == Outcome::Ok {
                    match (&op.value, op.version) {
                        (Some(v), Some(r)) => {
                            self.seen.insert(key.clone(), (v.clone(), r));
                        }
                        _ => {
                            self.seen.remove(&key);
                        }
                    }
                }
                op
            }
            Some(w) => self.write(shared, node, w).await,
        };
        if op.result == Outcome::Error && op.op == OpKind::Get {
            // The node is down: don't spin on it.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shared.recorder.record(op)
    }

    async fn write(&mut self, shared: &Shared, first_node: usize, w: WriteReq) -> Op {
        let idem = format!("{}-w{}-{}", shared.run_id, self.id, self.seq);
        let mut op = blank(self.id, w.kind, &w.key, shared.recorder.now());
        let deadline = Instant::now() + WRITE_DEADLINE;
        if self.uses_session && self.session.is_none() {
            self.session = self.open_session(shared, deadline).await.map(|id| (id, 0));
        }
        let session = self.session.as_mut().map(|(id, seq)| {
            *seq += 1;
            (id.clone(), *seq)
        });
        let once = match &session {
            Some((id, seq)) => AtMostOnce::Session { id, seq: *seq },
            None if self.uses_session => {
                // No session could be opened: nothing was sent.
                op.result = Outcome::Error;
                op.note = Some("no session could be opened".into());
                op.ret = Some(shared.recorder.now());
                return op;
            }
            None => AtMostOnce::Key(&idem),
        };
        if w.kind != OpKind::Delete {
            op.value = Some(w.name.clone());
        }
        op.ttl_ms = w.ttl_s.map(|s| s * 1000);
        if let Some((rev, v)) = &w.expected {
            op.expected_version = Some(*rev);
            op.expected = Some(v.clone());
        }
        let mut maybe_applied = false;
        let mut node = first_node;
        let mut notes = vec![];
        let answer = loop {
            match send(w.request(shared, node, &once)).await {
                Reply::Answer {
                    status,
                    body,
                    replayed,
                } if status < 500 => break Some((status, body, replayed)),
                Reply::Answer { status, body, .. } => {
                    maybe_applied = true;
                    notes.push(format!(
                        "n{} {status} {}",
                        node + 1,
                        body["error"]["code"].as_str().unwrap_or("")
                    ));
                }
                Reply::Lost(e) => {
                    maybe_applied = true;
                    notes.push(format!("n{} lost: {e}", node + 1));
                }
                Reply::NotSent => notes.push(format!("n{} refused", node + 1)),
            }
            if Instant::now() >= deadline {
                break None;
            }
            node = (node + 1) % shared.nodes.len();
            tokio::time::sleep(Duration::from_millis(self.rng.gen_range(20..80))).await;
        };
        let Some((status, body, _)) = answer else {
            op.result = if maybe_applied {
                Outcome::Unknown
            } else {
                Outcome::Error
            };
            op.note = Some(summarize(&notes));
            if op.result == Outcome::Error {
                op.ret = Some(shared.recorder.now());
            }
            return op;
        };
        self.classify(shared, &mut op, status, &body);
        // Sometimes send the same write again on purpose: the replay must repeat the
        // answer and change nothing.
        if self.rng.gen_bool(0.1) && op.result != Outcome::Error {
            shared.retries.fetch_add(1, Ordering::Relaxed);
            let again = self.rng.gen_range(0..shared.nodes.len());
            if let Reply::Answer {
                status: s2,
                body: b2,
                replayed,
            } = send(w.request(shared, again, &once)).await
            {
                let same = s2 == status && b2["revision"] == body["revision"];
                if s2 < 500 && (!same || !replayed) {
                    shared.violation(format!(
                        "replay of {} on n{} answered {s2} {b2} (replayed: {replayed}), the original {status} {body}",
                        once.name(),
                        again + 1
                    ));
                }
            }
        }
        op.ret = Some(shared.recorder.now());
        if !notes.is_empty() {
            op.note = Some(summarize(&notes));
        }
        op
    }

    /// Fills in a write's outcome from its definitive answer.
    fn classify(&mut self, shared: &Shared, op: &mut Op, status: u16, body: &Value) {
        match (op.op, status) {
            (OpKind::Put | OpKind::Create | OpKind::Cas, 200 | 201) => {
                op.result = Outcome::Ok;
                op.version = body["revision"].as_u64();
                if let (Some(v), Some(r)) = (&op.value, op.version) {
                    self.seen.insert(op.key.clone(), (v.clone(), r));
                }
            }
            (OpKind::Delete, 200) => {
                op.result = Outcome::Ok;
                op.found = body["deleted"].as_bool();
                self.seen.remove(&op.key);
            }
            (OpKind::Create | OpKind::Cas, 412) => {
                op.result = Outcome::Fail;
                let current = &body["current"];
                if current.is_object() {
                    self.seen.insert(
                        op.key.clone(),
                        (
                            history_value(&value_text(&current["value"])),
                            current["revision"].as_u64().unwrap_or(0),
                        ),
                    );
                } else {
                    self.seen.remove(&op.key);
                }
            }
            _ => {
                // A refusal the workload never provokes (a 422 idempotency_key_reused would
                // mean a fingerprint that is not stable, a 422 session_expired a session
                // lost while open): nothing was applied by this answer, but the run fails.
                op.result = Outcome::Error;
                shared.violation(format!(
                    "{:?} of {} answered {status} {body}",
                    op.op, op.key
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_value_is_named_by_tag_and_length_when_intact() {
        let v = large_value("w3-17", 200_000);
        assert_eq!(v.len(), 200_000);
        assert_eq!(history_value(&v), "w3-17:200000");
        assert_eq!(history_value("w3-18"), "w3-18");
    }

    #[test]
    fn a_torn_or_mixed_up_large_value_gets_a_name_no_write_used() {
        let v = large_value("w3-17", 200_000);
        let torn = &v[..150_000];
        assert!(history_value(torn).starts_with("garbled"));
        // The same length and head, but another value's filler.
        let other = large_value("w3-19", 200_000);
        let mixed = format!("{}{}", &v[..100_000], &other[100_000..]);
        assert!(history_value(&mixed).starts_with("garbled"));
        let mut flipped = v.into_bytes();
        flipped[123_456] = b'!';
        let flipped = String::from_utf8(flipped).expect("ASCII");
        assert!(history_value(&flipped).starts_with("garbled"));
    }
}
