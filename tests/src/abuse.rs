//! The hostile-traffic suite: each pattern of traffic that used to exhaust a node, run
//! against a fresh local cluster while a well-behaved client keeps writing. For each,
//! every node's resident memory is sampled and must stay under the pattern's bound, the
//! well-behaved writes must all succeed (their p99 is reported), and the replicas must
//! end with one state digest. `scripts/abuse.sh` runs the full sizes; the test target
//! `abuse` runs small ones.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kv_client::{KvClient, SetOptions};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

use crate::{TestCluster, Tuning};

/// How big the patterns are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Seconds each, for every `scripts/test.sh`.
    Short,
    /// The sizes the README's table reports.
    Full,
}

impl Scale {
    fn pick<T>(self, short: T, full: T) -> T {
        match self {
            Self::Short => short,
            Self::Full => full,
        }
    }
}

/// What one pattern did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub pattern: &'static str,
    /// The bound the node enforced, in words.
    pub limit: String,
    /// What the pattern sent and what it saw.
    pub detail: String,
    /// The largest resident memory of any node while it ran, MiB.
    pub peak_rss_mib: u64,
    /// The bound that peak must stay under, MiB.
    pub rss_bound_mib: u64,
    /// Well-behaved writes done, failed, and their p99 latency.
    pub calm_writes: usize,
    pub calm_failures: usize,
    pub calm_p99: Duration,
}

impl Outcome {
    fn check(&self) -> Result<()> {
        ensure!(
            self.peak_rss_mib < self.rss_bound_mib,
            "{}: a node's RSS reached {} MiB, over the {} MiB bound",
            self.pattern,
            self.peak_rss_mib,
            self.rss_bound_mib
        );
        ensure!(
            self.calm_failures == 0 && self.calm_writes > 0,
            "{}: {} of {} well-behaved writes failed",
            self.pattern,
            self.calm_failures,
            self.calm_writes + self.calm_failures
        );
        Ok(())
    }
}

/// Every pattern's outcome.
pub struct Report(pub Vec<Outcome>);

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "| pattern | limit | what happened | peak RSS of a node (bound) | concurrent writer: writes, failures, p99 |"
        )?;
        writeln!(f, "|---|---|---|---|---|")?;
        for o in &self.0 {
            writeln!(
                f,
                "| {} | {} | {} | {} MiB ({} MiB) | {}, {}, {} ms |",
                o.pattern,
                o.limit,
                o.detail,
                o.peak_rss_mib,
                o.rss_bound_mib,
                o.calm_writes,
                o.calm_failures,
                o.calm_p99.as_millis()
            )?;
        }
        Ok(())
    }
}

/// Samples every node's VmRSS until stopped; the largest, in KiB.
struct RssSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl RssSampler {
    fn start(c: &TestCluster) -> Self {
        let pids: Vec<u32> = c.nodes.iter().filter_map(|n| c.pid(n.id)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                for pid in &pids {
                    peak = peak.max(rss_kib(*pid).unwrap_or(0));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        });
        Self { stop, task }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or(0) / 1024
    }
}

/// A well-behaved client: four writers rewriting 64 small keys (so the stored data does
/// not grow) through kv-client, for as long as a pattern runs.
struct CalmWriter {
    stop: Arc<AtomicBool>,
    tasks: JoinSet<(Vec<Duration>, usize)>,
}

impl CalmWriter {
    fn start(client: &KvClient) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        for w in 0..4u64 {
            let (client, stop) = (client.clone(), stop.clone());
            tasks.spawn(async move {
                let (mut latencies, mut failures) = (Vec::new(), 0);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("calm/{:02}", (w * 16 + i % 16));
                    let started = Instant::now();
                    match client
                        .set(&key, &"x".repeat(100), SetOptions::default())
                        .await
                    {
                        Ok(_) => latencies.push(started.elapsed()),
                        Err(e) => {
                            eprintln!("well-behaved write {key} failed: {e}");
                            failures += 1;
                        }
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (latencies, failures)
            });
        }
        Self { stop, tasks }
    }

