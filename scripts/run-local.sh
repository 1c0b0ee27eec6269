#!/usr/bin/env bash
# The main job, locally: a simulated filling-machine PLC (pymodbus), a local Kinesis endpoint
# (kinesalite), the agent on firmware-config/examples/filling-machine.toml (pointed at them), and a
# live view of the points arriving in the stream. Everything binds 127.0.0.1; Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

MODBUS_PORT="${MODBUS_PORT:-15020}"
KINESIS_PORT="${KINESIS_PORT:-14567}"
METRICS_PORT="${METRICS_PORT:-19464}"
STREAM="linewatch-points"
RUN="$PWD/.run"

bash scripts/install-peers.sh
echo "== building (debug profile, shared with the tests)"
cargo build -p linewatch-agent -p linewatch-e2e --bins
mkdir -p "$RUN"

pids=()
cleanup() {
    trap - INT TERM EXIT
    echo
    echo "== stopping"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

wait_for_line() { # file pattern seconds
    local deadline=$((SECONDS + $3))
    until grep -q "$2" "$1" 2>/dev/null; do
        if [ $SECONDS -ge $deadline ]; then echo "timed out waiting for '$2' in $1:"; tail -20 "$1"; exit 1; fi
        sleep 0.2
    done
}

echo "== kinesalite on 127.0.0.1:$KINESIS_PORT"
node tests/peers/kinesalite-local.js --port "$KINESIS_PORT" > "$RUN/kinesalite.log" 2>&1 &
pids+=($!)
wait_for_line "$RUN/kinesalite.log" listening 20
./target/debug/lw-kinesis create-stream --endpoint "http://127.0.0.1:$KINESIS_PORT" --stream "$STREAM" --shards 2

echo "== simulated PLC on 127.0.0.1:$MODBUS_PORT (line mode)"
.venv/bin/python tests/sim/modbus_plc.py --port "$MODBUS_PORT" --mode line > "$RUN/plc.log" 2>&1 &
pids+=($!)
wait_for_line "$RUN/plc.log" READY 20

echo "== agent (logs in $RUN/agent.log, metrics on http://127.0.0.1:$METRICS_PORT/metrics)"
sed -e "s|^address = \".*\"|address = \"127.0.0.1:$MODBUS_PORT\"|" \
    -e "s|^path = \".*\"|path = \"$RUN/buffer\"|" \
    -e "s|^listen = \".*\"|listen = \"127.0.0.1:$METRICS_PORT\"|" \
    -e "s|^stream = \".*\"|stream = \"$STREAM\"\nendpoint_url = \"http://127.0.0.1:$KINESIS_PORT\"\naccess_key_id = \"local\"\nsecret_access_key = \"local\"|" \
    firmware-config/examples/filling-machine.toml > "$RUN/agent.toml"
./target/debug/linewatch-agent check --config "$RUN/agent.toml"
./target/debug/linewatch-agent run --config "$RUN/agent.toml" > "$RUN/agent.log" 2>&1 &
pids+=($!)

echo "== points arriving in Kinesis (Ctrl-C stops everything)"
./target/debug/lw-kinesis tail --endpoint "http://127.0.0.1:$KINESIS_PORT" --stream "$STREAM" &
pids+=($!)
wait "${pids[-1]}"
