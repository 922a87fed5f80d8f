//! A counter incremented by compare-and-set: read, add one, write only if nobody wrote
//! in between, else retry from the entry the mismatch returned.
//!
//! Run against `scripts/cluster.sh up`: `cargo run -p kv-client --example counter`

use kv_client::{KvClient, SetOptions, Swapped};

async fn increment(kv: &KvClient, key: &str) -> Result<u64, kv_client::ClientError> {
    let mut current = kv.get::<u64>(key).await?;
    loop {
        let Some(entry) = current else {
            // Start the counter; if somebody else just did, count on top of theirs.
            match kv.create(key, &1u64, None).await? {
                kv_client::Created::Created(_) => return Ok(1),
                kv_client::Created::Exists(entry) => {
                    current = Some(entry);
                    continue;
                }
            }
        };
        match kv
            .compare_and_set(key, &(entry.value + 1), entry.revision)
            .await?
        {
            Swapped::Swapped(_) => return Ok(entry.value + 1),
            Swapped::Mismatch(latest) => current = latest,
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let kv = KvClient::new(kv_client::endpoints_from_env())?;
    let key = format!("counters/example-{}", std::process::id());
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (kv, key) = (kv.clone(), key.clone());
        workers.spawn(async move {
            for _ in 0..25 {
                increment(&kv, &key).await?;
            }
            Ok::<_, kv_client::ClientError>(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    let total = kv.get::<u64>(&key).await?.map(|e| e.value);
    println!("{key} = {total:?} after 4 workers × 25 increments");
    assert_eq!(total, Some(100));
    kv.set(&key, &0u64, SetOptions::default()).await?;
    Ok(())
}
