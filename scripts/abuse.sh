#!/usr/bin/env bash
# The hostile-traffic suite at full size against fresh local clusters (profile checked):
# large list pages, 1,000,000 writes from kv-client and a prefix delete of all of them,
# a flood of idle and slow connections, deep and invalid JSON, dot segments through a
# follower, and writers filling the data quota, each while a well-behaved client keeps
# writing. Prints the table README keeps (pattern, limit, what happened, the peak RSS of
# a node against its bound, and the well-behaved writes with their p99); exits 1 when a
# bound or a check fails, keeping the node logs.
#
# Usage: scripts/abuse.sh [--short]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

for arg in "$@"; do
    case "$arg" in
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    esac
done

ensure_build_deps
# The same profile and selection as `cluster.sh up` and test.sh, so they share one build.
cargo build --profile checked --workspace --bins --locked
export KV_SERVER_BIN="$CARGO_TARGET_DIR/checked/kv-server"
export KVCTL_BIN="$CARGO_TARGET_DIR/checked/kvctl"
exec "$CARGO_TARGET_DIR/checked/kv-abuse" "$@"
