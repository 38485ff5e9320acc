#!/usr/bin/env bash
# Run a real single-node Apache Kafka broker (KRaft, broker+controller in one
# JVM), or a three-node cluster, for tests and CI, straight from the official
# jars on Maven Central.
#
# Docker is not available here and the Kafka release tarball is not on any
# reachable registry, so the jars are fetched with Maven (scripts/kafka/pom.xml)
# and the server is launched with plain `java -cp`, the way bin/kafka-server-
# start.sh would.
#
# Usage:
#   scripts/kafka.sh install                          fetch jars into .cache/kafka/libs
#   scripts/kafka.sh fetch-jars POM DIR               the same for another pom
#   scripts/kafka.sh start  [PORT]                    fresh broker on 127.0.0.1:PORT
#   scripts/kafka.sh stop   [PORT]
#   scripts/kafka.sh restart [PORT]                   stop, then start on the same data
#   scripts/kafka.sh resume [PORT]                    start a stopped broker on its data
#   scripts/kafka.sh status [PORT]
#   scripts/kafka.sh create-topic PORT NAME PARTITIONS
#   scripts/kafka.sh tool CLASS [ARGS...]             any Kafka CLI class, e.g.
#       org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server ...
#
# A three-node cluster (KRaft, each node broker + controller: a combined quorum of 3;
# replication 3, min.insync.replicas 2, internal topics replicated 3 with min ISR 2):
#   scripts/kafka.sh cluster-start [BASE]             fresh cluster; prints its bootstrap servers
#   scripts/kafka.sh cluster-stop [BASE]
#   scripts/kafka.sh cluster-status [BASE]            each node running, frozen or stopped
#   scripts/kafka.sh cluster-kill BASE N              SIGKILL node N (1, 2 or 3)
#   scripts/kafka.sh cluster-freeze BASE N            SIGSTOP node N
#   scripts/kafka.sh cluster-thaw BASE N              SIGCONT node N
#   scripts/kafka.sh cluster-restart BASE N           start node N again on its data
#   scripts/kafka.sh coordinator BASE transaction ID  node coordinating transactional.id ID
#   scripts/kafka.sh coordinator BASE group ID        node coordinating consumer group ID
# Node N's broker listens on BASE+2(N-1), its controller on the port after (BASE..BASE+5);
# BASE defaults to $KAFKA_PORT or 19092. Heap per node: KAFKA_HEAP_OPTS (default
# -Xms128m -Xmx384m). The nodes' logs: .cache/kafka/kafka-PORT.log.
#
# Single broker: PORT defaults to $KAFKA_PORT or 19092; the controller listens on PORT+1.
# TLS (start/restart/resume; unset = no TLS listener): KAFKA_SSL_PORT adds an SSL
# listener on 127.0.0.1:KAFKA_SSL_PORT beside PLAINTEXT (which stays the
# inter-broker listener); KAFKA_SSL_KEYSTORE (PKCS12 with the broker's key and
# certificate), KAFKA_SSL_TRUSTSTORE (PKCS12, optional: the CA for client
# certificates), KAFKA_SSL_PASSWORD (of both stores and the key),
# KAFKA_SSL_CLIENT_AUTH (none|requested|required, default none).
# Environment knobs: KAFKA_HEAP_OPTS (default -Xms128m -Xmx512m),
# KAFKA_JVM_OPTS (extra JVM flags), KAFKA_START_TIMEOUT (s, default 90),
# KAFKA_STOP_TIMEOUT (s, default 30), KAFKA_CONTROLLED_SHUTDOWN (true|false;
# default false for one node, true for a cluster: see write_server_properties).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
POM="$SCRIPT_DIR/kafka/pom.xml"
CACHE="$REPO_ROOT/.cache/kafka"
LIBS="$CACHE/libs"

