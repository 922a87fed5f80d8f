//! Checks after healing that look at the cluster rather than the history: replicas
//! converge to one digest, and no expired key is visible through listing.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::workload::Shared;
use crate::history::OpKind;
use crate::TestCluster;

/// Waits until every member reports the same applied index and digest; the error says
/// what was seen last.
pub(super) async fn converged_digests(
    cluster: &TestCluster,
    members: &[u64],
) -> std::result::Result<Vec<(u64, u64, String)>, String> {
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = String::new();
    loop {
        let mut seen = vec![];
        for &id in members {
            match cluster.get_json(id, "/v1/admin/digest").await {
                Ok((200, v)) => seen.push((
                    id,
                    v["applied_index"].as_u64().unwrap_or(0),
                    v["digest"].as_str().unwrap_or("").to_string(),
                )),
                other => last = format!("n{id}: {other:?}"),
            }
        }
        if seen.len() == members.len() {
            let same_index = seen.iter().all(|s| s.1 == seen[0].1);
            let same_digest = seen.iter().all(|s| s.2 == seen[0].2);
            if same_index && same_digest {
                return Ok(seen);
            }
            last = format!("{seen:?}");
        }
        if Instant::now() > deadline {
            return Err(format!(
                "replicas did not converge to one digest at one applied index within 40 s: {last}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Lists the run's keys on every node (local reads, paged) and reports any entry whose
/// value was written with a TTL whose window (return + ttl + slack) has closed: an
/// expired key visible through the listing path.
pub(super) async fn expired_but_listed(
    cluster: &TestCluster,
    shared: &Shared,
    ops: &[crate::history::Op],
    slack_ms: u64,
) -> Result<Vec<String>> {
    let writes: std::collections::HashMap<(&str, &str), &crate::history::Op> = ops
        .iter()
        .filter(|o| o.op != OpKind::Get)
        .filter_map(|o| Some(((o.key.as_str(), o.value.as_deref()?), o)))
        .collect();
    let mut found = vec![];
    for id in cluster.live() {
        let mut after: Option<String> = None;
        loop {
            let mut path = format!(
                // Pages of 100: a page may hold large values of up to 1 MiB each.
                "/v1/kv?prefix={}/&limit=100&consistency=stale",
                shared.run_id
            );
            if let Some(a) = &after {
                path.push_str(&format!("&after={a}"));
            }
            let listed_at = shared.recorder.now();
            let (status, page) = cluster.get_json(id, &path).await?;
            if status != 200 {
                bail!("listing on n{id}: {status} {page}");
            }
            for item in page["items"].as_array().into_iter().flatten() {
                let key = item["key"].as_str().unwrap_or("");
                let value = super::workload::history_value(item["value"].as_str().unwrap_or(""));
                let Some(w) = writes.get(&(key, value.as_str())) else {
                    found.push(format!(
                        "n{id} lists {key} = {value:?}, which no write wrote"
                    ));
                    continue;
                };
                if let (Some(ttl), Some(ret)) = (w.ttl_ms.filter(|t| *t > 0), w.ret) {
                    if listed_at > ret + (ttl + slack_ms) * 1_000_000 {
                        found.push(format!(
                            "n{id} lists {key} = {value:?} after its TTL ({ttl} ms) ran out"
                        ));
                    }
                }
            }
            match page["next"].as_str() {
                Some(next) => after = Some(next.to_string()),
                None => break,
            }
        }
    }
    Ok(found)
}
