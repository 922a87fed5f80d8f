//! `kv-bench`: closed-loop load against a running cluster; prints throughput and latency.
//!
//! Each client sends one request at a time (PUT of a fresh key, or GET of a written
//! one) to the endpoints in turn, for a fixed duration. Used by scripts/bench.sh.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Op {
    Put,
    Get,
}

#[derive(Parser)]
#[command(about = "Closed-loop load against a quorum-kv cluster")]
struct Args {
    /// Comma-separated base URLs; clients spread over them.
    #[arg(
        long,
        default_value = "http://127.0.0.1:7001,http://127.0.0.1:7002,http://127.0.0.1:7003"
    )]
    endpoints: String,
    /// Concurrent clients, each with one request outstanding.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// What to send.
    #[arg(long, value_enum, default_value_t = Op::Put)]
    op: Op,
    /// Bytes of each value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let endpoints: Arc<Vec<String>> =
        Arc::new(args.endpoints.split(',').map(str::to_owned).collect());
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .build()?;
    let value = Arc::new(format!(
        "\"{}\"",
        "x".repeat(args.value_bytes.saturating_sub(2))
    ));
    let run = format!("{}", std::process::id());
    if args.op == Op::Get {
        for i in 0..100 {
            let url = format!("{}/v1/kv/bench/{run}/{i}", endpoints[0]);
            let r = http
                .put(url)
                .header("content-type", "application/json")
                .body(value.to_string())
                .send()
                .await?;
            if !r.status().is_success() {
                bail!("seeding failed: {}", r.status());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = vec![];
    for c in 0..args.clients {
        let (http, endpoints, value, run) =
            (http.clone(), endpoints.clone(), value.clone(), run.clone());
        let op = args.op;
        tasks.push(tokio::spawn(async move {
            let mut latencies = vec![];
            let mut errors = 0u64;
            let mut i = 0usize;
            while Instant::now() < deadline {
                let base = &endpoints[(c + i) % endpoints.len()];
                let started = Instant::now();
                let sent = match op {
                    Op::Put => {
                        http.put(format!("{base}/v1/kv/bench/{run}/{c}/{i}"))
                            .header("content-type", "application/json")
                            .body(value.to_string())
                            .send()
                            .await
                    }
                    Op::Get => {
                        http.get(format!("{base}/v1/kv/bench/{run}/{}", i % 100))
                            .send()
                            .await
                    }
                };
                match sent {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        latencies.push(started.elapsed());
                    }
                    _ => errors += 1,
                }
                i += 1;
            }
            (latencies, errors)
        }));
    }
    let mut all = vec![];
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let op = if args.op == Op::Put { "put" } else { "get" };
    println!(
        "{op} clients={:<3} ops/s={:>8.0} p50={:>7.2}ms p99={:>7.2}ms errors={errors}",
        args.clients,
        all.len() as f64 / args.seconds as f64,
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
    );
    Ok(())
}