log() { echo "kafka.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

port_arg() {
    local port="${1:-${KAFKA_PORT:-19092}}"
    if ! [[ "$port" =~ ^[0-9]+$ ]] || ((port < 1 || port > 65534)); then
        die "bad port: $port"
    fi
    echo "$port"
}

pid_file() { echo "$CACHE/kafka-$1.pid"; }
log_file() { echo "$CACHE/kafka-$1.log"; }

# The pid of the broker on PORT if it is running, else nothing (status 1).
# Checks the command line too, so a stale pid file whose pid got reused by
# some other process is not mistaken for a live broker.
running_pid() {
    local pf pid
    pf="$(pid_file "$1")"
    [[ -f "$pf" ]] || return 1
    pid="$(cat "$pf")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "kafka.Kafka .*server-$1.properties" || return 1
    echo "$pid"
}

# True if something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------- install ---

# The stamp names a hash of the pom, so bumping the Kafka version in the pom
# re-fetches instead of silently running the old jars.
install_stamp() { echo "$LIBS/.installed-$(sha256sum "$POM" | cut -c1-16)"; }

cmd_install() {
    local stamp tmp t0
    stamp="$(install_stamp)"
    if [[ -f "$stamp" ]]; then
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found (needed once to fetch the Kafka jars)"
    command -v java >/dev/null || die "java not found (Kafka 4 needs Java 17+)"
    log "fetching Kafka jars from Maven Central into ${LIBS#"$REPO_ROOT"/} ..."
    t0=$SECONDS
    mkdir -p "$(dirname "$LIBS")"
    # Download into a scratch dir and swap it in, so an interrupted fetch never
    # leaves a half-filled libs/ that looks installed.
    tmp="$(mktemp -d "$LIBS.tmp.XXXXXX")"
    # Debian's Maven 3.8 emits stray ESC[0m resets even with -q -B; strip them
    # (pipefail keeps mvn's exit status).
    if ! mvn -q -B -f "$POM" dependency:copy-dependencies -DoutputDirectory="$tmp" 2>&1 |
        sed 's/\x1b\[0m//g' >&2; then
        rm -rf "$tmp"
        die "mvn failed to fetch the Kafka jars"
    fi
    touch "$tmp/$(basename "$stamp")"
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
    log "installed $(find "$LIBS" -name '*.jar' | wc -l) jars in $((SECONDS - t0))s"
}

# ------------------------------------------------------------------- java ---

# Kafka only logs through slf4j; without a log4j2 config it would print
# nothing below ERROR, and start() needs the INFO "started" line. The broker
# logs everything to stdout (redirected to the log file); CLI tools log
# warnings only, to stderr, like the distribution's tools-log4j2.yaml.
write_log4j_configs() {
    cat >"$CACHE/log4j2-server.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
# Per-partition state-change chatter; useless for tests and floods the log.
logger.state.name = state.change.logger
logger.state.level = WARN
# Full config dumps (~2000 lines per start, repeated for every component);
# the effective settings are in server-PORT.properties next to the log.
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
EOF
    cat >"$CACHE/log4j2-tools.properties" <<'EOF'
status = warn
appender.err.type = Console
appender.err.name = ERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = ERR
EOF
}

# Run a short-lived Kafka CLI class. C1-only JIT and serial GC make these
# one-shot JVMs start noticeably faster and use less memory.
run_tool() {
    [[ -f "$CACHE/log4j2-tools.properties" ]] || write_log4j_configs
    java -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Djava.awt.headless=true \
        -Dlog4j2.shutdownHookEnabled=false \
        -Dlog4j2.configurationFile="$CACHE/log4j2-tools.properties" \
        -cp "$LIBS/*" "$@"
}

# A Kafka cluster id is 16 random bytes in unpadded URL-safe base64. Made here
# instead of with `kafka-storage random-uuid` to save a JVM start (~1 s).
# Kafka itself never hands out ids starting with '-' (they look like flags).
random_cluster_id() {
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [[ "$id" != -* ]] && { echo "$id"; return; }
    done
}

# ------------------------------------------------------------------ start ---

write_server_properties() {
    local port="$1" cport="$2" data="$3" props="$4" listeners protocols
    listeners="PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${cport}"
    protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    if [[ -n "${KAFKA_SSL_PORT:-}" ]]; then
        listeners+=",SSL://127.0.0.1:${KAFKA_SSL_PORT}"
        protocols+=",SSL:SSL"
    fi
    # A cluster node (cmd_cluster_start) sets NODE_ID, QUORUM_VOTERS and REPLICAS; a single
    # broker is node 1 of a dynamic quorum of one, everything replicated once.
    local node="${NODE_ID:-1}" replicas="${REPLICAS:-1}" min_isr=1 quorum controlled=false
    if ((replicas > 1)); then min_isr=2 controlled=true; fi
    controlled="${KAFKA_CONTROLLED_SHUTDOWN:-$controlled}"
    if [[ -n "${QUORUM_VOTERS:-}" ]]; then
        quorum="# Static quorum of the cluster's three combined nodes; pairs with a plain 'format'.
controller.quorum.voters=${QUORUM_VOTERS}"
    else
        quorum="# Dynamic quorum (KIP-853), the Kafka 4 default; pairs with 'format --standalone'.
controller.quorum.bootstrap.servers=127.0.0.1:${cport}"
    fi
    cat >"$props" <<EOF
# Generated by scripts/kafka.sh; rewritten on every start.
# Combined broker + controller: one JVM, KRaft, no ZooKeeper.
process.roles=broker,controller
node.id=${node}
listeners=${listeners}
advertised.listeners=${listeners}
listener.security.protocol.map=${protocols}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
${quorum}
log.dirs=${data}

# Replication ${replicas}. A single node: every internal topic must make do with one
# replica, or consumer groups, transactions and share groups fail to initialise. A
# cluster: what production runs, replication 3 and min.insync.replicas 2, so that one
# broker may die without stopping acks=all writes, transactions or offset commits.
offsets.topic.replication.factor=${replicas}
transaction.state.log.replication.factor=${replicas}
transaction.state.log.min.isr=${min_isr}
share.coordinator.state.topic.replication.factor=${replicas}
share.coordinator.state.topic.min.isr=${min_isr}
min.insync.replicas=${min_isr}
default.replication.factor=${replicas}
# Internal topics default to 50 partitions each; creating them on first use
# is the slowest part of a test's first group join / transaction here.
offsets.topic.num.partitions=3
transaction.state.log.num.partitions=3
share.coordinator.state.topic.num.partitions=3

# A controlled shutdown hands a node's leaderships to other replicas. A single node has
# none: the controller sets every partition's leader to none, while the transaction
# coordinator is still completing a commit, and the coordinator then records the commit
# complete without writing its markers (CompleteCommit, no COMMIT on the output partitions
# nor on __consumer_offsets): a transaction left open forever, which blocks read_committed
# readers and offset fetches, or is later half aborted (RELIABILITY.md). Stopped
# uncontrolled, the coordinator keeps the commit prepared and completes it after the
# restart. A cluster keeps the controlled shutdown: leaderships move.
controlled.shutdown.enable=${controlled}

# Tests want consumers assigned at once, not after the 3 s default delay.
group.initial.rebalance.delay.ms=0
num.partitions=3
auto.create.topics.enable=true

# Sized for a 2-core machine; the defaults (8 io threads etc.) only add
# context switches here.
num.network.threads=2
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
EOF
    [[ -n "${KAFKA_SSL_PORT:-}" ]] || return 0
    [[ -f "${KAFKA_SSL_KEYSTORE:-}" ]] || die "KAFKA_SSL_PORT needs KAFKA_SSL_KEYSTORE (a PKCS12 file)"
    cat >>"$props" <<EOF

# The SSL listener (KAFKA_SSL_*).
ssl.keystore.type=PKCS12
ssl.keystore.location=${KAFKA_SSL_KEYSTORE}
ssl.keystore.password=${KAFKA_SSL_PASSWORD:-}
ssl.key.password=${KAFKA_SSL_PASSWORD:-}
ssl.client.auth=${KAFKA_SSL_CLIENT_AUTH:-none}
EOF
    if [[ -n "${KAFKA_SSL_TRUSTSTORE:-}" ]]; then
        cat >>"$props" <<EOF
ssl.truststore.type=PKCS12
ssl.truststore.location=${KAFKA_SSL_TRUSTSTORE}
ssl.truststore.password=${KAFKA_SSL_PASSWORD:-}
EOF
    fi
}

# Formats (unless KEEP_DATA=1 and PORT's data exists) and launches the broker on PORT
# without waiting for it; sets LAUNCHED_PID and LAUNCHED_FROM (the log's size before the
# launch: await_up reads only what this start logged). Cluster nodes pass NODE_ID,
# QUORUM_VOTERS, REPLICAS and CLUSTER_ID in the environment.
launch() {
    local port="$1" cport data props logf pf cid
    cport=$((port + 1))
    data="$CACHE/data-$port"
    props="$CACHE/server-$port.properties"
    logf="$(log_file "$port")"
    pf="$(pid_file "$port")"
    for p in "$port" "$cport" ${KAFKA_SSL_PORT:-}; do
        if port_open "$p"; then
            die "port $p is already in use by another process"
        fi
    done

    write_log4j_configs
    write_server_properties "$port" "$cport" "$data" "$props"
    if [[ "${KEEP_DATA:-0}" == 1 && -f "$data/meta.properties" ]]; then
        # restart: same data, same cluster id (a broker restart, not a new cluster).
        log "starting on the existing data in $data"
    else
        rm -rf "$data"
        mkdir -p "$data"
        cid="${CLUSTER_ID:-$(random_cluster_id)}"
        log "formatting $data (cluster id $cid)"
        local standalone=(--standalone)
        [[ -n "${QUORUM_VOTERS:-}" ]] && standalone=()
        # The format output goes to the top of the log: useful when start fails.
        if ! run_tool kafka.tools.StorageTool format --config "$props" --cluster-id "$cid" \
            "${standalone[@]}" >"$logf" 2>&1; then
            cat "$logf" >&2
            die "kafka-storage format failed"
        fi
    fi
    touch "$logf"
    LAUNCHED_FROM="$(stat -c %s "$logf")"

    log "starting broker on 127.0.0.1:$port (controller :$cport), log ${logf#"$REPO_ROOT"/}"
    # nohup execs java, so $! is the JVM itself; the broker must outlive this
    # script. G1 with short pauses mirrors kafka-run-class.sh.
    # shellcheck disable=SC2086  # the *_OPTS variables are word lists
    nohup java ${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m} \
        -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
        ${KAFKA_JVM_OPTS:-} \
        -Dlog4j2.configurationFile="$CACHE/log4j2-server.properties" \
        -cp "$LIBS/*" kafka.Kafka "$props" >>"$logf" 2>&1 </dev/null &
    LAUNCHED_PID=$!
    echo "$LAUNCHED_PID" >"$pf"
}

# Waits until the broker PID on PORT is up: it logged, after byte FROM of its log, that
# startup finished (it does so only once the controller has unfenced it, i.e. it can serve
# produce/fetch), and the listener accepts connections. Exits 1 (after stopping it) if it
# dies or is not up within KAFKA_START_TIMEOUT.
await_up() {
    local port="$1" pid="$2" from="$3" logf deadline
    logf="$(log_file "$port")"
    deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-90}))
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$(pid_file "$port")"
            log "broker on port $port exited during startup; last 50 log lines:"
            tail -n 50 "$logf" >&2
            exit 1
        fi
        if tail -c "+$((from + 1))" "$logf" | grep -q "Kafka Server started" && port_open "$port"; then
            break
        fi
        if ((SECONDS >= deadline)); then
            log "broker on port $port not up after ${KAFKA_START_TIMEOUT:-90}s; last 50 log lines:"
            tail -n 50 "$logf" >&2
            cmd_stop "$port" || true
            exit 1
        fi
        sleep 0.2
    done
    log "broker up on 127.0.0.1:$port (pid $pid)"
}

