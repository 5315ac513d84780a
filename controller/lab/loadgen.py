"""The benchmarks' load generator: agents' streams from pre-encoded messages, in its own process.

`xpu-agent fleet` runs real agents (a simulated driver sampled, each batch encoded as it goes),
which costs about as much CPU as the controller it feeds and saturates its core before the
controller does. This one encodes each node's Hello and a few Batch bodies once, from the same
simulator and the agent's own codec, and at send time only splices the two fields that change
into the bytes: `seq` (field 1) and the rows' `timestamp_ns` (field 4, packed). Protobuf lets a
message's fields come in any order, so the result decodes to the Batch the agent would send.

Paced (`--rate` batches per second per node, the agents' cadence) or flat out (`--rate 0`: each
stream writes as fast as gRPC's flow control lets it). `--hot-per-s` turns, at that rate over the
whole process, one device's temperature in a batch above its slowdown temperature (only devices
with a settable cap, which the controller can act on), and records when: the bench matches each
with the emergency command it sees on the bus. Prints one JSON line on stdout when done.

    python -m xpuctl.controller.lab.loadgen --target HOST:PORT --nodes N [--first K] ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import random
import signal
import sys
import time
import uuid
from typing import Any, cast

import aiomqtt
import grpc
import grpc.aio
import msgspec

from xpuctl.agent import __version__ as agent_version
from xpuctl.agent.adapters import codec
from xpuctl.agent.core import model
from xpuctl.agent.drivers.sim import SimDriver
from xpuctl.common import cli
from xpuctl.protos.xpu.v1 import bus
from xpuctl.protos.xpu.v1 import telemetry_pb2 as pb

METHOD = "/xpu.v1.Telemetry/Stream"
VARIANTS = 16  # bodies per node, sent in turn so that values move like a live device's
HOT_ABOVE_SLOWDOWN_C = 5.0
_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]  # the stubs lag grpc.aio


def varint(n: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative int."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def message(seq: int, timestamp_ns: int, rows: int, body: bytes) -> bytes:
    """An encoded AgentMessage{batch}: `body` is a Batch without seq and timestamps."""
    stamps = varint(timestamp_ns) * rows
    batch = b"\x08" + varint(seq) + b"\x22" + varint(len(stamps)) + stamps + body
    return b"\x12" + varint(len(batch)) + batch


def body(samples: list[model.DeviceSample]) -> bytes:
    """The Batch bytes the agent would send for `samples`, less seq and timestamp_ns."""
    whole = codec.batch(seq=1, dropped_total=0, samples=samples, rows=list(range(len(samples))))
    b = pb.AgentMessage.FromString(whole).batch
    b.ClearField("seq")
    b.ClearField("timestamp_ns")
    return b.SerializeToString()


class Node:
    """One node's pre-encoded messages and its stream's counters."""

    def __init__(self, number: int, node_id: str, vendor: str, devices: int, seed: int) -> None:
        """Sample the simulator VARIANTS times (1 s apart) and encode."""
        driver = SimDriver(vendor=vendor, node_id=node_id, devices=devices, seed=seed)
        self.number = number
        self.node_id = node_id
        self.infos = driver.discover()
        self.hello = codec.hello(
            node_id=node_id,
            boot_id=str(uuid.uuid4()),
            agent_version=agent_version,
            devices=self.infos,
            labels={"fleet": "loadgen"},
            interval_s=1.0,
            acked_seq=0,
        )
        t0 = time.time_ns()
        self.samples = [driver.sample(t0 + k * 1_000_000_000) for k in range(VARIANTS)]
        self.bodies = [body(s) for s in self.samples]
        self.hot_rows = [i for i, d in enumerate(self.infos) if d.power_cap_settable and d.temp_slowdown_c is not None]
        self.rows = len(self.infos)
        self.row_of = {d.uuid: i for i, d in enumerate(self.infos)}
        self.caps: dict[int, float] = {}  # row -> the cap a command set (telemetry reports it)
        self.seq = 0
        self.acked = 0  # the controller's acked_seq
        self.answered = asyncio.Event()
        self.hot_turn = 0

    def next(self, now_ns: int) -> bytes:
        """The next batch, stamped `now_ns` (encoded afresh while a command's cap is on)."""
        self.seq += 1
        if self.caps:
            return message(self.seq, now_ns, self.rows, body(self._capped(self.samples[self.seq % VARIANTS])))
        return message(self.seq, now_ns, self.rows, self.bodies[self.seq % VARIANTS])

    def _capped(self, samples: list[model.DeviceSample]) -> list[model.DeviceSample]:
        out = list(samples)
        for row, cap in self.caps.items():
            power = min(out[row].power_w or 0.0, cap)
            out[row] = msgspec.structs.replace(out[row], power_limit_w=cap, power_w=power)
        return out

    def apply(self, device_uuid: str, cap_w: float | None) -> float | None:
        """A command's cap on one device, clamped to its range (None: back to the default);
        the cap now enforced, or None for a device this node does not have.
        """
        row = self.row_of.get(device_uuid)
        if row is None:
            return None
        info = self.infos[row]
        if cap_w is None:
            self.caps.pop(row, None)
            return info.power_limit_default_w
        low, high = info.power_limit_min_w or 0.0, info.power_limit_max_w or cap_w
        self.caps[row] = min(max(cap_w, low), high)
        return self.caps[row]

    def next_hot(self, now_ns: int) -> tuple[bytes, str] | None:
        """The next batch with one settable device hot; (bytes, its uuid), None if none can be."""
        if not self.hot_rows:
            return None
        row = self.hot_rows[self.hot_turn % len(self.hot_rows)]
        self.hot_turn += 1
        self.seq += 1
        samples = self._capped(self.samples[self.seq % VARIANTS])
        slowdown = self.infos[row].temp_slowdown_c or 0.0
        samples[row] = msgspec.structs.replace(samples[row], temperature_c=slowdown + HOT_ABOVE_SLOWDOWN_C)
        return message(self.seq, now_ns, self.rows, body(samples)), self.infos[row].uuid


class Run:
    """The streams of this process and what they sent."""

    def __init__(self, args: argparse.Namespace) -> None:
        """Build every node's messages (before the clock starts)."""
        vendors = args.vendors.split(",")
        self.args = args
        self.nodes = [
            Node(k, f"{args.node_prefix}-{k:05d}", vendors[k % len(vendors)], args.devices_per_node, args.seed + k)
            for k in range(args.first, args.first + args.nodes)
        ]
        self.sent_messages = 0
        self.sent_samples = 0
        self.acks = 0
        self.answered = 0  # commands applied and answered
        self.hot: list[tuple[str, str, int]] = []
        self.errors: dict[str, int] = {}
        self.hot_every = 0  # a node's batches between its hot ones (0: none)
        if args.hot_per_s > 0 and args.rate > 0:
            self.hot_every = max(1, round(args.nodes * args.rate / args.hot_per_s))
        self.hot_after_ns = time.time_ns() + int(args.hot_after_s * 1e9)
        self.stop_at = 0.0

    def _payload(self, node: Node) -> bytes:
        now = time.time_ns()
        every = self.hot_every
        # node k is hot at its batches k, k + every, k + 2 every, ...: spread evenly over the nodes
        if every and now >= self.hot_after_ns and node.seq % every == node.number % every:
            hot = node.next_hot(now)
            if hot is not None:
                self.hot.append((node.node_id, hot[1], now))
                return hot[0]
        return node.next(now)

    async def _drain(self, call: grpc.aio.StreamStreamCall[bytes, bytes], node: Node) -> None:
        while True:
            try:
                answer = await call.read()
            except grpc.aio.AioRpcError:
                return  # the stream's writer says why
            if answer is EOF:
                return
            self.acks += 1
            node.acked = pb.ControllerMessage.FromString(cast("bytes", answer)).ack.acked_seq
            node.answered.set()

    async def stream(self, node: Node, start_in_s: float) -> None:
        """One node: Hello, then batches until the end (reads the answers on a second task)."""
        await asyncio.sleep(start_in_s)
        rate = self.args.rate
        async with grpc.aio.insecure_channel(self.args.target, options=_OPTIONS) as channel:
            call = channel.stream_stream(METHOD, request_serializer=None, response_deserializer=None)(None)
            try:
                await call.write(node.hello)
                await call.read()
                drain = asyncio.create_task(self._drain(call, node))
                period = 1.0 / rate if rate > 0 else 0.0
                due = time.monotonic()
                while time.monotonic() < self.stop_at:
                    if period:
                        due += period
                        await asyncio.sleep(max(0.0, due - time.monotonic()))
                    while node.seq - node.acked >= self.args.window:  # flat out: a bounded backlog
                        node.answered.clear()
                        await node.answered.wait()
                    await call.write(self._payload(node))
                    self.sent_messages += 1
                    self.sent_samples += node.rows
                drain.cancel()
            except grpc.aio.AioRpcError as exc:
                key = exc.code().name
                self.errors[key] = self.errors.get(key, 0) + 1
            except asyncio.InvalidStateError:  # the controller ended the stream
                self.errors["ENDED"] = self.errors.get("ENDED", 0) + 1
            finally:
                call.cancel()

    async def main(self) -> None:
        """Start the streams over the ramp, run until the duration is up."""
        a = self.args
        self.stop_at = time.monotonic() + a.duration_s
        rnd = random.Random(a.seed)  # noqa: S311 - start offsets, not secrets
        step = a.ramp_s / max(1, len(self.nodes))
        period = 1.0 / a.rate if a.rate > 0 else 0.0
        responder = asyncio.create_task(self.answer_commands(a.mqtt)) if a.mqtt else None
        async with asyncio.TaskGroup() as tg:
            for k, node in enumerate(self.nodes):
                tg.create_task(self.stream(node, k * step + rnd.random() * period))
        if responder is not None:
            responder.cancel()

    def stop(self) -> None:
        """End every stream after the message it is writing."""
        self.stop_at = 0.0

    async def answer_commands(self, url: str) -> None:
        """Apply and answer the controller's commands to this process's nodes, as agents do
        (one MQTT session for all of them): without answers the controller sends each command
        again every period until it expires, a load no real cluster makes.
        """
        target = bus.parse_url(url)
        topics = bus.Topics()
        nodes = {n.node_id: n for n in self.nodes}
        decoder = msgspec.json.Decoder(bus.Command)
        async with aiomqtt.Client(target.host, target.port, identifier=f"loadgen-{self.args.first}") as client:
            for node_id in nodes:
                await client.subscribe(topics.cmd_req(node_id), qos=1)
            async for msg in client.messages:
                node = nodes.get(topics.node_of(msg.topic.value))
                if node is None or not isinstance(msg.payload, bytes | bytearray):
                    continue
                cmd = decoder.decode(msg.payload)
                cap = cmd.power_cap_w if isinstance(cmd, bus.SetPowerCap) else None
                applied = node.apply(cmd.device_uuid, cap)
                result = bus.Result(id=cmd.id, ok=applied is not None, applied_cap_w=applied)
                await client.publish(topics.cmd_res(node.node_id), msgspec.json.encode(result), qos=1)
                self.answered += 1

    def report(self, cpu_s: float) -> dict[str, Any]:
        """What was sent, as one JSON object."""
        return {
            "nodes": len(self.nodes),
            "sent_messages": self.sent_messages,
            "sent_samples": self.sent_samples,
            "acks": self.acks,
            "commands_answered": self.answered,
            "hot": self.hot,
            "errors": self.errors,
            "cpu_s": cpu_s,
        }


def parser() -> argparse.ArgumentParser:
    """The load generator's command line."""
    p = cli.ArgumentParser(prog="loadgen", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True, metavar="HOST:PORT")
    p.add_argument("--nodes", type=cli.positive(int), required=True)
    p.add_argument("--first", type=int, default=0, help="number of the first node (several processes)")
    p.add_argument("--devices-per-node", type=cli.positive(int), default=8)
    p.add_argument("--vendors", default="nvidia", help="comma-separated simulated vendors, in turn")
    p.add_argument("--rate", type=float, default=1.0, help="batches per second per node; 0: flat out")
    p.add_argument("--duration-s", type=cli.positive(float), required=True)
    p.add_argument("--ramp-s", type=float, default=0.0, help="start the nodes over this long")
    p.add_argument(
        "--window", type=cli.positive(int), default=64, help="batches sent and not yet acknowledged, at most"
    )
    p.add_argument("--hot-per-s", type=float, default=0.0, help="hot batches per second (paced only)")
    p.add_argument("--hot-after-s", type=float, default=0.0, help="no hot batch before this")
    p.add_argument("--mqtt", default="", metavar="URL", help="answer the controller's commands on this broker")
    p.add_argument("--node-prefix", default="bench")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run; print the report as one JSON line."""
    args = parser().parse_args(argv)
    cli.install_uvloop()
    run = Run(args)
    # the pre-encoded messages live as long as the process: keep the collector off them, or its
    # full passes hold the sends (and the samples' stamps would count that against the controller)
    gc.collect()
    gc.freeze()

    async def until_done() -> None:
        # SIGTERM (the bench is done measuring) ends the streams, and the report still goes out
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, run.stop)
        await run.main()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(until_done())
    print(json.dumps(run.report(time.process_time())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