    async fn stop(self) -> (usize, usize, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut all, mut failures) = (Vec::new(), 0);
        for (latencies, failed) in self.tasks.join_all().await {
            all.extend(latencies);
            failures += failed;
        }
        all.sort();
        let p99 = all
            .get((all.len() * 99 / 100).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default();
        (all.len(), failures, p99)
    }
}

/// Runs `pattern` under the RSS sampler and the calm writer, and checks convergence.
async fn measured<F, Fut>(
    c: &TestCluster,
    client: &KvClient,
    pattern: &'static str,
    rss_bound_mib: u64,
    run: F,
) -> Result<Outcome>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(String, String)>>,
{
    println!("abuse: {pattern}");
    let rss = RssSampler::start(c);
    let calm = CalmWriter::start(client);
    let ran = run().await;
    let (calm_writes, calm_failures, calm_p99) = calm.stop().await;
    let peak_rss_mib = rss.stop().await;
    let (limit, detail) = ran.with_context(|| format!("pattern {pattern}"))?;
    converged(c)
        .await
        .with_context(|| format!("after {pattern}"))?;
    let outcome = Outcome {
        pattern,
        limit,
        detail,
        peak_rss_mib,
        rss_bound_mib,
        calm_writes,
        calm_failures,
        calm_p99,
    };
    println!("  {outcome:?}");
    outcome.check()?;
    Ok(outcome)
}

/// Waits until every node reports the same applied index and digest.
async fn converged(c: &TestCluster) -> Result<()> {
    c.poll("every node to report one digest", || async {
        let mut seen = Vec::new();
        for n in &c.nodes {
            let (status, d) = c.get_json(n.id, "/v1/admin/digest").await?;
            if status != 200 {
                return Ok(false);
            }
            seen.push((d["applied_index"].clone(), d["digest"].clone()));
        }
        Ok(seen.iter().all(|s| *s == seen[0]))
    })
    .await
}

/// Writes `n` keys `prefix/00000000…` of `value_len` bytes each from `concurrency` tasks.
async fn fill(
    client: &KvClient,
    prefix: &str,
    n: usize,
    value_len: usize,
    concurrency: usize,
) -> Result<()> {
    let value = "v".repeat(value_len);
    let mut tasks = JoinSet::new();
    for t in 0..concurrency {
        let (client, value, prefix) = (client.clone(), value.clone(), prefix.to_owned());
        tasks.spawn(async move {
            for i in (t..n).step_by(concurrency) {
                client
                    .set(&format!("{prefix}/{i:08}"), &value, SetOptions::default())
                    .await
                    .with_context(|| format!("writing {prefix}/{i:08}"))?;
            }
            anyhow::Ok(())
        });
    }
    for result in tasks.join_all().await {
        result?;
    }
    Ok(())
}

