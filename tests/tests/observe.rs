//! Seeing inside a running cluster: `/metrics` in Prometheus' text format, JSON logs
//! with a line per request, and readiness that says why.

use std::collections::BTreeMap;

use anyhow::{ensure, Context, Result};
use kv_tests::{TestCluster, Tuning};
use serde_json::Value;

/// Every sample of a Prometheus text document by its name and labels, checking the
/// format on the way: each sample's family has one TYPE line before it, and values are
/// numbers.
fn samples(text: &str) -> Result<BTreeMap<String, f64>> {
    let mut typed = std::collections::HashSet::new();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest
                .split(' ')
                .next()
                .context("a TYPE line names a family")?;
            ensure!(typed.insert(name.to_owned()), "{name} typed twice");
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').context("a sample has a value")?;
        let name = series.split('{').next().unwrap_or(series);
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        ensure!(typed.contains(family), "{name} has no TYPE line before it");
        ensure!(
            name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "{name} is not a metric name"
        );
        let value: f64 = value
            .parse()
            .with_context(|| format!("{line}: value is not a number"))?;
        out.insert(series.to_owned(), value);
    }
    Ok(out)
}

async fn metrics_of(c: &TestCluster, id: u64) -> Result<BTreeMap<String, f64>> {
    let r = c.http.get(c.url(id, "/metrics")).send().await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    ensure!(status == 200, "{status} {text}");
    promtool_check(&text)?;
    samples(&text)
}

/// `promtool check metrics` on `text`, when `KV_PROMTOOL` names it (scripts/test.sh
/// does); otherwise only this file's own parser checks the format.
fn promtool_check(text: &str) -> Result<()> {
    use std::io::Write;
    let Ok(promtool) = std::env::var("KV_PROMTOOL") else {
        println!("KV_PROMTOOL is not set: /metrics checked by this test's parser alone");
        return Ok(());
    };
    let mut child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {promtool}"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn metrics_show_raft_storage_and_requests_to_an_admin_only() -> Result<()> {
    let tuning = Tuning {
        auth: true,
        ..Tuning::default()
    };
    let c = TestCluster::start_tuned(3, tuning).await?;
    let leader = c.leader().await?;
    let follower = c.other_than(leader);
    for i in 0..20 {
        let (s, b) = c.put_json(follower, &format!("/v1/kv/m/{i}"), "1").await?;
        ensure!(s == 200, "{s} {b}");
    }
    let (s, _) = c.get_json(leader, "/v1/kv/m/absent").await?;
    ensure!(s == 404);

    let m = metrics_of(&c, leader).await?;
    let get = |k: &str| m.get(k).copied();
    ensure!(get("quorumkv_raft_is_leader") == Some(1.0), "{m:?}");
    ensure!(get("quorumkv_raft_leader_id") == Some(leader as f64));
    ensure!(get("quorumkv_raft_term").is_some_and(|t| t >= 1.0));
    ensure!(get("quorumkv_raft_applied_index").is_some_and(|i| i >= 20.0));
    ensure!(get("quorumkv_raft_voters") == Some(3.0));
    ensure!(get("quorumkv_stored_bytes").is_some_and(|b| b > 0.0));
    let lags = m
        .keys()
        .filter(|k| k.starts_with("quorumkv_raft_follower_lag_entries{"))
        .count();
    ensure!(lags == 2, "the leader reports both followers' lag: {m:?}");
    let puts =
        "quorumkv_http_requests_total{route=\"/v1/kv/{*key}\",method=\"PUT\",status=\"200\"}";
    ensure!(
        get(puts) == Some(20.0),
        "the forwarded writes, answered here: {m:?}"
    );
    let missing =
        "quorumkv_http_requests_total{route=\"/v1/kv/{*key}\",method=\"GET\",status=\"404\"}";
    ensure!(get(missing) == Some(1.0));
    ensure!(
        get("quorumkv_log_fsync_duration_seconds_count").is_some_and(|n| n >= 20.0),
        "every append is synced"
    );
    ensure!(get("quorumkv_apply_duration_seconds_count").is_some_and(|n| n >= 1.0));
    ensure!(get("quorumkv_proposer_batch_writes_count").is_some_and(|n| n >= 1.0));

    let f = metrics_of(&c, follower).await?;
    ensure!(f.get("quorumkv_raft_is_leader") == Some(&0.0));
    ensure!(
        f.get("quorumkv_http_forwarded_requests_total{outcome=\"answered\"}") == Some(&20.0),
        "{f:?}"
    );
    ensure!(!f
        .keys()
        .any(|k| k.starts_with("quorumkv_raft_follower_lag_entries")));

    let plain = reqwest::Client::new();
    let s = plain.get(c.url(1, "/metrics")).send().await?.status();
    ensure!(s == 401, "without a token: {s}");
    c.pass();
    Ok(())
}

#[tokio::test]
async fn json_logs_carry_a_line_per_request() -> Result<()> {
    let tuning = Tuning {
        node_lines: vec![(1, "log_format = \"json\"".into())],
        ..Tuning::default()
    };
    let mut c = TestCluster::start_tuned(3, tuning).await?;
    c.restart_with_env(1, &[("RUST_LOG", "info,kv_server::access=debug")])?;
    c.wait_ready(1).await?;
    let (s, _) = c.put_json(1, "/v1/kv/logged", "\"yes\"").await?;
    ensure!(s == 200);
    let (s, _) = c.get_json(1, "/v1/kv/logged?consistency=stale").await?;
    ensure!(s == 200);
    let text = c.log_text(1)?;
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("every line after the switch is one JSON object")?;
    ensure!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "node started"),
        "the node's own lines too"
    );
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "kv_server::access")
        .map(|l| &l["fields"])
        .collect();
    let put = access
        .iter()
        .find(|f| f["method"] == "PUT" && f["route"] == "/v1/kv/{*key}")
        .context("a line for the PUT")?;
    ensure!(put["status"] == 200 && put["latency_ms"].is_f64(), "{put}");
    ensure!(put["forwarded"].is_boolean(), "{put}");
    ensure!(
        access
            .iter()
            .any(|f| f["method"] == "GET" && f["status"] == 200),
        "{access:?}"
    );
    c.pass();
    Ok(())
}
