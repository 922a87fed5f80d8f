//! Membership changes on a running cluster under load: growing and shrinking, removing
//! the leader, one change at a time. Each run's history must be linearizable and the
//! members' digests must agree at the end.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use kv_tests::chaos::workload::{Access, Recorder, Shared, Worker};
use kv_tests::checker::{check, CheckOptions};
use kv_tests::TestCluster;
use serde_json::{json, Value};

/// Checker slack for TTL expiry, as the chaos suite uses.
const TTL_SLACK_MS: u64 = 2000;

/// Writers and readers on nodes 1–3 (which the tests keep or only remove at the end),
/// recording a history for the checker.
struct Load {
    shared: Arc<Shared>,
    workers: Vec<tokio::task::JoinHandle<Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Load {
    fn start(cluster: &TestCluster, nodes: &[u64], seed: u64) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let shared = Arc::new(Shared::new(
            Recorder::create(&dir.path().join("history.jsonl"))?,
            nodes.iter().map(|id| cluster.client_addr(*id)).collect(),
            format!("members-{seed}-{}", std::process::id()),
            TTL_SLACK_MS,
            Access::default(),
        )?);
        let workers = (0..4)
            .map(|id| tokio::spawn(Worker::new(id, seed).run(shared.clone())))
            .collect();
        Ok(Self {
            shared,
            workers,
            _dir: dir,
        })
    }

    /// Stops the load and checks its history: every key linearizable, no write applied
    /// twice, and some writes acknowledged.
    async fn check(self) -> Result<()> {
        self.shared.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            w.await.context("worker")??;
        }
        let violations = self.shared.violations.lock().expect("violations").clone();
        ensure!(violations.is_empty(), "violations: {violations:?}");
        let ops = self.shared.recorder.finish()?;
        let acknowledged = ops
            .iter()
            .filter(|o| o.op != kv_tests::history::OpKind::Get)
            .filter(|o| o.result == kv_tests::history::Outcome::Ok)
            .count();
        ensure!(
            acknowledged > 20,
            "only {acknowledged} writes were acknowledged"
        );
        let options = CheckOptions {
            ttl_slack_ms: TTL_SLACK_MS,
        };
        let verdict = tokio::task::spawn_blocking(move || check(&ops, options)).await?;
        ensure!(
            verdict.ok(),
            "not linearizable: keys {:?}, applied twice {:?}",
            verdict.failing_keys(),
            verdict.reapplied
        );
        Ok(())
    }
}

async fn send(r: reqwest::RequestBuilder) -> Result<(u16, Value)> {
    TestCluster::json(r.send().await?).await
}

/// `POST /v1/admin/members` for node `id` of the harness.
async fn add(c: &TestCluster, via: u64, id: u64) -> Result<(u16, Value)> {
    let addr = c.client_addr(id);
    let raft = c.nodes[(id - 1) as usize].raft_addr;
    let body = json!({ "client_addr": addr.to_string(), "raft_addr": raft.to_string(), "id": id });
    send(
        c.http
            .post(c.url(via, "/v1/admin/members"))
            .header("content-type", "application/json")
            .body(body.to_string()),
    )
    .await
}

/// Promotes learner `id`, asking again while it is still catching up.
async fn promote(c: &TestCluster, via: u64, id: u64) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let path = format!("/v1/admin/members/{id}/promote");
        let (status, body) = send(c.http.post(c.url(via, &path))).await?;
        match status {
            200 => return Ok(body),
            409 if body["error"]["code"] == "not_caught_up" && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => anyhow::bail!("promoting node {id}: {status} {body}"),
        }
    }
}

async fn remove(c: &TestCluster, via: u64, id: u64) -> Result<Value> {
    let (status, body) = send(
        c.http
            .delete(c.url(via, &format!("/v1/admin/members/{id}"))),
    )
    .await?;
    ensure!(status == 200, "removing node {id}: {status} {body}");
    Ok(body)
}

/// Voter ids and whether the configuration is joint, as `via`'s leader reports them.
async fn voters(c: &TestCluster, via: u64) -> Result<(Vec<u64>, bool)> {
    let (status, body) = c.get_json(via, "/v1/admin/members").await?;
    ensure!(status == 200, "members: {status} {body}");
    let voters = body["members"]
        .as_array()
        .context("members")?
        .iter()
        .filter(|m| m["voter"] == true)
        .filter_map(|m| m["id"].as_u64())
        .collect();
    Ok((voters, body["joint"] == true))
}

