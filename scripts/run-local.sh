#!/usr/bin/env bash
# The main job, locally: a simulated filling-machine PLC (pymodbus), the agent on
# firmware-config/examples/filling-machine.toml, a local Kinesis endpoint (kinesalite), the rule
# engine (rules from the MQTT control topic on Mosquitto), and a webhook receiver that prints every
# state transition. Everything binds 127.0.0.1; Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

MODBUS_PORT="${MODBUS_PORT:-15020}"
KINESIS_PORT="${KINESIS_PORT:-14567}"
METRICS_PORT="${METRICS_PORT:-19464}"
RULES_PORT="${RULES_PORT:-19465}"
WEBHOOK_PORT="${WEBHOOK_PORT:-18080}"
MQTT_PORT="${MQTT_PORT:-1883}"
STREAM="linewatch-points"
RUN="$PWD/.run"

# A closed stdout pipe (`run-local.sh | tee log`, then Ctrl-C stops tee first) must not kill
# this script before it has stopped its children: writes then fail instead.
trap '' PIPE
say() { echo "$@" 2>/dev/null || echo "$@" >&2 2>/dev/null || true; }

bash scripts/install-peers.sh
bash scripts/build.sh
# Every run starts clean: kinesalite keeps its streams in memory, so the rule engine's
# checkpointed shard positions and the agent's buffer of a previous run belong to a stream
# that no longer exists.
rm -rf "$RUN"
mkdir -p "$RUN"

pids=()
cleanup() {
    trap - INT TERM HUP EXIT
    say
    say "== stopping"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    # Wait for the children (the agent commits its buffer, the engine checkpoints), at most 20 s.
    local deadline=$((SECONDS + 20))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    say "== stopped (logs in $RUN)"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

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

if ! (exec 3<>"/dev/tcp/127.0.0.1/$MQTT_PORT") 2>/dev/null; then
    MQTT_PORT=11883
    echo "== mosquitto on 127.0.0.1:$MQTT_PORT"
    printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$MQTT_PORT" > "$RUN/mosquitto.conf"
    mosquitto -c "$RUN/mosquitto.conf" > "$RUN/mosquitto.log" 2>&1 &
    pids+=($!)
    sleep 0.5
fi

echo "== webhook receiver on 127.0.0.1:$WEBHOOK_PORT"
python3 -u tests/sim/webhook_receiver.py --port "$WEBHOOK_PORT" --log "$RUN/events.ndjson" \
    --names firmware-config/examples/filling-machine.toml > "$RUN/receiver.log" 2>&1 &
pids+=($!)
wait_for_line "$RUN/receiver.log" READY 20

echo "== rule engine (logs in $RUN/rules.log, http://127.0.0.1:$RULES_PORT/states)"
# Signed rules, as in production: a demo author key and the engine's status key, made once.
mkdir -p "$RUN/keys"
for k in author engine; do
    [ -f "$RUN/keys/$k.key" ] || ./target/debug/linewatch-rules keygen "$RUN/keys/$k" > /dev/null
done
cat > "$RUN/rules.toml" <<EOF
instance_id = "local"
state_dir = "$RUN/rules-state"
checkpoint_interval = "2s"
[watermark]
max_out_of_orderness = "2s"
idle_timeout = "10s"
[kinesis]
stream = "$STREAM"
region = "local-1"
endpoint_url = "http://127.0.0.1:$KINESIS_PORT"
access_key_id = "local"
secret_access_key = "local"
poll_interval = "500ms"
[mqtt]
port = $MQTT_PORT
topic_prefix = "linewatch-local"
retained_wait = "3s"
[mqtt.auth]
trusted_keys = ["$RUN/keys/author.pub"]
status_key = "$RUN/keys/engine.key"
status_public_key = "$RUN/keys/engine.pub"
[[webhooks]]
name = "receiver"
url = "http://127.0.0.1:$WEBHOOK_PORT/events"
[http]
listen = "127.0.0.1:$RULES_PORT"
EOF
./target/debug/linewatch-rules run --config "$RUN/rules.toml" > "$RUN/rules.log" 2>&1 &
pids+=($!)
./target/debug/linewatch-rules publish rules-engine/examples/local/filling-machine-local.rhai \
    --config "$RUN/rules.toml" --key "$RUN/keys/author.key" --wait 30s

echo "== state transitions at the webhook receiver (Ctrl-C stops everything)"
echo "   (points in the stream: ./target/debug/lw-kinesis tail --endpoint http://127.0.0.1:$KINESIS_PORT --stream $STREAM)"
tail -n +2 -f "$RUN/receiver.log" &
pids+=($!)
wait "${pids[-1]}"
