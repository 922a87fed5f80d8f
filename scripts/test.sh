#!/usr/bin/env bash
# Every check CI runs: formatting, clippy with warnings as errors, all tests, the short
# hostile-traffic run, the short chaos run (needs root for iptables; installs iptables
# when missing), the TypeScript client's tests (installs Node.js 20 when apt-get can) and
# the short API fuzz run (installs schemathesis with pip).
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ensure_build_deps
ensure_rust_components
ensure_chaos_deps
ensure_node
ensure_schemathesis >/dev/null

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
# cargo runs librocksdb-sys's build script as a separate unit in check mode (clippy)
# and in build mode (tests), so RocksDB would be compiled twice. Clippy never links,
# so point its unit at an empty library folder: it skips compiling RocksDB and only
# generates the bindings. The tests below still build and link the real library.
mkdir -p "$CARGO_TARGET_DIR/clippy-without-rocksdb-lib"
ROCKSDB_LIB_DIR="$CARGO_TARGET_DIR/clippy-without-rocksdb-lib" \
    cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
# The `checked` profile, which scripts/cluster.sh and chaos.sh build too, so RocksDB is
# compiled once for all of them. `cargo test` does not build other packages' binaries,
# and the cluster tests run kv-server and kvctl: build them from this checkout, and run
# private copies, so a stale binary left in the shared target directory (or one another
# checkout builds there meanwhile) is never what gets tested.
cargo build --profile checked --workspace --bins --locked
bins=$(mktemp -d /tmp/quorum-kv-bins.XXXXXX)
trap 'rm -rf "$bins"' EXIT
cp "$CARGO_TARGET_DIR/checked/kv-server" "$CARGO_TARGET_DIR/checked/kvctl" "$bins/"
export KV_SERVER_BIN="$bins/kv-server" KVCTL_BIN="$bins/kvctl"
# The metrics test checks /metrics with Prometheus' own parser too.
KV_PROMTOOL=$(ensure_promtool)
export KV_PROMTOOL
# Cluster tests start three kv-server processes each; two at a time suit two cores.
log="$CARGO_TARGET_DIR/test-output.log"
cargo test --profile checked --workspace --locked -- --test-threads="${KV_TEST_THREADS:-2}" \
    --skip short_chaos_runs --skip hostile_traffic 2>&1 | tee "$log"
echo "== short hostile-traffic run (scripts/abuse.sh runs the full sizes)"
cargo test --profile checked --workspace --test abuse --locked -- --nocapture 2>&1 | tee -a "$log"
echo "== short chaos run (every fault kind; scripts/chaos.sh runs long ones)"
cargo test --profile checked --workspace --test chaos --locked -- --nocapture 2>&1 | tee -a "$log"
echo "== TypeScript client (clients/typescript: its lockfile, then tsc and node --test against clusters of KV_SERVER_BIN)"
( cd clients/typescript && npm ci --no-audit --no-fund && npm test ) 2>&1 | tee -a "$log"
echo "== short API fuzz run (schemathesis against /v1/openapi.json of KV_SERVER_BIN; scripts/fuzz-api.sh --long runs long ones)"
scripts/fuzz-api.sh 2>&1 | tee -a "$log"
# One closing line for the whole run (cargo prints one per test binary, node --test one
# "pass" and one "fail" line).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     $1 == "ℹ" && NF == 3 && $2 == "pass" { p += $3 }
     $1 == "ℹ" && NF == 3 && $2 == "fail" { f += $3 }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
