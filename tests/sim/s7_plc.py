#!/usr/bin/env python3
"""A simulated Siemens S7 CPU: the real Snap7 server (python-snap7 2.1.0, whose wheel
carries the C library) on 127.0.0.1, with its memory writable at run time.

Areas registered (sizes from the command line):
  --db N:SIZE (repeatable)  data block N of SIZE bytes (default: DB1 and DB2, 512 bytes each)
  --m SIZE / --i SIZE / --q SIZE   markers (MK), inputs (PE), outputs (PA); default 256 bytes
  timers (TM) and counters (CT): 64 of each (2 bytes per entry)
  --pdu N   the largest PDU the server accepts in the setup-communication exchange
            (Snap7's `PDURequest` parameter; the client gets min(its request, N))

Control: JSON lines on a second TCP port (127.0.0.1), one reply line per request:
  {"op":"ping"}
  {"op":"set","area":"DB","db":1,"offset":4,"hex":"41a40000"}
        (or {"op":"set","writes":[...]}: all writes of one request are applied under the
        server's area locks, so no read sees half of them)
  {"op":"get","area":"M","offset":10,"size":2}   -> {"ok":true,"hex":"..."}
  {"op":"stats"}   -> {"ok":true,"pdus":N,"reads":N,"clients":N}: PDUs received,
                      read-var items served, connections accepted (from the server's events)
  {"op":"reset_stats"}
Areas: "DB" (with "db"), "M", "I", "Q", "T", "C". Every reply is {"ok":true,...} or
{"ok":false,"error":"..."}.

Once both ports listen it prints one line to stdout:
  READY s7=127.0.0.1:PORT control=127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import ctypes
import json
import signal
import socketserver
import sys
import threading

import snap7
from snap7.server import Server
from snap7.type import Parameter, SrvArea

# Snap7 server event codes (s7_server.h).
EVC_CLIENT_ADDED = 0x00000008
EVC_PDU_INCOMING = 0x00010000
EVC_DATA_READ = 0x00020000

AREAS = {"M": SrvArea.MK, "I": SrvArea.PE, "Q": SrvArea.PA, "T": SrvArea.TM, "C": SrvArea.CT}


class Plc:
    def __init__(self, args: argparse.Namespace) -> None:
        self.server = Server(log=False)
        self.buffers: dict[tuple[str, int], ctypes.Array] = {}
        self.stats = {"pdus": 0, "reads": 0, "clients": 0}
        self.lock = threading.Lock()
        dbs = args.db or ["1:512", "2:512"]
        for spec in dbs:
            number, size = (int(x) for x in spec.split(":"))
            self._register("DB", number, size)
        for name, size in (("M", args.m), ("I", args.i), ("Q", args.q), ("T", 128), ("C", 128)):
            self._register(name, 0, size)
        self.server.set_param(Parameter.PDURequest, args.pdu)
        self.server.set_events_callback(self._event)
        self.server.set_read_events_callback(self._read_event)

    def _register(self, area: str, number: int, size: int) -> None:
        buf = (ctypes.c_uint8 * size)()
        self.buffers[(area, number)] = buf
        srv_area = SrvArea.DB if area == "DB" else AREAS[area]
        self.server.register_area(srv_area, number, buf)

    def _event(self, event) -> None:
        with self.lock:
            if event.EvtCode == EVC_PDU_INCOMING:
                self.stats["pdus"] += 1
            elif event.EvtCode == EVC_CLIENT_ADDED:
                self.stats["clients"] += 1

    def _read_event(self, event) -> None:
        with self.lock:
            if event.EvtCode == EVC_DATA_READ:
                self.stats["reads"] += 1

    def _target(self, w: dict) -> tuple[ctypes.Array, int, int]:
        area = w["area"]
        number = int(w.get("db", 0)) if area == "DB" else 0
        buf = self.buffers.get((area, number))
        if buf is None:
            raise ValueError(f"no area {area} {number} registered")
        srv_area = SrvArea.DB if area == "DB" else AREAS[area]
        return buf, srv_area, number

    def set(self, writes: list[dict]) -> None:
        planned = []
        for w in writes:
            buf, srv_area, number = self._target(w)
            data = bytes.fromhex(w["hex"])
            offset = int(w["offset"])
            if offset < 0 or offset + len(data) > len(buf):
                raise ValueError(f"{w['area']} write {offset}+{len(data)} past size {len(buf)}")
            planned.append((buf, srv_area, number, offset, data))
        locked = {(a, n) for _, a, n, _, _ in planned}
        for a, n in locked:
            self.server.lock_area(a, n)
        try:
            for buf, _, _, offset, data in planned:
                ctypes.memmove(ctypes.addressof(buf) + offset, data, len(data))
        finally:
            for a, n in locked:
                self.server.unlock_area(a, n)

    def get(self, w: dict) -> str:
        buf, _, _ = self._target(w)
        offset, size = int(w["offset"]), int(w["size"])
        return bytes(buf[offset : offset + size]).hex()

    def handle(self, req: dict) -> dict:
        op = req.get("op")
        if op == "ping":
            return {"ok": True}
        if op == "set":
            self.set(req["writes"] if "writes" in req else [req])
            return {"ok": True}
        if op == "get":
            return {"ok": True, "hex": self.get(req)}
        if op == "stats":
            with self.lock:
                return {"ok": True, **self.stats}
        if op == "reset_stats":
            with self.lock:
                for k in self.stats:
                    self.stats[k] = 0
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--control-port", type=int, required=True)
    p.add_argument("--db", action="append", help="N:SIZE, repeatable")
    p.add_argument("--m", type=int, default=256)
    p.add_argument("--i", type=int, default=256)
    p.add_argument("--q", type=int, default=256)
    p.add_argument("--pdu", type=int, default=480)
    args = p.parse_args()

    plc = Plc(args)

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                try:
                    reply = plc.handle(json.loads(line))
                except Exception as e:  # a bad request is answered, never fatal
                    reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                self.wfile.write((json.dumps(reply) + "\n").encode())
                self.wfile.flush()

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    control = socketserver.ThreadingTCPServer(("127.0.0.1", args.control_port), Handler)
    control.daemon_threads = True
    threading.Thread(target=control.serve_forever, daemon=True).start()

    plc.server.start_to("127.0.0.1", args.port)
    print(f"READY s7=127.0.0.1:{args.port} control=127.0.0.1:{args.control_port}", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    plc.server.stop()
    plc.server.destroy()
    control.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
