#!/usr/bin/env bash
# The peer comparison of issue 13: sluice against what users would otherwise deploy, Kafka
# Connect with the official MongoDB sink connector, on the same broker and the same
# MongoDB-wire server (SecantusDB), in alternating trials, each on a fresh server.
#
# Workload W1: DOCS documents {"text": unique, "language": "en", "n": i} on 6-partition topics.
#   peer    one record per document (key {"_id": text}, value the document; JSON, schemas
#           disabled), Connect standalone, MongoSinkConnector with tasks.max=6,
#           max.batch.size=500, _id = text (ProvidedInKeyStrategy), default write model
#           (replaceOne upsert by _id, ordered bulk writes), into peer_<trial>.words.
#   sluice  DOCS/100 create requests of 100 items, collection words keyed by text, [mongo]
#           store, exactly-once (the default), chunk.max_items=500, into sluice_<trial>.
# All input is produced once, before the first trial (not timed). A trial starts the consumer
# side and ends when the peer has written every document (point look-ups of each partition's
# checkpoint keys) or when sluice's result events for every request are readable with
# read_committed (`sluice tail`). Each trial is then verified (document count, _id = text on
# both sides, and for sluice its events and ledger).
#
# Usage:   scripts/bench-peer.sh                (the full W1: DOCS=200000 ROUNDS=3)
#          DOCS=20000 ROUNDS=1 scripts/bench-peer.sh   (a smoke run)
#          SIDES=sluice DOCS=2000000 ROUNDS=1 scripts/bench-peer.sh   (the soak: is sluice's
#          store cost and RSS flat between the first and the last tenth of 2M documents?)
# Env:     DOCS (200000), ROUNDS (3; a round = one peer and one sluice trial), BATCH (500:
#          max.batch.size and chunk.max_items), BENCH_KAFKA_PORT (29092; +1 for the
#          controller), BENCH_MONGO_PORT (29017), BENCH_CONNECT_PORT (29083, Connect's REST
#          listener), PEER_HEAP_OPTS (-Xms256M -Xmx2G, connect-standalone.sh's default),
#          TRIAL_TIMEOUT (s; default 120 + DOCS/100), PEER_WRITE_MODEL (the sink's
#          writemodel.strategy class; unset = the connector's default, replaceOne upserts);
#          SECANTUS_ARGS reaches scripts/secantus.sh (e.g. "--config FILE" for server settings);
#          SIDES ("peer sluice"; "sluice" alone skips Kafka Connect and its records).
# Needs:   Java 17+, Maven (once, to fetch the jars), python3 (SecantusDB's venv), and
#          a Rust toolchain (`cargo build --release` runs first: a stale binary would measure
#          old code; SKIP_BUILD=1 uses target/release/sluice as it is).
# Helper:  scripts/connect/bench_peer.py (input, polling, verification, the table).
# Output:  the table on stdout; logs, configs, samples and results.jsonl in
#          .cache/bench-peer/<timestamp>/.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
POM="$SCRIPT_DIR/connect/pom.xml"
HELPER="$SCRIPT_DIR/connect/bench_peer.py"
CONNECT_CACHE="$REPO_ROOT/.cache/connect"
LIBS="$CONNECT_CACHE/libs"
PY="$REPO_ROOT/.cache/secantus/venv/bin/python"

DOCS="${DOCS:-200000}"
ROUNDS="${ROUNDS:-3}"
SIDES="${SIDES:-peer sluice}"
BATCH="${BATCH:-500}"
ITEMS=100
PARTS=6
KPORT="${BENCH_KAFKA_PORT:-29092}"
MPORT="${BENCH_MONGO_PORT:-29017}"
RPORT="${BENCH_CONNECT_PORT:-29083}"
TRIAL_TIMEOUT="${TRIAL_TIMEOUT:-$((120 + DOCS / 100))}"
REQUESTS=$(((DOCS + ITEMS - 1) / ITEMS))
OUT="$REPO_ROOT/.cache/bench-peer/$(date -u +%Y%m%dT%H%M%SZ)"
BROKER="127.0.0.1:$KPORT"
PEER_TOPIC="w1.peer"
REQ_TOPIC="w1.requests"

log() { echo "bench-peer: $*" >&2; }
die() { log "error: $*"; exit 1; }