/// Large values listed in full pages from many readers at once, through followers too.
async fn large_pages(c: &TestCluster, client: &KvClient, scale: Scale) -> Result<Outcome> {
    let (n, value_len) = scale.pick((24, 512 * 1024), (256, 1024 * 1024 - 2));
    fill(client, "big", n, value_len, 8).await?;
    measured(c, client, "list pages of large values", 700, || async {
        let until = Instant::now() + scale.pick(Duration::from_secs(3), Duration::from_secs(20));
        let mut readers = JoinSet::new();
        for r in 0..8u64 {
            let http = c.http.clone();
            let url = c.url(1 + r % 3, "/v1/kv?prefix=big/&limit=1000");
            let url = if r % 2 == 0 {
                url
            } else {
                format!("{url}&keys_only=true")
            };
            readers.spawn(async move {
                let (mut pages, mut most) = (0usize, 0usize);
                while Instant::now() < until {
                    let body = http.get(&url).send().await?.bytes().await?;
                    let page: Value = serde_json::from_slice(&body)?;
                    ensure!(page["items"].is_array(), "{page}");
                    most = most.max(body.len());
                    pages += 1;
                }
                anyhow::Ok((pages, most))
            });
        }
        let (mut pages, mut largest) = (0, 0);
        for result in readers.join_all().await {
            let (p, most) = result?;
            pages += p;
            largest = largest.max(most);
        }
        ensure!(largest <= 5 << 20, "a page of {largest} bytes");
        // The large values go, so later patterns' snapshots (built in memory) are theirs.
        let r = c.http.delete(c.url(1, "/v1/kv?prefix=big/")).send().await?;
        ensure!(
            r.status() == 200,
            "deleting the large values: {}",
            r.status()
        );
        Ok((
            "a page ends before 4 MiB of keys and values".into(),
            format!(
                "{n} values of {} KiB; 8 readers fetched {pages} pages, the largest {} KiB",
                value_len >> 10,
                largest >> 10
            ),
        ))
    })
    .await
}

/// Many writes from kv-client, which leave no record per write; then a prefix delete
/// of all of them, which answers at once and is purged in the background.
async fn writes_then_prefix_delete(
    c: &TestCluster,
    client: &KvClient,
    scale: Scale,
) -> Result<Vec<Outcome>> {
    let n = scale.pick(20_000, 1_000_000);
    // Snapshots of the state are built in memory (about 130 MB with a million keys).
    let writes = measured(c, client, "kv-client writes", 500, || async {
        let started = Instant::now();
        fill(client, "bulk", n, 16, 64).await?;
        let elapsed = started.elapsed();
        let (_, d) = c.get_json(1, "/v1/admin/digest").await?;
        ensure!(
            d["records"] == 0 && d["sessions"].as_u64().is_some_and(|s| s <= 4),
            "records left by kv-client's writes: {d}"
        );
        Ok((
            "one session per client, its answers only while in flight (at most 256)".into(),
            format!(
                "{n} writes in {:.0} s from 64 tasks; then {} idempotency records, {} sessions",
                elapsed.as_secs_f64(),
                d["records"],
                d["sessions"]
            ),
        ))
    })
    .await?;
    let delete = measured(c, client, "prefix delete", 500, || async {
        let started = Instant::now();
        let r = c
            .http
            .delete(c.url(2, "/v1/kv?prefix=bulk/"))
            .send()
            .await?;
        let (status, body) = TestCluster::json(r).await?;
        ensure!(status == 200, "{status} {body}");
        let answered = started.elapsed();
        let (_, listed) = c.get_json(3, "/v1/kv?prefix=bulk/&limit=1").await?;
        ensure!(listed["items"] == Value::Array(vec![]), "{listed}");
        c.poll("the purge to finish", || async {
            let (_, d) = c.get_json(1, "/v1/admin/digest").await?;
            Ok(d["keys"].as_u64().is_some_and(|k| k < 1000))
        })
        .await?;
        Ok((
            "1000 keys removed per replicated command".into(),
            format!(
                "{n} keys: answered in {} ms, all purged after {:.1} s",
                answered.as_millis(),
                started.elapsed().as_secs_f64()
            ),
        ))
    })
    .await?;
    Ok(vec![writes, delete])
}

