#!/usr/bin/env bash
# A local cluster of three nodes, up to five: client API on 127.0.0.1:700N, raft on 127.0.0.1:710N.
# Usage: scripts/cluster.sh up [--tls] | down | status | logs N [-f] | kill N | restart N | add N | remove N | clean
# Data and logs live in .run/local-3 (kept by `down`, removed by `clean`). `up --tls` runs
# TLS on both ports and tokens, with a CA, node certificates and an admin token it makes
# there; the cluster stays in the mode it was last brought up in. `add 4|5` joins a new
# node in that slot (added as a learner, started, promoted once caught up); `remove N`
# takes slot N's node out of the membership and stops it (slots 1-3 stay out until clean).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

RUN_DIR=.run/local-3
BIN="$CARGO_TARGET_DIR/checked/kv-server"

usage() { sed -n '3p' "$0" | sed 's/^# //' >&2; exit 2; }

# The slots in use: 1-3 unless removed, and 4-5 once added.
slots() {
    local n
    for n in 1 2 3 4 5; do
        if [ "$n" -le 3 ]; then
            [ -f "$RUN_DIR/slot$n.removed" ] || echo "$n"
        else
            [ -f "$RUN_DIR/node$n.toml" ] && echo "$n"
        fi
    done
    return 0
}
# A node's configuration: the checked-in one for slots 1-3, a generated one for 4-5.
config_of() {
    if [ -f "$RUN_DIR/node$1.toml" ]; then echo "$RUN_DIR/node$1.toml"; else echo "$(config_dir)/node$1.toml"; fi
}

# The mode the cluster was last brought up in: plain, or tls (TLS and tokens).
mode() { cat "$RUN_DIR/mode" 2>/dev/null || echo plain; }
config_dir() { if [ "$(mode)" = tls ]; then echo cluster-config/local-3-tls; else echo cluster-config/local-3; fi; }
scheme() { if [ "$(mode)" = tls ]; then echo https; else echo http; fi; }
# curl as a client of this cluster: trusting its CA and sending the admin token in TLS mode.
kv_curl() {
    if [ "$(mode)" = tls ]; then
        curl --cacert "$RUN_DIR/tls/ca.pem" -H "@$RUN_DIR/admin-header" "$@"
    else
        curl "$@"
    fi
}

