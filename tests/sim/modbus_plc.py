#!/usr/bin/env python3
"""A simulated filling-machine PLC: a real pymodbus Modbus TCP server on 127.0.0.1.

Pinned to pymodbus 3.16.1 (tests/sim/requirements.txt). In that version the classic
datastore's setValues is gone; the server keeps its registers in a SimDevice runtime,
which this script drives through the server's own context (async_setValues with the
read function code of each area), the one write path every area supports.

Register map (zero-based protocol addresses, one address space per area):

  holding registers 0..299 valid (--holding-registers N: 0..N-1), anything else answers
  IllegalDataAddress (exception 2)
    0  f32  water_temperature  degC           2  f32  pressure  bar
    4  u16  machine_state      0 STOPPED 1 IDLE 2 RUNNING 3 WARNING 4 ERROR
    5  u16  product            1 = 1L, 2 = 0.5L
    6  i32  level_offset       mm, signed     8  u64  bottles_total (8..11)
    12 u16  tank_level_raw     x 0.1 = %     13 i16  ambient_raw  x 0.01 = degC
    14 f64  flow_rate          l/h (14..17)
  input registers 0..99 valid
    0  f32  motor_current      A
  coils 0..31 valid:            0 running, 1 alarm
  discrete inputs 0..31 valid:  0 door_closed

  The map of firmware-config/examples/filling-machine.toml is served as well, so the
  README's demo can run the example config against this PLC:
    holding 100 f32 water_temperature, 102 u16 pressure x 0.01 bar,
    200 u16 machine_state (0 STOPPED 1 RUNNING 2 FAULT), 201 u16 product,
    210 u64 bottles_filled (low word first); input 10 i16 fill_level;
    discrete input 0 door_open; coil 0 conveyor_running

Control: JSON lines on a second TCP port (127.0.0.1), one reply line per request:
  {"op":"ping"}
  {"op":"set","area":"holding_register","address":0,"type":"f32","value":21.5,
   "byte_order":"big","word_order":"big"}            (or {"op":"set","writes":[...]})
  {"op":"get","area":"holding_register","address":0,"type":"f32"}
  {"op":"fail","area":"holding_register","address":40,"count":2,"code":4}
  {"op":"clear_faults"}
  {"op":"stats"}                                   reads served per area
Every reply is {"ok":true,...} or {"ok":false,"error":"..."}. Writes in one request are
applied together (no poll sees half of them).

Modes: "static" (values change only when the control port says so) and "line" (a
running line for demos: temperature drifts, bottles are counted, the state cycles).

Once both ports listen it prints one line to stdout:
  READY modbus=127.0.0.1:PORT control=127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import signal
import struct
import sys
from dataclasses import dataclass

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

# Read function code of each area; the runtime maps it to the area's block.
AREA_FC = {
    "coil": 1,
    "discrete_input": 2,
    "holding_register": 3,
    "input_register": 4,
}
FC_AREA = {1: "coil", 5: "coil", 15: "coil", 2: "discrete_input", 3: "holding_register",
           6: "holding_register", 16: "holding_register", 22: "holding_register",
           23: "holding_register", 4: "input_register"}

# struct format and register count of each data type (big-endian, most significant word first).
TYPES = {
    "u16": ("H", 1), "i16": ("h", 1),
    "u32": ("I", 2), "i32": ("i", 2), "f32": ("f", 2),
    "u64": ("Q", 4), "i64": ("q", 4), "f64": ("d", 4),
}

HOLDING_REGISTERS = 300  # default; --holding-registers raises it (the memory benchmark reads 10,000)
INPUT_REGISTERS = 100
BITS = 32


class ControlError(Exception):
    """A control request that cannot be applied; reported to the caller, never fatal."""


def encode(value, dtype: str, byte_order: str = "big", word_order: str = "big") -> list[int]:
    """Value to registers, as a PLC with the given byte and word order stores it."""
    if dtype not in TYPES:
        raise ControlError(f"unknown type {dtype!r}")
    fmt, _ = TYPES[dtype]
    try:
        raw = struct.pack(">" + fmt, float(value) if fmt in "fd" else int(value))
    except (struct.error, ValueError, TypeError) as exc:
        raise ControlError(f"value {value!r} does not fit {dtype}: {exc}") from exc
    words = [raw[i:i + 2] for i in range(0, len(raw), 2)]
    if word_order == "little":
        words.reverse()
    elif word_order != "big":
        raise ControlError(f"word_order must be big or little, not {word_order!r}")
    if byte_order == "little":
        words = [w[::-1] for w in words]
    elif byte_order != "big":
        raise ControlError(f"byte_order must be big or little, not {byte_order!r}")
    return [int.from_bytes(w, "big") for w in words]


def decode(regs: list[int], dtype: str, byte_order: str = "big", word_order: str = "big"):
    words = [r.to_bytes(2, "big") for r in regs]
    if byte_order == "little":
        words = [w[::-1] for w in words]
    if word_order == "little":
        words.reverse()
    fmt, _ = TYPES[dtype]
    return struct.unpack(">" + fmt, b"".join(words))[0]


@dataclass
class Fault:
    area: str
    address: int
    count: int
    code: ExcCodes

    def hits(self, area: str, address: int, count: int) -> bool:
        return area == self.area and address < self.address + self.count and self.address < address + count


class Plc:
    def __init__(self, unit: int, holding_registers: int = HOLDING_REGISTERS):
        self.unit = unit
        self.holding_registers = holding_registers
        self.faults: list[Fault] = []
        self.reads = {a: 0 for a in AREA_FC}
        self.server: ModbusTcpServer | None = None

    def device(self) -> SimDevice:
        # Separate blocks per area (the classic PLC layout): coil N is bit N.
        return SimDevice(
            id=self.unit,
            simdata=(
                [SimData(0, values=[False] * BITS, datatype=DataType.BITS)],
                [SimData(0, values=[False] * BITS, datatype=DataType.BITS)],
                [SimData(0, count=self.holding_registers, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=INPUT_REGISTERS, values=0, datatype=DataType.REGISTERS)],
            ),
            action=self.action,
        )

    async def action(self, func_code, _start, address, count, _registers, set_values):
        """Called by pymodbus for every request to a valid range: count it, inject faults."""
        area = FC_AREA.get(func_code)
        if area is None:
            return None
        for fault in self.faults:
            if fault.hits(area, address, count):
                return fault.code
        if set_values is None:
            self.reads[area] += 1
        return None

    async def write(self, area: str, address: int, values: list) -> None:
        assert self.server is not None
        if area not in AREA_FC:
            raise ControlError(f"unknown area {area!r}")
        # Faults must not block the simulator's own writes.
        saved, self.faults = self.faults, []
        try:
            res = await self.server.context.async_setValues(self.unit, AREA_FC[area], address, values)
        finally:
            self.faults = saved
        if res is not None:
            raise ControlError(f"{area} {address}+{len(values)}: {ExcCodes(res).name}")

    async def read(self, area: str, address: int, count: int) -> list:
        assert self.server is not None
        if area not in AREA_FC:
            raise ControlError(f"unknown area {area!r}")
        res = await self.server.context.async_getValues(self.unit, AREA_FC[area], address, count)
        if isinstance(res, ExcCodes):
            raise ControlError(f"{area} {address}+{count}: {res.name}")
        return list(res)

    def plan_write(self, w: dict) -> tuple[str, int, list]:
        """A control `set` entry to (area, address, registers or bits)."""
        try:
            area = w["area"]
            address = int(w["address"])
            value = w["value"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ControlError(f"set needs area, address, value: {exc}") from exc
        if area in ("coil", "discrete_input"):
            vals = value if isinstance(value, list) else [value]
            return area, address, [bool(v) for v in vals]
        dtype = w.get("type", "u16")
        return area, address, encode(value, dtype, w.get("byte_order", "big"), w.get("word_order", "big"))

    async def handle(self, req: dict) -> dict:
        op = req.get("op")
        if op == "ping":
            return {"ok": True, "unit": self.unit}
        if op == "set":
            writes = req.get("writes", [req])
            planned = [self.plan_write(w) for w in writes]  # all or nothing
            for area, address, vals in planned:
                await self.write(area, address, vals)
            return {"ok": True, "written": len(planned)}
        if op == "get":
            area = req.get("area", "")
            address = int(req.get("address", 0))
            if area in ("coil", "discrete_input"):
                return {"ok": True, "value": (await self.read(area, address, 1))[0]}
            dtype = req.get("type", "u16")
            if dtype not in TYPES:
                raise ControlError(f"unknown type {dtype!r}")
            regs = await self.read(area, address, TYPES[dtype][1])
            return {"ok": True, "value": decode(regs, dtype, req.get("byte_order", "big"),
                                                req.get("word_order", "big")), "registers": regs}
        if op == "fail":
            try:
                fault = Fault(req["area"], int(req["address"]), int(req.get("count", 1)),
                              ExcCodes(int(req.get("code", 4))))
            except (KeyError, ValueError) as exc:
                raise ControlError(f"fail needs area, address, count, code: {exc}") from exc
            self.faults.append(fault)
            return {"ok": True}
        if op == "clear_faults":
            self.faults.clear()
            return {"ok": True}
        if op == "stats":
            return {"ok": True, "reads": dict(self.reads), "faults": len(self.faults)}
        raise ControlError(f"unknown op {op!r}")

    async def control_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            while line := await reader.readline():
                try:
                    reply = await self.handle(json.loads(line))
                except (ControlError, json.JSONDecodeError, AttributeError) as exc:
                    reply = {"ok": False, "error": str(exc)}
                writer.write((json.dumps(reply) + "\n").encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def set_initial(self):
        w = [
            ("holding_register", 0, "f32", 13.45), ("holding_register", 2, "f32", 1.2),
            ("holding_register", 4, "u16", 2), ("holding_register", 5, "u16", 1),
            ("holding_register", 6, "i32", -120), ("holding_register", 8, "u64", 1_000_000),
            ("holding_register", 12, "u16", 523), ("holding_register", 13, "i16", 2150),
            ("holding_register", 14, "f64", 1234.5), ("input_register", 0, "f32", 4.2),
        ]
        for area, addr, dtype, val in w:
            await self.write(area, addr, encode(val, dtype))
        await self.write_example(13.45, 120, 1, 1_000_000)
        await self.write("coil", 0, [True, False])
        await self.write("discrete_input", 0, [True])

    async def write_example(self, temp: float, pressure_raw: int, state: int, bottles: int):
        """The registers firmware-config/examples/filling-machine.toml reads."""
        for area, addr, dtype, val, wo in [
            ("holding_register", 100, "f32", temp, "big"),
            ("holding_register", 102, "u16", pressure_raw, "big"),
            ("holding_register", 200, "u16", state, "big"),
            ("holding_register", 201, "u16", 1, "big"),
            ("holding_register", 210, "u64", bottles, "little"),
            ("input_register", 10, "i16", -40 + bottles % 80, "big"),
        ]:
            await self.write(area, addr, encode(val, dtype, "big", wo))

    async def run_line(self, period: float):
        """Demo mode: a line that fills bottles, warms up, and now and then stops."""
        tick = 0
        bottles = 1_000_000
        states = [2] * 40 + [3] * 10 + [1] * 5  # RUNNING mostly, a WARNING spell, IDLE
        while True:
            await asyncio.sleep(period)
            tick += 1
            state = states[tick % len(states)]
            if state == 2:
                bottles += 3
            temp = 13.45 + 4.0 * math.sin(tick / 20.0) + (70.0 if state == 3 else 0.0)
            pressure = 1.2 + 0.3 * math.sin(tick / 7.0) + (1.5 if state == 3 else 0.0)
            for area, addr, dtype, val in [
                ("holding_register", 0, "f32", temp), ("holding_register", 2, "f32", pressure),
                ("holding_register", 4, "u16", state), ("holding_register", 8, "u64", bottles),
                ("holding_register", 12, "u16", 500 + tick % 100),
                ("input_register", 0, "f32", 4.2 + 0.5 * math.sin(tick / 3.0)),
            ]:
                await self.write(area, addr, encode(val, dtype))
            await self.write("coil", 0, [state == 2, state >= 3])
            # Example config: 0 STOPPED, 1 RUNNING, 2 FAULT; pressure in 1/100 bar.
            await self.write_example(temp, round(pressure * 100), {2: 1, 3: 2}.get(state, 0), bottles)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True, help="Modbus TCP port on 127.0.0.1")
    ap.add_argument("--control-port", type=int, default=0, help="control port (0: any free one)")
    ap.add_argument("--unit", type=int, default=1, help="unit id the PLC answers (others: exception)")
    ap.add_argument("--mode", choices=["static", "line"], default="static")
    ap.add_argument("--holding-registers", type=int, default=HOLDING_REGISTERS,
                    help="size of the holding register block (default %(default)s)")
    ap.add_argument("--period", type=float, default=0.5, help="line mode: seconds per step")
    args = ap.parse_args()

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    plc = Plc(args.unit, args.holding_registers)
    plc.server = ModbusTcpServer(plc.device(), address=("127.0.0.1", args.port))
    await plc.set_initial()
    await plc.server.serve_forever(background=True)
    control = await asyncio.start_server(plc.control_client, "127.0.0.1", args.control_port)
    cport = control.sockets[0].getsockname()[1]
    print(f"READY modbus=127.0.0.1:{args.port} control=127.0.0.1:{cport}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    line = asyncio.create_task(plc.run_line(args.period)) if args.mode == "line" else None
    await stop.wait()
    if line:
        line.cancel()
    control.close()
    await plc.server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
