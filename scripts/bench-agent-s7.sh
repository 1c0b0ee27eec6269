#!/usr/bin/env bash
# An agent polling TAGS REAL tags (DB1.DBD0, DBD4, ...) of the real Snap7 server (python-snap7
# 2.1.0) every INTERVAL with a PDU of PDU bytes over one connection, shipping to a local Kinesis.
# A short INTERVAL (10ms) polls back to back: the figure is what one connection sustains.
# Prints the points/s the source sustained, polls/s, the S7 requests per poll and their mean
# round trip, the agent's CPU (share of one core) and RSS, and the server's CPU.
# Usage: scripts/bench-agent-s7.sh [TAGS] [PDU] [SECONDS] [INTERVAL]    (release build)
TAGS="${1:-10000}"
PDU="${2:-960}"
SECS="${3:-60}"
INTERVAL="${4:-1s}"
# Snap7 limits a data block to 65,535 bytes: 16,383 REAL tags.
[ "$TAGS" -le 16383 ] || { echo "at most 16383 tags (one data block)" >&2; exit 2; }
RUN="$(mktemp -d /tmp/linewatch-s7bench-XXXX)"
S7_PORT=24102; S7_CONTROL=24103; KINESIS_PORT=24569; METRICS_PORT=29466; NAME=gw-s7bench
. "$(dirname "$0")/bench-lib.sh"
start_kinesis
.venv/bin/python tests/sim/s7_plc.py --port $S7_PORT --control-port $S7_CONTROL \
    --db "1:$((TAGS * 4))" --pdu "$PDU" > "$RUN/server.log" 2>&1 & server=$!; pids+=($server)
wait_for "$RUN/server.log" READY

{
agent_head
cat <<TOML
[[sources]]
type = "s7"
id = "line"
equipment_id = "eq-0"
address = "127.0.0.1:$S7_PORT"
pdu_size = $PDU
heartbeat_interval = "0s"
[[sources.groups]]
name = "bench"
interval = "$INTERVAL"
TOML
for i in $(seq 0 $((TAGS - 1))); do
  printf '[[sources.groups.tags]]\nname = "b%d"\naddress = "DB1.DBD%d:REAL"\n' "$i" $((i * 4))
done
} > "$RUN/agent.toml"
"$BIN"/linewatch-agent check --config "$RUN/agent.toml"
"$BIN"/linewatch-agent run --config "$RUN/agent.toml" > "$RUN/agent.log" 2>&1 & agent=$!; pids+=($agent)
sleep 15   # warm-up: connect, negotiate the PDU, the first polls (a benchmark, not a test)
r0=$(metric linewatch_agent_points_read_total); q0=$(metric linewatch_agent_source_requests_total)
s0=$(metric linewatch_agent_source_request_seconds_total); c0=$(cpu $agent); v0=$(cpu $server)
t0=$(date +%s.%N)
sleep "$SECS"
r1=$(metric linewatch_agent_points_read_total); q1=$(metric linewatch_agent_source_requests_total)
s1=$(metric linewatch_agent_source_request_seconds_total); c1=$(cpu $agent); v1=$(cpu $server)
t1=$(date +%s.%N)
hz=$(getconf CLK_TCK)
rss=$(awk '/VmRSS/{print $2}' /proc/$agent/status); hwm=$(awk '/VmHWM/{print $2}' /proc/$agent/status)
pdu=$(metric linewatch_agent_source_pdu_bytes)
errors=$(metric linewatch_agent_read_errors_total)
awk -v r0="$r0" -v r1="$r1" -v q0="$q0" -v q1="$q1" -v s0="$s0" -v s1="$s1" -v c0="$c0" -v c1="$c1" \
    -v v0="$v0" -v v1="$v1" -v t0="$t0" -v t1="$t1" -v hz="$hz" -v rss="$rss" -v hwm="$hwm" \
    -v tags="$TAGS" -v pdu="$pdu" -v errors="$errors" -v loadavg="$(cut -d' ' -f1-3 /proc/loadavg)" 'BEGIN{
  w = t1 - t0; polls = (r1 - r0) / tags; q = q1 - q0;
  printf "agent-s7: tags=%d pdu=%d window=%.0fs points/s=%.0f polls/s=%.2f requests/poll=%.1f rtt=%.2f ms cpu=%.1f%% of one core rss=%.1f MiB peak=%.1f MiB server cpu=%.1f%% read_errors=%d load=%s\n",
    tags, pdu, w, (r1 - r0) / w, polls / w, (polls > 0 ? q / polls : 0), (q > 0 ? 1000 * (s1 - s0) / q : 0),
    100 * (c1 - c0) / hz / w, rss / 1024, hwm / 1024, 100 * (v1 - v0) / hz / w, errors, loadavg }'
