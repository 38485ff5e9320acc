#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the service tests need, starts the
# services, runs every test (the service tests are `#[ignore]`d in plain `cargo test`, which
# lists them as ignored with the reason), and stops the services. `.ci/run` runs exactly this.
#
#   scripts/test-all.sh                 every test of the workspace
#   scripts/test-all.sh --test chaos -- --nocapture
#                                       arguments go to `cargo test`, those after `--` to the
#                                       test binaries (with `--include-ignored`)
#
# Installs: Prometheus and promtool, Chromium and chromedriver (Debian packages; alert-rule,
# dashboard and status page tests), the Kafka
# jars from Maven Central (scripts/kafka.sh, needs java and mvn), SecantusDB from PyPI in a venv
# (scripts/secantus.sh, needs python3). Ports: KAFKA_PORT (19092, and 19093 for its
# controller) and MONGO_PORT (27018).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "test-all.sh: $*" >&2; }

# What the scripts below cannot install themselves: say so now, not after the build.
missing=()
for tool in java mvn python3 openssl keytool; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    log "missing: ${missing[*]} (Kafka needs java 17+ and mvn, SecantusDB python3 with venv,"
    log "tests/tls.rs openssl and keytool; e.g. apt-get install openjdk-17-jdk-headless maven"
    log "python3-venv openssl)"
    exit 1
fi

# Debian packages: Prometheus and promtool (alert-rule and dashboard tests), headless Chromium
# and its WebDriver (the status page test, tests/status_page.rs).
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null \
    || ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || { log "installing Prometheus needs root or sudo"; exit 1; }
        sudo="sudo -n"
    fi
    export DEBIAN_FRONTEND=noninteractive
    for attempt in 1 2 3; do
        $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends prometheus chromium chromium-driver >/dev/null && break
        log "apt-get failed (attempt $attempt); retrying"
        sleep $((attempt * 10))
    done
    command -v promtool >/dev/null || { log "could not install Prometheus (apt-get install prometheus)"; exit 1; }
    command -v chromedriver >/dev/null || { log "could not install Chromium (apt-get install chromium chromium-driver)"; exit 1; }
fi
log "$(promtool --version 2>&1 | head -1)"

KAFKA_PORT="${KAFKA_PORT:-19092}"
MONGO_PORT="${MONGO_PORT:-27018}"
stop() {
    bash scripts/kafka.sh stop "$KAFKA_PORT" || true
    bash scripts/secantus.sh stop "$MONGO_PORT" || true
}
trap stop EXIT
# A real Apache Kafka broker (KRaft) from the official jars, and a MongoDB-wire server with
# transactions. Tests that need to stop, freeze or restart one start their own.
bash scripts/kafka.sh start "$KAFKA_PORT"
bash scripts/secantus.sh start "$MONGO_PORT"
export SLUICE_TEST_KAFKA="127.0.0.1:$KAFKA_PORT"
SLUICE_TEST_MONGO="$(bash scripts/secantus.sh uri "$MONGO_PORT")"
export SLUICE_TEST_MONGO

cargo_args=()
while (($#)) && [[ "$1" != "--" ]]; do
    cargo_args+=("$1")
    shift
done
(($#)) && shift # the `--`
cargo test --workspace --locked "${cargo_args[@]}" -- --include-ignored "$@"
