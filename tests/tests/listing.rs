//! Prefix listing and prefix delete on a real three-node cluster.

use std::collections::BTreeSet;

use anyhow::{ensure, Result};
use kv_tests::TestCluster;
use serde_json::Value;

/// Writes `keys` with the given query string, 64 at a time, spread over the nodes;
/// returns the latest expiry among them.
async fn write_all(c: &TestCluster, keys: &[String], query: &str) -> Result<u64> {
    let mut latest_expiry = 0;
    for chunk in keys.chunks(64) {
        let mut writes = tokio::task::JoinSet::new();
        for (i, key) in chunk.iter().enumerate() {
            let request = c
                .http
                .put(c.url(i as u64 % 3 + 1, &format!("/v1/kv/{key}{query}")))
                .header("content-type", "application/json")
                .body(format!("\"{key}\""));
            writes.spawn(async move { TestCluster::json(request.send().await?).await });
        }
        while let Some(joined) = writes.join_next().await {
            let (status, body) = joined??;
            ensure!(status == 200, "{status} {body}");
            latest_expiry = latest_expiry.max(body["expires_at_ms"].as_u64().unwrap_or(0));
        }
    }
    Ok(latest_expiry)
}

/// Pages through `prefix` on `node`, returning every key seen, in order.
async fn list_all(
    c: &TestCluster,
    node: u64,
    prefix: &str,
    limit: usize,
    extra: &str,
) -> Result<Vec<String>> {
    let mut keys = vec![];
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/v1/kv?prefix={prefix}&limit={limit}{extra}");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let (status, page) = c.get_json(node, &path).await?;
        ensure!(status == 200, "{path}: {status} {page}");
        let items = page["items"].as_array().cloned().unwrap_or_default();
        ensure!(items.len() <= limit, "page larger than the limit");
        for item in &items {
            let key = item["key"].as_str().unwrap_or_default().to_owned();
            if !extra.contains("keys_only=true") {
                ensure!(item["value"] == Value::String(key.clone()), "{item}");
            } else {
                ensure!(
                    item.get("value").is_none(),
                    "keys_only returned a value: {item}"
                );
            }
            keys.push(key);
        }
        match page["next"].as_str() {
            Some(next) => {
                ensure!(
                    Some(next) == keys.last().map(String::as_str),
                    "next is the last key returned"
                );
                after = Some(next.to_owned());
            }
            None => return Ok(keys),
        }
    }
}

#[tokio::test]
async fn prefix_listing_pages_through_every_live_key_once_and_prefix_delete_is_exact() -> Result<()>
{
    let c = TestCluster::start(3).await?;
    let live: Vec<String> = (0..2500).map(|i| format!("users/{i:05}")).collect();
    let expiring: Vec<String> = (0..50).map(|i| format!("users/{i:05}x")).collect();
    let others: Vec<String> = ["user", "users", "usersX/1", "orders/1", "a"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    write_all(&c, &live, "").await?;
    let expires_at = write_all(&c, &expiring, "?ttl=1").await?;
    write_all(&c, &others, "").await?;
    // Let the short TTLs pass: expired keys must never be listed.
    c.poll("the short TTLs to pass", || async {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64;
        Ok(now > expires_at)
    })
    .await?;

    let listed = list_all(&c, 2, "users/", 1000, "").await?;
    ensure!(
        listed == live,
        "linearizable listing: {} keys, want {}",
        listed.len(),
        live.len()
    );
    let small_pages = list_all(&c, 3, "users/", 7, "&keys_only=true").await?;
    ensure!(small_pages == live, "paging by 7 lost or repeated keys");
    let everything: BTreeSet<String> = list_all(&c, 1, "", 1000, "").await?.into_iter().collect();
    ensure!(
        everything.len() == live.len() + others.len(),
        "{} keys in all",
        everything.len()
    );

    let r = c
        .http
        .delete(c.url(3, "/v1/kv?prefix=users/"))
        .send()
        .await?;
    let (status, body) = TestCluster::json(r).await?;
    ensure!(
        status == 200 && body["revision"].is_u64() && body.get("deleted").is_none(),
        "{status} {body}"
    );
    let cluster = &c;
    for node in 1..=3 {
        c.poll(
            &format!("node {node} to apply the prefix delete"),
            || async move {
                let path = "/v1/kv?prefix=users/&consistency=stale";
                Ok(cluster.get_json(node, path).await?.1["items"]
                    .as_array()
                    .is_some_and(Vec::is_empty))
            },
        )
        .await?;
        let (_, rest) = c.get_json(node, "/v1/kv?consistency=stale").await?;
        let rest: Vec<&str> = rest["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["key"].as_str())
            .collect();
        ensure!(
            rest == ["a", "orders/1", "user", "users", "usersX/1"],
            "node {node}: {rest:?}"
        );
    }
    // The leader's purges remove the 2,500 entries from every replica, which then agree.
    c.poll("every node to purge the deleted entries alike", || async {
        let mut digests = vec![];
        for node in 1..=3 {
            let (_, digest) = cluster.get_json(node, "/v1/admin/digest").await?;
            digests.push((
                digest["keys"].clone(),
                digest["applied_index"].clone(),
                digest["digest"].clone(),
            ));
        }
        Ok(digests[0].0 == 5 && digests.iter().all(|d| d == &digests[0]))
    })
    .await?;
    c.pass();
    Ok(())
}

#[tokio::test]
async fn listing_and_prefix_delete_refuse_bad_input() -> Result<()> {
    let c = TestCluster::start(3).await?;
    let (status, _) = c.put_json(1, "/v1/kv/keep", "1").await?;
    ensure!(status == 200);
    for (path, code) in [
        ("/v1/kv?limit=0", "invalid_limit"),
        ("/v1/kv?limit=1001", "invalid_limit"),
        ("/v1/kv?limit=ten", "invalid_limit"),
        ("/v1/kv?keys_only=maybe", "invalid_query"),
        ("/v1/kv?consistency=eventual", "invalid_consistency"),
        ("/v1/kv?prefx=a", "invalid_query"),
    ] {
        let (status, body) = c.get_json(2, path).await?;
        ensure!(
            status == 400 && body["error"]["code"] == code,
            "{path}: {status} {body}"
        );
    }
    for path in ["/v1/kv", "/v1/kv?prefix=", "/v1/kv?prefix"] {
        let (status, body) = c.delete(3, path).await?;
        ensure!(
            status == 400 && body["error"]["code"] == "invalid_prefix",
            "{path}: {status} {body}"
        );
    }
    ensure!(
        c.get_json(1, "/v1/kv/keep").await?.0 == 200,
        "a refused prefix delete deleted something"
    );
    c.pass();
    Ok(())
}
