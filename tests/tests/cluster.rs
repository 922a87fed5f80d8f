//! Cluster scenarios on real kv-server processes.

use std::collections::BTreeMap;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kv_tests::{TestCluster, Tuning};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The wall clock in milliseconds since the Unix epoch, as the nodes stamp expiries.
fn unix_ms() -> Result<u64> {
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64)
}

/// Reads `key` on node `id` without asking the leader (local state).
async fn stale(c: &TestCluster, id: u64, key: &str) -> Result<(u16, Value)> {
    c.get_json(id, &format!("/v1/kv/{key}?consistency=stale"))
        .await
}

/// Waits until node `id`'s local state holds every `(key, value)` in `expected`.
async fn wait_replicated(
    c: &TestCluster,
    id: u64,
    expected: &BTreeMap<String, Value>,
) -> Result<()> {
    c.poll(
        &format!("node {id} to hold all {} keys", expected.len()),
        || async move {
            for (k, v) in expected {
                match stale(c, id, k).await? {
                    (200, body) if &body["value"] == v => {}
                    _ => return Ok(false),
                }
            }
            Ok(true)
        },
    )
    .await
}

/// Kills node `id` and returns the index of the last log entry it held.
async fn kill_noting_last_log(c: &mut TestCluster, id: u64) -> Result<u64> {
    let (_, before) = c.get_json(id, "/v1/cluster").await?;
    let last = before["last_log_index"].as_u64().unwrap_or(0);
    c.kill(id);
    Ok(last)
}

/// Waits until `leader` has purged its log beyond `index`.
async fn wait_purged_past(c: &TestCluster, leader: u64, index: u64) -> Result<()> {
    c.poll("the leader to purge past the lagging node", || async {
        let (_, m) = c.get_json(leader, "/v1/cluster").await?;
        Ok(m["purged_index"].as_u64().is_some_and(|p| p > index))
    })
    .await
}

async fn write_keys(
    c: &TestCluster,
    via: u64,
    prefix: &str,
    n: usize,
) -> Result<BTreeMap<String, Value>> {
    let mut written = BTreeMap::new();
    for i in 0..n {
        let key = format!("{prefix}{i:04}");
        let value = json!({ "n": i, "from": via });
        let (status, body) = c
            .put_json(via, &format!("/v1/kv/{key}"), &value.to_string())
            .await?;
        ensure!(status == 200, "put {key}: {status} {body}");
        written.insert(key, value);
    }
    Ok(written)
}

