//! Tokens on a real three-node cluster: what each permission allows, listing filtered to
//! a token's prefixes, revocation on every node, idempotency and sessions per token.

use anyhow::{ensure, Context, Result};
use kv_tests::{TestCluster, Tuning};
use serde_json::{json, Value};

async fn auth_cluster() -> Result<TestCluster> {
    TestCluster::start_tuned(
        3,
        Tuning {
            auth: true,
            ..Tuning::default()
        },
    )
    .await
}

/// Creates a token through node `node` (as the admin) and returns `(id, token)`.
async fn create_token(c: &TestCluster, node: u64, spec: Value) -> Result<(String, String)> {
    let r = c
        .http
        .post(c.url(node, "/v1/tokens"))
        .header("content-type", "application/json")
        .body(spec.to_string())
        .send()
        .await?;
    let (status, body) = TestCluster::json(r).await?;
    ensure!(status == 201, "creating a token: {status} {body}");
    let id = body["id"].as_str().context("id")?.to_owned();
    let token = body["token"].as_str().context("token")?.to_owned();
    ensure!(
        token.starts_with("kvt_") && body.get("hash").is_none(),
        "{body}"
    );
    ensure!(
        body["created_ms"].as_u64().is_some_and(|t| t > 0),
        "the answer shows when the token was created: {body}"
    );
    Ok((id, token))
}