ensure_tls() {  # the CA, node certificates and admin token of TLS mode, made once
    mkdir -p "$RUN_DIR"
    if [ ! -s "$RUN_DIR/tls/ca.pem" ]; then
        "$BIN" certs --dir "$RUN_DIR/tls" --node 1=127.0.0.1 --node 2=127.0.0.1 --node 3=127.0.0.1 >&2
    fi
    if [ ! -s "$RUN_DIR/admin-token" ]; then
        (umask 077; od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$RUN_DIR/admin-token")
    fi
    (umask 077; printf 'Authorization: Bearer %s\n' "$(cat "$RUN_DIR/admin-token")" > "$RUN_DIR/admin-header")
}

pid_of() {  # prints the pid of node $1 if it is running kv-server
    local f="$RUN_DIR/node$1.pid" pid
    [ -f "$f" ] || return 1
    pid=$(cat "$f")
    if [ -r "/proc/$pid/cmdline" ] && grep -qa kv-server "/proc/$pid/cmdline"; then
        echo "$pid"
    else
        rm -f "$f"; return 1
    fi
}

need_curl() { command -v curl >/dev/null 2>&1 || apt_install curl; }

build() {
    ensure_build_deps
    # The `checked` profile (release optimisations with debug assertions), which
    # scripts/test.sh and chaos.sh share, so RocksDB is compiled once for all three.
    echo "building kv-server (profile checked; the first build on a machine compiles RocksDB, about 20 minutes on 2 cores)..." >&2
    cargo build --profile checked --locked --workspace --bins
}

ensure_secret() {  # the cluster secret the configs read: random, made once per cluster
    local file="$RUN_DIR/cluster-secret"
    [ -s "$file" ] && return
    mkdir -p "$RUN_DIR"
    (umask 077; od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$file")
}

start_node() {
    local n=$1
    if pid_of "$n" >/dev/null; then echo "node $n already running (pid $(pid_of "$n"))"; return; fi
    [ -x "$BIN" ] || build
    mkdir -p "$RUN_DIR"
    ensure_secret
    RUST_LOG="${RUST_LOG:-info,openraft=warn}" nohup "$BIN" --config "$(config_of "$n")" \
        >> "$RUN_DIR/node$n.log" 2>&1 < /dev/null &
    local pid=$! i
    # Until the forked shell has become kv-server, pid_of would take it for a stale pid.
    for i in $(seq 100); do grep -qa kv-server "/proc/$pid/cmdline" 2>/dev/null && break; sleep 0.01; done
    echo "$pid" > "$RUN_DIR/node$n.pid"
    echo "node $n started (pid $pid)"
}

wait_ready() {  # until every running node says ready, at most 60 s
    local deadline=$((SECONDS + 60)) n ok
    while :; do
        ok=1
        for n in $(slots); do
            [ -f "$RUN_DIR/node$n.pid" ] || continue
            if ! pid_of "$n" >/dev/null; then
                echo "error: node $n exited; the end of its log:" >&2
                tail -n 5 "$RUN_DIR/node$n.log" >&2
                return 1
            fi
            kv_curl -fsS -o /dev/null "$(scheme)://127.0.0.1:700$n/readyz" 2>/dev/null || ok=0
        done
        [ $ok = 1 ] && return 0
        if [ $SECONDS -ge $deadline ]; then
            echo "error: the cluster did not become ready within 60 s; see scripts/cluster.sh logs N" >&2
            return 1
        fi
        sleep 0.2
    done
}

stop_node() {  # SIGTERM, then SIGKILL after 10 s
    local n=$1 pid i
    pid=$(pid_of "$n") || { echo "node $n not running"; return; }
    kill -TERM "$pid"
    for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    rm -f "$RUN_DIR/node$n.pid"
    echo "node $n stopped"
}

status() {
    local n pid
    for n in $(slots); do
        if pid=$(pid_of "$n"); then
            printf 'node %s  pid %-7s %s://127.0.0.1:700%s  ' "$n" "$pid" "$(scheme)" "$n"
            kv_curl -fsS "$(scheme)://127.0.0.1:700$n/v1/cluster" 2>/dev/null \
                | grep -oE '"(state|leader_id|term|applied_index)":[^,}]*' | tr '\n' ' ' \
                || printf '(not answering)'
            echo
        else
            echo "node $n  stopped"
        fi
    done
}

node_arg() { [[ "${1:-}" =~ ^[12345]$ ]] || usage; echo "$1"; }

# A running node to send membership requests to (any node forwards to the leader).
any_running() {
    local n
    for n in $(slots); do
        [ "$n" != "${1:-}" ] && pid_of "$n" >/dev/null && { echo "$n"; return 0; }
    done
    echo "error: no node of the cluster is running; scripts/cluster.sh up first" >&2
    return 1
}

json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

add_node() {
    local n=$1 via cid highest id next code
    [[ "$n" =~ ^[45]$ ]] || { echo "error: add takes slot 4 or 5 (slots 1-3 are the bootstrap nodes)" >&2; exit 2; }
    if [ -f "$RUN_DIR/node$n.toml" ]; then
        echo "error: slot $n holds a node already; scripts/cluster.sh remove $n first" >&2
        exit 1
    fi
    [ -x "$BIN" ] || build
    via=$(any_running)
    cid=$(kv_curl -fsS "$(scheme)://127.0.0.1:700$via/v1/cluster" | json_field cluster_id)
    highest=$(kv_curl -fsS "$(scheme)://127.0.0.1:700$via/v1/admin/members" \
        | python3 -c 'import json,sys; print(max(m["id"] for m in json.load(sys.stdin)["members"]))')
    # A new id, never one a removed node had: above every member and every id handed out.
    next=$(cat "$RUN_DIR/next-id" 2>/dev/null || echo 4)
    id=$(( highest + 1 > next ? highest + 1 : next ))
    echo $((id + 1)) > "$RUN_DIR/next-id"
    if [ "$(mode)" = tls ]; then
        "$BIN" certs --dir "$RUN_DIR/tls" --node "$id=127.0.0.1" >&2
    fi
    rm -rf "$RUN_DIR/node$n"
    # Node 1's settings, with this slot's id, addresses and data, joining instead of bootstrapping.
    awk -v id="$id" -v n="$n" -v cid="$cid" '
        /^members = \[/ { skip = 1; print "join = \"" cid "\""; next }
        skip && /^\]/ { skip = 0; next }
        skip { next }
        /^id = / { print "id = " id; next }
        { gsub(/127\.0\.0\.1:7001/, "127.0.0.1:700" n); gsub(/127\.0\.0\.1:7101/, "127.0.0.1:710" n)
          gsub(/local-3\/node1"/, "local-3/node" n "\""); gsub(/node1\.pem/, "node" id ".pem")
          gsub(/node1-key\.pem/, "node" id "-key.pem"); print }
    ' "$(config_dir)/node1.toml" > "$RUN_DIR/node$n.toml"
    code=$(kv_curl -sS -o "$RUN_DIR/member-answer" -w '%{http_code}' -X POST \
        -H 'content-type: application/json' \
        -d "{\"client_addr\":\"127.0.0.1:700$n\",\"raft_addr\":\"127.0.0.1:710$n\",\"id\":$id}" \
        "$(scheme)://127.0.0.1:700$via/v1/admin/members")
    if [ "$code" != 201 ]; then
        echo "error: adding node $id refused ($code): $(cat "$RUN_DIR/member-answer")" >&2
        rm -f "$RUN_DIR/node$n.toml"
        exit 1
    fi
    echo "$id" > "$RUN_DIR/slot$n.id"
    echo "node $id added as a learner in slot $n"
    start_node "$n"
    local deadline=$((SECONDS + 60))
    while :; do
        code=$(kv_curl -sS -o "$RUN_DIR/member-answer" -w '%{http_code}' -X POST \
            "$(scheme)://127.0.0.1:700$via/v1/admin/members/$id/promote")
        [ "$code" = 200 ] && break
        if [ $SECONDS -ge $deadline ]; then
            echo "error: node $id was not promoted within 60 s ($code): $(cat "$RUN_DIR/member-answer")" >&2
            exit 1
        fi
        sleep 0.5
    done
    echo "node $id is a voter: $(scheme)://127.0.0.1:700$n"
}

remove_node() {
    local n=$1 id via code
    [ -f "$(config_of "$n")" ] && { [ "$n" -le 3 ] || [ -f "$RUN_DIR/node$n.toml" ]; } \
        || { echo "error: slot $n holds no node" >&2; exit 1; }
    id=$(cat "$RUN_DIR/slot$n.id" 2>/dev/null || echo "$n")
    via=$(any_running "$n")
    code=$(kv_curl -sS -o "$RUN_DIR/member-answer" -w '%{http_code}' -X DELETE \
        "$(scheme)://127.0.0.1:700$via/v1/admin/members/$id")
    if [ "$code" != 200 ] && [ "$code" != 404 ]; then
        echo "error: removing node $id refused ($code): $(cat "$RUN_DIR/member-answer")" >&2
        exit 1
    fi
    stop_node "$n"
    rm -rf "$RUN_DIR/node$n"
    if [ "$n" -le 3 ]; then touch "$RUN_DIR/slot$n.removed"; else rm -f "$RUN_DIR/node$n.toml" "$RUN_DIR/slot$n.id"; fi
    echo "node $id removed from slot $n"
}

case "${1:-}" in
    up)
        case "${2:-}" in
            "") want=plain ;;
            --tls) want=tls ;;
            *) usage ;;
        esac
        need_curl
        build
        if [ "$want" != "$(mode)" ]; then
            for n in $(slots); do
                if pid_of "$n" >/dev/null; then
                    echo "error: the cluster is running in $(mode) mode; scripts/cluster.sh down first" >&2
                    exit 1
                fi
            done
        fi
        mkdir -p "$RUN_DIR"
        [ "$want" = tls ] && ensure_tls
        echo "$want" > "$RUN_DIR/mode"
        for n in $(slots); do start_node "$n"; done
        wait_ready
        echo
        echo "cluster ready:"
        for n in $(slots); do echo "  node $n  $(scheme)://127.0.0.1:700$n"; done
        if [ "$want" = tls ]; then
            echo "for kvctl and kv-client (the token is the bootstrap admin's: make narrower ones with kvctl token create):"
            echo "  export KV_ENDPOINTS=https://127.0.0.1:7001,https://127.0.0.1:7002,https://127.0.0.1:7003"
            echo "  export KV_CACERT=$PWD/$RUN_DIR/tls/ca.pem"
            echo "  export KV_TOKEN=\$(cat $PWD/$RUN_DIR/admin-token)"
            echo "try: curl --cacert \$KV_CACERT -H \"Authorization: Bearer \$KV_TOKEN\" -X PUT 'https://127.0.0.1:7001/v1/kv/users?ttl=3600' -H 'content-type: application/json' -d '[{\"id\":1}]'"
        else
            echo "try: curl -X PUT 'localhost:7001/v1/kv/users?ttl=3600' -H 'content-type: application/json' -d '[{\"id\":1}]'"
        fi
        ;;
    down) for n in $(slots); do stop_node "$n"; done ;;
    status) need_curl; status ;;
    logs)
        n=$(node_arg "${2:-}")
        if [ "${3:-}" = "-f" ]; then tail -n 100 -f "$RUN_DIR/node$n.log"; else tail -n 200 "$RUN_DIR/node$n.log"; fi
        ;;
    kill)
        n=$(node_arg "${2:-}")
        if pid=$(pid_of "$n"); then kill -KILL "$pid"; rm -f "$RUN_DIR/node$n.pid"; echo "node $n killed (pid $pid)"; else echo "node $n not running"; fi
        ;;
    restart)
        n=$(node_arg "${2:-}")
        need_curl
        if pid=$(pid_of "$n"); then kill -KILL "$pid"; rm -f "$RUN_DIR/node$n.pid"; fi
        start_node "$n"
        wait_ready
        ;;
    add) need_curl; add_node "$(node_arg "${2:-}")"; wait_ready ;;
    remove) need_curl; remove_node "$(node_arg "${2:-}")" ;;
    clean)
        for n in $(slots); do stop_node "$n"; done
        rm -rf "$RUN_DIR"
        echo "removed $RUN_DIR"
        ;;
    *) usage ;;
esac