cmd_start() {
    local port
    port="$(port_arg "${1:-}")"
    cmd_install
    # start always means a fresh, empty broker, so replace a running one.
    if running_pid "$port" >/dev/null; then
        log "a broker is already running on port $port; restarting it fresh"
        cmd_stop "$port"
    fi
    launch "$port"
    await_up "$port" "$LAUNCHED_PID" "$LAUNCHED_FROM"
}

# ------------------------------------------------------------------- stop ---

cmd_stop() {
    local port pf pid deadline
    port="$(port_arg "${1:-}")"
    pf="$(pid_file "$port")"
    if ! pid="$(running_pid "$port")"; then
        rm -f "$pf"
        log "no broker running on port $port"
        return 0
    fi
    log "stopping broker on port $port (pid $pid)"
    # SIGTERM makes the broker shut down cleanly (it closes its logs and
    # releases the ports); SIGKILL is only the fallback for a hung JVM.
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + ${KAFKA_STOP_TIMEOUT:-30}))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "still alive after ${KAFKA_STOP_TIMEOUT:-30}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            # A SIGKILLed process vanishes promptly; don't wait forever anyway.
            for _ in 1 2 3 4 5 6 7 8 9 10; do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.2
            done
            break
        fi
        sleep 0.2
    done
    rm -f "$pf"
    log "stopped"
}