# ------------------------------------------------------------ clean-up ---

PIDS=()           # background processes this script started (Connect, sluice, tail)
STARTED_KAFKA=0
STARTED_MONGO=0

stop_pid() {      # stop_pid PID [TIMEOUT]: SIGTERM, bounded wait, then SIGKILL
    local pid="$1" deadline=$((SECONDS + ${2:-30}))
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "pid $pid still alive; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}" 15; done   # newest first
    if ((STARTED_MONGO)); then bash "$SCRIPT_DIR/secantus.sh" stop "$MPORT" >/dev/null 2>&1 || true; fi
    if ((STARTED_KAFKA)); then bash "$SCRIPT_DIR/kafka.sh" stop "$KPORT" >/dev/null 2>&1 || true; fi
    rm -f "$OUT/sluice"   # the private copy of the binary (see below)
    if ((rc != 0)); then log "failed (exit $rc); logs in ${OUT#"$REPO_ROOT"/}"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ------------------------------------------------------------- install ---

# The jars, fetched by scripts/kafka.sh (stamp named by the pom's hash, swapped in whole).
install_connect() {
    bash "$SCRIPT_DIR/kafka.sh" fetch-jars "$POM" "$LIBS" || die "cannot fetch Kafka Connect"
}

# --------------------------------------------------------------- trials ---

store_pid() { cat "$REPO_ROOT/.cache/secantus/secantus-$MPORT.pid"; }
cpu_s() { awk -v t="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / t }' "/proc/$1/stat"; }

fresh_store() {
    bash "$SCRIPT_DIR/secantus.sh" stop "$MPORT" >/dev/null 2>&1 || true
    STARTED_MONGO=1
    bash "$SCRIPT_DIR/secantus.sh" start "$MPORT" 2>>"$OUT/secantus.log" ||
        die "SecantusDB did not start (see .cache/secantus/secantus-$MPORT.log)"
}

# watch_trial SIDE TRIAL PID DIR T0 STORE_CPU0 [EVENTS]: bounded by TRIAL_TIMEOUT. In the
# background and waited for, so that a signal interrupts the wait at once.
watch_trial() {
    local w
    "$PY" "$HELPER" watch "$1" "$URI" "$1_$2" "$3" "$(store_pid)" "$5" "$6" "$DOCS" "$REQUESTS" \
        "${7:-}" "$OUT/peer-checkpoints.json" "$TRIAL_TIMEOUT" "$4/trial" &
    w=$!
    PIDS+=("$w")
    wait "$w"
}

record() {        # record SIDE TRIAL DIR: verification + summary -> results.jsonl
    local check
    check="$("$PY" "$HELPER" verify "$1" "$URI" "$1_$2" "$DOCS" "$REQUESTS" "$3/events.jsonl")" ||
        die "$1 trial $2 failed verification"
    log "$1 trial $2 verified: $check"
    "$PY" -c 'import json,sys; s=json.load(open(sys.argv[1])); s.update(trial=int(sys.argv[2]), check=json.loads(sys.argv[3])); print(json.dumps(s))' \
        "$3/trial.summary.json" "$2" "$check" >>"$OUT/results.jsonl"
}

peer_trial() {
    local t="$1" dir="$OUT/peer-$1" pid t0 s0
    mkdir -p "$dir"
    fresh_store
    port_open "$RPORT" && die "port $RPORT (Connect REST) is in use; set BENCH_CONNECT_PORT"
    cat >"$dir/worker.properties" <<EOF
bootstrap.servers=$BROKER
key.converter=org.apache.kafka.connect.json.JsonConverter
key.converter.schemas.enable=false
value.converter=org.apache.kafka.connect.json.JsonConverter
value.converter.schemas.enable=false
offset.storage.file.filename=$dir/connect.offsets
listeners=http://127.0.0.1:$RPORT
EOF
    cat >"$dir/sink.properties" <<EOF
name=peer-$t
connector.class=com.mongodb.kafka.connect.MongoSinkConnector
tasks.max=$PARTS
topics=$PEER_TOPIC
connection.uri=$URI
database=peer_$t
collection=words
document.id.strategy=com.mongodb.kafka.connect.sink.processor.id.strategy.ProvidedInKeyStrategy
max.batch.size=$BATCH
EOF
    if [[ -n "${PEER_WRITE_MODEL:-}" ]]; then echo "writemodel.strategy=$PEER_WRITE_MODEL" >>"$dir/sink.properties"; fi
    log "peer trial $t: Connect standalone, tasks.max=$PARTS, max.batch.size=$BATCH${PEER_WRITE_MODEL:+, $PEER_WRITE_MODEL}"
    s0="$(cpu_s "$(store_pid)")"
    t0="$(date +%s.%N)"
    # JVM flags of connect-standalone.sh / kafka-run-class.sh; exec'd, so $! is the JVM. It
    # logs like the broker, with the log4j2 config `kafka.sh start` wrote (INFO, no config
    # dumps).
    # shellcheck disable=SC2086
    java ${PEER_HEAP_OPTS:--Xms256M -Xmx2G} -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
        -XX:MaxInlineLevel=15 -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$REPO_ROOT/.cache/kafka/log4j2-server.properties" \
        -cp "$LIBS/*" org.apache.kafka.connect.cli.ConnectStandalone \
        "$dir/worker.properties" "$dir/sink.properties" >"$dir/connect.log" 2>&1 </dev/null &
    pid=$!
    PIDS+=("$pid")
    if ! watch_trial peer "$t" "$pid" "$dir" "$t0" "$s0"; then
        tail -n 30 "$dir/connect.log" >&2
        die "peer trial $t did not finish (log ${dir#"$REPO_ROOT"/}/connect.log)"
    fi
    stop_pid "$pid" 60
    PIDS=()
    if grep -q " ERROR " "$dir/connect.log"; then log "peer trial $t: Connect logged errors (see connect.log)"; fi
    record peer "$t" "$dir"
    bash "$SCRIPT_DIR/secantus.sh" stop "$MPORT" >/dev/null 2>&1
}

sluice_config() { # sluice_config TRIAL: the service's config (trial 0 = producing only)
    cat <<EOF
[collections.words]
key = "text"

[chunk]
max_items = $BATCH

[kafka]
brokers = "$BROKER"
group_id = "w1-sluice-$1"
instance_id = "w1-sluice-$1"
partitions = $PARTS

[kafka.topics]
requests = "$REQ_TOPIC"
results = "w1.results.$1"
dlq = "w1.dlq.$1"

[mongo]
uri = "$URI"
database = "sluice_$1"
EOF
}

sluice_trial() {
    local t="$1" dir="$OUT/sluice-$1" pid tail_pid t0 s0
    mkdir -p "$dir"
    fresh_store
    sluice_config "$t" >"$dir/sluice.toml"
    (cd "$dir" && "$SLUICE" topics create -c sluice.toml >"$dir/topics.log" 2>&1) ||
        die "sluice topics create failed (see ${dir#"$REPO_ROOT"/}/topics.log)"
    # The reader of the result events: started first, not measured.
    "$SLUICE" tail -c "$dir/sluice.toml" --timeout-secs "$((TRIAL_TIMEOUT + 60))" \
        >"$dir/events.jsonl" 2>"$dir/tail.log" </dev/null &
    tail_pid=$!
    PIDS+=("$tail_pid")
    log "sluice trial $t: exactly-once, chunk.max_items=$BATCH, $REQUESTS requests × $ITEMS"
    s0="$(cpu_s "$(store_pid)")"
    t0="$(date +%s.%N)"
    (cd "$dir" && SLUICE_LOG=info exec "$SLUICE" run -c sluice.toml) >"$dir/sluice.log" 2>&1 </dev/null &
    pid=$!
    PIDS+=("$pid")
    if ! watch_trial sluice "$t" "$pid" "$dir" "$t0" "$s0" "$dir/events.jsonl"; then
        tail -n 30 "$dir/sluice.log" >&2
        die "sluice trial $t did not finish (log ${dir#"$REPO_ROOT"/}/sluice.log)"
    fi
    stop_pid "$pid" 60
    stop_pid "$tail_pid" 5
    PIDS=()
    record sluice "$t" "$dir"
    bash "$SCRIPT_DIR/secantus.sh" stop "$MPORT" >/dev/null 2>&1
}

# ----------------------------------------------------------------- main ---

((DOCS % ITEMS == 0)) || die "DOCS must be a multiple of $ITEMS"
mkdir -p "$OUT"
log "W1: $DOCS documents, $ROUNDS round(s) of: $SIDES; output in ${OUT#"$REPO_ROOT"/}"
runs() { [[ " $SIDES " == *" $1 "* ]]; }
for side in $SIDES; do
    [[ "$side" == peer || "$side" == sluice ]] || die "SIDES: unknown side '$side' (peer, sluice)"
done
runs peer || runs sluice || die "SIDES names no side"
command -v java >/dev/null || die "java not found (Kafka and Kafka Connect 4 need Java 17+)"
if runs peer; then install_connect; fi
bash "$SCRIPT_DIR/kafka.sh" install
bash "$SCRIPT_DIR/secantus.sh" install
[[ -x "$PY" ]] || die "no python in SecantusDB's venv ($PY)"
URI="$(bash "$SCRIPT_DIR/secantus.sh" uri "$MPORT")"
if [[ -z "${SKIP_BUILD:-}" || ! -x "$REPO_ROOT/target/release/sluice" ]]; then
    log "building sluice (cargo build --release) ..."
    (cd "$REPO_ROOT" && nice -n 10 cargo build --release) || die "cargo build failed"
fi
# A private copy: a rebuild during the run must not change the binary under test.
SLUICE="$OUT/sluice"
cp "$REPO_ROOT/target/release/sluice" "$SLUICE"
log "sluice $("$SLUICE" --version | awk '{print $2}') (target/release/sluice of $(date -u -r "$REPO_ROOT/target/release/sluice" +%FT%TZ), HEAD $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"

for p in "$KPORT" "$((KPORT + 1))" "$MPORT"; do
    port_open "$p" && die "port $p is in use; set BENCH_KAFKA_PORT / BENCH_MONGO_PORT"
done
STARTED_KAFKA=1
bash "$SCRIPT_DIR/kafka.sh" start "$KPORT" 2>>"$OUT/kafka.log" || die "the broker did not start"

# Input, produced once for all trials (each trial reads it with its own consumer group).
log "generating the input ..."
expected="$("$PY" "$HELPER" gen "$OUT" "$DOCS" "$ITEMS" "$PARTS")" || die "generating the input failed"
if runs peer; then
    bash "$SCRIPT_DIR/kafka.sh" create-topic "$KPORT" "$PEER_TOPIC" "$PARTS" >>"$OUT/kafka.log" 2>&1
    log "producing $DOCS peer records ..."
    bash "$SCRIPT_DIR/kafka.sh" tool org.apache.kafka.tools.ConsoleProducer --bootstrap-server "$BROKER" \
        --topic "$PEER_TOPIC" --reader-property parse.key=true --reader-property key.separator=$'\t' \
        <"$OUT/peer.tsv" >>"$OUT/kafka.log" 2>&1 || die "producing the peer records failed"
    # The peer's progress relies on knowing each partition's keys: check the partitioning.
    bash "$SCRIPT_DIR/kafka.sh" tool org.apache.kafka.tools.GetOffsetShell --bootstrap-server "$BROKER" \
        --topic "$PEER_TOPIC" 2>>"$OUT/kafka.log" | sort -t: -k2n >"$OUT/peer-offsets.txt"
    got="$(cut -d: -f3 "$OUT/peer-offsets.txt" | paste -sd' ')"
    [[ "$got" == "$expected" ]] || die "peer partitions hold $got records, expected $expected"
fi
log "producing $REQUESTS sluice requests ..."
sluice_config 0 >"$OUT/produce.toml"
(cd "$OUT" && "$SLUICE" topics create -c produce.toml && "$SLUICE" produce -c produce.toml requests.jsonl) \
    >>"$OUT/produce.log" 2>&1 || die "producing the sluice requests failed (see produce.log)"

for ((r = 1; r <= ROUNDS; r++)); do
    if runs peer; then peer_trial "$r"; fi
    if runs sluice; then sluice_trial "$r"; fi
done

{
    echo "W1: $DOCS documents on $PARTS partitions, $ROUNDS round(s), $(date -u +%FT%TZ)"
    echo "own CPU = utime+stime (JVM: + children) until done; store CPU = SecantusDB's during the trial; peak RSS = VmHWM; tenths: mean VmRSS"
    "$PY" "$HELPER" report "$OUT/results.jsonl"
} | tee "$OUT/report.md"
