#!/usr/bin/env python3
"""A small webhook receiver for local runs: accepts POSTed state-change events on 127.0.0.1
and prints one readable line per event, e.g.

  14:03:07 CET  filler-local  Filling machine 7: ACTIVE → WARNING  (thermal=WARNING w3 since 14:03:05; water_temperature=64.2 pressure=2.61)

Times are local (with the zone); equipment ids are replaced by names given with --names (a TOML
or JSON file mapping equipment id → name, or the agent config: its [[sources]] `name` /
`equipment_name`, else `id`, are used). Answers 200.

Usage: webhook_receiver.py --port 18080 [--log events.ndjson] [--names firmware-config.toml]
Prints "READY <port>" once listening.
"""
import argparse
import datetime
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def load_names(path):
    """equipment id → readable name, from a JSON/TOML map or an agent config's [[sources]]."""
    if not path:
        return {}
    with open(path, "rb") as f:
        raw = f.read()
    try:
        data = json.loads(raw)
    except ValueError:
        import tomllib
        data = tomllib.loads(raw.decode("utf-8"))
    names = {}
    for s in data.get("sources", []) if isinstance(data, dict) else []:
        eq = s.get("equipment_id")
        if eq:
            names[eq] = s.get("equipment_name") or s.get("name") or s.get("id") or eq
    plain = data.get("names", {} if "sources" in data else data) if isinstance(data, dict) else {}
    for k, v in plain.items():
        if isinstance(v, str):
            names[k] = v
    return names


def local_time(ms, with_zone=True):
    t = datetime.datetime.fromtimestamp(ms / 1000).astimezone()
    return t.strftime("%H:%M:%S %Z" if with_zone else "%H:%M:%S")


def fmt_value(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    if v is None:
        return "null"
    return str(v)


def describe(ev, names):
    d = ev["detail"]
    eq = d["equipmentId"]
    who = names.get(eq, eq)
    prev = d.get("previousState") or "(first state)"
    state = d["state"]
    deciding = [g for g in d.get("groups", []) if g.get("state") == state]
    why = []
    for g in deciding:
        since = f" since {local_time(g['since'], False)}" if g.get("since") is not None else ""
        why.append(f"{g['name']}={g['state']} w{g.get('weight', 1)}{since}")
    if not why:
        why.append("no group votes " + state)
    values = " ".join(f"{k}={fmt_value(v)}" for k, v in sorted(d.get("values", {}).items()))
    reason = ", ".join(why) + (f"; {values}" if values else "")
    return f"{local_time(d['eventTime'])}  {d['ruleId']}  {who}: {prev} → {state}  ({reason})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", help="append every event body here (NDJSON)")
    ap.add_argument("--names", help="equipment names: JSON/TOML map, or the agent's config file")
    args = ap.parse_args()
    log = open(args.log, "a", encoding="utf-8") if args.log else None
    names = load_names(args.names)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            try:
                print(describe(json.loads(body), names), flush=True)
            except (ValueError, KeyError, TypeError) as e:
                print(f"unexpected body ({e}): {body[:200]!r}", flush=True)
            if log:
                log.write(body.decode("utf-8", "replace") + "\n")
                log.flush()
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"READY {args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
