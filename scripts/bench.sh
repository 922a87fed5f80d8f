#!/usr/bin/env bash
# Throughput and latency of the local cluster (release build) at 1, 16 and 64 clients.
# Usage: scripts/bench.sh [SECONDS]   (starts the cluster with cluster.sh up if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
secs="${1:-10}"
scripts/cluster.sh up >/dev/null
cargo build --release --locked --workspace --bins
for op in put get; do
    for clients in 1 16 64; do
        "$CARGO_TARGET_DIR/release/kv-bench" --op "$op" --clients "$clients" --seconds "$secs"
    done
done