/// Waits until `ids` report one digest at one applied index.
async fn same_digest(c: &TestCluster, ids: &[u64]) -> Result<()> {
    c.poll("the members' digests to agree", || async {
        let mut seen = vec![];
        for id in ids {
            match c.get_json(*id, "/v1/admin/digest").await {
                Ok((200, v)) => seen.push((v["applied_index"].clone(), v["digest"].clone())),
                _ => return Ok(false),
            }
        }
        Ok(seen.iter().all(|s| *s == seen[0]))
    })
    .await
}

#[tokio::test]
async fn grows_3_to_5_and_shrinks_back_under_load() -> Result<()> {
    let mut c = TestCluster::start(3).await?;
    let load = Load::start(&c, &[1, 2, 3], 16)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..2 {
        let id = c.add_node().await?;
        let (status, body) = c.get_json(id, "/readyz").await?;
        ensure!(
            status == 503
                && body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("waiting to be added")),
            "a node that joins says why it is not ready: {status} {body}"
        );
        let (status, body) = add(&c, 1, id).await?;
        ensure!(status == 201, "adding node {id}: {status} {body}");
        ensure!(body["id"] == id, "{body}");
        ensure!(
            body["cluster_id"].as_str().is_some_and(|s| !s.is_empty()),
            "{body}"
        );
        promote(&c, 2, id).await?;
    }
    let (mut ids, joint) = voters(&c, 3).await?;
    ids.sort_unstable();
    ensure!(
        ids == [1, 2, 3, 4, 5] && !joint,
        "voters {ids:?}, joint {joint}"
    );
    c.wait_ready(5).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    remove(&c, 3, 5).await?;
    remove(&c, 1, 4).await?;
    let (mut ids, joint) = voters(&c, 2).await?;
    ids.sort_unstable();
    ensure!(ids == [1, 2, 3] && !joint, "voters {ids:?}, joint {joint}");
    // Node 5's id stays spent: a node that reused it could be taken for the old one.
    let (status, body) = add(&c, 2, 5).await?;
    ensure!(
        status == 409 && body["error"]["code"] == "node_id_used",
        "reusing a removed node's id: {status} {body}"
    );
    c.kill(4);
    c.kill(5);
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.check().await?;
    same_digest(&c, &[1, 2, 3]).await?;
    c.pass();
    Ok(())
}

#[tokio::test]
async fn removing_the_leader_elects_another_and_loses_nothing() -> Result<()> {
    let mut c = TestCluster::start(3).await?;
    let id = c.add_node().await?;
    let (status, body) = add(&c, 1, id).await?;
    ensure!(status == 201, "adding node {id}: {status} {body}");
    promote(&c, 1, id).await?;
    let leader = c.leader().await?;
    let others: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|n| *n != leader).collect();
    let load_nodes: Vec<u64> = others.iter().copied().filter(|n| *n <= 3).collect();
    let load = Load::start(&c, &load_nodes, 17)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    remove(&c, leader, leader).await?;
    c.poll("another leader", || async {
        let (_, s) = c.get_json(others[0], "/v1/cluster").await?;
        Ok(s["leader_id"]
            .as_u64()
            .is_some_and(|l| l != leader && others.contains(&l)))
    })
    .await?;
    c.kill(leader);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut ids, joint) = voters(&c, others[0]).await?;
    ids.sort_unstable();
    ensure!(ids == others && !joint, "voters {ids:?}, joint {joint}");
    load.check().await?;
    same_digest(&c, &others).await?;
    c.pass();
    Ok(())
}

