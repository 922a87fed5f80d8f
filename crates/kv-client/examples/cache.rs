//! Caching a slow API response with a TTL.
//!
//! Run against `scripts/cluster.sh up`: `cargo run -p kv-client --example cache`
//! (endpoints from `KV_ENDPOINTS`, default the local cluster).

use std::time::{Duration, Instant};

use kv_client::{KvClient, SetOptions};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Weather {
    city: String,
    celsius: f64,
}

/// Stands in for a slow upstream call.
async fn fetch_weather(city: &str) -> Weather {
    tokio::time::sleep(Duration::from_millis(300)).await;
    Weather {
        city: city.to_owned(),
        celsius: 21.5,
    }
}

/// Returns the cached answer if there is one, else fetches and caches it for 60 s.
async fn weather(kv: &KvClient, city: &str) -> Result<Weather, kv_client::ClientError> {
    let key = format!("cache/weather/{city}");
    if let Some(hit) = kv.get::<Weather>(&key).await? {
        return Ok(hit.value);
    }
    let fresh = fetch_weather(city).await;
    kv.set(
        &key,
        &fresh,
        SetOptions {
            ttl: Some(Duration::from_secs(60)),
            keep_ttl: false,
        },
    )
    .await?;
    Ok(fresh)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let kv = KvClient::new(kv_client::endpoints_from_env())?;
    for attempt in 1..=2 {
        let started = Instant::now();
        let w = weather(&kv, "lisbon").await?;
        println!("attempt {attempt}: {w:?} in {:?}", started.elapsed());
    }
    Ok(())
}
