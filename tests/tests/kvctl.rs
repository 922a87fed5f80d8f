//! kvctl against a real three-node cluster: every command, output and exit code.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};
use kv_tests::{kvctl_binary, TestCluster, Tuning};
use serde_json::{json, Value};

/// Runs kvctl with `args` (and `stdin`), returning exit code and standard output.
fn kvctl(endpoints: &str, args: &[&str], stdin: Option<&str>) -> Result<(i32, String)> {
    kvctl_as(endpoints, None, args, stdin)
}

/// [`kvctl`] with `KV_TOKEN` set to `token`.
fn kvctl_as(
    endpoints: &str,
    token: Option<&str>,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<(i32, String)> {
    let mut child = Command::new(kvctl_binary()?)
        .env("KV_ENDPOINTS", endpoints)
        .env("KV_TOKEN", token.unwrap_or(""))
        .env_remove("KV_CACERT")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// Every node's URL, comma-separated, as `KV_ENDPOINTS` takes them.
fn endpoints(c: &TestCluster) -> String {
    let urls: Vec<String> = c.nodes.iter().map(|n| c.url(n.id, "")).collect();
    urls.join(",")
}

fn json_of(stdout: &str) -> Result<Value> {
    serde_json::from_str(stdout.trim()).with_context(|| format!("not JSON: {stdout:?}"))
}

#[tokio::test]
async fn kvctl_commands_print_json_or_tables_and_exit_with_usable_codes() -> Result<()> {
    let c = TestCluster::start(3).await?;
    let eps = endpoints(&c);
    let run = |args: &[&str]| kvctl(&eps, args, None);

    let (code, out) = run(&["put", "app/cfg", r#"{"replicas":3}"#, "--ttl", "60"])?;
    ensure!(code == 0, "{code} {out}");
    let put = json_of(&out)?;
    ensure!(
        put["version"] == 1 && put["expires_at_ms"].is_u64(),
        "{put}"
    );
    let (code, out) = run(&["get", "app/cfg"])?;
    ensure!(
        code == 0 && json_of(&out)?["value"] == json!({"replicas": 3}),
        "{code} {out}"
    );
    let (code, out) = run(&["get", "app/cfg", "--output", "table"])?;
    ensure!(
        code == 0 && out.starts_with("app/cfg\t") && out.contains(r#"{"replicas":3}"#),
        "{out}"
    );

    let (code, out) = kvctl(&eps, &["put", "app/stdin", "-"], Some("[1, 2]"))?;
    ensure!(code == 0, "{code} {out}");
    ensure!(json_of(&run(&["get", "app/stdin"])?.1)?["value"] == json!([1, 2]));

    // Create-if-absent and CAS: 1 with the current entry when they lose.
    ensure!(run(&["put", "app/lock", "\"a\"", "--if-absent"])?.0 == 0);
    let (code, out) = run(&["put", "app/lock", "\"b\"", "--if-absent"])?;
    ensure!(
        code == 1 && json_of(&out)?["current"]["value"] == "a",
        "{code} {out}"
    );
    let rev = json_of(&run(&["get", "app/lock"])?.1)?["revision"]
        .as_u64()
        .unwrap_or(0)
        .to_string();
    let (code, out) = run(&["put", "app/lock", "\"c\"", "--if-revision", "1"])?;
    ensure!(
        code == 1
            && json_of(&out)?["current"]["revision"]
                .as_u64()
                .map(|r| r.to_string())
                == Some(rev.clone()),
        "{code} {out}"
    );
    ensure!(run(&["put", "app/lock", "\"c\"", "--if-revision", &rev])?.0 == 0);
    ensure!(
        run(&["delete", "app/lock", "--if-revision", &rev])?.0 == 1,
        "stale delete must fail"
    );

    let (code, out) = run(&["list", "app/", "--keys-only"])?;
    ensure!(
        code == 0 && json_of(&out)? == json!(["app/cfg", "app/lock", "app/stdin"]),
        "{out}"
    );
    let (code, out) = run(&["list", "app/", "--output", "table"])?;
    ensure!(code == 0 && out.lines().count() == 3, "{out}");
    let (code, out) = run(&["cluster", "status"])?;
    ensure!(code == 0 && json_of(&out)?["leader_id"].is_u64(), "{out}");
    let (code, out) = run(&["delete", "app/stdin"])?;
    ensure!(code == 0 && json_of(&out)?["deleted"] == true, "{out}");
    let (code, out) = run(&["delete-prefix", "app/"])?;
    ensure!(code == 0 && json_of(&out)?["revision"].is_u64(), "{out}");
    let (code, out) = run(&["list", "app/"])?;
    ensure!(code == 0 && !out.contains("app/"), "{out}");

    // Exit codes: 1 not found, 2 usage or refused input, 3 unavailable.
    ensure!(run(&["get", "app/cfg"])?.0 == 1);
    ensure!(run(&["put", "k", "{not json"])?.0 == 2);
    ensure!(run(&["put", "k", "1", "--if-absent", "--if-revision", "3"])?.0 == 2);
    ensure!(run(&["frobnicate"])?.0 == 2);
    ensure!(run(&["delete-prefix", ""])?.0 == 2);
    ensure!(
        kvctl("http://127.0.0.1:1", &["get", "k", "--timeout", "1"], None)?.0 == 3,
        "nothing listens on port 1"
    );
    c.pass();
    Ok(())
}

#[tokio::test]
async fn kvctl_manages_tokens_and_uses_the_one_it_is_given() -> Result<()> {
    let tuning = Tuning {
        auth: true,
        ..Tuning::default()
    };
    let c = TestCluster::start_tuned(3, tuning).await?;
    let eps = endpoints(&c);
    let admin = c.admin_token.clone().context("auth is on")?;
    let as_admin = |args: &[&str]| kvctl_as(&eps, Some(&admin), args, None);

    let (code, out) = as_admin(&["token", "create", "--name", "app", "--write", "app/"])?;
    ensure!(code == 0, "{code} {out}");
    let created = json_of(&out)?;
    let id = created["id"].as_str().context("id")?.to_owned();
    let token = created["token"].as_str().context("token")?.to_owned();
    let as_app = |args: &[&str]| kvctl_as(&eps, Some(&token), args, None);
    let (code, out) = as_app(&["put", "app/x", "1"])?;
    ensure!(code == 0, "within its grant: {code} {out}");
    let (code, out) = as_app(&["put", "other/x", "1"])?;
    ensure!(
        code == 2,
        "outside its grant: refused, exit 2: {code} {out}"
    );
    let (code, out) = kvctl(&eps, &["get", "app/x"], None)?;
    ensure!(code == 2, "no token: refused, exit 2: {code} {out}");
    let (code, out) = as_app(&["token", "list"])?;
    ensure!(code == 2, "not an admin: {code} {out}");

    let (code, out) = as_admin(&["token", "list"])?;
    let listed = json_of(&out)?;
    ensure!(
        code == 0 && listed[0]["id"] == id.as_str() && listed[0]["grants"][0]["access"] == "write",
        "{code} {out}"
    );
    let (code, out) = as_admin(&["token", "revoke", &id])?;
    ensure!(
        code == 0 && json_of(&out)?["revoked"] == true,
        "{code} {out}"
    );
    let (code, out) = as_app(&["get", "app/x"])?;
    ensure!(code == 2, "revoked: {code} {out}");
    c.pass();
    Ok(())
}

#[tokio::test]
async fn kvctl_speaks_https_to_a_cluster_with_tls_and_tokens_given_its_ca() -> Result<()> {
    let tuning = Tuning {
        auth: true,
        tls: true,
        ..Tuning::default()
    };
    let c = TestCluster::start_tuned(3, tuning).await?;
    let eps = endpoints(&c);
    ensure!(eps.starts_with("https://"), "{eps}");
    let ca = c.tls_dir().context("tls")?.join("ca.pem");
    let ca = ca.to_str().context("utf-8 path")?;
    let admin = c.admin_token.clone().context("auth is on")?;
    let with_ca = |args: &[&str]| {
        let mut all = vec!["--cacert", ca];
        all.extend_from_slice(args);
        kvctl_as(&eps, Some(&admin), &all, None)
    };
    let (code, out) = with_ca(&["put", "tls/k", "[1]"])?;
    ensure!(code == 0, "{code} {out}");
    let (code, out) = with_ca(&["get", "tls/k"])?;
    ensure!(
        code == 0 && json_of(&out)?["value"] == json!([1]),
        "{code} {out}"
    );
    // The system's roots do not know the cluster's CA: the connection is refused.
    let (code, out) = kvctl_as(
        &eps,
        Some(&admin),
        &["--timeout", "2", "get", "tls/k"],
        None,
    )?;
    ensure!(
        code == 3,
        "without the CA: unavailable, exit 3: {code} {out}"
    );
    c.pass();
    Ok(())
}

#[tokio::test]
async fn kvctl_presents_a_client_certificate_where_nodes_require_one() -> Result<()> {
    let tuning = Tuning {
        tls: true,
        require_client_cert: true,
        ..Tuning::default()
    };
    let c = TestCluster::start_tuned(3, tuning).await?;
    let eps = endpoints(&c);
    let dir = c.tls_dir().context("tls")?;
    let path = |name: &str| {
        dir.join(name)
            .to_str()
            .map(str::to_owned)
            .context("utf-8 path")
    };
    let (ca, cert, key) = (
        path("ca.pem")?,
        path("client-harness.pem")?,
        path("client-harness-key.pem")?,
    );
    let with = |extra: &[&str]| {
        let mut args = vec!["--cacert", ca.as_str(), "--timeout", "2"];
        args.extend_from_slice(extra);
        kvctl_as(&eps, None, &args, None)
    };
    // Through every node, so followers forward to the leader with their own certificate.
    for (i, url) in eps.split(',').enumerate() {
        let key_name = format!("cert/{i}");
        let args = [
            "--endpoints",
            url,
            "--cert",
            cert.as_str(),
            "--key",
            key.as_str(),
            "put",
            key_name.as_str(),
            "1",
        ];
        let (code, out) = with(&args)?;
        ensure!(code == 0, "through {url}: {code} {out}");
    }
    let (code, out) = with(&["get", "cert/0"])?;
    ensure!(
        code == 3,
        "without a client certificate: refused, exit 3: {code} {out}"
    );
    c.pass();
    Ok(())
}

#[tokio::test]
async fn kvctl_adds_promotes_lists_and_removes_a_member() -> Result<()> {
    let mut c = TestCluster::start(3).await?;
    let eps = endpoints(&c);
    let id = c.add_node().await?;
    let client = c.client_addr(id).to_string();
    let raft = c.nodes[(id - 1) as usize].raft_addr.to_string();
    let (code, out) = kvctl(
        &eps,
        &[
            "member",
            "add",
            "--client-addr",
            &client,
            "--raft-addr",
            &raft,
        ],
        None,
    )?;
    ensure!(code == 0, "member add: {code} {out}");
    let added = json_of(&out)?;
    ensure!(
        added["id"] == id,
        "the default id is one above the highest: {added}"
    );
    let (code, out) = kvctl(&eps, &["member", "promote", &id.to_string()], None)?;
    ensure!(code == 0, "member promote: {code} {out}");
    let (code, out) = kvctl(&eps, &["member", "list"], None)?;
    ensure!(code == 0, "member list: {code} {out}");
    let voters = json_of(&out)?["members"]
        .as_array()
        .context("members")?
        .iter()
        .filter(|m| m["voter"] == true)
        .count();
    ensure!(voters == 4, "four voters after the promotion: {out}");
    // The same addresses again: a member uses them.
    let (code, out) = kvctl(
        &eps,
        &[
            "member",
            "add",
            "--client-addr",
            &client,
            "--raft-addr",
            &raft,
        ],
        None,
    )?;
    ensure!(
        code == 2,
        "a second add on the same addresses is refused: {code} {out}"
    );
    let (code, out) = kvctl(&eps, &["member", "remove", &id.to_string()], None)?;
    ensure!(code == 0, "member remove: {code} {out}");
    ensure!(
        json_of(&out)?["members"].as_array().map(Vec::len) == Some(3),
        "three members after the removal: {out}"
    );
    c.kill(id);
    // Leadership moves to the voter that has replicated furthest, or to the one named.
    let before = c.leader().await?;
    let (code, out) = kvctl(&eps, &["leader", "move"], None)?;
    ensure!(code == 0, "leader move: {code} {out}");
    let moved = json_of(&out)?;
    ensure!(
        moved["previous_leader_id"] == before && moved["leader_id"] != before,
        "{moved}"
    );
    let (code, out) = kvctl(&eps, &["leader", "move", &before.to_string()], None)?;
    ensure!(code == 0, "leader move {before}: {code} {out}");
    ensure!(json_of(&out)?["leader_id"] == before, "{out}");
    let (code, out) = kvctl(&eps, &["leader", "move", "9"], None)?;
    ensure!(
        code == 2,
        "moving to a node that is not a member: {code} {out}"
    );
    // Node 3 replaced by a node on new addresses: it joins and is promoted before node 3
    // leaves (handing leadership on first if it leads), so there are never fewer than
    // three voters.
    let new = c.add_node().await?;
    let client = c.client_addr(new).to_string();
    let raft = c.nodes[(new - 1) as usize].raft_addr.to_string();
    let (code, out) = kvctl(
        &eps,
        &[
            "--timeout",
            "60",
            "member",
            "replace",
            "3",
            "--client-addr",
            &client,
            "--raft-addr",
            &raft,
        ],
        None,
    )?;
    ensure!(code == 0, "member replace: {code} {out}");
    let replaced = json_of(&out)?;
    let mut voters: Vec<u64> = replaced["members"]["members"]
        .as_array()
        .context("members")?
        .iter()
        .filter(|m| m["voter"] == true)
        .filter_map(|m| m["id"].as_u64())
        .collect();
    voters.sort_unstable();
    ensure!(
        replaced["replaced_by"] == new && voters == [1, 2, new],
        "node {new} replaced node 3: {replaced}"
    );
    c.kill(3);
    c.pass();
    Ok(())
}
