//! Idempotency keys on a real three-node cluster: lost responses, duplicate deliveries.

use anyhow::{bail, ensure, Result};
use kv_tests::TestCluster;
use serde_json::{json, Value};

/// A PUT carrying an Idempotency-Key (and optionally If-None-Match: *).
fn keyed_put(
    c: &TestCluster,
    node: u64,
    path: &str,
    idem: &str,
    body: &str,
    create: bool,
) -> reqwest::RequestBuilder {
    let mut r = c
        .http
        .put(c.url(node, path))
        .header("content-type", "application/json")
        .header("idempotency-key", idem)
        .body(body.to_owned());
    if create {
        r = r.header("if-none-match", "*");
    }
    r
}

async fn send(r: reqwest::RequestBuilder) -> Result<(u16, bool, Value)> {
    let response = r.send().await?;
    let replayed = response
        .headers()
        .get("idempotency-replayed")
        .is_some_and(|v| v == "true");
    let (status, body) = TestCluster::json(response).await?;
    Ok((status, replayed, body))
}

#[tokio::test]
async fn a_create_whose_answer_was_lost_is_replayed_at_another_node_after_the_leader_dies(
) -> Result<()> {
    let mut c = TestCluster::start(3).await?;
    let leader = c.leader().await?;
    let other = c.other_than(leader);
    let first = keyed_put(
        &c,
        leader,
        "/v1/kv/orders/77",
        "order-77-attempt",
        r#"{"total":5}"#,
        true,
    );
    // The first attempt goes out; the client never reads its answer.
    let attempt = tokio::spawn(first.send());
    c.poll(
        "the first attempt to be applied on another node",
        || async {
            Ok(c.get_json(other, "/v1/kv/orders/77?consistency=stale")
                .await?
                .0
                == 200)
        },
    )
    .await?;
    attempt.abort();
    c.kill(leader);
    c.leader().await?;

    let retry = keyed_put(
        &c,
        other,
        "/v1/kv/orders/77",
        "order-77-attempt",
        r#"{"total":5}"#,
        true,
    );
    let (status, replayed, body) = send(retry).await?;
    ensure!(
        status == 201 && replayed,
        "the retry must get the original 201, replayed: {status} {replayed} {body}"
    );
    let (_, stored) = c.get_json(other, "/v1/kv/orders/77").await?;
    ensure!(stored["version"] == 1, "written once: {stored}");
    ensure!(
        stored["revision"] == body["revision"] && stored["value"] == json!({"total": 5}),
        "{stored} vs {body}"
    );
    c.pass();
    Ok(())
}

#[tokio::test]
async fn duplicate_webhook_deliveries_at_different_nodes_let_exactly_one_handler_proceed(
) -> Result<()> {
    let c = TestCluster::start(3).await?;
    for delivery in 0..5 {
        let path = format!("/v1/kv/webhooks/delivery-{delivery}?ttl=3600");
        let idem = format!("delivery-{delivery}");
        let mut copies = tokio::task::JoinSet::new();
        for copy in 0..5u64 {
            copies.spawn(send(keyed_put(
                &c,
                copy % 3 + 1,
                &path,
                &idem,
                r#""seen""#,
                true,
            )));
        }
        let mut proceed = 0;
        let mut revisions = vec![];
        while let Some(joined) = copies.join_next().await {
            let (status, replayed, body) = joined??;
            ensure!(status == 201, "delivery {delivery}: {status} {body}");
            if !replayed {
                proceed += 1;
            }
            revisions.push(body["revision"].clone());
        }
        ensure!(
            proceed == 1,
            "delivery {delivery}: {proceed} handlers proceeded"
        );
        ensure!(
            revisions.iter().all(|r| *r == revisions[0]),
            "{revisions:?}"
        );
    }
    c.pass();
    Ok(())
}

#[tokio::test]
async fn an_idempotency_key_reused_for_another_request_is_refused() -> Result<()> {
    let c = TestCluster::start(3).await?;
    let (status, replayed, _) = send(keyed_put(&c, 1, "/v1/kv/a", "k-1", "1", false)).await?;
    ensure!(status == 200 && !replayed);
    let (status, replayed, _) = send(keyed_put(&c, 2, "/v1/kv/a", "k-1", "1", false)).await?;
    ensure!(status == 200 && replayed, "same request: replayed");
    for (path, body, create) in [
        ("/v1/kv/a", "2", false),
        ("/v1/kv/b", "1", false),
        ("/v1/kv/a", "1", true),
    ] {
        let (status, _, answer) = send(keyed_put(&c, 3, path, "k-1", body, create)).await?;
        ensure!(
            status == 422 && answer["error"]["code"] == "idempotency_key_reused",
            "{path}: {status} {answer}"
        );
    }
    let (_, a) = c.get_json(1, "/v1/kv/a").await?;
    ensure!(a["value"] == 1 && a["version"] == 1, "{a}");
    ensure!(c.get_json(1, "/v1/kv/b").await?.0 == 404);

    // Deletes and prefix deletes are recorded too.
    let del = || {
        c.http
            .delete(c.url(2, "/v1/kv/a"))
            .header("idempotency-key", "del-a")
    };
    let (status, replayed, first) = send(del()).await?;
    ensure!(
        status == 200 && !replayed && first["deleted"] == true,
        "{first}"
    );
    let (status, replayed, again) = send(del()).await?;
    ensure!(
        status == 200 && replayed && again == first,
        "the retry answers deleted=true again: {again}"
    );

    for bad in ["", &"x".repeat(256), "has space", "tab\there"] {
        let request = c
            .http
            .put(c.url(1, "/v1/kv/c"))
            .header("content-type", "application/json")
            .body("1");
        let response = match reqwest::header::HeaderValue::from_str(bad) {
            Ok(v) => request.header("idempotency-key", v).send().await?,
            Err(_) => continue,
        };
        let (status, body) = TestCluster::json(response).await?;
        if status != 400 || body["error"]["code"] != "invalid_idempotency_key" {
            bail!("key {bad:?}: {status} {body}");
        }
    }
    ensure!(
        c.get_json(1, "/v1/kv/c").await?.0 == 404,
        "a refused write wrote something"
    );
    c.pass();
    Ok(())
}

