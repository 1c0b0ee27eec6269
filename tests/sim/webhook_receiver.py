#!/usr/bin/env python3
"""A small webhook receiver for local runs: accepts POSTed events on 127.0.0.1 and prints
one line per event (time, id, rule, equipment, previous -> new state). Answers 200.

Usage: webhook_receiver.py --port 18080 [--log events.ndjson]
Prints "READY <port>" once listening.
"""
import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", help="append every event body here (NDJSON)")
    args = ap.parse_args()
    log = open(args.log, "a", encoding="utf-8") if args.log else None

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            try:
                ev = json.loads(body)
                d = ev["detail"]
                print(f"{ev['time']} {ev['id']} {d['ruleId']} {d['equipmentId']}: "
                      f"{d.get('previousState')} -> {d['state']}", flush=True)
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
