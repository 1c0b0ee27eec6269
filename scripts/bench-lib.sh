# Sourced by scripts/bench-agent-*.sh: the release build, process cleanup, waiting for a
# log line, a local Kinesis with a 10-shard stream `bench`, the agent's [kinesis] and
# [telemetry] tables, and reading its metrics and CPU time.
# The caller sets RUN (scratch dir), KINESIS_PORT, METRICS_PORT and NAME (gateway id).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

bash scripts/install-peers.sh >/dev/null
cargo build --release -p linewatch-agent -p linewatch-e2e --bins 2>&1 | tail -1
BIN="${CARGO_TARGET_DIR:-target}/release"
pids=()
trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT

# wait_for FILE TEXT: until FILE contains TEXT (120 s, then its tail and exit 1).
wait_for() { local d=$((SECONDS+120)); until grep -q "$2" "$1" 2>/dev/null; do [ $SECONDS -lt $d ] || { tail "$1"; exit 1; }; sleep 0.2; done; }

start_kinesis() {
  node tests/peers/kinesalite-local.js --port "$KINESIS_PORT" --shardLimit 20 > "$RUN/kinesalite.log" 2>&1 & pids+=($!)
  wait_for "$RUN/kinesalite.log" listening
  "$BIN"/lw-kinesis create-stream --endpoint "http://127.0.0.1:$KINESIS_PORT" --stream bench --shards 10
}

# The config's head: gateway, telemetry, buffer and Kinesis tables.
agent_head() {
cat <<TOML
gateway_id = "$NAME"
[telemetry]
listen = "127.0.0.1:$METRICS_PORT"
log_level = "warn"
[buffer]
path = "$RUN/buffer"
[kinesis]
stream = "bench"
region = "eu-central-1"
endpoint_url = "http://127.0.0.1:$KINESIS_PORT"
access_key_id = "bench"
secret_access_key = "bench"
TOML
}

# metric PREFIX: the sum of the agent's samples whose name starts with PREFIX.
metric() { curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | awk -v m="$1" '$1 ~ "^"m {s+=$2} END{printf "%.6f", s+0}'; }
# cpu PID: user + system clock ticks.
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