# ----------------------------------------------------------------- status ---

cmd_status() {
    local port pid
    port="$(port_arg "${1:-}")"
    if pid="$(running_pid "$port")"; then
        if port_open "$port"; then
            echo "running: pid $pid, 127.0.0.1:$port"
        else
            echo "starting: pid $pid, 127.0.0.1:$port not accepting connections yet"
        fi
        return 0
    fi
    echo "stopped: no broker on port $port"
    return 1
}

# ------------------------------------------------------------------ tools ---

cmd_create_topic() {
    (($# == 3)) || die "usage: kafka.sh create-topic PORT NAME PARTITIONS"
    local port
    port="$(port_arg "$1")"
    cmd_install
    run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" \
        --create --if-not-exists --topic "$2" --partitions "$3" --replication-factor 1
}

cmd_tool() {
    (($# >= 1)) || die "usage: kafka.sh tool CLASS [ARGS...]"
    cmd_install
    run_tool "$@"
}

# ---------------------------------------------------------------- cluster ---

# A three-node cluster at BASE: node N (1..3) is broker + controller with node.id N, its
# broker on port BASE+2(N-1) and its controller on the port after that (BASE..BASE+5 in all).
CLUSTER_NODES=(1 2 3)

node_port() { echo $(($1 + 2 * ($2 - 1))); }

node_arg() {
    [[ "${1:-}" =~ ^[1-3]$ ]] || die "bad node: ${1:-} (the nodes are 1, 2 and 3)"
    echo "$1"
}

# The environment launch() needs for a node of the cluster at BASE.
cluster_env() {
    local base="$1" n voters=()
    for n in "${CLUSTER_NODES[@]}"; do
        voters+=("$n@127.0.0.1:$(($(node_port "$base" "$n") + 1))")
    done
    QUORUM_VOTERS="$(
        IFS=,
        echo "${voters[*]}"
    )"
    REPLICAS=3
    # Three JVMs on a small machine: a smaller heap than a single broker's.
    KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms128m -Xmx384m}"
    export QUORUM_VOTERS REPLICAS KAFKA_HEAP_OPTS
}

bootstrap() {
    local base="$1" n out=()
    for n in "${CLUSTER_NODES[@]}"; do
        out+=("127.0.0.1:$(node_port "$base" "$n")")
    done
    (
        IFS=,
        echo "${out[*]}"
    )
}

# Starts a fresh cluster (replacing a running one) and prints its bootstrap servers. The
# three nodes start together: none finishes starting before a majority of the controller
# quorum is up.
cmd_cluster_start() {
    local base n port pids=() froms=()
    base="$(port_arg "${1:-}")"
    cmd_install
    cmd_cluster_stop "$base" 2>/dev/null
    cluster_env "$base"
    CLUSTER_ID="$(random_cluster_id)"
    export CLUSTER_ID
    for n in "${CLUSTER_NODES[@]}"; do
        NODE_ID="$n" launch "$(node_port "$base" "$n")"
        pids+=("$LAUNCHED_PID")
        froms+=("$LAUNCHED_FROM")
    done
    for n in "${CLUSTER_NODES[@]}"; do
        port="$(node_port "$base" "$n")"
        if ! (await_up "$port" "${pids[n - 1]}" "${froms[n - 1]}"); then
            cmd_cluster_stop "$base"
            die "the cluster at $base did not start"
        fi
    done
    log "cluster up: $(bootstrap "$base")"
    bootstrap "$base"
}

# Stops every node at once (one by one, the last would wait for a quorum that is gone).
cmd_cluster_stop() {
    local base n pid pids=() deadline
    base="$(port_arg "${1:-}")"
    for n in "${CLUSTER_NODES[@]}"; do
        if pid="$(running_pid "$(node_port "$base" "$n")")"; then
            # A frozen node handles SIGTERM only once it runs again.
            kill -TERM "$pid" 2>/dev/null || true
            kill -CONT "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
        rm -f "$(pid_file "$(node_port "$base" "$n")")"
    done
    deadline=$((SECONDS + ${KAFKA_STOP_TIMEOUT:-30}))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS >= deadline)); then
                log "pid $pid still alive after ${KAFKA_STOP_TIMEOUT:-30}s; sending SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
            fi
            sleep 0.2
        done
    done
    log "cluster at $base stopped (${#pids[@]} node(s) were running)"
}

