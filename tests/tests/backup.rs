//! Backup and restore: `kvctl backup` of a running cluster seeds, through `kv-server
//! restore`, a new one-node cluster whose state equals the source's at the backup's
//! index: keys, TTLs, idempotency records, sessions and tokens.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kv_tests::{kvctl_binary, server_binary, TestCluster, Tuning};
use serde_json::Value;

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Runs a program, returning its exit code and standard output.
fn run(cmd: &mut Command) -> Result<(i32, String, String)> {
    let out = cmd.stdin(Stdio::null()).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A kv-server process of the test's own, killed when dropped.
struct Node(std::process::Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_backup_restores_into_a_new_cluster_with_the_same_state() -> Result<()> {
    let c = TestCluster::start_tuned(
        3,
        Tuning {
            auth: true,
            ..Tuning::default()
        },
    )
    .await?;
    let token = c.admin_token.clone().context("auth is on")?;
    let put = |path: &str, body: &str| {
        c.http
            .put(c.url(1, path))
            .header("content-type", "application/json")
            .body(body.to_owned())
    };
    for r in [
        put("/v1/kv/plain", r#"{"a":1}"#),
        put("/v1/kv/cached?ttl=3600", r#""for an hour""#),
        put("/v1/kv/webhook/1", r#""seen""#).header("idempotency-key", "delivery-1"),
    ] {
        let (status, body) = TestCluster::json(r.send().await?).await?;
        ensure!(status == 200, "{status} {body}");
    }
    let (status, session) =
        TestCluster::json(c.http.post(c.url(2, "/v1/sessions")).send().await?).await?;
    ensure!(status == 201, "{status} {session}");
    let id = session["session"].as_str().context("session id")?;
    let (status, body) = TestCluster::json(
        put("/v1/kv/in-session", "1")
            .header("kv-session", format!("{id}; seq=1; ack=1"))
            .send()
            .await?,
    )
    .await?;
    ensure!(status == 200, "{status} {body}");
    let (status, body) = TestCluster::json(
        c.http
            .post(c.url(3, "/v1/tokens"))
            .header("content-type", "application/json")
            .body(r#"{"name":"reader","grants":[{"prefix":"","access":"read"}]}"#)
            .send()
            .await?,
    )
    .await?;
    ensure!(status == 201, "{status} {body}");

    let dir = tempfile::tempdir()?;
    let file = dir.path().join("cluster.backup");
    let endpoints: Vec<String> = c.nodes.iter().map(|n| c.url(n.id, "")).collect();
    let (code, out, err) = run(Command::new(kvctl_binary()?)
        .env("KV_ENDPOINTS", endpoints.join(","))
        .env("KV_TOKEN", &token)
        .args(["backup", file.to_str().context("path")?]))?;
    ensure!(code == 0, "kvctl backup: {code} {out} {err}");
    let taken: Value = serde_json::from_str(out.trim())?;
    let index = taken["index"].as_u64().context("index")?;
    let leader = c.leader().await?;
    let (_, source) = c.get_json(leader, "/v1/admin/digest?scope=state").await?;
    ensure!(
        source["applied_index"].as_u64() == Some(index),
        "no write after the backup, so the source is still at its index: {source} {taken}"
    );
    let (_, status) = c.get_json(leader, "/v1/cluster").await?;

    // A one-node cluster on new addresses, seeded from the backup.
    let (client, raft) = (free_port()?, free_port()?);
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{token}\n"))?;
    let data = dir.path().join("restored");
    let config = dir.path().join("restored.toml");
    std::fs::write(
        &config,
        format!(
            "id = 1\nclient_addr = \"127.0.0.1:{client}\"\nraft_addr = \"127.0.0.1:{raft}\"\n\
             data_dir = {data:?}\ncluster_secret = \"restored\"\nmembers = [\n  {{ id = 1, \
             client_addr = \"127.0.0.1:{client}\", raft_addr = \"127.0.0.1:{raft}\" }},\n]\n\
             [auth]\nadmin_token_file = {token_file:?}\n",
        ),
    )?;
    // A damaged backup is refused by name, and nothing is written.
    let mut damaged = std::fs::read(&file)?;
    let middle = damaged.len() / 2;
    damaged[middle] ^= 1;
    let damaged_file = dir.path().join("damaged.backup");
    std::fs::write(&damaged_file, damaged)?;
    let restore = |from: &std::path::Path| {
        run(Command::new(server_binary().expect("kv-server"))
            .args(["restore", "--from"])
            .arg(from)
            .arg("--config")
            .arg(&config))
    };
    let (code, out, err) = restore(&damaged_file)?;
    ensure!(
        code != 0 && err.contains("SHA-256"),
        "restoring a damaged backup: {code} {out} {err}"
    );
    std::fs::remove_dir_all(&data)?;
    let (code, out, err) = restore(&file)?;
    ensure!(code == 0, "kv-server restore: {code} {out} {err}");
    let restored: Value = serde_json::from_str(out.trim())?;
    ensure!(
        restored["cluster_id"] != status["cluster_id"] && restored["index"] == index,
        "a new cluster id, the backup's index: {restored} {status}"
    );
    let (code, _, _) = restore(&file)?;
    ensure!(
        code != 0,
        "a second restore into a data directory that is not empty"
    );

    let log = std::fs::File::create(dir.path().join("restored.log"))?;
    let _node = Node(
        Command::new(server_binary()?)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?,
    );
    let url = |path: &str| format!("http://127.0.0.1:{client}{path}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = c.http.get(url("/readyz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the restored node never became ready: {}",
                std::fs::read_to_string(dir.path().join("restored.log"))?
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, copy) = TestCluster::json(
        c.http
            .get(url("/v1/admin/digest?scope=state"))
            .send()
            .await?,
    )
    .await?;
    for field in ["digest", "keys", "records", "sessions", "tokens"] {
        ensure!(
            copy[field] == source[field],
            "{field} differs: restored {copy}, source {source}"
        );
    }
    let (status, entry) = TestCluster::json(c.http.get(url("/v1/kv/cached")).send().await?).await?;
    ensure!(
        status == 200 && entry["ttl_ms"].as_u64().is_some_and(|t| t > 3_000_000),
        "the TTL travels: {status} {entry}"
    );
    // Writes go on with revisions after the backup's.
    let (status, written) = TestCluster::json(
        c.http
            .put(url("/v1/kv/after"))
            .header("content-type", "application/json")
            .body("2")
            .send()
            .await?,
    )
    .await?;
    ensure!(
        status == 200 && written["revision"].as_u64().is_some_and(|r| r > index),
        "a write on the restored cluster: {status} {written}"
    );
    // The replayed delivery is still known: the idempotency record came along.
    let (status, replay) = TestCluster::json(
        c.http
            .put(url("/v1/kv/webhook/1"))
            .header("content-type", "application/json")
            .header("idempotency-key", "delivery-1")
            .body(r#""seen""#)
            .send()
            .await?,
    )
    .await?;
    ensure!(
        status == 200 && replay["revision"].as_u64().is_some_and(|r| r <= index),
        "the delivery's first answer, not a second write: {status} {replay}"
    );
    c.pass();
    Ok(())
}