/// Idle, slow-head and slow-body connections from one address, past its cap.
async fn connection_flood(c: &TestCluster, client: &KvClient, scale: Scale) -> Result<Outcome> {
    let (idle, slow) = scale.pick((300, 40), (600, 200));
    let target = c.nodes[0].client_addr;
    measured(c, client, "idle and slow connections", 500, || async {
        let source: std::net::IpAddr = [127, 0, 0, 77].into();
        let connect = || async move {
            let socket = TcpSocket::new_v4()?;
            socket.bind((source, 0).into())?;
            anyhow::Ok(socket.connect(target).await?)
        };
        let mut held = Vec::new();
        for _ in 0..idle {
            held.push(connect().await?);
        }
        let mut slow_ones = Vec::new();
        for i in 0..slow {
            let mut s = connect().await;
            if let Ok(s) = &mut s {
                let head: &[u8] = if i % 2 == 0 {
                    b"GET /v1/kv/k HTTP/1.1\r\nhost: x\r\n"
                } else {
                    b"PUT /v1/kv/k HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n[1,"
                };
                let _ = s.write_all(head).await;
            }
            slow_ones.push(s);
        }
        // Every held connection is closed by the node within its idle timeout.
        let started = Instant::now();
        let (mut open, mut refused) = (0, 0);
        for s in held.iter_mut().chain(slow_ones.iter_mut().flatten()) {
            let mut sink = Vec::new();
            let left = Duration::from_secs(15).saturating_sub(started.elapsed());
            match tokio::time::timeout(left, s.read_to_end(&mut sink)).await {
                Err(_) => open += 1,
                Ok(_) => refused += usize::from(sink.starts_with(b"HTTP/1.1 503")),
            }
        }
        ensure!(open == 0, "{open} connections still open after 15 s");
        ensure!(refused > 0, "no connection was refused past the cap");
        Ok((
            "256 connections per address, 1024 in all; 3 s to send a head or a body here".into(),
            format!(
                "{idle} idle and {slow} slow from one address: {refused} answered 503, all closed after {:.1} s",
                started.elapsed().as_secs_f64()
            ),
        ))
    })
    .await
}

