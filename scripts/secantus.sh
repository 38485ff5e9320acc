#!/usr/bin/env bash
# Run SecantusDB, a MongoDB-wire-compatible server written in Python on top of
# WiredTiger, for tests and CI.
#
# No mongod can be installed here (it is on no reachable registry), but
# SecantusDB is on PyPI and speaks the wire protocol well enough for the
# official drivers, including sessions and multi-document transactions. It is
# installed into a private virtualenv under .cache/ (git-ignored) together
# with pymongo, which this script uses only to probe readiness.
#
# Usage:
#   scripts/secantus.sh install                 venv + SecantusDB in .cache/secantus/venv
#   scripts/secantus.sh start  [PORT]           fresh, empty in-memory server on 127.0.0.1:PORT
#   scripts/secantus.sh stop   [PORT]
#   scripts/secantus.sh status [PORT]
#   scripts/secantus.sh uri    [PORT]           print the connection string clients should use
#
# PORT defaults to $SECANTUS_PORT or 27018.
# The server advertises itself as the primary of a single-node replica set
# named "secantus" (hard-coded in SecantusDB; there is no flag for the name),
# so clients connect with mongodb://127.0.0.1:PORT/?replicaSet=secantus (or
# directConnection=true). Transactions work either way.
# Environment knobs: SECANTUS_START_TIMEOUT (s, default 30),
# SECANTUS_STOP_TIMEOUT (s, default 15), SECANTUS_LOG_LEVEL (default INFO),
# SECANTUS_ARGS (extra secantusd-py flags, e.g. "--oplog-max-entries 20000"),
# PYTHON (interpreter used to create the venv, default python3).
# Memory: ':memory:' is WiredTiger in_memory mode, so all data AND the oplog
# (kept up to 100k entries / 1 h by default) live in RAM, capped by the WT
# cache (--cache-size, server default 1G; a full cache fails writes with
# WT_CACHE_FULL, and a transaction whose buffered writes, counted twice for
# doc + oplog, pass ~15% of it fails with 388 TransactionTooLargeForCache).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
CACHE="$REPO_ROOT/.cache/secantus"
VENV="$CACHE/venv"

# Pinned so every machine and CI run the same server; pymongo too, because the
# readiness probe and scripts/secantus_probe.py depend on its behaviour.
SECANTUS_PKG="SecantusDB==0.7.0b3"
PYMONGO_PKG="pymongo==4.20.1"
REPLSET="secantus"