#[tokio::test]
async fn a_second_change_is_refused_while_one_is_in_flight() -> Result<()> {
    let mut c = TestCluster::start(3).await?;
    let id = c.add_node().await?;
    let (status, body) = add(&c, 1, id).await?;
    ensure!(status == 201, "adding node {id}: {status} {body}");
    let leader = c.leader().await?;
    c.poll("the learner to catch up", || async {
        let (_, m) = c.get_json(leader, "/v1/admin/members").await?;
        Ok(m["members"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["id"] == id && n["lag"].as_u64() == Some(0)))
    })
    .await?;
    // Without the other two voters the joint configuration cannot commit.
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|n| *n != leader).collect();
    for f in &followers {
        c.pause(*f)?;
    }
    let promoting = {
        let (http, url) = (
            c.http.clone(),
            c.url(leader, &format!("/v1/admin/members/{id}/promote")),
        );
        tokio::spawn(async move { send(http.post(url)).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, body) = send(
        c.http
            .delete(c.url(leader, &format!("/v1/admin/members/{id}"))),
    )
    .await?;
    ensure!(
        status == 409 && body["error"]["code"] == "membership_change_in_progress",
        "a second change while one is in flight: {status} {body}"
    );
    let (status, body) = promoting.await??;
    ensure!(
        status == 504 && body["error"]["code"] == "outcome_unknown",
        "a change that cannot commit: {status} {body}"
    );
    for f in &followers {
        c.resume(*f)?;
    }
    // The followers, paused past their election timeout, may elect a leader whose log
    // never had the uncommitted joint configuration: then the change is gone, as its
    // 504 allowed. Asking again (as `kvctl member promote` does) completes it either way.
    c.poll("the promotion to complete", || async {
        match voters(&c, 1).await {
            Ok((ids, joint)) if ids.contains(&id) && !joint => Ok(true),
            Ok((_, false)) => {
                let path = format!("/v1/admin/members/{id}/promote");
                let _ = send(c.http.post(c.url(1, &path))).await;
                Ok(false)
            }
            _ => Ok(false),
        }
    })
    .await?;
    let (status, body) = send(c.http.delete(c.url(leader, "/v1/admin/members/99"))).await?;
    ensure!(
        status == 404 && body["error"]["code"] == "node_not_found",
        "{status} {body}"
    );
    let (status, body) = add(&c, leader, 2).await?;
    ensure!(
        status == 409 && body["error"]["code"] == "node_id_used",
        "{status} {body}"
    );
    same_digest(&c, &[1, 2, 3, 4]).await?;
    c.pass();
    Ok(())
}

/// A rolling restart (each node in turn: SIGTERM, down past the election timeout, start
/// again, wait until ready) under writes from kv-client loses no request: its retries
/// ride out each restart and the election that follows the leader's. The longest pause
/// a writer saw is printed.
#[tokio::test]
async fn a_rolling_restart_under_load_loses_no_request() -> Result<()> {
    use kv_client::{KvClient, RetryPolicy, SetOptions};
    let mut c = TestCluster::start(3).await?;
    let endpoints: Vec<String> = c.nodes.iter().map(|n| c.url(n.id, "")).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let t0 = Instant::now();
    let mut writers = vec![];
    for w in 0..4 {
        let client = KvClient::with_policy(
            endpoints.clone(),
            RetryPolicy {
                deadline: Duration::from_secs(20),
                ..RetryPolicy::default()
            },
        )?;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let (mut done, mut failed, mut longest) = (0u64, vec![], (Duration::ZERO, 0));
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                match client
                    .set(&format!("rolling/{w}"), &done, SetOptions::default())
                    .await
                {
                    Ok(_) => done += 1,
                    Err(e) => failed.push(e.to_string()),
                }
                longest = longest.max((started.elapsed(), (started - t0).as_millis()));
            }
            (done, failed, longest)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leader = c.leader().await?;
    // The leader last, as an operator would.
    let order: Vec<u64> = [1, 2, 3]
        .into_iter()
        .filter(|n| *n != leader)
        .chain([leader])
        .collect();
    for id in order {
        if id == leader {
            // Hand leadership over first, so the leader's restart costs no election.
            let (status, body) = send(c.http.post(c.url(id, "/v1/admin/leader"))).await?;
            ensure!(status == 200, "leader move: {status} {body}");
            println!("{} ms: leadership moved: {body}", t0.elapsed().as_millis());
        }
        println!("{} ms: stopping node {id}", t0.elapsed().as_millis());
        c.stop(id).await?;
        // Down for longer than followers wait before they elect (the leader lease and
        // the election timeout, 2 s at most here), as a restart that upgrades a binary
        // or reboots a host is.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        c.start_again(id)?;
        c.wait_ready(id).await?;
        println!("{} ms: node {id} ready", t0.elapsed().as_millis());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let after = c.leader().await?;
    let (_, status) = c.get_json(after, "/v1/cluster").await?;
    println!(
        "leader {leader} before, {after} after, term now {}",
        status["term"]
    );
    ensure!(
        after != leader && status["term"].as_u64() > Some(1),
        "leadership moved before the leader's restart: {status}"
    );
    let (mut done, mut failed, mut longest) = (0, vec![], (Duration::ZERO, 0));
    for w in writers {
        let (d, f, l) = w.await?;
        done += d;
        failed.extend(f);
        longest = longest.max(l);
    }
    println!(
        "rolling restart: {done} writes acknowledged, {} failed, longest writer pause {} ms \
         (from {} ms)",
        failed.len(),
        longest.0.as_millis(),
        longest.1
    );
    ensure!(failed.is_empty(), "failed requests: {failed:?}");
    ensure!(done > 20, "only {done} writes");
    c.wait_ready_all().await?;
    same_digest(&c, &[1, 2, 3]).await?;
    c.pass();
    Ok(())
}

#[tokio::test]
async fn a_wiped_node_is_replaced_on_its_old_address() -> Result<()> {
    let mut c = TestCluster::start(3).await?;
    let load = Load::start(&c, &[1, 2, 3], 18)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Node 3's disk dies: the process and its data are gone for good.
    let (client_addr, raft_addr) = (c.client_addr(3), c.nodes[2].raft_addr);
    c.kill(3);
    std::fs::remove_dir_all(c.data_dir(3)?)?;
    let endpoints = format!("{},{}", c.url(1, ""), c.url(2, ""));
    let kvctl = tokio::process::Command::new(kv_tests::kvctl_binary()?)
        .env("KV_ENDPOINTS", &endpoints)
        .env_remove("KV_TOKEN")
        .args(["--timeout", "60", "member", "replace", "3"])
        .args(["--client-addr", &client_addr.to_string()])
        .args(["--raft-addr", &raft_addr.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // kvctl removes node 3 and adds its replacement as a learner, then waits for it.
    c.poll("the replacement to be added as a learner", || async {
        let (status, body) = c.get_json(1, "/v1/admin/members").await?;
        Ok(status == 200
            && body["members"].as_array().is_some_and(|ms| {
                ms.iter().all(|m| m["id"] != 3)
                    && ms
                        .iter()
                        .any(|m| m["id"] == 4 && m["client_addr"] == client_addr.to_string())
            }))
    })
    .await?;
    let id = c.add_node_at(client_addr, raft_addr).await?;
    ensure!(id == 4, "the harness numbers the new node {id}");
    let out = kvctl.wait_with_output().await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "kvctl member replace: {stdout} {stderr}"
    );
    ensure!(
        stderr.contains("id = 4") && stderr.contains("join = \""),
        "kvctl prints the new node's configuration lines: {stderr}"
    );
    let answer: Value = serde_json::from_str(&stdout)?;
    ensure!(answer["replaced_by"] == 4, "{answer}");
    let (mut ids, joint) = voters(&c, 1).await?;
    ids.sort_unstable();
    ensure!(ids == [1, 2, 4] && !joint, "voters {ids:?}, joint {joint}");
    // Clients that knew node 3's address reach its replacement there.
    c.wait_ready(4).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.check().await?;
    same_digest(&c, &[1, 2, 4]).await?;
    c.pass();
    Ok(())
}

#[tokio::test]
async fn leader_move_hands_over_to_the_named_voter_under_load() -> Result<()> {
    let c = TestCluster::start(3).await?;
    let load = Load::start(&c, &[1, 2, 3], 19)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leader = c.leader().await?;
    let target = c.other_than(leader);
    let via = [1, 2, 3]
        .into_iter()
        .find(|n| *n != leader && *n != target)
        .context("a third node")?;
    let (_, before) = c.get_json(leader, "/v1/cluster").await?;
    // Neither the leader nor a voter that still hears from it campaigns when asked.
    for id in [leader, target] {
        let (status, body) = send(c.http.post(c.url(id, "/v1/admin/campaign"))).await?;
        ensure!(
            status == 409 && body["error"]["code"] == "membership_refused",
            "node {id} asked to campaign: {status} {body}"
        );
    }
    let (_, still) = c.get_json(via, "/v1/cluster").await?;
    ensure!(
        still["leader_id"] == leader && still["term"] == before["term"],
        "refused campaigns changed nothing: {still}"
    );
    let (status, body) = send(
        c.http
            .post(c.url(via, "/v1/admin/leader"))
            .header("content-type", "application/json")
            .body(json!({ "to": 9 }).to_string()),
    )
    .await?;
    ensure!(
        status == 404 && body["error"]["code"] == "node_not_found",
        "moving to a node that is not a member: {status} {body}"
    );
    let started = Instant::now();
    let (status, body) = send(
        c.http
            .post(c.url(via, "/v1/admin/leader"))
            .header("content-type", "application/json")
            .body(json!({ "to": target }).to_string()),
    )
    .await?;
    let took = started.elapsed();
    ensure!(
        status == 200 && body["leader_id"] == target && body["previous_leader_id"] == leader,
        "leader move through node {via}: {status} {body}"
    );
    ensure!(
        body["term"].as_u64() > before["term"].as_u64(),
        "a new term: {before} then {body}"
    );
    println!(
        "leadership moved {leader} -> {target} in {} ms",
        took.as_millis()
    );
    c.poll("every node to follow the new leader", || async {
        for id in [1, 2, 3] {
            let (_, s) = c.get_json(id, "/v1/cluster").await?;
            if s["leader_id"] != target {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.check().await?;
    same_digest(&c, &[1, 2, 3]).await?;
    c.pass();
    Ok(())
}

#[tokio::test]
async fn a_removed_node_still_running_is_not_taken_for_the_node_added_on_its_address() -> Result<()>
{
    let c = TestCluster::start(3).await?;
    let leader = c.leader().await?;
    let old = c.other_than(leader);
    remove(&c, leader, old).await?;
    // The removed node still runs on its addresses with its log; a new node is added
    // there (its process never started). The leader must not take the old node's
    // answers for the new one's.
    let new = 4;
    let body = json!({
        "client_addr": c.client_addr(old).to_string(),
        "raft_addr": c.nodes[(old - 1) as usize].raft_addr.to_string(),
        "id": new,
    });
    let (status, added) = send(
        c.http
            .post(c.url(leader, "/v1/admin/members"))
            .header("content-type", "application/json")
            .body(body.to_string()),
    )
    .await?;
    ensure!(status == 201, "adding node {new}: {status} {added}");
    c.put_json(leader, "/v1/kv/after-add", "1").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, listing) = c.get_json(leader, "/v1/admin/members").await?;
    let matched = listing["members"]
        .as_array()
        .context("members")?
        .iter()
        .find(|m| m["id"] == new)
        .map(|m| m["matched_index"].clone());
    ensure!(
        matched == Some(Value::Null),
        "node {new} never ran, yet replicated: {listing}"
    );
    let path = format!("/v1/admin/members/{new}/promote");
    let (status, body) = send(c.http.post(c.url(leader, &path))).await?;
    ensure!(
        status == 409 && body["error"]["code"] == "not_caught_up",
        "promoting a node that never ran: {status} {body}"
    );
    ensure!(
        c.log_text(old)?.contains(&format!("not node {new}")),
        "node {old} says why it refused"
    );
    c.pass();
    Ok(())
}

#[tokio::test]
async fn a_joint_configuration_left_by_a_dead_leader_is_finished_by_the_next() -> Result<()> {
    let mut c = TestCluster::start(3).await?;
    // Node 3 leads, and dies the moment it has applied the joint configuration of a
    // promotion, before it can propose the final one.
    let x = 3;
    c.restart_with_env(x, &[("KV_CRASH_AT", "membership-joint-applied")])?;
    c.wait_ready(x).await?;
    let leader = c.leader().await?;
    if leader != x {
        let (status, body) = send(
            c.http
                .post(c.url(leader, "/v1/admin/leader"))
                .header("content-type", "application/json")
                .body(json!({ "to": x }).to_string()),
        )
        .await?;
        ensure!(
            status == 200,
            "moving leadership to node {x}: {status} {body}"
        );
    }
    let id = c.add_node().await?;
    let (status, body) = add(&c, 1, id).await?;
    ensure!(status == 201, "adding node {id}: {status} {body}");
    c.poll("the learner to catch up", || async {
        let (_, l) = c.get_json(1, "/v1/admin/members").await?;
        Ok(l["members"]
            .as_array()
            .is_some_and(|ms| ms.iter().any(|m| m["id"] == id && m["lag"] == 0)))
    })
    .await?;
    // The leader crashes while answering: no answer, or an error.
    let path = format!("/v1/admin/members/{id}/promote");
    let _ = c.http.post(c.url(x, &path)).send().await;
    c.poll(&format!("node {x} to crash"), || async {
        Ok(c.get_json(x, "/healthz").await.is_err())
    })
    .await?;
    c.kill(x);
    // The next leader finishes the change on its own: node 4 is a voter, and the
    // configuration is no longer joint.
    c.poll("a plain configuration with node 4 a voter", || async {
        let Ok((mut ids, joint)) = voters(&c, 1).await else {
            return Ok(false);
        };
        ids.sort_unstable();
        Ok(ids == [1, 2, 3, id] && !joint)
    })
    .await?;
    ensure!(
        c.log_text(x)?
            .contains("KV_CRASH_AT=membership-joint-applied: aborting here on purpose"),
        "node {x} crashed where it was meant to"
    );
    c.restart(x)?;
    c.wait_ready_all().await?;
    c.put_json(1, "/v1/kv/after-joint", "1").await?;
    same_digest(&c, &[1, 2, 3, id]).await?;
    c.pass();
    Ok(())
}
