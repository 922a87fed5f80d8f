//! kv-client against a real three-node cluster: every call, its failure cases, and
//! writes that stay exactly-once while the leader is killed and restarted.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use kv_client::{
    ClientError, Consistency, Created, KvClient, ReadOptions, RetryPolicy, SetOptions, Swapped,
};
use kv_tests::TestCluster;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

fn endpoints(c: &TestCluster, ids: &[u64]) -> Vec<String> {
    ids.iter()
        .map(|id| format!("http://{}", c.nodes[(*id - 1) as usize].client_addr))
        .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Lock {
    owner: String,
}

#[tokio::test]
async fn every_client_call_works_and_fails_as_typed() -> Result<()> {
    let mut c = TestCluster::start(3).await?;
    let leader = c.leader().await?;
    let follower = c.other_than(leader);
    // The first endpoint dies below: the client must move on to the others.
    let client = KvClient::new(endpoints(&c, &[follower, leader, 6 - leader - follower]))?;

    let meta = client
        .set(
            "cfg/app",
            &json!({"replicas": 3}),
            SetOptions {
                ttl: Some(Duration::from_secs(60)),
                keep_ttl: false,
            },
        )
        .await?;
    ensure!(
        meta.version == 1 && meta.expires_at_ms.is_some(),
        "{meta:?}"
    );
    let kept = client
        .set(
            "cfg/app",
            &json!({"replicas": 5}),
            SetOptions {
                ttl: None,
                keep_ttl: true,
            },
        )
        .await?;
    ensure!(
        kept.expires_at_ms == meta.expires_at_ms && kept.version == 2,
        "{kept:?}"
    );
    c.kill(follower);
    let got = client
        .get::<Value>("cfg/app")
        .await?
        .ok_or_else(|| anyhow::anyhow!("missing"))?;
    ensure!(
        got.value == json!({"replicas": 5}) && got.revision == kept.revision,
        "{got:?}"
    );
    let stale = client
        .get_with::<Value>(
            "cfg/app",
            ReadOptions {
                consistency: Consistency::Stale,
            },
        )
        .await?;
    ensure!(stale.is_some_and(|e| e.version == 2));

    // create: one winner, then the winner's entry.
    let mine = Lock { owner: "a".into() };
    let Created::Created(won) = client
        .create("locks/job", &mine, Some(Duration::from_secs(30)))
        .await?
    else {
        bail!("a fresh key must be created");
    };
    match client
        .create("locks/job", &Lock { owner: "b".into() }, None)
        .await?
    {
        Created::Exists(current) => ensure!(
            current.value == mine && current.revision == won.revision,
            "{current:?}"
        ),
        Created::Created(m) => bail!("created twice: {m:?}"),
    }

    // compare-and-set: swap at the right revision, the current entry otherwise.
    let Swapped::Swapped(next) = client
        .compare_and_set("locks/job", &Lock { owner: "c".into() }, won.revision)
        .await?
    else {
        bail!("CAS at the current revision must swap");
    };
    match client
        .compare_and_set("locks/job", &mine, won.revision)
        .await?
    {
        Swapped::Mismatch(Some(current)) => {
            ensure!(current.revision == next.revision, "{current:?}")
        }
        other => bail!("stale CAS: {other:?}"),
    }
    match client.compare_and_set("never", &mine, 1).await? {
        Swapped::Mismatch(None) => {}
        other => bail!("CAS on an absent key: {other:?}"),
    }
    match client.delete_if::<Lock>("locks/job", won.revision).await? {
        Swapped::Mismatch(Some(_)) => {}
        other => bail!("stale delete_if: {other:?}"),
    }
    ensure!(
        matches!(client.delete_if::<Lock>("locks/job", next.revision).await?, Swapped::Swapped(d) if d.deleted)
    );
    ensure!(client.get::<Lock>("locks/job").await?.is_none());
    ensure!(!client.delete("locks/job").await?.deleted);

    // list pages and delete_prefix.
    for i in 0..23 {
        client
            .set(&format!("list/{i:02}"), &i, SetOptions::default())
            .await?;
    }
    let listed = client.list_with::<u32>("list/", 7).collect_all().await?;
    ensure!(
        listed.iter().map(|e| e.value).collect::<Vec<_>>() == (0..23).collect::<Vec<u32>>(),
        "{listed:?}"
    );
    // The same pages as a Stream.
    let mut stream = client.list_with::<u32>("list/", 10).into_stream();
    let mut sizes = vec![];
    while let Some(page) = std::future::poll_fn(|cx| {
        futures_core::Stream::poll_next(std::pin::Pin::new(&mut stream), cx)
    })
    .await
    {
        sizes.push(page?.len());
    }
    ensure!(sizes == [10, 10, 3], "{sizes:?}");
    let deleted = client.delete_prefix("list/").await?;
    ensure!(client.list::<u32>("list/").collect_all().await?.is_empty());
    ensure!(client.get::<u32>("list/07").await?.is_none());
    let kept = client.set("list/new", &1, SetOptions::default()).await?;
    ensure!(kept.revision > deleted.revision, "{kept:?} {deleted:?}");
    let status = client.cluster().await?;
    ensure!(status["leader_id"].is_u64(), "{status}");

    // A caller's own idempotency key: a repeat, even from another client, applies nothing.
    let first = client
        .set_idempotent("hooks/evt_9", &1, SetOptions::default(), "evt_9")
        .await?;
    let other = KvClient::new(endpoints(&c, &[1, 2, 3]))?;
    let again = other
        .set_idempotent("hooks/evt_9", &1, SetOptions::default(), "evt_9")
        .await?;
    ensure!(again == first, "{again:?} {first:?}");
    ensure!(matches!(
        client
            .set_idempotent("k", &1, SetOptions::default(), "has space")
            .await,
        Err(ClientError::Input(_))
    ));

    // Typed failures, none retried.
    ensure!(matches!(
        client.set("", &1, SetOptions::default()).await,
        Err(ClientError::Input(_))
    ));
    match client.delete_prefix("").await {
        Err(ClientError::Rejected { status: 400, error }) if error.code == "invalid_prefix" => {}
        other => bail!("empty prefix: {other:?}"),
    }
    let huge = "x".repeat(1024 * 1024 + 10);
    match client.set("big", &huge, SetOptions::default()).await {
        Err(ClientError::Rejected { status: 413, .. }) => {}
        other => bail!("oversized value: {other:?}"),
    }
    c.pass();
    Ok(())
}

#[tokio::test]
async fn with_every_node_down_calls_fail_as_unavailable_by_the_deadline() -> Result<()> {
    let mut c = TestCluster::start(3).await?;
    let policy = RetryPolicy {
        deadline: Duration::from_millis(800),
        ..RetryPolicy::default()
    };
    let client = KvClient::with_policy(endpoints(&c, &[1, 2, 3]), policy)?;
    for id in 1..=3 {
        c.kill(id);
    }
    let started = std::time::Instant::now();
    match client.set("k", &1, SetOptions::default()).await {
        Err(ClientError::Unavailable { attempts, .. }) => {
            ensure!(attempts >= 3, "{attempts} attempts")
        }
        other => bail!("expected Unavailable: {other:?}"),
    }
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    c.pass();
    Ok(())
}

#[tokio::test]
async fn writes_through_two_leader_failovers_are_each_applied_exactly_once() -> Result<()> {
    let mut c = TestCluster::start(3).await?;
    let all = endpoints(&c, &[1, 2, 3]);
    let acked = Arc::new(AtomicUsize::new(0));
    // The writers go on until both failovers are over, however fast the machine.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..8usize {
        let client = KvClient::new(all.iter().cycle().skip(w % 3).take(3).cloned())?;
        let (acked, stop) = (acked.clone(), stop.clone());
        writers.spawn(async move {
            let mut outcomes = vec![];
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let key = format!("failover/{w}-{i:03}");
                let result = client
                    .set(&key, &json!({ "w": w, "i": i }), SetOptions::default())
                    .await;
                if result.is_ok() {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                outcomes.push((key, result.map_err(|e| e.to_string())));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            outcomes
        });
    }
    for round in 1..=2 {
        let target = 250 * round;
        c.poll(&format!("{target} acknowledged writes"), || async {
            Ok(acked.load(Ordering::Relaxed) >= target)
        })
        .await?;
        let leader = c.leader().await?;
        let so_far = acked.load(Ordering::Relaxed);
        eprintln!("round {round}: killing leader {leader} after {so_far} acknowledged writes");
        c.kill(leader);
        c.leader().await?;
        c.restart(leader)?;
        c.wait_ready(leader).await?;
    }
    let after = acked.load(Ordering::Relaxed) + 100;
    c.poll(&format!("{after} acknowledged writes"), || async {
        Ok(acked.load(Ordering::Relaxed) >= after)
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    let mut attempted = 0;
    let mut checked = 0;
    let checker = KvClient::new(all.clone())?;
    while let Some(joined) = writers.join_next().await {
        for (key, result) in joined? {
            attempted += 1;
            let stored = checker.get::<Value>(&key).await?;
            match (result, stored) {
                (Ok(meta), Some(entry)) => {
                    ensure!(
                        entry.version == 1 && meta.version == 1,
                        "{key} applied twice: {entry:?}"
                    );
                    checked += 1;
                }
                (Ok(meta), None) => bail!("{key} was acknowledged ({meta:?}) but is missing"),
                // Not acknowledged (the deadline passed): absent or applied once.
                (Err(_), stored) => {
                    ensure!(stored.is_none_or(|e| e.version == 1), "{key} applied twice")
                }
            }
        }
    }
    // A write fails only if its deadline passes during a failover.
    ensure!(
        checked * 10 >= attempted * 9,
        "only {checked} of {attempted} writes were acknowledged"
    );
    c.pass();
    Ok(())
}
