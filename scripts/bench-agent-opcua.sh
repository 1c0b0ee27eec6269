#!/usr/bin/env bash
# An agent subscribed to ITEMS monitored items of the asyncua test server, every item changing
# once a second (ITEMS data changes/s), shipping to a local Kinesis. Prints the points/s the
# source sustained, the agent's CPU (share of one core) and RSS over the measuring window.
# Usage: scripts/bench-agent-opcua.sh [ITEMS] [SECONDS]    (release build)
ITEMS="${1:-10000}"
SECS="${2:-60}"
RUN="$(mktemp -d /tmp/linewatch-uabench-XXXX)"
UA_PORT=24840; UA_CONTROL=24841; KINESIS_PORT=24568; METRICS_PORT=29465; NAME=gw-uabench
. "$(dirname "$0")/bench-lib.sh"
start_kinesis
.venv/bin/python tests/sim/opcua_server.py --port $UA_PORT --control-port $UA_CONTROL \
    --bench "$ITEMS" --bench-hz 1 > "$RUN/server.log" 2>&1 & server=$!; pids+=($server)
wait_for "$RUN/server.log" READY

{
agent_head
cat <<TOML
[[sources]]
type = "opcua"
id = "line"
equipment_id = "eq-0"
endpoint = "opc.tcp://127.0.0.1:$UA_PORT/linewatch/"
pki_dir = "$RUN/pki"
heartbeat_interval = "0s"
[[sources.groups]]
name = "bench"
publishing_interval = "1s"
TOML
for i in $(seq 0 $((ITEMS - 1))); do
  printf '[[sources.groups.tags]]\nname = "b%d"\nnode_id = "nsu=urn:linewatch:filler;s=Bench.%d"\n' "$i" "$i"
done
} > "$RUN/agent.toml"
"$BIN"/linewatch-agent check --config "$RUN/agent.toml"
"$BIN"/linewatch-agent run --config "$RUN/agent.toml" > "$RUN/agent.log" 2>&1 & agent=$!; pids+=($agent)
sleep 20   # warm-up: session, subscriptions, the first full publish (a benchmark, not a test)
r0=$(metric linewatch_agent_points_read_total); c0=$(cpu $agent); v0=$(cpu $server); t0=$(date +%s.%N)
sleep "$SECS"
r1=$(metric linewatch_agent_points_read_total); c1=$(cpu $agent); v1=$(cpu $server); t1=$(date +%s.%N)
hz=$(getconf CLK_TCK)
rss=$(awk '/VmRSS/{print $2}' /proc/$agent/status); hwm=$(awk '/VmHWM/{print $2}' /proc/$agent/status)
items=$(metric linewatch_agent_opcua_monitored_items)
awk -v r0="$r0" -v r1="$r1" -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v hz="$hz" \
    -v rss="$rss" -v hwm="$hwm" -v items="$items" -v v0="$v0" -v v1="$v1" \
    -v loadavg="$(cut -d' ' -f1-3 /proc/loadavg)" 'BEGIN{
  w = t1 - t0;
  printf "agent-opcua: items=%d window=%.0fs points/s=%.0f cpu=%.1f%% of one core rss=%.1f MiB peak=%.1f MiB server cpu=%.1f%% load=%s\n",
    items, w, (r1 - r0) / w, 100 * (c1 - c0) / hz / w, rss / 1024, hwm / 1024, 100 * (v1 - v0) / hz / w, loadavg }'