#[tokio::test]
async fn write_through_a_follower_is_read_on_every_node() -> Result<()> {
    let c = TestCluster::start(3).await?;
    let leader = c.leader().await?;
    let follower = c.other_than(leader);
    let (status, put) = c
        .put_json(follower, "/v1/kv/users?ttl=3600", r#"[{"id":1}]"#)
        .await?;
    ensure!(status == 200, "{status} {put}");
    ensure!(
        put["version"] == 1 && put["expires_at_ms"].is_u64(),
        "{put}"
    );
    for id in c.live() {
        let (status, got) = c.get_json(id, "/v1/kv/users").await?;
        ensure!(status == 200, "node {id}: {status} {got}");
        ensure!(got["value"] == json!([{"id": 1}]), "node {id}: {got}");
        ensure!(
            got["revision"] == put["revision"] && got["create_revision"] == put["revision"],
            "{got} vs {put}"
        );
        ensure!(
            got["ttl_ms"]
                .as_u64()
                .is_some_and(|t| t <= 3_600_000 && t > 3_500_000),
            "{got}"
        );
    }
    // A second write bumps version and revision, keeps create_revision.
    let (_, second) = c.put_json(leader, "/v1/kv/users", "[]").await?;
    ensure!(
        second["version"] == 2 && second["create_revision"] == put["revision"],
        "{second}"
    );
    ensure!(
        second["expires_at_ms"].is_null(),
        "a put without ttl clears the expiry: {second}"
    );
    let r = c.http.get(c.url(follower, "/v1/kv/users")).send().await?;
    let etag = r
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    ensure!(
        etag == Some(format!("\"{}\"", second["revision"])),
        "etag {etag:?}"
    );
    let (status, deleted) = c.delete(follower, "/v1/kv/users").await?;
    ensure!(
        status == 200 && deleted["deleted"] == true,
        "{status} {deleted}"
    );
    let (status, again) = c.delete(follower, "/v1/kv/users").await?;
    ensure!(
        status == 200 && again["deleted"] == false,
        "deleting a missing key is not an error: {again}"
    );
    for id in c.live() {
        let (status, body) = c.get_json(id, "/v1/kv/users").await?;
        ensure!(
            status == 404 && body["error"]["code"] == "key_not_found",
            "node {id}: {status} {body}"
        );
    }
    c.pass();
    Ok(())
}

#[tokio::test]
async fn killed_leader_is_replaced_without_losing_writes_and_catches_up_on_restart() -> Result<()> {
    let mut c = TestCluster::start(3).await?;
    let first = c.leader().await?;
    let mut written = write_keys(&c, c.other_than(first), "a/", 30).await?;
    c.kill(first);
    let second = c.leader().await?;
    ensure!(second != first, "a killed node cannot lead");
    for id in c.live() {
        for (k, v) in &written {
            let (status, got) = c.get_json(id, &format!("/v1/kv/{k}")).await?;
            ensure!(
                status == 200 && &got["value"] == v,
                "node {id} {k}: {status} {got}"
            );
        }
    }
    written.extend(write_keys(&c, second, "b/", 20).await?);
    c.restart(first)?;
    c.wait_ready(first).await?;
    wait_replicated(&c, first, &written).await?;
    c.pass();
    Ok(())
}

#[tokio::test]
async fn every_acknowledged_write_survives_killing_all_nodes() -> Result<()> {
    let mut c = TestCluster::start(3).await?;
    let leader = c.leader().await?;
    let written = write_keys(&c, leader, "k/", 40).await?;
    for id in c.live() {
        c.kill(id);
    }
    for id in 1..=3 {
        c.restart(id)?;
    }
    c.wait_ready_all().await?;
    for id in c.live() {
        for (k, v) in &written {
            let (status, got) = c.get_json(id, &format!("/v1/kv/{k}")).await?;
            ensure!(
                status == 200 && &got["value"] == v,
                "node {id} {k}: {status} {got}"
            );
        }
    }
    c.pass();
    Ok(())
}

#[tokio::test]
async fn ttl_key_disappears_everywhere_even_after_its_leader_dies() -> Result<()> {
    let mut c = TestCluster::start(3).await?;
    let leader = c.leader().await?;
    let (status, put) = c
        .put_json(leader, "/v1/kv/session?ttl=3", r#""token""#)
        .await?;
    ensure!(status == 200, "{status} {put}");
    let (status, _) = c.put_json(leader, "/v1/kv/forever", "1").await?;
    ensure!(status == 200);
    let expires_at = put["expires_at_ms"].as_u64().unwrap_or(0);
    ensure!(expires_at > 0, "{put}");
    for id in c.live() {
        let (status, got) = c.get_json(id, "/v1/kv/session").await?;
        // A read that ended before the expiry must see the key; on a loaded machine a
        // later one may rightly not.
        if unix_ms()? < expires_at {
            ensure!(status == 200, "node {id} before expiry: {status} {got}");
        }
    }
    c.kill(leader);
    c.leader().await?;
    c.poll("the TTL key to vanish on every live node", || async {
        for id in c.live() {
            if c.get_json(id, "/v1/kv/session").await?.0 != 404
                || stale(&c, id, "session").await?.0 != 404
            {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await?;
    let now_ms = unix_ms()?;
    ensure!(
        now_ms >= expires_at,
        "the key vanished {} ms before its expiry",
        expires_at - now_ms
    );
    c.restart(leader)?;
    c.wait_ready(leader).await?;
    c.poll("the restarted node to hide the expired key too", || async {
        Ok(stale(&c, leader, "session").await?.0 == 404
            && stale(&c, leader, "forever").await?.0 == 200)
    })
    .await?;
    c.pass();
    Ok(())
}

#[tokio::test]
async fn a_node_behind_a_purged_log_catches_up_by_snapshot() -> Result<()> {
    let tuning = Tuning {
        raft: vec![
            "snapshot_every = 40".into(),
            "logs_kept_after_snapshot = 5".into(),
            "purge_batch_size = 1".into(),
        ],
        ..Tuning::default()
    };
    let mut c = TestCluster::start_tuned(3, tuning).await?;
    let leader = c.leader().await?;
    let lagging = c.other_than(leader);
    let lagging_last = kill_noting_last_log(&mut c, lagging).await?;
    let written = write_keys(&c, leader, "s/", 150).await?;
    // The leader must have purged entries the lagging node never received, so the log
    // alone can no longer bring it up to date.
    c.poll(
        "the leader to snapshot and purge past the lagging node",
        || async {
            let (_, m) = c.get_json(leader, "/v1/cluster").await?;
            Ok(m["purged_index"]
                .as_u64()
                .is_some_and(|p| p > lagging_last + 100))
        },
    )
    .await?;
    c.restart(lagging)?;
    c.wait_ready(lagging).await?;
    wait_replicated(&c, lagging, &written).await?;
    let (_, m) = c.get_json(lagging, "/v1/cluster").await?;
    ensure!(
        m["snapshot_index"]
            .as_u64()
            .is_some_and(|s| s > lagging_last + 100),
        "no snapshot installed: {m}"
    );
    c.pass();
    Ok(())
}

/// Waits until node `id` reports the same applied index and state digest as `leader`.
async fn wait_same_digest(c: &TestCluster, leader: u64, id: u64) -> Result<()> {
    c.poll(
        &format!("node {id} to report node {leader}'s digest"),
        || async {
            let (_, a) = c.get_json(leader, "/v1/admin/digest").await?;
            let (_, b) = c.get_json(id, "/v1/admin/digest").await?;
            Ok(a["applied_index"].is_u64()
                && a["applied_index"] == b["applied_index"]
                && a["digest"] == b["digest"])
        },
    )
    .await
}

#[tokio::test]
async fn a_node_killed_at_any_step_of_a_snapshot_install_restarts_and_catches_up() -> Result<()> {
    let tuning = Tuning {
        raft: vec![
            "snapshot_every = 40".into(),
            "logs_kept_after_snapshot = 5".into(),
            "purge_batch_size = 1".into(),
        ],
        ..Tuning::default()
    };
    let mut c = TestCluster::start_tuned(3, tuning).await?;
    let leader = c.leader().await?;
    let lagging = c.other_than(leader);
    // Every step of an install, in the order a follower takes them (see kv_store::crash).
    let points = [
        "snapshot-received",
        "snapshot-installing",
        "purge-recorded",
        "purged",
        "snapshot-installed",
    ];
    for (round, point) in points.into_iter().enumerate() {
        let lagging_last = kill_noting_last_log(&mut c, lagging).await?;
        write_keys(&c, leader, &format!("crash{round}/"), 100).await?;
        wait_purged_past(&c, leader, lagging_last + 50).await?;
        c.restart_to_crash_at(lagging, point).await?;
        c.restart(lagging)?;
        c.wait_ready(lagging)
            .await
            .with_context(|| format!("node {lagging} after a crash at {point}"))?;
        // One more write, so the digest is compared at an index both nodes must reach.
        write_keys(&c, leader, &format!("after{round}/"), 1).await?;
        wait_same_digest(&c, leader, lagging)
            .await
            .with_context(|| format!("after a crash at {point}"))?;
    }
    c.pass();
    Ok(())
}

#[tokio::test]
async fn a_snapshot_transfer_longer_than_the_election_timeout_unseats_no_leader() -> Result<()> {
    let tuning = Tuning {
        raft: vec![
            "snapshot_every = 20".into(),
            "logs_kept_after_snapshot = 2".into(),
            "purge_batch_size = 1".into(),
        ],
        ..Tuning::default()
    };
    let mut c = TestCluster::start_tuned(3, tuning).await?;
    let leader = c.leader().await?;
    let lagging = c.other_than(leader);
    let lagging_last = kill_noting_last_log(&mut c, lagging).await?;
    // About 9 MiB of state: a snapshot of 9 chunks or more.
    let big = json!("x".repeat(900 * 1024)).to_string();
    for i in 0..10 {
        let (status, body) = c.put_json(leader, &format!("/v1/kv/big{i}"), &big).await?;
        ensure!(status == 200, "put big{i}: {status} {body}");
    }
    write_keys(&c, leader, "small/", 30).await?;
    wait_purged_past(&c, leader, lagging_last + 20).await?;
    let (_, m) = c.get_json(leader, "/v1/cluster").await?;
    let (term, last) = (m["term"].as_u64(), m["last_log_index"].as_u64());

    // Each chunk's answer waits 300 ms, so the transfer takes seconds, longer than any
    // election timeout (500-1000 ms); no writes meanwhile, so nothing else reaches it.
    c.restart_with_env(lagging, &[("KV_SLOW_SNAPSHOT_CHUNKS_MS", "300")])?;
    c.wait_serving(lagging).await?;
    // Meanwhile the node says it is not ready, and why.
    let reasons = std::sync::Mutex::new(std::collections::BTreeSet::new());
    c.poll("the lagging node to install the snapshot", || async {
        let (status, ready) = c.get_json(lagging, "/readyz").await?;
        if status == 503 {
            let message = ready["error"]["message"].as_str().unwrap_or("").to_owned();
            let reason: String = message.chars().take_while(|c| *c != '(').collect();
            reasons.lock().expect("lock").insert(reason);
        }
        let (_, m) = c.get_json(lagging, "/v1/cluster").await?;
        Ok(m["applied_index"].as_u64() >= last)
    })
    .await?;
    let reasons = reasons.into_inner().expect("lock");
    ensure!(
        reasons
            .iter()
            .any(|r| r.starts_with("not ready: installing a snapshot from the leader")),
        "readiness never said it was installing a snapshot: {reasons:?}"
    );
    let (_, now) = c.get_json(leader, "/v1/cluster").await?;
    ensure!(
        now["term"].as_u64() == term && now["leader_id"].as_u64() == Some(leader),
        "the transfer changed the term or the leader: before term {term:?} leader {leader}, now {now}"
    );
    c.pass();
    Ok(())
}

#[tokio::test]
async fn a_node_on_another_clusters_data_is_refused() -> Result<()> {
    let mut a = TestCluster::start(3).await?;
    let a_leader = a.leader().await?;
    write_keys(&a, a_leader, "a/", 20).await?;
    let mut b = TestCluster::start(3).await?;
    let b_leader = b.leader().await?;
    write_keys(&b, b_leader, "b/", 5).await?;

    // Node `x` of cluster B is started on the data directory of node `x` of cluster A,
    // as an operator who reuses a directory would.
    let x = b.other_than(b_leader);
    for id in a.live() {
        a.kill(id);
    }
    b.kill(x);
    let (from, to) = (a.data_dir(x)?, b.data_dir(x)?);
    std::fs::remove_dir_all(&to)?;
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(&from)
        .arg(&to)
        .status()?;
    ensure!(copied.success(), "copying the data directory");
    b.restart(x)?;

    // B's leader contacts the stranger, which refuses it; both say why.
    b.poll(
        "B's leader and the stranger to refuse each other",
        || async {
            let said = |id| {
                b.log_text(id)
                    .map(|t| t.contains("belongs to another cluster"))
            };
            Ok(said(b_leader)? && said(x)?)
        },
    )
    .await?;
    let members: Vec<u64> = b.live().into_iter().filter(|id| *id != x).collect();
    // B goes on without it, and neither cluster's data reaches the other.
    let more = write_keys(&b, b_leader, "b2/", 10).await?;
    for id in &members {
        wait_replicated(&b, *id, &more).await?;
    }
    let (status, _) = b.get_json(b_leader, "/v1/kv/a/0000").await?;
    ensure!(status == 404, "cluster A's key reached cluster B");
    let (status, _) = stale(&b, x, "b2/0000").await?;
    ensure!(status == 404, "the stranger applied cluster B's write");
    a.pass();
    b.pass();
    Ok(())
}

#[tokio::test]
async fn a_full_disk_refuses_growth_with_507_while_reads_and_deletes_work() -> Result<()> {
    let tuning = Tuning {
        disk_mib: Some(512),
        limits: vec!["min_free_disk_mib = 24".into()],
        ..Tuning::default()
    };
    let c = TestCluster::start_tuned(3, tuning).await?;
    let leader = c.leader().await?;
    let follower = c.other_than(leader);
    let written = write_keys(&c, leader, "d/", 10).await?;
    c.fill_disk(16)?;

    // Below the reserve: growth is refused with a clear error, on the leader and through
    // a follower (the guard measures free space at most every 100 ms).
    c.poll("writes to be refused for lack of disk", || async {
        let (status, body) = c.put_json(leader, "/v1/kv/d/new", "1").await?;
        Ok(status == 507 && body["error"]["code"] == "insufficient_storage")
    })
    .await?;
    let (status, body) = c.put_json(follower, "/v1/kv/d/other", "2").await?;
    ensure!(
        status == 507 && body["error"]["code"] == "insufficient_storage",
        "through a follower: {status} {body}"
    );
    // Reads and deletes go on.
    for id in [leader, follower] {
        let (status, body) = c.get_json(id, "/v1/kv/d/0000").await?;
        ensure!(
            status == 200 && body["value"] == written["d/0000"],
            "{status} {body}"
        );
    }
    let (status, body) = c.delete(leader, "/v1/kv/d/0001").await?;
    ensure!(status == 200, "delete on a full disk: {status} {body}");
    let (status, body) = c.delete(leader, "/v1/kv?prefix=d/000").await?;
    ensure!(
        status == 200,
        "prefix delete on a full disk: {status} {body}"
    );

    // Space freed: writes resume without an operator.
    c.free_disk()?;
    c.poll("writes to resume once space is free", || async {
        let (status, _) = c.put_json(leader, "/v1/kv/d/new", "1").await?;
        Ok(status == 200)
    })
    .await?;
    let (status, body) = c.get_json(follower, "/v1/kv/d/new").await?;
    ensure!(status == 200 && body["value"] == 1, "{status} {body}");
    c.pass();
    Ok(())
}

#[tokio::test]
async fn the_data_quota_refuses_growth_with_507_exactly_and_writes_resume_after_deletes(
) -> Result<()> {
    const QUOTA: usize = 64 * 1024;
    let tuning = Tuning {
        limits: vec![format!("max_data_bytes = {QUOTA}")],
        ..Tuning::default()
    };
    let c = TestCluster::start_tuned(3, tuning).await?;
    let leader = c.leader().await?;
    let follower = c.other_than(leader);
    // Each entry is a 6-byte key and a 1,002-byte value (a JSON string).
    let value = format!("\"{}\"", "v".repeat(1000));
    let mut stored = 0;
    let refused = loop {
        let key = format!("q/{stored:04}");
        let (status, body) = c.put_json(leader, &format!("/v1/kv/{key}"), &value).await?;
        if status != 200 {
            break (status, body);
        }
        stored += 1;
        ensure!(stored < 1000, "the quota never refused a write");
    };
    ensure!(
        refused.0 == 507 && refused.1["error"]["code"] == "quota_exceeded",
        "{refused:?}"
    );
    ensure!(
        stored * 1008 <= QUOTA && (stored + 1) * 1008 > QUOTA,
        "{stored} entries of 1008 bytes stored under a quota of {QUOTA}"
    );
    let (status, body) = c.put_json(follower, "/v1/kv/q/other", &value).await?;
    ensure!(
        status == 507 && body["error"]["code"] == "quota_exceeded",
        "through a follower: {status} {body}"
    );
    // A refused write with an Idempotency-Key leaves no record: its retry applies later.
    let idempotent_put = || {
        c.http
            .put(c.url(leader, "/v1/kv/q/idem"))
            .header("content-type", "application/json")
            .header("idempotency-key", "quota-retry")
            .body(value.clone())
            .send()
    };
    let (status, _) = TestCluster::json(idempotent_put().await?).await?;
    ensure!(status == 507, "idempotent write over the quota: {status}");
    // Reads, shrinking writes and deletes go on.
    let (status, body) = c.get_json(follower, "/v1/kv/q/0000").await?;
    ensure!(
        status == 200 && body["value"] == value.trim_matches('"'),
        "{status}"
    );
    let (status, body) = c.put_json(leader, "/v1/kv/q/0000", "1").await?;
    ensure!(
        status == 200,
        "a write that shrinks the data: {status} {body}"
    );
    let (status, body) = c.delete(leader, "/v1/kv/q/0001").await?;
    ensure!(status == 200 && body["deleted"] == true, "{status} {body}");
    let (status, body) = c.delete(follower, "/v1/kv?prefix=q/00").await?;
    ensure!(
        status == 200,
        "prefix delete over the quota: {status} {body}"
    );
    // Once the purges have removed the deleted entries, writes resume on their own.
    c.poll("writes to resume once deletes made room", || async {
        let (status, _) = TestCluster::json(idempotent_put().await?).await?;
        Ok(status == 200)
    })
    .await?;
    let (status, body) = c.get_json(follower, "/v1/kv/q/idem").await?;
    ensure!(status == 200 && body["version"] == 1, "{status} {body}");
    c.pass();
    Ok(())
}

/// Sends one HTTP/1.1 request exactly as written, with no URL parser in between, and
/// returns the status and the JSON body.
async fn raw_request(
    addr: std::net::SocketAddr,
    method: &str,
    target: &str,
    body: &str,
) -> Result<(u16, Value)> {
    let mut s = TcpStream::connect(addr).await?;
    let head = format!(
        "{method} {target} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    let mut answer = vec![];
    s.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").context("an HTTP answer")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("a status line")?;
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// Reads until the node closes the connection, or fails after `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Result<String> {
    let mut answer = vec![];
    tokio::time::timeout(within, s.read_to_end(&mut answer))
        .await
        .context("the node kept the connection open")??;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn idle_slow_and_surplus_connections_are_dropped_with_json_answers() -> Result<()> {
    let tuning = Tuning {
        limits: vec![
            "max_connections_per_ip = 6".into(),
            "idle_timeout_ms = 700".into(),
            "body_timeout_ms = 700".into(),
        ],
        ..Tuning::default()
    };
    let c = TestCluster::start_tuned(1, tuning).await?;
    let addr = c.nodes[0].client_addr;
    // Six idle connections hold this address's share; the seventh is refused as JSON.
    let mut idle = vec![];
    for _ in 0..6 {
        idle.push(TcpStream::connect(addr).await?);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body) = raw_request(addr, "GET", "/v1/kv/k", "").await?;
    ensure!(
        status == 503 && body["error"]["code"] == "unavailable",
        "over the cap: {status} {body}"
    );
    // The idle ones are closed after the idle timeout, and their slots come back.
    for s in &mut idle {
        closed_within(s, Duration::from_secs(5)).await?;
    }
    let (status, _) = raw_request(addr, "GET", "/v1/kv/k", "").await?;
    ensure!(status == 404, "after the idle ones closed: {status}");
    // A head that never ends is closed too.
    let mut slow = TcpStream::connect(addr).await?;
    slow.write_all(b"GET /v1/kv/k HTTP/1.1\r\nhost: x\r\n")
        .await?;
    closed_within(&mut slow, Duration::from_secs(5)).await?;
    // A body that never ends gets 408 as JSON.
    let mut slow = TcpStream::connect(addr).await?;
    slow.write_all(
        b"PUT /v1/kv/k HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 10\r\n\r\n[1,",
    )
    .await?;
    let answer = closed_within(&mut slow, Duration::from_secs(5)).await?;
    ensure!(
        answer.starts_with("HTTP/1.1 408") && answer.contains(r#""code":"request_timeout""#),
        "{answer}"
    );
    // Oversized targets and headers are refused as JSON.
    let long = format!("/v1/kv/{}", "k".repeat(20 * 1024));
    let (status, body) = raw_request(addr, "GET", &long, "").await?;
    ensure!(
        status == 414 && body["error"]["code"] == "uri_too_long",
        "{status} {body}"
    );
    let r = c
        .http
        .get(c.url(1, "/v1/kv/k"))
        .header("x-big", "b".repeat(40 * 1024))
        .send()
        .await?;
    let (status, body) = TestCluster::json(r).await?;
    ensure!(
        status == 431 && body["error"]["code"] == "headers_too_large",
        "{status} {body}"
    );
    c.pass();
    Ok(())
}

#[tokio::test]
async fn a_request_means_the_same_key_on_every_node() -> Result<()> {
    let c = TestCluster::start(3).await?;
    let leader = c.leader().await?;
    let follower = c.other_than(leader);
    let addr = |id: u64| c.nodes[id as usize - 1].client_addr;
    // Dot segments, as sent and escaped, name no other key or route on any node.
    for id in [leader, follower] {
        for target in [
            "/v1/kv/a/%2e%2e/b",
            "/v1/kv/a/../b",
            "/v1/kv/%2e%2e/cluster",
            "/v1/kv/x/%2E/y",
        ] {
            for method in ["PUT", "GET", "DELETE"] {
                let (status, body) = raw_request(addr(id), method, target, "1").await?;
                ensure!(
                    status == 400 && body["error"]["code"] == "invalid_key",
                    "{method} {target} on node {id}: {status} {body}"
                );
            }
        }
    }
    // A backslash, which URL parsers turn into a slash, is part of the key.
    let (status, body) = raw_request(addr(follower), "PUT", "/v1/kv/a%5Cb", "7").await?;
    ensure!(status == 200, "{status} {body}");
    let (status, body) = raw_request(addr(follower), "PUT", "/v1/kv/c\\d", "8").await?;
    ensure!(status == 200 || status == 400, "{status} {body}");
    let raw_backslash_accepted = status == 200;
    let (status, got) = c.get_json(leader, "/v1/kv/a%5Cb").await?;
    ensure!(status == 200 && got["value"] == 7, "{status} {got}");
    if raw_backslash_accepted {
        let (status, got) = c.get_json(leader, "/v1/kv/c%5Cd").await?;
        ensure!(status == 200 && got["value"] == 8, "{status} {got}");
    }
    for wrong in ["b", "a/b", "cluster", "c/d"] {
        let (status, got) = c.get_json(leader, &format!("/v1/kv/{wrong}")).await?;
        ensure!(status == 404, "{wrong}: {status} {got}");
    }
    c.pass();
    Ok(())
}

#[tokio::test]
async fn bad_input_gets_a_json_error_and_writes_nothing() -> Result<()> {
    let c = TestCluster::start(3).await?;
    let leader = c.leader().await?;
    let node = c.other_than(leader);
    let long_key = "k".repeat(4097);
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            c.http.put(c.url(node, "/v1/kv/x?ttl=0")).body("1"),
            400,
            "invalid_ttl",
        ),
        (
            c.http.put(c.url(node, "/v1/kv/x?ttl=-1")).body("1"),
            400,
            "invalid_ttl",
        ),
        (
            c.http.put(c.url(node, "/v1/kv/x?ttl=abc")).body("1"),
            400,
            "invalid_ttl",
        ),
        (
            c.http.put(c.url(node, "/v1/kv/x?tll=5")).body("1"),
            400,
            "invalid_query",
        ),
        (
            c.http.put(c.url(node, "/v1/kv/x")).body("{not json"),
            400,
            "invalid_json",
        ),
        (
            c.http.put(c.url(node, "/v1/kv/x")).body(""),
            400,
            "invalid_json",
        ),
        (
            c.http.put(c.url(node, "/v1/kv/x")).body("1 2"),
            400,
            "invalid_json",
        ),
        (
            c.http
                .put(c.url(node, "/v1/kv/x"))
                .header("content-type", "text/plain")
                .body("1"),
            415,
            "unsupported_media_type",
        ),
        (
            c.http
                .put(c.url(node, "/v1/kv/x"))
                .body(vec![b'1'; 1024 * 1024 + 1]),
            413,
            "value_too_large",
        ),
        (
            c.http
                .put(c.url(node, &format!("/v1/kv/{long_key}")))
                .body("1"),
            400,
            "invalid_key",
        ),
        (
            c.http.put(c.url(node, "/v1/kv/")).body("1"),
            400,
            "invalid_key",
        ),
        (
            c.http.put(c.url(node, "/v1/kv/%FF%FE")).body("1"),
            400,
            "invalid_key",
        ),
        (
            c.http.get(c.url(node, "/v1/kv/x?consistency=weird")),
            400,
            "invalid_consistency",
        ),
        // Values every reader can parse: UTF-8, no lone surrogates, bounded nesting.
        (
            c.http
                .put(c.url(node, "/v1/kv/x"))
                .body(vec![b'['; 1 << 20]),
            400,
            "invalid_json",
        ),
        (
            c.http.put(c.url(node, "/v1/kv/x")).body(r#""\ud800""#),
            400,
            "invalid_json",
        ),
        (
            c.http
                .put(c.url(node, "/v1/kv/x"))
                .body(b"\"\xff\"".to_vec()),
            400,
            "invalid_json",
        ),
        // Conditions are refused where they cannot apply, not ignored.
        (
            c.http
                .get(c.url(node, "/v1/kv/x"))
                .header("if-match", "\"3\""),
            400,
            "invalid_precondition",
        ),
        (
            c.http
                .delete(c.url(node, "/v1/kv?prefix=x"))
                .header("if-none-match", "*"),
            400,
            "invalid_precondition",
        ),
        // Escapes that are not UTF-8 would name another prefix as U+FFFD.
        (
            c.http.get(c.url(node, "/v1/kv?prefix=%ff")),
            400,
            "invalid_query",
        ),
        (
            c.http.get(c.url(node, "/v1/kv/never-written")),
            404,
            "key_not_found",
        ),
        (
            c.http.get(c.url(node, "/v2/nothing")),
            404,
            "route_not_found",
        ),
        (
            c.http.post(c.url(node, "/v1/kv/x")).body("1"),
            405,
            "method_not_allowed",
        ),
        (
            c.http.patch(c.url(node, "/v1/cluster")),
            405,
            "method_not_allowed",
        ),
    ];
    for (request, want_status, want_code) in cases {
        let request = request.build()?;
        let what = format!(
            "{} {}",
            request.method(),
            request.url().as_str().chars().take(80).collect::<String>()
        );
        let (status, body) = TestCluster::json(c.http.execute(request).await?).await?;
        ensure!(
            status == want_status,
            "{what}: status {status}, want {want_status}: {body}"
        );
        ensure!(body["error"]["code"] == want_code, "{what}: {body}");
        ensure!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {body}"
        );
    }
    // Nothing was written by any of them, and every node still serves.
    for id in c.live() {
        let (status, _) = c.get_json(id, "/v1/kv/x").await?;
        ensure!(
            status == 404,
            "node {id}: a refused write left a key behind"
        );
        ensure!(c.get_json(id, "/healthz").await?.0 == 200);
    }
    // A key with '/' and ':' and an encoded space round-trips.
    let (status, _) = c.put_json(node, "/v1/kv/a/b:c%20d", "true").await?;
    ensure!(status == 200);
    let (status, got) = c.get_json(leader, "/v1/kv/a/b:c%20d").await?;
    ensure!(
        status == 200 && got["key"] == "a/b:c d" && got["value"] == true,
        "{got}"
    );
    c.pass();
    Ok(())
}

/// One frame of the raft protocol (see kv-server's `raft_network`): a big-endian length,
/// then the bytes.
async fn send_frame(stream: &mut TcpStream, bytes: &[u8]) -> Result<()> {
    let len = u32::try_from(bytes.len())?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(bytes).await?;
    Ok(())
}

/// The next frame, or None when the node closed the connection.
async fn recv_frame(stream: &mut TcpStream) -> Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut len)).await?;
    if read.is_err() {
        return Ok(None);
    }
    let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut frame).await?;
    Ok(Some(frame))
}

#[tokio::test]
async fn strangers_who_never_say_hello_cannot_hold_the_raft_port() -> Result<()> {
    // Nodes on their own addresses, so the stranger (127.0.0.1) is not a member's address.
    let tuning = Tuning {
        own_addresses: true,
        ..Tuning::default()
    };
    let c = TestCluster::start_tuned(3, tuning).await?;
    let leader = c.leader().await?;
    let target = c.nodes[leader as usize - 1].raft_addr;
    // Connections that never send a hello: the ninth from one address is closed at once.
    let mut idle = vec![];
    for _ in 0..8 {
        idle.push(TcpStream::connect(target).await?);
    }
    let mut ninth = TcpStream::connect(target).await?;
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(2), ninth.read(&mut byte)).await??;
    ensure!(n == 0, "the connection over the cap was not closed");
    // Meanwhile the members go on: a write commits and every node has it.
    let (status, body) = c.put_json(leader, "/v1/kv/during", "1").await?;
    ensure!(status == 200, "{status} {body}");
    for id in c.live() {
        let (status, got) = c.get_json(id, "/v1/kv/during").await?;
        ensure!(status == 200, "node {id}: {status} {got}");
    }
    // And the idle ones are closed once their hello is overdue.
    for mut s in idle {
        let n = tokio::time::timeout(Duration::from_secs(15), s.read(&mut byte)).await??;
        ensure!(n == 0, "an idle connection got an answer");
    }
    c.pass();
    Ok(())
}

#[tokio::test]
async fn raft_listener_rejects_requests_without_the_cluster_secret() -> Result<()> {
    const HELLO: &[u8] = b"quorum-kv-raft/2\n";
    let c = TestCluster::start(3).await?;
    for node in &c.nodes {
        // A wrong secret: refused with a reason, then the connection is closed, and a
        // request sent anyway is never answered.
        let mut s = TcpStream::connect(node.raft_addr).await?;
        send_frame(&mut s, &[HELLO, b"\nwrong-secret"].concat()).await?;
        let answer = recv_frame(&mut s).await?.unwrap_or_default();
        ensure!(
            answer.first() == Some(&2) && answer.ends_with(b"wrong cluster secret"),
            "node {}: {:?}",
            node.id,
            String::from_utf8_lossy(&answer)
        );
        let _ = send_frame(&mut s, &[2, 0, 0]).await;
        ensure!(
            recv_frame(&mut s).await?.is_none(),
            "answered after a refusal"
        );
        // The refusal is logged with the stranger's address.
        let stranger = s.local_addr()?;
        let logged = c
            .log_text(node.id)?
            .lines()
            .any(|l| l.contains("wrong cluster secret") && l.contains(&stranger.to_string()));
        ensure!(logged, "node {}: no log line names {stranger}", node.id);

        // No secret at all: refused alike.
        let mut s = TcpStream::connect(node.raft_addr).await?;
        send_frame(&mut s, &[HELLO, b"\n"].concat()).await?;
        let answer = recv_frame(&mut s).await?.unwrap_or_default();
        ensure!(
            answer.first() == Some(&2) && answer.ends_with(b"wrong cluster secret"),
            "node {}: no secret answered {:?}",
            node.id,
            String::from_utf8_lossy(&answer)
        );

        // Not our protocol at all (an HTTP request): closed without an answer.
        let mut s = TcpStream::connect(node.raft_addr).await?;
        s.write_all(b"POST /raft/vote HTTP/1.1\r\nhost: x\r\n\r\n")
            .await?;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await?;
        ensure!(
            !rest.windows(8).any(|w| w == b"HTTP/1.1"),
            "node {}: answered an HTTP request",
            node.id
        );

        // The right secret, then garbage: answered as a bad request, the connection
        // stays usable.
        let mut s = TcpStream::connect(node.raft_addr).await?;
        send_frame(&mut s, &[HELLO, b"\ntest-secret"].concat()).await?;
        let hello = recv_frame(&mut s).await?.unwrap_or_default();
        ensure!(hello.first() == Some(&0), "hello refused: {hello:?}");
        for garbage in [&b"\x01garbage"[..], b"\x09", b""] {
            send_frame(&mut s, garbage).await?;
            let answer = recv_frame(&mut s).await?.unwrap_or_default();
            ensure!(
                answer.first() == Some(&1),
                "node {}: garbage {garbage:?} answered {answer:?}",
                node.id
            );
        }
        // A request with an id and an undecodable body: the bad-request answer carries
        // the request's id.
        let id = 42u64.to_be_bytes();
        send_frame(&mut s, &[&[2u8][..], &id, b"\xff\xff\xff"].concat()).await?;
        let answer = recv_frame(&mut s).await?.unwrap_or_default();
        ensure!(
            answer.first() == Some(&1) && answer.get(1..9) == Some(&id[..]),
            "node {}: answered {answer:?}",
            node.id
        );
    }
    ensure!(
        c.leader().await.is_ok(),
        "garbage did not disturb the cluster"
    );
    c.pass();
    Ok(())
}

#[tokio::test]
async fn cluster_status_describes_members_and_leader() -> Result<()> {
    let c = TestCluster::start(3).await?;
    let leader = c.leader().await?;
    for id in c.live() {
        let (status, m) = c.get_json(id, "/v1/cluster").await?;
        ensure!(
            status == 200 && m["node_id"] == id && m["leader_id"] == leader,
            "{m}"
        );
        ensure!(m["members"].as_array().is_some_and(|a| a.len() == 3), "{m}");
        ensure!(
            m["leader"]["client_addr"] == c.nodes[(leader - 1) as usize].client_addr.to_string(),
            "{m}"
        );
        ensure!(
            m["commit_index"].as_u64() <= m["last_log_index"].as_u64(),
            "{m}"
        );
        let roles: Vec<&str> = m["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x["role"].as_str())
            .collect();
        ensure!(roles.iter().filter(|r| **r == "leader").count() == 1, "{m}");
    }
    c.pass();
    Ok(())
}

#[tokio::test]
async fn concurrent_writes_share_log_entries_but_never_a_revision() -> Result<()> {
    let c = TestCluster::start(3).await?;
    let leader = c.leader().await?;
    let commit = |m: &Value| m["commit_index"].as_u64().unwrap_or(0);
    let (_, before) = c.get_json(leader, "/v1/cluster").await?;
    // 64 different keys and 16 writes to one key, all at once.
    let mut writes = tokio::task::JoinSet::new();
    let requests = (0..64)
        .map(|i| (format!("/v1/kv/many/{i}"), "1".to_owned()))
        .chain((0..16).map(|i| ("/v1/kv/same".to_owned(), i.to_string())));
    for (i, (path, body)) in requests.enumerate() {
        let request = c
            .http
            .put(c.url(leader, &path))
            .header("content-type", "application/json")
            .body(body);
        writes.spawn(async move {
            let result = match request.send().await {
                Ok(response) => TestCluster::json(response).await,
                Err(e) => Err(e.into()),
            };
            (i, result)
        });
    }
    let mut same_revisions = vec![];
    let mut same_versions = vec![];
    while let Some(joined) = writes.join_next().await {
        let (i, result): (usize, Result<(u16, Value)>) = joined?;
        let (status, body) = result?;
        ensure!(status == 200, "write {i}: {status} {body}");
        if i >= 64 {
            same_revisions.push(body["revision"].as_u64().unwrap_or(0));
            same_versions.push(body["version"].as_u64().unwrap_or(0));
        }
    }
    let (_, after) = c.get_json(leader, "/v1/cluster").await?;
    let entries = commit(&after) - commit(&before);
    ensure!(
        entries < 80,
        "80 concurrent writes took {entries} log entries: no batching"
    );
    same_revisions.sort_unstable();
    same_revisions.dedup();
    ensure!(
        same_revisions.len() == 16,
        "writes to one key shared a revision: {same_revisions:?}"
    );
    same_versions.sort_unstable();
    ensure!(
        same_versions == (1..=16).collect::<Vec<u64>>(),
        "versions {same_versions:?}"
    );
    eprintln!("80 concurrent writes used {entries} log entries");
    c.pass();
    Ok(())
}

#[tokio::test]
async fn without_a_quorum_writes_are_unknown_or_unavailable_never_falsely_acknowledged(
) -> Result<()> {
    let tuning = Tuning {
        raft: vec![],
        limits: vec![
            "write_timeout_ms = 1000".into(),
            "read_timeout_ms = 1000".into(),
        ],
        ..Tuning::default()
    };
    let mut c = TestCluster::start_tuned(3, tuning).await?;
    let leader = c.leader().await?;
    let followers: Vec<u64> = c.live().into_iter().filter(|id| *id != leader).collect();
    for f in &followers {
        c.kill(*f);
    }
    // The lone leader cannot commit: its write's outcome is unknown, and it says so.
    let (status, body) = c.put_json(leader, "/v1/kv/lonely", "1").await?;
    ensure!(
        status == 504 && body["error"]["code"] == "outcome_unknown",
        "{status} {body}"
    );
    ensure!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("same Idempotency-Key")),
        "{body}"
    );
    // It cannot confirm a linearizable read either, but serves a stale one.
    let r = c.http.get(c.url(leader, "/v1/kv/lonely")).send().await?;
    ensure!(
        r.headers().contains_key("retry-after"),
        "503 without Retry-After"
    );
    let (status, body) = TestCluster::json(r).await?;
    ensure!(status == 503, "{status} {body}");
    ensure!(
        stale(&c, leader, "lonely").await?.0 == 404,
        "an uncommitted write is not visible"
    );

    // A follower alone knows no reachable leader: 503 with Retry-After.
    c.kill(leader);
    c.restart(followers[0])?;
    c.wait_serving(followers[0]).await?;
    let r = c
        .http
        .put(c.url(followers[0], "/v1/kv/k"))
        .body("1")
        .send()
        .await?;
    ensure!(
        r.headers().contains_key("retry-after"),
        "503 without Retry-After"
    );
    let (status, body) = TestCluster::json(r).await?;
    ensure!(status == 503, "{status} {body}");
    ensure!(
        ["no_leader", "unavailable"].contains(&body["error"]["code"].as_str().unwrap_or("")),
        "{body}"
    );

    // With a quorum back, writes succeed again.
    c.restart(leader)?;
    c.wait_ready_all().await?;
    let (status, body) = c.put_json(followers[0], "/v1/kv/k", "2").await?;
    ensure!(status == 200, "{status} {body}");
    c.pass();
    Ok(())
}
