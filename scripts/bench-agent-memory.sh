#!/usr/bin/env bash
# Resident memory of an agent polling 10,000 tags at 1 Hz (10,000 points/s) into a local Kinesis.
# Prints VmRSS (now) and VmHWM (peak) of the agent after a warm-up, the anonymous (heap, stacks)
# and file-backed (the binary's code) parts of RSS, its threads, plus points read and shipped.
# TAGS=0 runs an agent without sources: the fixed cost (runtime, sled, Kinesis client, HTTP).
# Usage: scripts/bench-agent-memory.sh [TAGS] [SECONDS]    (release build)
TAGS="${1:-10000}"
SECS="${2:-60}"
RUN="$(mktemp -d /tmp/linewatch-membench-XXXX)"
MODBUS_PORT=25020; KINESIS_PORT=24567; METRICS_PORT=29464; NAME=gw-membench
. "$(dirname "$0")/bench-lib.sh"
start_kinesis
.venv/bin/python tests/sim/modbus_plc.py --port $MODBUS_PORT --holding-registers "$((TAGS > 300 ? TAGS : 300))" > "$RUN/plc.log" 2>&1 & pids+=($!)
wait_for "$RUN/plc.log" READY

{
agent_head
# 10 groups of TAGS/10 tags each, 1 s interval, one u16 per register, 10 pieces of equipment.
per=$((TAGS / 10))
[ "$per" -gt 0 ] && cat <<TOML
[[sources]]
type = "modbus"
id = "line"
address = "127.0.0.1:$MODBUS_PORT"
equipment_id = "eq-0"
heartbeat_interval = "0s"
TOML
for g in $(seq 0 9); do
  [ "$per" -gt 0 ] || break
  printf '[[sources.groups]]\nname = "g%d"\ninterval = "1s"\n' "$g"
  for i in $(seq 0 $((per - 1))); do
    a=$((g * per + i))
    printf '[[sources.groups.tags]]\nname = "t%d"\nequipment_id = "eq-%d"\narea = "holding_register"\naddress = %d\ntype = "u16"\n' "$a" "$g" "$a"
  done
done
} > "$RUN/agent.toml"
"$BIN"/linewatch-agent check --config "$RUN/agent.toml"
"$BIN"/linewatch-agent run --config "$RUN/agent.toml" > "$RUN/agent.log" 2>&1 & agent=$!; pids+=($agent)
sleep "$SECS"   # a fixed measuring window (this is a benchmark, not a test)
rss=$(awk '/VmRSS/{print $2}' /proc/$agent/status); hwm=$(awk '/VmHWM/{print $2}' /proc/$agent/status)
anon=$(awk '/RssAnon/{print $2}' /proc/$agent/status); file=$(awk '/RssFile/{print $2}' /proc/$agent/status)
mib() { awk -v k="$1" 'BEGIN{printf "%.1f", k/1024}'; }
threads=$(awk '/Threads/{print $2}' /proc/$agent/status)
metrics=$(curl -s http://127.0.0.1:$METRICS_PORT/metrics)
read_=$(echo "$metrics" | awk '/^linewatch_agent_points_read_total/{s+=$2} END{print s+0}')
shipped=$(echo "$metrics" | awk '/^linewatch_agent_records_shipped_total/{print $2}')
buffered=$(echo "$metrics" | awk '/^linewatch_agent_buffer_records /{print $2}')
echo "agent-memory: tags=$TAGS window=${SECS}s rss=$(mib $rss) MiB (anon=$(mib $anon) file=$(mib $file)) peak=$(mib $hwm) MiB threads=$threads read=$read_ shipped=$shipped buffered=$buffered"
