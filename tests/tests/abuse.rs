//! The hostile-traffic suite at small sizes, on every `scripts/test.sh`; the full sizes
//! the README reports are `scripts/abuse.sh`.

use anyhow::Result;
use kv_tests::abuse::{run, Scale};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_traffic_keeps_nodes_bounded_and_calm_writers_served() -> Result<()> {
    let report = run(Scale::Short).await?;
    println!("{report}");
    Ok(())
}