/// Deep, invalid and oversized JSON as fast as eight tasks can send it.
async fn bad_json(c: &TestCluster, client: &KvClient, scale: Scale) -> Result<Outcome> {
    measured(c, client, "deep and invalid JSON", 500, || async {
        let until = Instant::now() + scale.pick(Duration::from_secs(3), Duration::from_secs(20));
        let bodies: Arc<Vec<(Vec<u8>, u16)>> = Arc::new(vec![
            ("[".repeat(1 << 20).into_bytes(), 400),
            (
                format!("{}{}", "[".repeat(65), "]".repeat(65)).into_bytes(),
                400,
            ),
            (b"\"\xff\xfe\"".to_vec(), 400),
            (br#""\ud800""#.to_vec(), 400),
            (b"{\"a\":".to_vec(), 400),
            (format!("\"{}\"", "x".repeat(2 << 20)).into_bytes(), 413),
        ]);
        let mut tasks = JoinSet::new();
        for t in 0..8u64 {
            let (http, bodies) = (c.http.clone(), bodies.clone());
            let url = c.url(1 + t % 3, "/v1/kv/bad");
            tasks.spawn(async move {
                let mut sent = 0usize;
                while Instant::now() < until {
                    let (body, want) = &bodies[sent % bodies.len()];
                    let r = http
                        .put(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await?;
                    let (status, answer) = TestCluster::json(r).await?;
                    ensure!(status == *want, "{status} {answer}");
                    sent += 1;
                }
                anyhow::Ok(sent)
            });
        }
        let mut sent = 0;
        for result in tasks.join_all().await {
            sent += result?;
        }
        let (status, body) = c.get_json(1, "/v1/kv/bad").await?;
        ensure!(
            status == 404,
            "reading back the key the bad bodies went to answered {status} {body}, not 404"
        );
        Ok((
            "UTF-8, no lone surrogates, nesting 64, 1 MiB".into(),
            format!("{sent} bad bodies, every one refused with 400 or 413, none stored"),
        ))
    })
    .await
}

/// Dot segments, escaped and not, through the leader and a follower.
async fn dot_segments(c: &TestCluster, client: &KvClient) -> Result<Outcome> {
    measured(c, client, "dot segments", 500, || async {
        let leader = c.leader().await?;
        let follower = c.other_than(leader);
        let mut checked = 0;
        for id in [leader, follower] {
            let addr = c.nodes[id as usize - 1].client_addr;
            for target in ["/v1/kv/a/%2e%2e/b", "/v1/kv/a/../b", "/v1/kv/%2e%2e/cluster"] {
                let answer = raw(addr, &format!("PUT {target} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1\r\nconnection: close\r\n\r\n1")).await?;
                ensure!(
                    answer.contains("invalid_key"),
                    "node {id} took {target}: {answer}"
                );
                checked += 1;
            }
        }
        let (status, _) = c.get_json(leader, "/v1/kv/b").await?;
        ensure!(status == 404, "a dot segment wrote another key");
        Ok((
            "keys may not have `.` or `..` parts; followers forward the checked key".into(),
            format!("{checked} requests on the leader and a follower, all refused as invalid_key"),
        ))
    })
    .await
}

async fn raw(addr: std::net::SocketAddr, request: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await??;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// Writers fill the store up to its quota; growth stops there, the rest goes on.
async fn quota(scale: Scale) -> Result<Outcome> {
    let quota_mib = scale.pick(32u64, 512);
    let tuning = Tuning {
        limits: vec![format!("max_data_bytes = {}", quota_mib << 20)],
        ..Tuning::default()
    };
    let c = TestCluster::start_tuned(3, tuning).await?;
    let client = cluster_client(&c)?;
    let outcome = measured(&c, &client, "filling the quota", 700, || async {
        let value = "q".repeat(256 * 1024 - 2);
        let stored = Arc::new(Mutex::new(0usize));
        let mut tasks = JoinSet::new();
        for t in 0..8usize {
            let (client, value, stored) = (client.clone(), value.clone(), stored.clone());
            tasks.spawn(async move {
                for i in 0.. {
                    match client
                        .set(&format!("fill/{t}/{i:06}"), &value, SetOptions::default())
                        .await
                    {
                        Ok(_) => *stored.lock().unwrap_or_else(|e| e.into_inner()) += 1,
                        Err(kv_client::ClientError::Rejected { status: 507, error })
                            if error.code == "quota_exceeded" =>
                        {
                            return anyhow::Ok(())
                        }
                        Err(e) => bail!("writer {t}: {e}"),
                    }
                }
                Ok(())
            });
        }
        for result in tasks.join_all().await {
            result?;
        }
        let stored = *stored.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = stored as u64 * (256 * 1024 + 12);
        ensure!(
            bytes <= quota_mib << 20,
            "{bytes} bytes stored past the quota"
        );
        Ok((
            format!("limits.max_data_bytes = {quota_mib} MiB"),
            format!(
                "8 writers of 256 KiB values: {stored} stored ({} MiB), then 507 quota_exceeded",
                bytes >> 20
            ),
        ))
    })
    .await?;
    c.pass();
    Ok(outcome)
}

fn cluster_client(c: &TestCluster) -> Result<KvClient> {
    let endpoints: Vec<String> = c
        .nodes
        .iter()
        .map(|n| format!("http://{}", n.client_addr))
        .collect();
    Ok(KvClient::new(endpoints)?)
}

/// Runs every pattern at `scale`; fails at the first pattern whose checks fail.
pub async fn run(scale: Scale) -> Result<Report> {
    let tuning = Tuning {
        limits: vec![
            "idle_timeout_ms = 3000".into(),
            "body_timeout_ms = 3000".into(),
        ],
        ..Tuning::default()
    };
    let c = TestCluster::start_tuned(3, tuning).await?;
    let client = cluster_client(&c)?;
    let mut outcomes = vec![large_pages(&c, &client, scale).await?];
    outcomes.extend(writes_then_prefix_delete(&c, &client, scale).await?);
    outcomes.push(connection_flood(&c, &client, scale).await?);
    outcomes.push(bad_json(&c, &client, scale).await?);
    outcomes.push(dot_segments(&c, &client).await?);
    c.pass();
    outcomes.push(quota(scale).await?);
    Ok(Report(outcomes))
}
