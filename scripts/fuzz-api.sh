#!/usr/bin/env bash
# Fuzzes API v1 against its own OpenAPI description with schemathesis: a fresh one-node
# cluster with auth on, every operation, positive and negative data, every check; fails
# on any answer with a 5xx status or one the description does not allow.
#
# Usage: scripts/fuzz-api.sh [--examples N] [--seed N] [--long]
#   --examples N  test cases per operation and phase (default 20: the short run in test.sh)
#   --long        1000 per operation (README records the last long run)
#   --seed N      repeat a run
# Runs KV_SERVER_BIN when set (scripts/test.sh sets it), else builds kv-server.
#
# One node, fresh each run, because the fuzzer calls the admin routes with random data:
# removing the only voter is refused and every learner it adds stays one, so the node
# keeps serving the rest of the run. Node and fuzzer run in a network namespace of their
# own, holding only loopback, so the addresses it adds as members are never dialled on a
# real network and the fixed ports cannot collide with anything.
set -euo pipefail
cd "$(dirname "$0")/.."

examples=20
seed=()
while [ $# -gt 0 ]; do
    case "$1" in
        --examples) examples="$2"; shift 2 ;;
        --long) examples=1000; shift ;;
        --seed) seed=(--seed "$2"); shift 2 ;;
        *) echo "usage: $0 [--examples N] [--seed N] [--long]" >&2; exit 2 ;;
    esac
done

if [ "${KV_FUZZ_IN_NETNS:-}" != 1 ]; then
    source scripts/env.sh
    schemathesis=$(ensure_schemathesis)
    if [ -z "${KV_SERVER_BIN:-}" ]; then
        # The same profile and selection as test.sh and cluster.sh, so they share one build.
        cargo build --profile checked --workspace --bins --locked
        KV_SERVER_BIN="$CARGO_TARGET_DIR/checked/kv-server"
    fi
    report="$CARGO_TARGET_DIR/fuzz-api"
    mkdir -p "$report"
    # root may make the namespace itself; others map themselves to root inside one.
    userns=()
    [ "$(id -u)" = 0 ] || userns=(--map-root-user)
    exec unshare "${userns[@]}" --net env KV_FUZZ_IN_NETNS=1 KV_SERVER_BIN="$KV_SERVER_BIN" \
        SCHEMATHESIS="$schemathesis" REPORT="$report" CONFIG="$PWD/scripts/fuzz-api.toml" "$0" --examples "$examples" "${seed[@]}"
fi

# Inside the namespace from here on.
ip link set lo up
dir=$(mktemp -d /tmp/quorum-kv-fuzz.XXXXXX)
node=""
cleanup() {
    if [ -n "$node" ]; then kill "$node" 2>/dev/null || true; wait "$node" 2>/dev/null || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/admin-token"
token=$(cat "$dir/admin-token")
cat > "$dir/node1.toml" <<TOML
id = 1
client_addr = "127.0.0.1:7001"
raft_addr = "127.0.0.1:7101"
data_dir = "$dir/node1"
cluster_secret = "fuzz-secret"
members = [{ id = 1, client_addr = "127.0.0.1:7001", raft_addr = "127.0.0.1:7101" }]

[auth]
admin_token_file = "$dir/admin-token"
TOML
"$KV_SERVER_BIN" --config "$dir/node1.toml" > "$dir/node1.log" 2>&1 &
node=$!
base=http://127.0.0.1:7001
for _ in $(seq 100); do
    curl -fsS "$base/readyz" >/dev/null 2>&1 && break
    kill -0 "$node" 2>/dev/null || { cat "$dir/node1.log" >&2; exit 1; }
    sleep 0.1
done
curl -fsS "$base/readyz" >/dev/null

echo "schemathesis $("$SCHEMATHESIS" --version | awk '{print $NF}'): $examples examples per operation, against $base"
started=$(date +%s)
status=0
# schemathesis keeps its example database in the working directory: the run's own.
cd "$dir"
# The node's own description, from a file: given its URL, schemathesis leaves out the
# operation that serves it.
curl -fsS "$base/v1/openapi.json" > "$dir/openapi.json"
# Every check but positive_data_acceptance: scripts/fuzz-api.toml says why it is off, and
# which refusals negative_data_rejection accepts.
"$SCHEMATHESIS" --config-file "$CONFIG" run "$dir/openapi.json" --url "$base" \
    --checks all \
    --exclude-checks positive_data_acceptance \
    --mode all \
    --max-examples "$examples" \
    "${seed[@]}" \
    --header "Authorization: Bearer $token" \
    --request-timeout 30 \
    --report junit,ndjson --report-dir "$REPORT" \
    || status=$?
echo "fuzz run: $(( $(date +%s) - started )) s, schemathesis exit status $status (reports in $REPORT)"
if ! kill -0 "$node" 2>/dev/null; then
    echo "error: the node exited during the run" >&2
    status=1
fi
if [ "$status" != 0 ]; then
    echo "--- the node's log (last 50 lines)" >&2
    tail -n 50 "$dir/node1.log" >&2
fi
exit "$status"
