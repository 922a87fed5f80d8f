#!/usr/bin/env bash
# quorum-kv side by side with etcd 3.4 on this machine, driven by the same wrk scripts.
#
# Usage: scripts/bench.sh [--quick] [--reps N] [--seconds S]
#        scripts/bench.sh --scale [--keys N]
#   --quick      one repetition of each scenario (default: 3)
#   --seconds S  seconds per measured run (default 10), after a 3 s warm-up
#   --scale      quorum-kv alone with N keys of 100 bytes (default 1,000,000): RSS per
#                node, a follower's restart until it serves, and the catch-up by snapshot
#                of a follower that was down while the keys were written (the leader's
#                log purged past it); writes target/bench/scale.{json,md}
#
# Starts a three-node quorum-kv cluster (release build; client ports 7201-7203) and a
# three-node etcd cluster (client ports 23791-23793, through its HTTP/JSON gateway),
# fills 10,000 keys of 100 bytes in each, then runs every scenario on both systems in
# turn (A B A B ...): writes at 1, 16, 64 connections to the leader and at 64 to a
# follower; linearizable reads at 16 and 64; stale (etcd: serializable) reads at 64.
# Then, with those stopped, writes at 64 connections against a second pair of clusters
# with TLS on every connection and auth on (quorum-kv on 7211-7213 with a token; etcd on
# 23794-23796 with client and peer TLS and a root user's token), certificates from
# `kv-server certs`.
# A run with non-2xx answers or socket errors, or whose writes did not all land (the
# servers' write counters against wrk's completed requests), is reported and not
# counted. Prints a table of medians and writes target/bench/results.{json,md}.
# Installs etcd-server, wrk, curl and python3 when missing (as root). Stops everything
# it started, by PID, and removes its data.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

REPS=3
SECS=10
WARM=3
SCALE=
SCALE_KEYS=1000000
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) REPS=1 ;;
        --scale) SCALE=1 ;;
        --keys) SCALE_KEYS="$2"; shift ;;
        --reps) REPS="$2"; shift ;;
        --seconds) SECS="$2"; shift ;;
        -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

ensure_bench_deps() {  # etcd only for the side-by-side runs; --scale runs quorum-kv alone
    local missing=()
    [ -n "$SCALE" ] || command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}
ensure_build_deps
ensure_bench_deps

# The clusters use fixed ports, so that runs compare like with like: say which is taken
# rather than start a node that cannot bind (or measure someone else's server).
PORTS=(7201 7202 7203 7301 7302 7303)
[ -n "$SCALE" ] || PORTS+=(7211 7212 7213 7311 7312 7313 23791 23792 23793 23801 23802 23803
                           23794 23795 23796 23804 23805 23806)
for port in "${PORTS[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "error: port $port on 127.0.0.1 is in use; bench.sh needs ${PORTS[*]}" >&2
        exit 1
    fi
done

cargo build --release --locked --workspace --bins

WORK=$(mktemp -d /tmp/quorum-kv-bench.XXXXXX)
OUT=target/bench
mkdir -p "$OUT"
RESULTS="$OUT/runs.jsonl"
: > "$RESULTS"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

json() {  # json EXPR: evaluates EXPR on the JSON document read from stdin as `d`
    python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"
}

wait_for() {  # wait_for WHAT COMMAND...: retries for 30 s
    local what=$1; shift
    for _ in $(seq 300); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "error: $what did not come up; logs in $WORK" >&2
    exit 1
}