# SIGKILL (kill), SIGSTOP (freeze) or SIGCONT (thaw) node N of the cluster at BASE.
cmd_cluster_signal() {
    local sig="$1" base n port pid
    base="$(port_arg "${2:-}")"
    n="$(node_arg "${3:-}")"
    port="$(node_port "$base" "$n")"
    pid="$(running_pid "$port")" || die "node $n (port $port) is not running"
    kill "-$sig" "$pid"
    if [[ "$sig" == KILL ]]; then
        while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
        rm -f "$(pid_file "$port")"
    fi
    log "node $n (port $port, pid $pid): SIG$sig"
}

# Starts node N of the cluster at BASE again on its data (after a kill; a running node is
# stopped first) and waits until it is up.
cmd_cluster_restart() {
    local base n port
    base="$(port_arg "${1:-}")"
    n="$(node_arg "${2:-}")"
    port="$(node_port "$base" "$n")"
    cmd_install
    if running_pid "$port" >/dev/null; then
        cmd_stop "$port"
    fi
    cluster_env "$base"
    KEEP_DATA=1 NODE_ID="$n" launch "$port"
    await_up "$port" "$LAUNCHED_PID" "$LAUNCHED_FROM"
}

cmd_cluster_status() {
    local base n port pid state up=0
    base="$(port_arg "${1:-}")"
    for n in "${CLUSTER_NODES[@]}"; do
        port="$(node_port "$base" "$n")"
        if pid="$(running_pid "$port")"; then
            state="$(awk '{print $3}' "/proc/$pid/stat")"
            if [[ "$state" == T ]]; then
                echo "node $n: frozen (SIGSTOP), pid $pid, 127.0.0.1:$port"
            else
                echo "node $n: running, pid $pid, 127.0.0.1:$port"
                up=$((up + 1))
            fi
        else
            echo "node $n: stopped, 127.0.0.1:$port"
        fi
    done
    ((up > 0))
}

