//! Conditional writes on a real three-node cluster: create races, compare-and-swap.

use anyhow::{bail, ensure, Result};
use kv_tests::TestCluster;
use serde_json::{json, Value};

/// Extra request headers.
type Headers = Vec<(&'static str, String)>;

/// PUT with extra headers; returns status, ETag and JSON body.
async fn put_with(
    c: &TestCluster,
    node: u64,
    path: &str,
    body: String,
    headers: &[(&str, String)],
) -> Result<(u16, Option<String>, Value)> {
    let mut request = c
        .http
        .put(c.url(node, path))
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await?;
    let etag = response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (status, body) = TestCluster::json(response).await?;
    Ok((status, etag, body))
}

#[tokio::test]
async fn create_race_has_exactly_one_winner_and_every_loser_learns_it() -> Result<()> {
    let c = TestCluster::start(3).await?;
    for round in 0..20 {
        let path = format!("/v1/kv/race/{round}");
        let mut racers = tokio::task::JoinSet::new();
        for client in 0..32u64 {
            let request = c
                .http
                .put(c.url(client % 3 + 1, &path))
                .header("content-type", "application/json")
                .header("if-none-match", "*")
                .body(json!({ "client": client }).to_string());
            racers.spawn(async move {
                let response = request.send().await?;
                let etag = response
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let (status, body) = TestCluster::json(response).await?;
                anyhow::Ok((client, status, etag, body))
            });
        }
        let mut winners = vec![];
        let mut losers = vec![];
        while let Some(joined) = racers.join_next().await {
            let (client, status, etag, body) = joined??;
            match status {
                201 => winners.push((client, etag, body)),
                412 => losers.push((etag, body)),
                other => bail!("round {round} client {client}: {other} {body}"),
            }
        }
        ensure!(
            winners.len() == 1,
            "round {round}: {} winners",
            winners.len()
        );
        let (winner, etag, won) = &winners[0];
        let revision = won["revision"].as_u64().unwrap_or(0);
        ensure!(
            etag.as_deref() == Some(format!("\"{revision}\"").as_str()),
            "winner etag {etag:?}"
        );
        for (etag, lost) in &losers {
            ensure!(
                lost["error"]["code"] == "key_exists",
                "round {round}: {lost}"
            );
            ensure!(
                lost["current"]["value"] == json!({ "client": winner }),
                "round {round}: {lost}"
            );
            ensure!(
                lost["current"]["revision"] == revision,
                "round {round}: {lost} vs {won}"
            );
            ensure!(
                etag.as_deref() == Some(format!("\"{revision}\"").as_str()),
                "loser etag {etag:?}"
            );
        }
        let (_, got) = c.get_json(1 + round % 3, &path).await?;
        ensure!(
            got["value"] == json!({ "client": winner }) && got["version"] == 1,
            "{got}"
        );
    }
    c.pass();
    Ok(())
}

#[tokio::test]
async fn compare_and_swap_counter_counts_every_increment_exactly_once() -> Result<()> {
    let c = TestCluster::start(3).await?;
    let (status, _) = c.put_json(1, "/v1/kv/counter", "0").await?;
    ensure!(status == 200);
    let c = std::sync::Arc::new(c);
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..8u64 {
        let c = c.clone();
        clients.spawn(async move {
            let node = client % 3 + 1;
            let (_, mut current) = c.get_json(node, "/v1/kv/counter").await?;
            for _ in 0..50 {
                loop {
                    let n = current["value"].as_u64().unwrap_or(u64::MAX);
                    let revision = current["revision"].as_u64().unwrap_or(0);
                    let headers = [("if-match", format!("\"{revision}\""))];
                    let (status, _, body) =
                        put_with(&c, node, "/v1/kv/counter", (n + 1).to_string(), &headers).await?;
                    match status {
                        200 => {
                            current = json!({ "value": n + 1, "revision": body["revision"] });
                            break;
                        }
                        // Lost the race: the answer carries the entry to try again from.
                        412 if body["error"]["code"] == "revision_mismatch" => {
                            current = body["current"].clone()
                        }
                        other => bail!("client {client}: {other} {body}"),
                    }
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = clients.join_next().await {
        joined??;
    }
    for node in 1..=3 {
        let (_, got) = c.get_json(node, "/v1/kv/counter").await?;
        ensure!(got["value"] == 400, "node {node}: {got}");
        ensure!(
            got["version"] == 401,
            "one version per increment plus the initial write: {got}"
        );
    }
    if let Ok(c) = std::sync::Arc::try_unwrap(c) {
        c.pass();
    }
    Ok(())
}

#[tokio::test]
async fn conditional_delete_keep_ttl_and_bad_preconditions() -> Result<()> {
    let c = TestCluster::start(3).await?;
    let (_, _, first) = put_with(&c, 2, "/v1/kv/doc?ttl=600", "1".into(), &[]).await?;
    let rev = first["revision"].as_u64().unwrap_or(0);
    let expires = first["expires_at_ms"].clone();

    // keep_ttl keeps the expiry through an update.
    let (status, _, kept) = put_with(&c, 3, "/v1/kv/doc?keep_ttl=true", "2".into(), &[]).await?;
    ensure!(
        status == 200 && kept["expires_at_ms"] == expires && kept["version"] == 2,
        "{kept}"
    );

    // A delete at a stale revision fails and says what is there.
    let r = c
        .http
        .delete(c.url(1, "/v1/kv/doc"))
        .header("if-match", format!("\"{rev}\""))
        .send()
        .await?;
    let (status, body) = TestCluster::json(r).await?;
    ensure!(
        status == 412 && body["error"]["code"] == "revision_mismatch",
        "{status} {body}"
    );
    ensure!(body["current"]["value"] == 2, "{body}");
    let now = kept["revision"].as_u64().unwrap_or(0);
    let r = c
        .http
        .delete(c.url(1, "/v1/kv/doc"))
        .header("if-match", format!("\"{now}\""))
        .send()
        .await?;
    let (status, body) = TestCluster::json(r).await?;
    ensure!(status == 200 && body["deleted"] == true, "{status} {body}");

    // CAS on an absent key: 412 with current null.
    let (status, _, body) = put_with(
        &c,
        1,
        "/v1/kv/doc",
        "3".into(),
        &[("if-match", "\"1\"".into())],
    )
    .await?;
    ensure!(
        status == 412 && body["current"].is_null(),
        "{status} {body}"
    );

    let bad: Vec<(&str, Headers, &str)> = vec![
        (
            "/v1/kv/bad",
            vec![("if-match", "7".into())],
            "invalid_precondition",
        ),
        (
            "/v1/kv/bad",
            vec![("if-match", "\"x\"".into())],
            "invalid_precondition",
        ),
        (
            "/v1/kv/bad",
            vec![("if-match", "\"\"".into())],
            "invalid_precondition",
        ),
        (
            "/v1/kv/bad",
            vec![("if-none-match", "\"3\"".into())],
            "invalid_precondition",
        ),
        (
            "/v1/kv/bad",
            vec![("if-none-match", "*".into()), ("if-match", "\"1\"".into())],
            "conflicting_preconditions",
        ),
        ("/v1/kv/bad?ttl=5&keep_ttl=true", vec![], "conflicting_ttl"),
        ("/v1/kv/bad?keep_ttl=yes", vec![], "invalid_keep_ttl"),
    ];
    for (path, headers, code) in bad {
        let (status, _, body) = put_with(&c, 2, path, "1".into(), &headers).await?;
        ensure!(
            status == 400 && body["error"]["code"] == code,
            "{path} {headers:?}: {status} {body}"
        );
    }
    let r = c
        .http
        .delete(c.url(2, "/v1/kv/bad"))
        .header("if-none-match", "*")
        .send()
        .await?;
    let (status, body) = TestCluster::json(r).await?;
    ensure!(
        status == 400 && body["error"]["code"] == "invalid_precondition",
        "{status} {body}"
    );
    ensure!(
        c.get_json(1, "/v1/kv/bad").await?.0 == 404,
        "a refused write wrote something"
    );
    c.pass();
    Ok(())
}
