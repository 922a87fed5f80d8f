//! A lock with a TTL whose revision is a fencing token.
//!
//! Acquire = create-if-absent with a TTL (a crashed holder's lock lapses). The revision
//! of the lock entry only grows, so a resource that remembers the highest token it saw
//! can refuse a stale holder that wakes up late. Release = delete at that revision, so
//! a holder whose lock lapsed cannot delete its successor's.
//!
//! Run against `scripts/cluster.sh up`: `cargo run -p kv-client --example lock`

use std::time::Duration;

use kv_client::{Created, KvClient, Swapped};

struct Guard {
    key: String,
    token: u64,
}

async fn acquire(
    kv: &KvClient,
    name: &str,
    owner: &str,
    ttl: Duration,
) -> Result<Option<Guard>, kv_client::ClientError> {
    let key = format!("locks/{name}");
    match kv.create(&key, &owner.to_owned(), Some(ttl)).await? {
        Created::Created(meta) => Ok(Some(Guard {
            key,
            token: meta.revision,
        })),
        Created::Exists(holder) => {
            println!(
                "{owner}: {name} is held by {} (token {})",
                holder.value, holder.revision
            );
            Ok(None)
        }
    }
}

async fn release(kv: &KvClient, guard: Guard) -> Result<bool, kv_client::ClientError> {
    Ok(matches!(
        kv.delete_if::<String>(&guard.key, guard.token).await?,
        Swapped::Swapped(_)
    ))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let kv = KvClient::new(kv_client::endpoints_from_env())?;
    let name = format!("report-{}", std::process::id());
    let ttl = Duration::from_secs(10);
    let a = acquire(&kv, &name, "worker-a", ttl)
        .await?
        .ok_or("worker-a should get a free lock")?;
    println!("worker-a holds {name} with fencing token {}", a.token);
    assert!(
        acquire(&kv, &name, "worker-b", ttl).await?.is_none(),
        "the lock is exclusive"
    );
    assert!(release(&kv, a).await?, "the holder releases its own lock");
    let b = acquire(&kv, &name, "worker-b", ttl)
        .await?
        .ok_or("worker-b should get the released lock")?;
    println!("worker-b holds {name} with fencing token {}", b.token);
    release(&kv, b).await?;
    Ok(())
}
