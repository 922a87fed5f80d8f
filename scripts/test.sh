#!/usr/bin/env bash
# Every check CI runs: formatting, clippy with warnings as errors, all tests.
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ensure_build_deps
ensure_rust_components

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
# Everything shares the dev profile with clippy, so RocksDB is compiled once.
# Cluster tests start three kv-server processes each; two at a time suit two cores.
cargo test --workspace --locked -- --test-threads="${KV_TEST_THREADS:-2}"
