//! Deduplicating webhook deliveries: the provider may deliver one event several times,
//! to several of our handlers at once. Create-if-absent on the event id lets exactly one
//! handler proceed; the record expires after a day.
//!
//! Run against `scripts/cluster.sh up`: `cargo run -p kv-client --example webhook_dedup`

use std::time::Duration;

use kv_client::{Created, KvClient};

/// Returns true for the one delivery that should be processed.
async fn first_delivery(
    kv: &KvClient,
    event_id: &str,
    handler: u32,
) -> Result<bool, kv_client::ClientError> {
    let key = format!("webhooks/seen/{event_id}");
    match kv
        .create(
            &key,
            &format!("handler-{handler}"),
            Some(Duration::from_secs(24 * 3600)),
        )
        .await?
    {
        Created::Created(_) => Ok(true),
        Created::Exists(winner) => {
            println!(
                "handler {handler}: {event_id} already taken by {}",
                winner.value
            );
            Ok(false)
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let kv = KvClient::new(kv_client::endpoints_from_env())?;
    let event = format!("evt_{}", std::process::id());
    // Five concurrent deliveries of the same event.
    let mut handlers = tokio::task::JoinSet::new();
    for handler in 0..5 {
        let (kv, event) = (kv.clone(), event.clone());
        handlers.spawn(async move { (handler, first_delivery(&kv, &event, handler).await) });
    }
    let mut processed = 0;
    while let Some(joined) = handlers.join_next().await {
        let (handler, first) = joined?;
        if first? {
            println!("handler {handler}: processing {event}");
            processed += 1;
        }
    }
    assert_eq!(processed, 1, "exactly one handler proceeds");
    Ok(())
}
