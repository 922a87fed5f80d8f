#!/usr/bin/env bash
# A long randomized chaos run against a fresh local cluster (profile checked): workers
# record a history (values up to 1 MiB) while nodes are killed, paused, partitioned,
# skewed, killed mid-snapshot-install and replaced by new nodes, and leadership is handed
# over; then liveness is checked, the history for linearizability and the replicas for
# one state digest.
#
# Usage: scripts/chaos.sh [--nodes 3|5] [--duration 10m]
#                         [--faults kill,pause,partition,skew,install,churn]
#                         [--seed N] [--workers 6] [--skew-ms 1000] [--history PATH]
# Prints a summary (operations by outcome, faults of each kind, snapshot installs
# interrupted, large AppendEntries, mismatched raft answers, terms and elections, any
# PRODUCT FAILURE, verdict, history path); exits 1 when a check fails, keeping the
# history and the node logs.
# Needs root (iptables for partitions); installs iptables when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

for arg in "$@"; do
    case "$arg" in
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    esac
done

ensure_build_deps
ensure_chaos_deps
# The same profile and selection as `cluster.sh up` and test.sh, so they share one build.
cargo build --profile checked --workspace --bins --locked
exec "$CARGO_TARGET_DIR/checked/kv-chaos" "$@"
