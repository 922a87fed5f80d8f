# Sourced by the other scripts: the shared cargo target directory and the system
# packages a build needs, installed when missing.

# One target directory per machine, outside the clone, so RocksDB compiles once per
# machine rather than once per clone or CI run.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/quorum-kv/target}"
mkdir -p "$CARGO_TARGET_DIR"

# Runs a command as root, directly or through sudo.
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else return 1
    fi
}

# Installs Debian packages, refreshing the package index once if the first try fails.
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: please install: $* (this script installs them itself only with apt-get)" >&2
        return 1
    fi
    echo "installing $* ..." >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null \
        || { as_root apt-get update -q >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; } \
        || { echo "error: could not install $*; install them by hand (as root: apt-get install $*)" >&2; return 1; }
}

# What building RocksDB needs: a C++ compiler and libclang for bindgen.
ensure_build_deps() {
    local missing=()
    command -v c++ >/dev/null 2>&1 || missing+=(g++)
    if ! dpkg -s libclang-dev >/dev/null 2>&1 && ! ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1; then
        missing+=(libclang-dev)
    fi
    if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

# rustfmt and clippy, for the checks in scripts/test.sh.
ensure_rust_components() {
    for c in rustfmt clippy; do
        if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
            if command -v rustup >/dev/null 2>&1; then rustup component add "$c"
            else echo "error: cargo $c is missing and rustup is not available to add it" >&2; return 1
            fi
        fi
    done
}

# What the chaos suite needs: root and iptables for partitions, kill(1) for pauses.
# Without root it says so and fails: partition tests must never pass by not running.
# promtool, to check /metrics against Prometheus' own parser: on the PATH, or taken
# from Debian's prometheus package without installing it (no service, just the binary).
# Prints its path.
ensure_promtool() {
    if command -v promtool >/dev/null 2>&1; then command -v promtool; return; fi
    local cached="$HOME/.cache/quorum-kv/tools/promtool"
    if [ ! -x "$cached" ]; then
        if ! command -v apt-get >/dev/null 2>&1; then
            echo "error: please install promtool (Debian and Ubuntu: the prometheus package)" >&2
            return 1
        fi
        local tmp
        tmp=$(mktemp -d /tmp/quorum-kv-promtool.XXXXXX)
        echo "fetching promtool from Debian's prometheus package ..." >&2
        ( cd "$tmp" && { apt-get download -q prometheus >/dev/null 2>&1 \
            || { as_root apt-get update -q >/dev/null && apt-get download -q prometheus >/dev/null; }; } ) \
            || { rm -rf "$tmp"; echo "error: could not fetch the prometheus package; install promtool by hand" >&2; return 1; }
        dpkg -x "$tmp"/prometheus_*.deb "$tmp/x"
        mkdir -p "$(dirname "$cached")"
        cp "$tmp/x/usr/bin/promtool" "$cached"
        rm -rf "$tmp"
    fi
    echo "$cached"
}

ensure_chaos_deps() {
    if [ "$(id -u)" != 0 ]; then
        echo "error: the chaos suite needs root (iptables rules for network partitions); run as root" >&2
        return 1
    fi
    local missing=()
    command -v iptables >/dev/null 2>&1 || missing+=(iptables)
    type -P kill >/dev/null 2>&1 || missing+=(procps)
    if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

# Node.js 20 or later with npm, for the TypeScript client's tests (clients/typescript).
# Installed with apt-get when the distribution's nodejs is 20 or later (Debian 13, Ubuntu
# 24.10 and later, whose npm is a package of its own); otherwise this says what to install.
node_major() {
    node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0
}

# The major version of the nodejs package apt-get would install; empty if none.
nodejs_candidate_major() {
    apt-cache policy nodejs 2>/dev/null | sed -n 's/^ *Candidate: *\([0-9]*:\)\{0,1\}\([0-9]*\).*/\2/p'
}

ensure_node() {
    if [ "$(node_major)" -ge 20 ] && command -v npm >/dev/null 2>&1; then return; fi
    if command -v apt-get >/dev/null 2>&1; then
        # A fresh machine may have no package index yet.
        if [ -z "$(nodejs_candidate_major)" ]; then as_root apt-get update -q >/dev/null || true; fi
        if [ "$(nodejs_candidate_major)" -ge 20 ] 2>/dev/null; then
            local packages=(nodejs)
            apt-cache show npm >/dev/null 2>&1 && packages+=(npm)
            apt_install "${packages[@]}" || true
        fi
    fi
    if [ "$(node_major)" -ge 20 ] && command -v npm >/dev/null 2>&1; then return; fi
    echo "error: the TypeScript client's tests need Node.js 20 or later and npm (found node $(node --version 2>/dev/null || echo none), npm $(npm --version 2>/dev/null || echo none))." >&2
    echo "  Debian 13, Ubuntu 24.10 and later: apt-get install nodejs npm" >&2
    echo "  older releases (Debian 12 ships Node 18): nodejs 20 or later from https://deb.nodesource.com (npm included), or nvm" >&2
    return 1
}

# schemathesis, to fuzz the client API against its OpenAPI description
# (scripts/fuzz-api.sh): one pinned version in a Python virtual environment of its own,
# installed from PyPI with pip when missing, and the tools the script runs besides.
# Prints the path of its command.
SCHEMATHESIS_VERSION=4.32.5
ensure_schemathesis() {
    local venv="$HOME/.cache/quorum-kv/tools/schemathesis-$SCHEMATHESIS_VERSION"
    # fuzz-api.sh also runs the node in a network namespace (unshare, ip) and asks it
    # with curl.
    local missing=()
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
    if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}" >&2 || return 1; fi
    if [ -x "$venv/bin/schemathesis" ]; then echo "$venv/bin/schemathesis"; return; fi
    command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv || return 1
    echo "installing schemathesis $SCHEMATHESIS_VERSION into $venv ..." >&2
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        # Debian and Ubuntu ship venv as a package of its own.
        rm -rf "$venv"
        apt_install python3-venv && python3 -m venv "$venv" >&2 || return 1
    fi
    "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION" >&2 \
        || { rm -rf "$venv"; echo "error: could not install schemathesis $SCHEMATHESIS_VERSION with pip" >&2; return 1; }
    echo "$venv/bin/schemathesis"
}
