"""What the tests share: free ports, waiting on a condition, an in-process controller on 127.0.0.1,
child processes, a Mosquitto of our own, an MQTT watcher, and the raw Telemetry stream.

Imported by the tests and by conftest.py (which holds only the fixtures built from these).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import cast

import aiomqtt
import grpc
import grpc.aio
import pytest

from xpuctl.agent.adapters import link
from xpuctl.common import ports
from xpuctl.controller import config, hub, service
from xpuctl.controller.adapters import codec
from xpuctl.controller.adapters.grpc_api import server as grpc_server
from xpuctl.controller.core import ingest, model, registry
from xpuctl.controller.lab import etcdcluster
from xpuctl.controller.lab.bench import mosquitto_binary
from xpuctl.protos.xpu.v1 import telemetry_pb2 as pb

ROOT = pathlib.Path(__file__).resolve().parent.parent


free_port = ports.free_port


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port` now."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], *, timeout_s: float, what: str, every_s: float = 0.05
) -> None:
    """Poll a condition (a function, or a coroutine function such as one asking a server) on the
    event loop every `every_s` until it holds; fail naming `what` after the deadline.
    """
    deadline = time.monotonic() + timeout_s
    while not await _holds(predicate):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g}s waiting for {what}")
        await asyncio.sleep(every_s)


async def _holds(predicate: Callable[[], bool | Awaitable[bool]]) -> bool:
    result = predicate()
    return await result if inspect.isawaitable(result) else result


async def xpuctl(target: str, *args: str) -> tuple[int, str, str]:
    """Run the xpuctl CLI against `target` without blocking the loop that serves it: (rc, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "xpuctl.controller.ctl",
        "--controller",
        target,
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


class Controller:
    """An in-process controller (real grpc.aio server on 127.0.0.1) that tests can stop and restart."""

    def __init__(self, port: int, **state_kwargs: object) -> None:
        """Not started yet."""
        self.port = port
        self.target = f"127.0.0.1:{port}"
        self.state_kwargs = state_kwargs
        self.state: hub.Hub | None = None
        self.server: grpc_server.Server | None = None

    async def start(self) -> hub.Hub:
        """Start with empty state (as a restarted controller process would have)."""
        self.state = hub.Hub(**self.state_kwargs)  # type: ignore[arg-type]
        self.server = grpc_server.build_server(self.state, self.target)
        await self.server.start()
        return self.state

    async def stop(self) -> None:
        """Stop at once, cutting every stream."""
        if self.server is not None:
            await self.server.stop(None)
            self.server = None


def agent_argv(controller: str, node_id: str, vendor: str, *extra: str) -> list[str]:
    """`python -m` arguments of an `xpu-agent run` of 8 simulated devices of `vendor`."""
    return [
        "xpuctl.agent.cli",
        "run",
        "--node-id",
        node_id,
        "--controller",
        controller,
        "--sim-vendor",
        vendor,
        "--sim-devices",
        "8",
        "--reconnect-max-s",
        "0.5",
        *extra,
    ]


class Processes:
    """Child processes of a test, terminated at teardown."""

    def __init__(self, log_dir: pathlib.Path) -> None:
        """None yet; each child's output goes to a file in `log_dir`."""
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log_dir = log_dir
        self.logs: list[pathlib.Path] = []

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Run `python -m <args>` from the repository root (with `env` added to the environment)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        log = self.log_dir / f"proc-{len(self.procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def agent(self, controller: str, node_id: str, vendor: str, *extra: str) -> subprocess.Popen[bytes]:
        """An `xpu-agent run` of 8 simulated devices of `vendor`."""
        return self.start(*agent_argv(controller, node_id, vendor, *extra))

    def stop_all(self) -> None:
        """SIGTERM, then SIGKILL what lingers."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


MOSQUITTO_CONF = ROOT / "deploy" / "mosquitto" / "test.conf"


class Mosquitto:
    """A real Mosquitto on a free loopback port, with the repo's test config; killable, restartable."""

    def __init__(self, tmp: pathlib.Path) -> None:
        """Not started."""
        binary = mosquitto_binary()
        if binary is None:
            pytest.skip("mosquitto is not installed (scripts/test installs it with apt-get)")
        self.binary = binary
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text(MOSQUITTO_CONF.read_text() + f"\nlistener {self.port} 127.0.0.1\n")
        self.log = tmp / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start and wait until the port accepts connections."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if listening(self.port):
                return
            if self.proc.poll() is not None:
                pytest.fail(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.02)
        pytest.fail("mosquitto did not listen within 10 s")

    def kill(self) -> None:
        """SIGKILL: no clean goodbye to anyone."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        """Terminate."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


class EtcdCluster(etcdcluster.EtcdCluster):
    """The lab's private etcd cluster (controller/lab/etcdcluster.py), skipping the test when
    etcd is not installed and failing it when the cluster does not come up.
    """

    def __init__(self, tmp: pathlib.Path, members: int = 3) -> None:
        """Not started."""
        try:
            super().__init__(tmp, members)
        except etcdcluster.EtcdError as exc:
            pytest.skip(str(exc))

    def wait_healthy(self, timeout_s: float = 20.0) -> None:
        """Block until every running member reports health (a cluster with quorum)."""
        try:
            super().wait_healthy(timeout_s)
        except etcdcluster.EtcdError as exc:
            pytest.fail(str(exc))


class Watcher:
    """An MQTT client that records every message under a filter, for assertions."""

    def __init__(self, url: str, topic_filter: str) -> None:
        """Not connected yet."""
        self.url = url
        self.filter = topic_filter
        self.messages: list[tuple[float, str, bytes]] = []
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    async def _run(self) -> None:
        host, port = self.url.removeprefix("mqtt://").split("?")[0].rsplit(":", 1)
        while True:
            try:
                async with aiomqtt.Client(host, int(port), identifier=f"test-watch-{id(self)}") as client:
                    await client.subscribe(self.filter, qos=1)
                    self.subscribed.set()
                    async for m in client.messages:
                        payload = m.payload if isinstance(m.payload, bytes) else b""
                        self.messages.append((time.monotonic(), m.topic.value, payload))
            except aiomqtt.MqttError:
                self.subscribed.clear()
                await asyncio.sleep(0.2)

    async def start(self) -> None:
        """Connect and subscribe."""
        self._task = asyncio.create_task(self._run(), name="test.watcher")
        await asyncio.wait_for(self.subscribed.wait(), 10)

    async def stop(self) -> None:
        """Disconnect."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def on(self, topic: str) -> list[tuple[float, bytes]]:
        """Messages on one topic: (monotonic arrival, payload)."""
        return [(t, p) for t, top, p in self.messages if top == topic]


class RunningService:
    """An in-process controller Service (gRPC + bus + loop) on 127.0.0.1."""

    def __init__(self, svc: service.Service) -> None:
        """Wrap a built service."""
        self.svc = svc
        self.stop_event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @property
    def target(self) -> str:
        """Its gRPC address."""
        return f"127.0.0.1:{self.svc.port}"

    async def start(self) -> RunningService:
        """Run until `stop` (again after a stop: the same service, with the state it holds)."""
        self.stop_event = asyncio.Event()
        self.svc.ready.clear()
        self.task = asyncio.create_task(self.svc.run(self.stop_event), name="test.controller")
        await asyncio.wait_for(self.svc.ready.wait(), 10)
        return self

    async def stop(self) -> None:
        """Stop cleanly (says offline on the bus)."""
        self.stop_event.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 15)
            self.task = None


def make_service(bus_url: str | None, *, budget_w: float | None = None, period_s: float = 1.0) -> service.Service:
    """A controller with the loop on, fast liveness, and the given bus and budget."""
    cfg = config.Config(
        power=config.Power(budget_w=budget_w, period_s=period_s),
        bus=config.Bus(url=bus_url, heartbeat_s=0.5),
    )
    return service.Service(
        cfg, listen=f"127.0.0.1:{free_port()}", liveness=registry.Liveness(stale_after_s=3.0, offline_after_s=10.0)
    )


class RawStream:
    """A Telemetry.Stream call that writes raw bytes and reads ControllerMessages (as an agent, or
    as a hostile client that sends whatever it likes).
    """

    def __init__(self, channel: grpc.aio.Channel) -> None:
        """Open the stream on `channel`."""
        method = channel.stream_stream(
            "/xpu.v1.Telemetry/Stream", request_serializer=None, response_deserializer=pb.ControllerMessage.FromString
        )
        self.call: grpc.aio.StreamStreamCall[bytes, pb.ControllerMessage] = method(None)

    async def exchange(self, raw: bytes, *, timeout_s: float = 10.0) -> pb.ControllerMessage:
        """Write `raw`, read the answer (an error status raises AioRpcError)."""
        await self.call.write(raw)
        msg = await asyncio.wait_for(self.call.read(), timeout_s)
        if msg is link.EOF:
            pytest.fail("the controller ended the stream without a status")
        assert isinstance(msg, pb.ControllerMessage)
        return msg

    async def fails(self, raw: bytes) -> grpc.aio.AioRpcError:
        """Write `raw`; the error status that ends the stream."""
        await self.call.write(raw)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await self.call.read()
        return err.value

    async def send(self, raw: bytes) -> pb.Ack:
        """Write `raw`; the Ack that answers it."""
        return (await self.exchange(raw)).ack


def settable(uuids: list[str], *, slowdown_c: float | None = None) -> list[model.DeviceInfo]:
    """H100s with a settable cap of 100..700 W (and a slowdown temperature when given)."""
    return [
        model.DeviceInfo(
            uuid=u,
            index=i,
            vendor="nvidia",
            model="H100",
            power_limit_min_w=100.0,
            power_limit_max_w=700.0,
            power_limit_default_w=700.0,
            power_cap_settable=True,
            temp_slowdown_c=slowdown_c,
        )
        for i, u in enumerate(uuids)
    ]


def feed_node(
    h: hub.Hub,
    node: str,
    uuids: list[str],
    now_ns: int,
    *,
    boot_id: str = "b1",
    power_w: float = 500.0,
    limit_w: float | None = 700.0,
) -> ingest.StreamState:
    """A node's agent starts on the hub with these devices (settable, 100..700 W) and sends one
    batch at `power_w` (and `limit_w` enforced; None: not reported); its stream, still open.
    """
    stream = ingest.StreamState()
    facts = ingest.HelloFacts(
        node_id=node,
        boot_id=boot_id,
        agent_version="t",
        devices=settable(uuids),
        labels={},
        interval_s=1.0,
        acked_seq=0,
    )
    h.hello(stream, facts, now_ns)
    n = len(uuids)
    b = pb.Batch(seq=1, device=list(range(n)), timestamp_ns=[now_ns] * n, health=cast("list[pb.Health]", [1] * n))
    b.columns.add(metric=pb.METRIC_POWER_W, values=[power_w] * n)
    if limit_w is not None:
        b.columns.add(metric=pb.METRIC_POWER_LIMIT_W, values=[limit_w] * n)
    h.batch(stream, codec.batch_columns(b, h.ingest.limits), now_ns)
    return stream


def start_server(name: str, args: list[str], ready_url: str, tmp: pathlib.Path) -> subprocess.Popen[bytes]:
    """Start the installed program `name` with `args` (output to a log in `tmp`) and wait until
    `ready_url` answers; skip when it is not installed, fail naming it when it does not come up.
    """
    binary = shutil.which(name)
    if binary is None:
        pytest.skip(f"{name} is not installed (scripts/test installs it with apt-get)")
    log = tmp / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([binary, *args], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while http_get(ready_url) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc)
            pytest.fail(f"{name} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    return proc


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Terminate, then kill what lingers."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def http_get(url: str) -> bytes | None:
    """The body of a GET to one of our loopback servers, None when it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - our own loopback server
            return bytes(r.read())
    except OSError:
        return None