/// A request as `token`.
async fn call(
    c: &TestCluster,
    token: &str,
    method: reqwest::Method,
    node: u64,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Result<(u16, Value)> {
    let mut r = c.http.request(method, c.url(node, path)).bearer_auth(token);
    if let Some(body) = body {
        r = r
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    for (name, value) in headers {
        r = r.header(*name, *value);
    }
    TestCluster::json(r.send().await?).await
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

use reqwest::Method as M;

#[tokio::test]
async fn each_permission_allows_what_it_grants_and_nothing_else() -> Result<()> {
    let c = auth_cluster().await?;
    let leader = c.leader().await?;
    let follower = c.other_than(leader);
    let (_, reader) = create_token(
        &c,
        follower,
        json!({"name": "dashboards", "grants": [{"prefix": "", "access": "read"}]}),
    )
    .await?;
    let (_, app1) = create_token(
        &c,
        leader,
        json!({"name": "app1", "grants": [{"prefix": "app1/", "access": "write"}]}),
    )
    .await?;
    for node in [leader, follower] {
        let (s, b) = call(&c, &app1, M::PUT, node, "/v1/kv/app1/a", Some("1"), &[]).await?;
        ensure!(
            s == 200,
            "app1 writes its own keys through node {node}: {s} {b}"
        );
    }
    ensure!(c.put_json(leader, "/v1/kv/app2/a", "2").await?.0 == 200);

    // Read-only: reads anything, writes nothing.
    let (s, b) = call(&c, &reader, M::GET, follower, "/v1/kv/app2/a", None, &[]).await?;
    ensure!(s == 200 && b["value"] == 2, "{s} {b}");
    for (method, path) in [(M::PUT, "/v1/kv/app1/a"), (M::DELETE, "/v1/kv/app1/a")] {
        let (s, b) = call(&c, &reader, method, follower, path, Some("3"), &[]).await?;
        ensure!(s == 403 && code(&b) == "forbidden", "read-only: {s} {b}");
    }
    let (s, b) = call(
        &c,
        &reader,
        M::DELETE,
        leader,
        "/v1/kv?prefix=app",
        None,
        &[],
    )
    .await?;
    ensure!(s == 403, "read-only prefix delete: {s} {b}");
    let (s, b) = call(&c, &reader, M::POST, follower, "/v1/sessions", None, &[]).await?;
    ensure!(s == 403, "a read-only token opens no session: {s} {b}");

    // A prefix token: nothing outside its prefix, not even by a stale read or a list.
    for path in [
        "/v1/kv/app2/a",
        "/v1/kv/app2/a?consistency=stale",
        "/v1/kv/app1",
    ] {
        let (s, b) = call(&c, &app1, M::GET, follower, path, None, &[]).await?;
        ensure!(s == 403 && code(&b) == "forbidden", "{path}: {s} {b}");
    }
    let (s, b) = call(&c, &app1, M::PUT, leader, "/v1/kv/app2/a", Some("9"), &[]).await?;
    ensure!(s == 403, "{s} {b}");
    for prefix in ["", "app", "app2/"] {
        let path = format!("/v1/kv?prefix={prefix}");
        let (s, b) = call(&c, &app1, M::GET, follower, &path, None, &[]).await?;
        if prefix == "app2/" {
            ensure!(s == 403, "nothing readable under {prefix:?}: {s} {b}");
        } else {
            let keys: Vec<&str> = b["items"]
                .as_array()
                .context("items")?
                .iter()
                .filter_map(|i| i["key"].as_str())
                .collect();
            ensure!(s == 200 && keys == ["app1/a"], "list {prefix:?}: {s} {b}");
        }
        let (s, b) = call(&c, &app1, M::DELETE, follower, &path, None, &[]).await?;
        let expected = if prefix.is_empty() { 400 } else { 403 };
        ensure!(s == expected, "prefix delete {prefix:?}: {s} {b}");
    }
    let (s, b) = call(
        &c,
        &app1,
        M::DELETE,
        follower,
        "/v1/kv?prefix=app1/",
        None,
        &[],
    )
    .await?;
    ensure!(s == 200, "{s} {b}");
    ensure!(
        c.get_json(leader, "/v1/kv/app2/a").await?.0 == 200,
        "app2 untouched"
    );

    // Administration needs an admin token.
    for (method, path) in [
        (M::GET, "/v1/cluster"),
        (M::GET, "/v1/admin/digest"),
        (M::GET, "/v1/tokens"),
        (M::POST, "/v1/tokens"),
        (M::DELETE, "/v1/tokens/0000000000000001"),
    ] {
        let body = Some(r#"{"name":"x","admin":true}"#).filter(|_| method == M::POST);
        let (s, b) = call(&c, &app1, method, follower, path, body, &[]).await?;
        ensure!(s == 403, "{path}: {s} {b}");
    }
    let (s, b) = c.get_json(follower, "/v1/tokens").await?;
    let names: Vec<&str> = b["tokens"]
        .as_array()
        .context("tokens")?
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    ensure!(s == 200 && names.len() == 2, "{s} {b}");
    ensure!(!b.to_string().contains("kvt_"), "no secret is listed: {b}");
    c.pass();
    Ok(())
}

/// Walks the node's own OpenAPI description, so a new route is checked without this test
/// naming it: every operation answers 401 without a token, but the three the description
/// marks open (`security: [{}]`), which answer without one.
#[tokio::test]
async fn every_described_route_but_the_open_ones_needs_a_token() -> Result<()> {
    let c = auth_cluster().await?;
    let plain = reqwest::Client::new();
    let (s, doc) = TestCluster::json(plain.get(c.url(1, "/v1/openapi.json")).send().await?).await?;
    ensure!(s == 200, "the description is served without a token: {s}");
    let mut open = Vec::new();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().context("paths")? {
        for (method, op) in item.as_object().context("a path item")? {
            let target = path.replace("{key}", "a").replace("{id}", "1");
            let method = M::from_bytes(method.to_uppercase().as_bytes())?;
            let r = plain
                .request(method.clone(), c.url(2, &target))
                .send()
                .await?;
            let status = r.status().as_u16();
            if op["security"] == json!([{}]) {
                ensure!(status == 200, "{method} {path} is open: {status}");
                open.push(path.as_str());
            } else {
                let (s, b) = TestCluster::json(r).await?;
                ensure!(
                    s == 401 && code(&b) == "unauthenticated",
                    "{method} {path}: {s} {b}"
                );
            }
            checked += 1;
        }
    }
    open.sort_unstable();
    ensure!(
        open == ["/healthz", "/readyz", "/v1/openapi.json"],
        "{open:?}"
    );
    ensure!(checked > 20, "only {checked} operations described");
    c.pass();
    Ok(())
}

#[tokio::test]
async fn without_a_valid_token_only_health_answers() -> Result<()> {
    let c = auth_cluster().await?;
    let plain = reqwest::Client::new();
    for path in [
        "/v1/kv/a",
        "/v1/kv?prefix=a",
        "/v1/cluster",
        "/v1/no-such-route",
    ] {
        let r = plain.get(c.url(1, path)).send().await?;
        let challenge = r.headers().get("www-authenticate").cloned();
        let (s, b) = TestCluster::json(r).await?;
        ensure!(
            s == 401 && code(&b) == "unauthenticated" && challenge.is_some(),
            "{path}: {s} {b}"
        );
    }
    for path in ["/healthz", "/readyz"] {
        let s = plain.get(c.url(2, path)).send().await?.status();
        ensure!(s == 200, "{path}: {s}");
    }
    for (method, path) in [
        (M::PUT, "/v1/kv/a"),
        (M::DELETE, "/v1/kv/a"),
        (M::DELETE, "/v1/kv?prefix=a"),
        (M::POST, "/v1/sessions"),
        (M::GET, "/v1/tokens"),
        (M::POST, "/v1/tokens"),
        (M::GET, "/v1/admin/digest"),
    ] {
        let r = plain
            .request(method, c.url(3, path))
            .body("1")
            .send()
            .await?;
        let (s, b) = TestCluster::json(r).await?;
        ensure!(s == 401 && code(&b) == "unauthenticated", "{path}: {s} {b}");
    }
    let (_, real) = create_token(
        &c,
        1,
        json!({"name": "n", "grants": [{"prefix": "", "access": "write"}]}),
    )
    .await?;
    let last = if real.ends_with('0') { "1" } else { "0" };
    let wrong_secret = format!("{}{last}", &real[..real.len() - 1]);
    let forged = format!("kvt_{:016x}_{}", 1, "0".repeat(64));
    for token in [
        wrong_secret.as_str(),
        forged.as_str(),
        "not-a-token",
        "0123456789abcdef0123456789abcdeX",
    ] {
        for node in 1..=3 {
            let (s, b) = call(&c, token, M::PUT, node, "/v1/kv/a", Some("1"), &[]).await?;
            ensure!(s == 401, "{token} at node {node}: {s} {b}");
        }
    }
    let (s, b) = call(&c, &real, M::PUT, 2, "/v1/kv/a", Some("1"), &[]).await?;
    ensure!(s == 200, "the real one: {s} {b}");
    c.pass();
    Ok(())
}

#[tokio::test]
async fn a_revoked_token_is_refused_by_every_node_on_its_first_request() -> Result<()> {
    let mut c = auth_cluster().await?;
    let (id, token) = create_token(
        &c,
        1,
        json!({"name": "svc", "grants": [{"prefix": "svc/", "access": "write"}]}),
    )
    .await?;
    for node in 1..=3 {
        let (s, b) = call(&c, &token, M::PUT, node, "/v1/kv/svc/k", Some("1"), &[]).await?;
        ensure!(s == 200, "node {node}: {s} {b}");
    }
    // Tokens survive a restart of every node.
    for node in 1..=3 {
        c.kill(node);
    }
    for node in 1..=3 {
        c.restart(node)?;
    }
    c.wait_ready_all().await?;
    let (s, b) = call(&c, &token, M::GET, 3, "/v1/kv/svc/k", None, &[]).await?;
    ensure!(s == 200, "after restarts: {s} {b}");

    let (s, b) = c.delete(2, &format!("/v1/tokens/{id}")).await?;
    ensure!(s == 200 && b["revoked"] == true, "{s} {b}");
    for node in 1..=3 {
        let (s, b) = call(&c, &token, M::PUT, node, "/v1/kv/svc/k", Some("2"), &[]).await?;
        ensure!(s == 401, "write at node {node}: {s} {b}");
        let (s, b) = call(&c, &token, M::GET, node, "/v1/kv/svc/k", None, &[]).await?;
        ensure!(s == 401, "read at node {node}: {s} {b}");
    }
    let (_, v) = c.get_json(1, "/v1/kv/svc/k").await?;
    ensure!(v["value"] == 1, "nothing written after the revoke: {v}");
    let (s, b) = c.delete(3, &format!("/v1/tokens/{id}")).await?;
    ensure!(s == 200 && b["revoked"] == false, "{s} {b}");
    c.pass();
    Ok(())
}

#[tokio::test]
async fn idempotency_keys_and_sessions_of_two_tokens_never_meet() -> Result<()> {
    let c = auth_cluster().await?;
    let grant = |p: &str| json!({"name": p, "grants": [{"prefix": "", "access": "write"}]});
    let (_, a) = create_token(&c, 1, grant("a")).await?;
    let (_, b) = create_token(&c, 1, grant("b")).await?;
    let keyed = [("idempotency-key", "evt-1")];
    let (s, first) = call(&c, &a, M::PUT, 1, "/v1/kv/shared", Some("\"a\""), &keyed).await?;
    ensure!(s == 200, "{s} {first}");
    // The same key and request from another token is its own write, not a replay.
    let (s, second) = call(&c, &b, M::PUT, 2, "/v1/kv/shared", Some("\"a\""), &keyed).await?;
    ensure!(
        s == 200 && second["revision"] != first["revision"],
        "{s} {second}"
    );
    // And the same key with another request is no reuse for another token either.
    let other_key = [("idempotency-key", "evt-2")];
    let (s, body) = call(&c, &a, M::PUT, 3, "/v1/kv/x", Some("1"), &other_key).await?;
    ensure!(s == 200, "{s} {body}");
    let (s, body) = call(&c, &b, M::PUT, 3, "/v1/kv/y", Some("1"), &other_key).await?;
    ensure!(s == 200, "{s} {body}");
    let (s, again) = call(&c, &a, M::PUT, 3, "/v1/kv/shared", Some("\"a\""), &keyed).await?;
    ensure!(
        s == 200 && again["revision"] == first["revision"],
        "a's replay: {again}"
    );

    let (s, opened) = call(&c, &a, M::POST, 2, "/v1/sessions", None, &[]).await?;
    ensure!(s == 201, "{s} {opened}");
    let header = format!(
        "{}; seq=1; ack=1",
        opened["session"].as_str().context("session")?
    );
    let session = [("kv-session", header.as_str())];
    let (s, body) = call(&c, &b, M::PUT, 1, "/v1/kv/s", Some("1"), &session).await?;
    ensure!(
        s == 422 && code(&body) == "session_expired",
        "b in a's session: {s} {body}"
    );
    let (s, body) = call(&c, &a, M::PUT, 1, "/v1/kv/s", Some("1"), &session).await?;
    ensure!(s == 200, "a in its own session: {s} {body}");
    c.pass();
    Ok(())
}

#[tokio::test]
async fn a_node_without_auth_manages_no_tokens() -> Result<()> {
    let c = TestCluster::start(3).await?;
    let r = c
        .http
        .post(c.url(1, "/v1/tokens"))
        .header("content-type", "application/json")
        .body(r#"{"name":"backdoor","admin":true}"#)
        .send()
        .await?;
    let (s, b) = TestCluster::json(r).await?;
    ensure!(s == 403 && code(&b) == "forbidden", "{s} {b}");
    let (s, b) = c.get_json(2, "/v1/tokens").await?;
    ensure!(s == 403, "{s} {b}");
    c.pass();
    Ok(())
}
