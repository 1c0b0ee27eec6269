#!/usr/bin/env python3
"""A scriptable OPC UA server for the agent's tests: the real asyncua server (PyPI,
pinned in tests/sim/requirements.txt) on 127.0.0.1.

Address space (string node ids, each in the namespace named before its dot):
  namespace urn:linewatch:filler     (browse folder Filler)
    Filler.Bool Boolean   Filler.SByte SByte     Filler.Byte Byte
    Filler.Int16 Int16    Filler.UInt16 UInt16   Filler.Int32 Int32
    Filler.UInt32 UInt32  Filler.Int64 Int64     Filler.UInt64 UInt64
    Filler.Float Float    Filler.Double Double   Filler.String String
    Filler.DateTime DateTime                     Filler.Temperature Double (deadband)
    Filler.Array Double[3]
    Filler.Restricted Double: answers BadUserAccessDenied. asyncua does not enforce read
      access itself, so the node's value carries that status, which is what a server that
      enforces it returns for the node (in Read and in a monitored item's notifications).
  namespace urn:linewatch:labeller   (browse folder Labeller)
    Labeller.Speed Double
  --bench N adds Bench.0 .. Bench.N-1 (Double) in urn:linewatch:filler; --bench-hz F
    changes all of them F times a second (for the benchmark).

--namespaces "urn:a,urn:b,..." sets the order in which the namespaces are registered
(default: filler, labeller): restart with the other order and every index changes.

Security: --security none (default) | secure (Basic256Sha256 Sign and SignAndEncrypt only)
| both. --users user:password,... enables username login (a wrong password is refused);
--pki DIR holds the server's certificate and key, created on first
start and kept, so a restarted server presents the same certificate.

Control: JSON lines on a second TCP port (127.0.0.1), one reply line per request:
  {"op":"ping"}
  {"op":"set","node":"Filler.Double","value":1.5}
      optional "status":"UncertainLastUsableValue" (a StatusCodes name),
      "source_timestamp":<ms since epoch> (default: now; null: none),
      "server_timestamp":<ms> (default: now; null: none)
      (or {"op":"set","writes":[{...},...]}: applied together)
  {"op":"get","node":"Filler.Double"}
  {"op":"namespaces"}            the namespace array
  {"op":"sessions"}              sessions open now
Every reply is {"ok":true,...} or {"ok":false,"error":"..."}.

Once both ports listen it prints one line to stdout:
  READY opcua=opc.tcp://127.0.0.1:PORT/linewatch/ control=127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import signal
import sys
from pathlib import Path

from asyncua import Server, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.server.user_managers import UserManager
from asyncua.crypto.permission_rules import User, UserRole
from cryptography.x509.oid import ExtendedKeyUsageOID

FILLER = "urn:linewatch:filler"
LABELLER = "urn:linewatch:labeller"

V = ua.VariantType
# name -> (variant type, initial value)
FILLER_VARS = {
    "Bool": (V.Boolean, False),
    "SByte": (V.SByte, 0),
    "Byte": (V.Byte, 0),
    "Int16": (V.Int16, 0),
    "UInt16": (V.UInt16, 0),
    "Int32": (V.Int32, 0),
    "UInt32": (V.UInt32, 0),
    "Int64": (V.Int64, 0),
    "UInt64": (V.UInt64, 0),
    "Float": (V.Float, 0.0),
    "Double": (V.Double, 0.0),
    "String": (V.String, ""),
    "DateTime": (V.DateTime, dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)),
    "Temperature": (V.Double, 20.0),
    "Array": (V.Double, [0.0, 0.0, 0.0]),
    "Restricted": (V.Double, 0.0),
}

log = logging.getLogger("opcua_server")


class Users(UserManager):
    """Username login against a fixed list; anonymous allowed only where policy allows."""

    def __init__(self, users: dict[str, str]):
        self.users = users

    def get_user(self, iserver, username=None, password=None, certificate=None):
        # Anonymous (asyncua passes the channel's client certificate along with it).
        if username is None:
            return User(role=UserRole.User)
        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User)
        log.warning("login refused for user %r", username)
        return None


def ms_to_dt(ms):
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000.0, tz=dt.timezone.utc)


def dt_to_ms(t):
    if t is None:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return int(t.timestamp() * 1000)


class Sim:
    def __init__(self, server: Server, nodes: dict):
        self.server = server
        self.nodes = nodes  # name -> (node, variant type)

    async def write(self, w: dict):
        name = w["node"]
        if name not in self.nodes:
            raise ValueError(f"unknown node {name!r}")
        node, vtype = self.nodes[name]
        value = w.get("value")
        if vtype == V.DateTime and isinstance(value, (int, float)):
            value = ms_to_dt(value)
        status = ua.StatusCode(getattr(ua.StatusCodes, w.get("status", "Good")))
        now = dt.datetime.now(dt.timezone.utc)
        src = ms_to_dt(w["source_timestamp"]) if "source_timestamp" in w else now
        srv = ms_to_dt(w["server_timestamp"]) if "server_timestamp" in w else now
        variant = ua.Variant(value, vtype) if value is not None else ua.Variant()
        dv = ua.DataValue(Value=variant, StatusCode=status, SourceTimestamp=src, ServerTimestamp=srv)
        await self.server.write_attribute_value(node.nodeid, dv)

    async def handle(self, req: dict) -> dict:
        op = req.get("op")
        if op == "ping":
            return {}
        if op == "set":
            for w in req.get("writes", [req]):
                await self.write(w)
            return {}
        if op == "get":
            node, _ = self.nodes[req["node"]]
            dv = self.server.iserver.aspace.read_attribute_value(node.nodeid, ua.AttributeIds.Value)
            v = dv.Value.Value if dv.Value is not None else None
            if isinstance(v, dt.datetime):
                v = dt_to_ms(v)
            return {
                "value": v,
                "status": dv.StatusCode.name if dv.StatusCode else "Good",
                "source_timestamp": dt_to_ms(dv.SourceTimestamp),
            }
        if op == "namespaces":
            return {"namespaces": await self.server.get_namespace_array()}
        if op == "sessions":
            return {"sessions": len(self.server.iserver.subscription_service.subscriptions)}
        raise ValueError(f"unknown op {op!r}")


async def control_client(sim: Sim, reader, writer):
    try:
        while line := await reader.readline():
            try:
                reply = {"ok": True, **(await sim.handle(json.loads(line)))}
            except Exception as e:  # every bad request gets an answer, the server keeps running
                reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            writer.write((json.dumps(reply) + "\n").encode())
            await writer.drain()
    finally:
        writer.close()


async def bench_ticker(sim: Sim, names: list[str], hz: float):
    k = 0
    while True:
        await asyncio.sleep(1.0 / hz)
        k += 1
        now = dt.datetime.now(dt.timezone.utc)
        for i, name in enumerate(names):
            node, _ = sim.nodes[name]
            dv = ua.DataValue(Value=ua.Variant(float(k + i), V.Double), SourceTimestamp=now, ServerTimestamp=now)
            await sim.server.write_attribute_value(node.nodeid, dv)


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--control-port", type=int, required=True)
    ap.add_argument("--namespaces", default=f"{FILLER},{LABELLER}")
    ap.add_argument("--security", choices=["none", "secure", "both"], default="none")
    ap.add_argument("--users", default="")
    ap.add_argument("--pki", default="")
    ap.add_argument("--bench", type=int, default=0)
    ap.add_argument("--bench-hz", type=float, default=0.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    users = dict(u.split(":", 1) for u in args.users.split(",") if u)
    server = Server(user_manager=Users(users))
    await server.init()
    endpoint = f"opc.tcp://127.0.0.1:{args.port}/linewatch/"
    server.set_endpoint(endpoint)
    server.set_server_name("linewatch test server")
    policies = []
    if args.security in ("none", "both"):
        policies.append(ua.SecurityPolicyType.NoSecurity)
    if args.security in ("secure", "both"):
        policies += [
            ua.SecurityPolicyType.Basic256Sha256_Sign,
            ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
        ]
        pki = Path(args.pki or ".")
        pki.mkdir(parents=True, exist_ok=True)
        cert, key = pki / "server_cert.der", pki / "server_key.pem"
        if not cert.exists():
            await setup_self_signed_certificate(
                key, cert, "urn:linewatch:test-server", "127.0.0.1",
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
                {"countryName": "DE", "organizationName": "linewatch", "commonName": "linewatch test server"},
            )
        # Before loading the certificate: asyncua checks the certificate carries the URI.
        await server.set_application_uri("urn:linewatch:test-server")
        await server.load_certificate(str(cert))
        await server.load_private_key(str(key))
    server.set_security_policy(policies)
    tokens = [ua.AnonymousIdentityToken]
    if users:
        tokens.append(ua.UserNameIdentityToken)
    server.set_identity_tokens(tokens)

    index = {}
    for uri in [u for u in args.namespaces.split(",") if u]:
        index[uri] = await server.register_namespace(uri)
    for uri in (FILLER, LABELLER):
        if uri not in index:
            index[uri] = await server.register_namespace(uri)

    nodes = {}
    filler = await server.nodes.objects.add_folder(index[FILLER], "Filler")
    for name, (vtype, init) in FILLER_VARS.items():
        nid = ua.NodeId(f"Filler.{name}", index[FILLER])
        var = await filler.add_variable(nid, f"Filler.{name}", ua.Variant(init, vtype))
        await var.set_writable()
        nodes[f"Filler.{name}"] = (var, vtype)
    labeller = await server.nodes.objects.add_folder(index[LABELLER], "Labeller")
    var = await labeller.add_variable(ua.NodeId("Labeller.Speed", index[LABELLER]), "Labeller.Speed", ua.Variant(0.0, V.Double))
    nodes["Labeller.Speed"] = (var, V.Double)
    bench = [f"Bench.{i}" for i in range(args.bench)]
    for name in bench:
        var = await filler.add_variable(ua.NodeId(name, index[FILLER]), name, ua.Variant(0.0, V.Double))
        nodes[name] = (var, V.Double)

    sim = Sim(server, nodes)
    await sim.write({"node": "Filler.Restricted", "value": None, "status": "BadUserAccessDenied"})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)

    async with server:
        control = await asyncio.start_server(lambda r, w: control_client(sim, r, w), "127.0.0.1", args.control_port)
        tasks = []
        if bench and args.bench_hz > 0:
            tasks.append(asyncio.create_task(bench_ticker(sim, bench, args.bench_hz)))
        print(f"READY opcua={endpoint} control=127.0.0.1:{args.control_port}", flush=True)
        await stop.wait()
        for t in tasks:
            t.cancel()
        control.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