# Prints the node id (= index) of the broker that coordinates transactional id ID
# (`transaction`: the leader of its __transaction_state partition) or consumer group ID
# (`group`: the leader of its __consumer_offsets partition), as the cluster reports it.
cmd_coordinator() {
    local base kind="${2:-}" id="${3:-}" out
    base="$(port_arg "${1:-}")"
    [[ -n "$id" ]] || die "usage: kafka.sh coordinator BASE transaction|group ID"
    cmd_install
    case "$kind" in
        transaction)
            # Columns: CoordinatorId TransactionalId ProducerId ...
            out="$(run_tool org.apache.kafka.tools.TransactionsCommand \
                --bootstrap-server "$(bootstrap "$base")" describe --transactional-id "$id")"
            awk 'NR == 2 { print $1 }' <<<"$out"
            ;;
        group)
            # Columns: GROUP COORDINATOR (ID) ASSIGNMENT-STRATEGY STATE #MEMBERS, the
            # coordinator as "host:port (id)".
            out="$(run_tool org.apache.kafka.tools.consumer.group.ConsumerGroupCommand \
                --bootstrap-server "$(bootstrap "$base")" --describe --group "$id" --state)"
            grep -F -- "$id" <<<"$out" | sed -n 's/.*(\([0-9]*\)).*/\1/p' | head -n 1
            ;;
        *) die "usage: kafka.sh coordinator BASE transaction|group ID" ;;
    esac
}

usage() {
    sed -n '/^# Usage:/,/^# KAFKA_STOP_TIMEOUT/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

cmd="${1:-}"
(($# > 0)) && shift
case "$cmd" in
    install) cmd_install && log "Kafka jars ready in ${LIBS#"$REPO_ROOT"/}" ;;
    fetch-jars)
        # The same fetch for another pom (scripts/bench-peer.sh: Kafka Connect).
        (($# == 2)) || usage
        POM="$(realpath "$1")"
        LIBS="$(realpath -m "$2")"
        cmd_install && log "jars ready in ${LIBS#"$REPO_ROOT"/}"
        ;;
    start) cmd_start "$@" ;;
    restart) cmd_stop "$@" && KEEP_DATA=1 cmd_start "$@" ;;
    resume) KEEP_DATA=1 cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status "$@" ;;
    create-topic) cmd_create_topic "$@" ;;
    tool) cmd_tool "$@" ;;
    cluster-start) cmd_cluster_start "$@" ;;
    cluster-stop) cmd_cluster_stop "$@" ;;
    cluster-status) cmd_cluster_status "$@" ;;
    cluster-kill) cmd_cluster_signal KILL "$@" ;;
    cluster-freeze) cmd_cluster_signal STOP "$@" ;;
    cluster-thaw) cmd_cluster_signal CONT "$@" ;;
    cluster-restart) cmd_cluster_restart "$@" ;;
    coordinator) cmd_coordinator "$@" ;;
    *) usage ;;
esac