/// A PUT numbered in a client session.
fn session_put(
    c: &TestCluster,
    node: u64,
    path: &str,
    session: &str,
    body: &str,
) -> reqwest::RequestBuilder {
    c.http
        .put(c.url(node, path))
        .header("content-type", "application/json")
        .header("kv-session", session)
        .body(body.to_owned())
}

#[tokio::test]
async fn session_writes_apply_once_across_nodes_and_end_when_idle() -> Result<()> {
    let tuning = kv_tests::Tuning {
        limits: vec!["session_idle_s = 2".into()],
        ..kv_tests::Tuning::default()
    };
    let c = TestCluster::start_tuned(3, tuning).await?;
    let leader = c.leader().await?;
    let follower = c.other_than(leader);
    // Opened through a follower, which forwards to the leader.
    let r = c.http.post(c.url(follower, "/v1/sessions")).send().await?;
    let (status, opened) = TestCluster::json(r).await?;
    ensure!(status == 201, "{status} {opened}");
    let id = opened["session"].as_str().unwrap_or_default().to_owned();
    ensure!(id.len() == 32, "{opened}");

    let first = format!("{id}; seq=1; ack=1");
    let (status, replayed, body) = send(session_put(&c, leader, "/v1/kv/s/a", &first, "1")).await?;
    ensure!(status == 200 && !replayed, "{status} {body}");
    // The retry, at another node, gets the first answer and changes nothing.
    let (status, replayed, again) =
        send(session_put(&c, follower, "/v1/kv/s/a", &first, "1")).await?;
    ensure!(
        status == 200 && replayed && again == body,
        "{status} {again}"
    );
    // The same number with another request is refused.
    let (status, _, other) = send(session_put(&c, leader, "/v1/kv/s/a", &first, "2")).await?;
    ensure!(
        status == 422 && other["error"]["code"] == "idempotency_key_reused",
        "{status} {other}"
    );
    // Write 2 acknowledges write 1: a late copy of write 1 is not applied again.
    let second = format!("{id}; seq=2; ack=2");
    let (status, _, _) = send(session_put(&c, leader, "/v1/kv/s/b", &second, "1")).await?;
    ensure!(status == 200, "write 2: {status}");
    let (status, _, late) = send(session_put(&c, follower, "/v1/kv/s/a", &first, "1")).await?;
    ensure!(
        status == 422 && late["error"]["code"] == "session_expired",
        "{status} {late}"
    );
    let (_, entry) = c.get_json(leader, "/v1/kv/s/a").await?;
    ensure!(entry["version"] == 1, "{entry}");
    // A write numbered past the window, or in a session never opened, is refused.
    let wide = format!("{id}; seq=300; ack=2");
    let (status, _, body) = send(session_put(&c, leader, "/v1/kv/s/c", &wide, "1")).await?;
    ensure!(
        status == 400 && body["error"]["code"] == "invalid_session",
        "{status} {body}"
    );
    let unknown = format!("{:032x}; seq=1; ack=1", 12345);
    let (status, _, body) = send(session_put(&c, leader, "/v1/kv/s/c", &unknown, "1")).await?;
    ensure!(
        status == 422 && body["error"]["code"] == "session_expired",
        "{status} {body}"
    );
    // Two idle seconds end the session on every node (the leader's ticker proposes it).
    c.poll("the idle session to end", || async {
        let (_, digest) = c.get_json(follower, "/v1/admin/digest").await?;
        Ok(digest["sessions"] == 0)
    })
    .await?;
    let third = format!("{id}; seq=3; ack=3");
    let (status, _, body) = send(session_put(&c, leader, "/v1/kv/s/c", &third, "1")).await?;
    ensure!(
        status == 422 && body["error"]["code"] == "session_expired",
        "{status} {body}"
    );
    let (status, _) = c.get_json(leader, "/v1/kv/s/c").await?;
    ensure!(status == 404, "a write in an ended session was applied");
    c.pass();
    Ok(())
}