# ---- quorum-kv ----
QKV=(127.0.0.1:7201 127.0.0.1:7202 127.0.0.1:7203)
QKV_TLS=(127.0.0.1:7211 127.0.0.1:7212 127.0.0.1:7213)
TLS_DIR="$WORK/tls"  # a CA and node certificates for 127.0.0.1, for both clusters with TLS
start_quorum_kv() {  # start_quorum_kv [tls]: the plain cluster, or the one with TLS and tokens
    local tls=${1:-} members="members = [" n port=720 raft=730 extra="" dir="$WORK/qkv" scheme=http
    if [ -n "$tls" ]; then
        port=721; raft=731; dir="$WORK/qkv-tls"; scheme=https
        mkdir -p "$dir"
        (umask 077; od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$dir/admin-token")
    fi
    for n in 1 2 3; do
        members+="{ id = $n, client_addr = \"127.0.0.1:$port$n\", raft_addr = \"127.0.0.1:$raft$n\" },"
    done
    members+="]"
    mkdir -p "$dir"
    for n in 1 2 3; do
        if [ -n "$tls" ]; then
            extra="[tls]
cert_file = \"$TLS_DIR/node$n.pem\"
key_file = \"$TLS_DIR/node$n-key.pem\"
ca_file = \"$TLS_DIR/ca.pem\"
[auth]
admin_token_file = \"$dir/admin-token\""
        fi
        cat > "$dir/node$n.toml" <<EOF
id = $n
client_addr = "127.0.0.1:$port$n"
raft_addr = "127.0.0.1:$raft$n"
data_dir = "$dir/node$n"
cluster_secret = "bench"
$members
$extra
EOF
        start_qkv_node "$n" "$dir" "$tls"
    done
    local ca=()
    [ -z "$tls" ] || ca=(--cacert "$TLS_DIR/ca.pem")
    for n in 1 2 3; do
        wait_for "quorum-kv 127.0.0.1:$port$n" curl -sf "${ca[@]}" "$scheme://127.0.0.1:$port$n/readyz"
    done
}
QPID=()
start_qkv_node() {  # start_qkv_node N [DIR [tls]]: starts node N on its data (the plain cluster's pid in QPID[N])
    local dir=${2:-$WORK/qkv}
    RUST_LOG=warn "$CARGO_TARGET_DIR/release/kv-server" --config "$dir/node$1.toml" \
        >> "$dir/node$1.log" 2>&1 &
    [ -n "${3:-}" ] || QPID[$1]=$!
    PIDS+=($!)
}
stop_qkv_node() {  # stop_qkv_node N SIGNAL: stops node N and waits until it has exited
    kill -"$2" "${QPID[$1]}"
    wait "${QPID[$1]}" 2>/dev/null || true
}
qkv_leader() { curl -sf "http://${QKV[0]}/v1/cluster" | json 'd["leader"]["client_addr"]'; }
# The benchmark keys on quorum-kv: "<count> <sum of versions>" (versions count the
# writes each key has had, so the sum counts writes applied).
qkv_scan() { python3 scripts/bench/qkv_scan.py "${QKV[0]}"; }
qkv_keys() { qkv_scan | cut -d' ' -f1; }
qkv_writes() { qkv_scan | cut -d' ' -f2; }
# The same on the cluster with TLS and tokens, as its admin.
qkv_tls() {  # qkv_tls CURL-ARGS...: curl to the cluster with TLS as its admin
    curl -sf --cacert "$TLS_DIR/ca.pem" -H "Authorization: Bearer $(cat "$WORK/qkv-tls/admin-token")" "$@"
}
qkv_tls_leader() { qkv_tls "https://${QKV_TLS[0]}/v1/cluster" | json 'd["leader"]["client_addr"]'; }
qkv_tls_scan() {
    QKV_CACERT="$TLS_DIR/ca.pem" QKV_TOKEN=$(cat "$WORK/qkv-tls/admin-token") \
        python3 scripts/bench/qkv_scan.py "${QKV_TLS[0]}"
}
qkv_tls_keys() { qkv_tls_scan | cut -d' ' -f1; }
qkv_tls_writes() { qkv_tls_scan | cut -d' ' -f2; }

# ---- etcd ----
ETCD=(127.0.0.1:23791 127.0.0.1:23792 127.0.0.1:23793)
start_etcd() {
    local cluster="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803" n
    for n in 1 2 3; do
        etcd --name "e$n" --data-dir "$WORK/etcd/e$n" \
            --listen-client-urls "http://127.0.0.1:2379$n" --advertise-client-urls "http://127.0.0.1:2379$n" \
            --listen-peer-urls "http://127.0.0.1:2380$n" --initial-advertise-peer-urls "http://127.0.0.1:2380$n" \
            --initial-cluster "$cluster" --initial-cluster-token quorum-kv-bench \
            --initial-cluster-state new --logger zap --log-level warn \
            > "$WORK/etcd-e$n.log" 2>&1 &
        PIDS+=($!)
    done
    for addr in "${ETCD[@]}"; do wait_for "etcd $addr" curl -sf "http://$addr/health"; done
}
etcd_status() { curl -sf -X POST "http://$1/v3/maintenance/status" -d '{}'; }
etcd_leader() {
    local addr
    for addr in "${ETCD[@]}"; do
        if etcd_status "$addr" | json 'int(d["leader"] == d["header"]["member_id"])' | grep -q 1; then
            echo "$addr"; return
        fi
    done
}
# etcd's revision counts every write.
etcd_writes() { etcd_status "${ETCD[0]}" | json 'd["header"]["revision"]'; }
etcd_keys() {
    # count_only over the range [bench/, bench0)
    curl -sf -X POST "http://${ETCD[0]}/v3/kv/range" \
        -d '{"key":"YmVuY2gv","range_end":"YmVuY2gw","count_only":true}' | json 'd.get("count", 0)'
}
# etcd with client and peer TLS (peers check each other's certificates) and auth on.
ETCD_TLS=(127.0.0.1:23794 127.0.0.1:23795 127.0.0.1:23796)
ETCD_TOKEN=
start_etcd_tls() {
    local cluster="e1=https://127.0.0.1:23804,e2=https://127.0.0.1:23805,e3=https://127.0.0.1:23806" n
    for n in 1 2 3; do
        etcd --name "e$n" --data-dir "$WORK/etcd-tls/e$n" \
            --listen-client-urls "https://127.0.0.1:2379$((n + 3))" \
            --advertise-client-urls "https://127.0.0.1:2379$((n + 3))" \
            --cert-file "$TLS_DIR/node$n.pem" --key-file "$TLS_DIR/node$n-key.pem" \
            --listen-peer-urls "https://127.0.0.1:2380$((n + 3))" \
            --initial-advertise-peer-urls "https://127.0.0.1:2380$((n + 3))" \
            --peer-cert-file "$TLS_DIR/node$n.pem" --peer-key-file "$TLS_DIR/node$n-key.pem" \
            --peer-trusted-ca-file "$TLS_DIR/ca.pem" --peer-client-cert-auth \
            --auth-token-ttl 3600 \
            --initial-cluster "$cluster" --initial-cluster-token quorum-kv-bench-tls \
            --initial-cluster-state new --logger zap --log-level warn \
            > "$WORK/etcd-tls-e$n.log" 2>&1 &
        PIDS+=($!)
    done
    for addr in "${ETCD_TLS[@]}"; do
        wait_for "etcd $addr" curl -sf --cacert "$TLS_DIR/ca.pem" "https://$addr/health"
    done
    # A root user, auth on, and the user's token for every request after.
    local api="https://${ETCD_TLS[0]}/v3/auth" ca=(--cacert "$TLS_DIR/ca.pem")
    curl -sf "${ca[@]}" -X POST "$api/user/add" -d '{"name":"root","password":"bench"}' >/dev/null
    curl -sf "${ca[@]}" -X POST "$api/user/grant" -d '{"user":"root","role":"root"}' >/dev/null
    curl -sf "${ca[@]}" -X POST "$api/enable" -d '{}' >/dev/null
    ETCD_TOKEN=$(curl -sf "${ca[@]}" -X POST "$api/authenticate" \
        -d '{"name":"root","password":"bench"}' | json 'd["token"]')
}
etcd_tls() {  # etcd_tls ADDRESS PATH BODY: a request to the cluster with TLS, as root
    curl -sf --cacert "$TLS_DIR/ca.pem" -H "Authorization: $ETCD_TOKEN" -X POST "https://$1$2" -d "$3"
}
etcd_tls_leader() {
    local addr
    for addr in "${ETCD_TLS[@]}"; do
        if etcd_tls "$addr" /v3/maintenance/status '{}' \
            | json 'int(d["leader"] == d["header"]["member_id"])' | grep -q 1; then
            echo "$addr"; return
        fi
    done
}
etcd_tls_writes() { etcd_tls "${ETCD_TLS[0]}" /v3/maintenance/status '{}' | json 'd["header"]["revision"]'; }
etcd_tls_keys() {
    etcd_tls "${ETCD_TLS[0]}" /v3/kv/range '{"key":"YmVuY2gv","range_end":"YmVuY2gw","count_only":true}' \
        | json 'd.get("count", 0)'
}

# ---- runs ----
# wrk_run and fill take their target as a URL; BENCH_AUTH (an Authorization header value)
# passes through to the wrk scripts.
wrk_run() {  # wrk_run SYSTEM OP CONNS URL SECONDS: prints wrk's JSON line
    local threads=2
    [ "$3" -lt 2 ] && threads=1
    BENCH_OP=$2 wrk -t"$threads" -c"$3" -d"$5"s -s "scripts/bench/$1.lua" "$4" | tail -n 1
}

fill() {  # fill SYSTEM URL START: writes keys in order from START
    BENCH_OP=load BENCH_START=$3 wrk -t1 -c16 -d8s -s "scripts/bench/$1.lua" "$2" \
        | tail -n 1 >/dev/null
}

# ---- scale: quorum-kv alone with SCALE_KEYS keys ----
now() { date +%s.%N; }
since() { python3 -c "print(round($(now) - $1, 2))"; }
node_status() { curl -sf "http://127.0.0.1:720$1/v1/cluster"; }
rss_mib() { awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/${QPID[$1]}/status"; }
# The peak resident memory since the process started or since reset_peak.
peak_mib() { awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/${QPID[$1]}/status"; }
reset_peak() { echo 5 > "/proc/${QPID[$1]}/clear_refs"; }
applied_at_least() { [ "$(node_status "$1" | json 'd["applied_index"] or 0')" -ge "$2" ]; }
stored_keys() { curl -sf "http://127.0.0.1:720$1/v1/admin/digest" | json 'd["keys"]'; }

scale() {
    start_quorum_kv
    local leader down up n
    leader=$(qkv_leader); leader=${leader##*:720}
    for n in 1 2 3; do [ "$n" != "$leader" ] && { [ -z "${down:-}" ] && down=$n || up=$n; }; done
    echo "leader node $leader; node $down goes down while the keys are written; node $up restarts"

    local down_last
    down_last=$(node_status "$down" | json 'd["last_log_index"]')
    stop_qkv_node "$down" 9
    echo "node $down killed at log index $down_last; writing $SCALE_KEYS keys of 100 bytes"
    local t0 load_secs keys purged
    t0=$(now)
    keys=0
    for _ in $(seq 60); do
        BENCH_OP=load BENCH_KEYS=$SCALE_KEYS BENCH_START=$keys wrk -t1 -c64 -d20s \
            -s scripts/bench/quorum-kv.lua "http://127.0.0.1:720$leader" >/dev/null
        keys=$(stored_keys "$leader")
        [ "$keys" -ge "$SCALE_KEYS" ] && break
    done
    load_secs=$(since "$t0")
    [ "$keys" -ge "$SCALE_KEYS" ] || { echo "error: only $keys keys after loading" >&2; exit 1; }
    # The catch-up must be by snapshot: overwrite keys until the leader's log is purged
    # past the down node's last entry. The leader's peak memory from here covers the
    # snapshots it builds and the one it sends.
    reset_peak "$leader"
    for _ in $(seq 60); do
        purged=$(node_status "$leader" | json 'd["purged_index"] or 0')
        [ "$purged" -gt "$down_last" ] && break
        BENCH_OP=load BENCH_KEYS=$SCALE_KEYS wrk -t1 -c64 -d5s \
            -s scripts/bench/quorum-kv.lua "http://127.0.0.1:720$leader" >/dev/null
    done
    [ "$purged" -gt "$down_last" ] || { echo "error: the leader never purged its log" >&2; exit 1; }
    echo "$keys keys in ${load_secs} s; leader purged its log up to $purged"
    # The live follower applies the tail before its memory is read.
    local applied
    applied=$(node_status "$leader" | json 'd["applied_index"]')
    wait_for "node $up to apply index $applied" applied_at_least "$up" "$applied"
    local rss_leader rss_follower
    rss_leader=$(rss_mib "$leader"); rss_follower=$(rss_mib "$up")

    # Catch-up by snapshot: from start until it has applied what the leader applied.
    local target catch_secs caught
    target=$(node_status "$leader" | json 'd["applied_index"]')
    t0=$(now)
    start_qkv_node "$down"
    for _ in $(seq 6000); do
        caught=$(node_status "$down" 2>/dev/null | json 'd["applied_index"] or 0' 2>/dev/null || echo 0)
        [ "$caught" -ge "$target" ] && break
        sleep 0.05
    done
    catch_secs=$(since "$t0")
    [ "$caught" -ge "$target" ] || { echo "error: node $down did not catch up" >&2; exit 1; }
    local snap
    snap=$(node_status "$down" | json 'd["snapshot_index"] or 0')
    [ "$snap" -gt "$down_last" ] || { echo "error: node $down caught up without a snapshot" >&2; exit 1; }
    [ "$(stored_keys "$down")" = "$keys" ] || { echo "error: node $down holds the wrong key count" >&2; exit 1; }
    local rss_caught peak_leader peak_installer
    rss_caught=$(rss_mib "$down")
    peak_leader=$(peak_mib "$leader"); peak_installer=$(peak_mib "$down")
    echo "node $down caught up by snapshot (index $snap) in ${catch_secs} s"

    # Restart: a clean stop, then from start until it is ready and serves a read.
    stop_qkv_node "$up" TERM
    t0=$(now)
    start_qkv_node "$up"
    local ready_secs read_secs
    wait_for "node $up ready" curl -sf "http://127.0.0.1:720$up/readyz"
    ready_secs=$(since "$t0")
    wait_for "node $up serving" curl -sf "http://127.0.0.1:720$up/v1/kv/bench/k$((SCALE_KEYS - 1))?consistency=stale"
    read_secs=$(since "$t0")
    local rss_restarted
    rss_restarted=$(rss_mib "$up")
    echo "node $up restarted: ready in ${ready_secs} s, serving reads in ${read_secs} s"
    local du
    du=$(du -sm "$WORK/qkv/node$leader" | cut -f1)

    python3 scripts/bench/scale_report.py "$OUT" "$keys" "$load_secs" "$rss_leader" \
        "$rss_follower" "$rss_caught" "$rss_restarted" "$du" "$ready_secs" "$read_secs" \
        "$catch_secs" "$down_last" "$purged" "$snap" "$peak_leader" "$peak_installer"
    echo "written: $OUT/scale.json $OUT/scale.md"
}
if [ -n "$SCALE" ]; then
    scale
    exit 0
fi

# measure SCENARIO...: every scenario on both systems in turn, REPS times. The targets:
# QL/QF/EL/EF for the plain clusters, QTL/ETL and their writers' tokens for "tls".
measure() {
    local rep sc name op conns where system auth url count landed before line
    for rep in $(seq "$REPS"); do
        for sc in "$@"; do
            read -r name op conns where <<< "$sc"
            for system in quorum-kv etcd; do
                auth=
                if [ $system = quorum-kv ]; then
                    url=http://$QL; [ "$where" = follower ] && url=http://$QF; count=qkv_writes
                    if [ "$where" = tls ]; then url=https://$QTL; count=qkv_tls_writes; auth="Bearer $QKV_WRITER"; fi
                else
                    url=http://$EL; [ "$where" = follower ] && url=http://$EF; count=etcd_writes
                    if [ "$where" = tls ]; then url=https://$ETL; count=etcd_tls_writes; auth=$ETCD_TOKEN; fi
                fi
                BENCH_AUTH=$auth wrk_run $system "$op" "$conns" "$url" "$WARM" >/dev/null
                # Only writes are counted: reads leave the counters alone.
                landed=None
                [ "$op" = put ] && before=$($count)
                line=$(BENCH_AUTH=$auth wrk_run $system "$op" "$conns" "$url" "$SECS")
                [ "$op" = put ] && landed=$(( $($count) - before ))
                echo "$line" | python3 -c "import json,sys; d=json.load(sys.stdin); d.update(system='$system', scenario='$name', rep=$rep, landed=$landed); print(json.dumps(d))" >> "$RESULTS"
                printf '%-10s %-18s rep %d: %s, landed %s\n' $system "$name" "$rep" "$line" "$landed"
            done
        done
    done
}

# Plain clusters first, alone on the machine.
start_quorum_kv
start_etcd
PLAIN_PIDS=("${PIDS[@]}")
QL=$(qkv_leader); EL=$(etcd_leader)
for addr in "${QKV[@]}"; do [ "$addr" != "$QL" ] && QF=$addr && break; done
for addr in "${ETCD[@]}"; do [ "$addr" != "$EL" ] && EF=$addr && break; done
echo "quorum-kv leader $QL (follower $QF); etcd leader $EL (follower $EF)"
# Keys in order: an 8 s run covers the space several times over on this machine; a
# slower one goes on from the count it reached.
for _ in 1 2 3 4 5; do
    n=$(qkv_keys); [ "$n" = 10000 ] || fill quorum-kv "http://$QL" "$n"
    n=$(etcd_keys); [ "$n" = 10000 ] || fill etcd "http://$EL" "$n"
done
echo "keys filled: quorum-kv $(qkv_keys), etcd $(etcd_keys)"
[ "$(qkv_keys)" = 10000 ] && [ "$(etcd_keys)" = 10000 ] || { echo "error: fill incomplete" >&2; exit 1; }
measure "put-c1 put 1 leader" "put-c16 put 16 leader" "put-c64 put 64 leader" \
    "put-c64-follower put 64 follower" "get-c16 get 16 leader" "get-c64 get 64 leader" \
    "stale-c64 stale 64 leader"
for pid in "${PLAIN_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done

# Then the clusters with TLS and auth, alone in their turn.
mkdir -p "$TLS_DIR"
"$CARGO_TARGET_DIR/release/kv-server" certs --dir "$TLS_DIR" \
    --node 1=127.0.0.1 --node 2=127.0.0.1 --node 3=127.0.0.1 >/dev/null
start_quorum_kv tls
start_etcd_tls
QTL=$(qkv_tls_leader); ETL=$(etcd_tls_leader)
echo "with TLS and auth: quorum-kv leader $QTL, etcd leader $ETL"
# The writer: a token with a write grant on the benchmark's keys.
QKV_WRITER=$(qkv_tls -X POST "https://$QTL/v1/tokens" -H 'content-type: application/json' \
    -d '{"name":"bench","grants":[{"prefix":"bench/","access":"write"}]}' | json 'd["token"]')
for _ in 1 2 3 4 5; do
    n=$(qkv_tls_keys); [ "$n" = 10000 ] || BENCH_AUTH="Bearer $QKV_WRITER" fill quorum-kv "https://$QTL" "$n"
    n=$(etcd_tls_keys); [ "$n" = 10000 ] || BENCH_AUTH=$ETCD_TOKEN fill etcd "https://$ETL" "$n"
done
echo "keys filled with TLS: quorum-kv $(qkv_tls_keys), etcd $(etcd_tls_keys)"
[ "$(qkv_tls_keys)" = 10000 ] && [ "$(etcd_tls_keys)" = 10000 ] || { echo "error: fill incomplete" >&2; exit 1; }
measure "put-c64-tls put 64 tls"
python3 scripts/bench/report.py "$RESULTS" "$OUT"
echo "written: $OUT/results.json $OUT/results.md ($RESULTS has every run)"