log() { echo "secantus.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

port_arg() {
    local port="${1:-${SECANTUS_PORT:-27018}}"
    if ! [[ "$port" =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
        die "bad port: $port"
    fi
    echo "$port"
}

pid_file() { echo "$CACHE/secantus-$1.pid"; }
log_file() { echo "$CACHE/secantus-$1.log"; }
# ':memory:' still makes a mkdtemp() WiredTiger home dir (empty: the data
# stays in RAM) that the server removes only on a clean shutdown. Pointing
# TMPDIR at a per-port dir under .cache keeps it out of /tmp and lets
# start/stop clear what a SIGKILL or a crash left behind.
tmp_dir() { echo "$CACHE/tmp-$1"; }

# The pid of the server on PORT if it is running, else nothing (status 1).
# Checks the command line too, so a stale pid file whose pid got reused by
# some other process is not mistaken for a live server.
running_pid() {
    local pf pid
    pf="$(pid_file "$1")"
    [[ -f "$pf" ]] || return 1
    pid="$(cat "$pf")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "secantusd-py .*--port $1 " || return 1
    echo "$pid"
}

# True if something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------- install ---

# The stamp records the pins and the venv's own path: a venv hard-codes its
# absolute path in every console script's shebang, so a repo that was moved
# or copied must rebuild it rather than trust a stamp that merely exists.
stamp_file() { echo "$VENV/.installed"; }
stamp_text() { echo "$SECANTUS_PKG $PYMONGO_PKG $VENV"; }

cmd_install() {
    local stamp tmp t0 py
    stamp="$(stamp_file)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$(stamp_text)" && -x "$VENV/bin/secantusd-py" ]]; then
        return 0
    fi
    py="${PYTHON:-python3}"
    command -v "$py" >/dev/null || die "$py not found (SecantusDB needs Python >= 3.10)"
    log "installing $SECANTUS_PKG into ${VENV#"$REPO_ROOT"/} ..."
    t0=$SECONDS
    mkdir -p "$CACHE"
    # A venv cannot be built elsewhere and renamed (its scripts' shebangs
    # name its path), so build it in place with the old one moved aside and
    # write the stamp last: an interrupted install never looks installed.
    tmp="$VENV.old.$$"
    [[ -d "$VENV" ]] && mv "$VENV" "$tmp"
    if ! "$py" -m venv "$VENV" >&2 ||
        ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
            "$SECANTUS_PKG" "$PYMONGO_PKG" >&2; then
        rm -rf "$VENV"
        [[ -d "$tmp" ]] && mv "$tmp" "$VENV"
        die "pip install $SECANTUS_PKG failed"
    fi
    rm -rf "$tmp"
    stamp_text >"$stamp"
    log "installed in $((SECONDS - t0))s"
}

# ------------------------------------------------------------------ start ---

# Exit 0 once the server answers a MongoDB `hello` as a writable primary (a
# bare open port is not enough: the listener is bound before the storage
# engine and command layer are ready). One short-lived python per attempt,
# with tight timeouts, so the caller's deadline stays in control.
probe() {
    "$VENV/bin/python" - "$1" <<'EOF' 2>/dev/null
import sys
from pymongo import MongoClient
c = MongoClient(f"mongodb://127.0.0.1:{sys.argv[1]}/?directConnection=true",
                serverSelectionTimeoutMS=1000, connectTimeoutMS=1000, socketTimeoutMS=2000)
try:
    r = c.admin.command("hello")
    c.admin.command("ping")
    sys.exit(0 if r.get("isWritablePrimary") else 1)
finally:
    c.close()
EOF
}

cmd_start() {
    local port logf pf pid tmpd cfg deadline timeout t0
    local -a extra
    port="$(port_arg "${1:-}")"
    logf="$(log_file "$port")"
    pf="$(pid_file "$port")"
    tmpd="$(tmp_dir "$port")"
    cfg="$CACHE/secantusd.toml"
    timeout="${SECANTUS_START_TIMEOUT:-30}"

    cmd_install
    # start always means a fresh, empty server, so replace a running one.
    if running_pid "$port" >/dev/null; then
        log "a server is already running on port $port; restarting it fresh"
        cmd_stop "$port"
    fi
    if port_open "$port"; then
        die "port $port is already in use by another process"
    fi

    # Without --config, secantusd-py picks up ./secantusd.toml (relative to
    # its cwd), ~/.secantus/ or /etc/secantus/ if present. An explicit empty
    # config makes the server's settings depend only on the flags below.
    echo "# Generated by scripts/secantus.sh: all settings are passed as flags." >"$cfg"
    rm -rf "$tmpd"
    mkdir -p "$tmpd"

    # Word-split on purpose: SECANTUS_ARGS is a flag list.
    read -r -a extra <<<"${SECANTUS_ARGS:-}"

    log "starting SecantusDB on 127.0.0.1:$port, log ${logf#"$REPO_ROOT"/}"
    t0=$SECONDS
    # exec keeps $! the server itself, which must outlive this script; cwd is
    # the cache dir so nothing it writes lands in the work tree.
    (
        cd "$CACHE"
        TMPDIR="$tmpd" exec nohup "$VENV/bin/secantusd-py" \
            --config "$cfg" --host 127.0.0.1 --port "$port" --storage-path :memory: \
            --log-level "${SECANTUS_LOG_LEVEL:-INFO}" ${extra[@]+"${extra[@]}"}
    ) >"$logf" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$pf"

    deadline=$((SECONDS + timeout))
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$pf"
            rm -rf "$tmpd"
            log "server exited during startup; last 50 log lines:"
            tail -n 50 "$logf" >&2
            exit 1
        fi
        if port_open "$port" && probe "$port"; then
            break
        fi
        if ((SECONDS >= deadline)); then
            log "server not answering hello after ${timeout}s; last 50 log lines:"
            tail -n 50 "$logf" >&2
            cmd_stop "$port" || true
            exit 1
        fi
        sleep 0.1
    done
    log "up on 127.0.0.1:$port (pid $pid, $((SECONDS - t0))s); $(cmd_uri "$port")"
}

# ------------------------------------------------------------------- stop ---

cmd_stop() {
    local port pf pid deadline timeout
    port="$(port_arg "${1:-}")"
    pf="$(pid_file "$port")"
    timeout="${SECANTUS_STOP_TIMEOUT:-15}"
    if ! pid="$(running_pid "$port")"; then
        rm -f "$pf"
        rm -rf "$(tmp_dir "$port")"
        log "no server running on port $port"
        return 0
    fi
    log "stopping server on port $port (pid $pid)"
    # SIGTERM makes the server close WiredTiger and delete its temp dir;
    # SIGKILL is only the fallback for a hung process.
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + timeout))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "still alive after ${timeout}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            for _ in 1 2 3 4 5 6 7 8 9 10; do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.2
            done
            break
        fi
        sleep 0.1
    done
    rm -f "$pf"
    rm -rf "$(tmp_dir "$port")"
    log "stopped"
}

# ----------------------------------------------------------------- status ---

cmd_status() {
    local port pid
    port="$(port_arg "${1:-}")"
    if pid="$(running_pid "$port")"; then
        if probe "$port"; then
            echo "running: pid $pid, $(cmd_uri "$port")"
        else
            echo "starting: pid $pid, 127.0.0.1:$port not answering hello yet"
        fi
        return 0
    fi
    echo "stopped: no server on port $port"
    return 1
}

cmd_uri() {
    local port
    port="$(port_arg "${1:-}")"
    echo "mongodb://127.0.0.1:$port/?replicaSet=$REPLSET"
}

usage() {
    sed -n '/^# Usage:/,/^# PORT defaults/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

cmd="${1:-}"
(($# > 0)) && shift
case "$cmd" in
    install) cmd_install && log "SecantusDB ready in ${VENV#"$REPO_ROOT"/}" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status "$@" ;;
    uri) cmd_uri "$@" ;;
    *) usage ;;
esac
