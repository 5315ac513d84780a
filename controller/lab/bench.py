"""`xpu-controller bench`: ingest capacity of one controller process against a simulated fleet.

Starts a private Mosquitto, `xpu-controller serve` on it, and load generator process(es) on this
machine (so they compete with the controller for the same cores: the report says so and gives
each side's CPU time per sample), ramps to N devices, then measures over the steady part: samples
stored per second, controller CPU microseconds per sample and cores, ingest latency p50/p99
(sample timestamp to stored, over the controller's most recent 65,536 samples) and RSS.

The load generator is `controller/lab/loadgen.py` (messages pre-encoded from the simulator) by
default, or real agents (`--loadgen fleet`: `xpu-agent fleet`, which costs about what the
controller does). Paced at `--interval-s`, it turns `--hot-per-s` devices a second hot (above their
slowdown temperature); a subscriber on `xpu/v1/cmd/+/req` times each hot sample to the emergency
command the controller publishes for it (`critical_to_command_p50_ms`/`_p99_ms`). With
`--flat-out` every stream writes as fast as it can and the report is the sustained rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import pathlib
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import aiomqtt
import grpc
import msgspec
import numpy as np
import numpy.typing as npt

from xpuctl.common import mqtt_session, ports
from xpuctl.controller import lab
from xpuctl.protos.xpu.v1 import bus, cluster_pb2_grpc
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _say(text: str, *, quiet: bool) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


# A private Mosquitto for the bench: loopback, anonymous, Nagle off (DESIGN 10)
MOSQUITTO_CONF = """allow_anonymous true
persistence false
set_tcp_nodelay true
max_queued_messages 100000
log_dest stderr
log_type error
listener {port} 127.0.0.1
"""
KEPT_UP_P99_MS = 1000.0  # flat out: the controller kept up when ingest p99 stayed under this


def mosquitto_binary() -> str | None:
    """Where Mosquitto is (on PATH, or Debian's /usr/sbin; scripts/test installs it), or None."""
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    """Block until `proc` listens on 127.0.0.1:`port` (10 s at most).

    Raises:
        RuntimeError: it did not, naming `what`.
    """
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    msg = f"{what} did not listen on 127.0.0.1:{port} within 10 s"
    raise RuntimeError(msg)


class Commands:
    """A subscriber on `xpu/v1/cmd/+/req`, in a thread: when each emergency command arrived."""

    def __init__(self, port: int) -> None:
        """Subscribe (returns once subscribed)."""
        self.port = port
        # (node, device uuid, received at ns, the command's issued_at_ns: the controller's decision)
        self.seen: list[tuple[str, str, int, int]] = []
        self.total = 0
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="bench.cmd-sub", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            msg = f"the bench's MQTT subscriber did not connect to 127.0.0.1:{port} within 10 s"
            raise RuntimeError(msg)

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        topics = bus.Topics()
        decoder = msgspec.json.Decoder(bus.Command)
        async with aiomqtt.Client("127.0.0.1", self.port, identifier="xpu-bench-sub") as client:
            mqtt_session.set_nodelay(client)
            # QoS 0: delivered as they come, not held behind the observer's own acknowledgements
            await client.subscribe(f"{topics.root}/cmd/+/req", qos=0)
            self._ready.set()
            reader = asyncio.ensure_future(self._read(client, topics, decoder))
            await self._stop.wait()
            reader.cancel()

    async def _read(
        self, client: aiomqtt.Client, topics: bus.Topics, decoder: msgspec.json.Decoder[bus.Command]
    ) -> None:
        async for message in client.messages:
            at = time.time_ns()
            self.total += 1
            payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
            cmd = decoder.decode(payload)
            if cmd.reason.startswith("emergency"):
                self.seen.append((topics.node_of(message.topic.value), cmd.device_uuid, at, cmd.issued_at_ns))

    def stop(self) -> None:
        """Disconnect and end the thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)


def critical_latency(
    hot: list[tuple[str, str, int]], seen: list[tuple[str, str, int, int]]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], int]:
    """Per hot sample, ms from its timestamp to the first emergency command for its device at or
    after it, and to the controller's decision (the command's issued_at_ns); and how many hot
    samples got none.
    """
    arrivals: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for node, dev, at, issued_at in seen:
        arrivals.setdefault((node, dev), []).append((at, issued_at))
    total, decided, missed = [], [], 0
    for node, dev, ts in hot:
        later = [a for a in arrivals.get((node, dev), []) if a[0] >= ts]
        if later:
            at, decided_at = min(later)
            total.append((at - ts) / 1e6)
            decided.append((decided_at - ts) / 1e6)
        else:
            missed += 1
    return np.asarray(total, dtype=np.float64), np.asarray(decided, dtype=np.float64), missed


def _loadgens(
    args: argparse.Namespace, target: str, nodes: int, ramp_s: float, run_s: float, mqtt_url: str
) -> list[subprocess.Popen[bytes]]:
    """Start the pre-encoded load generator process(es), the nodes split between them."""
    procs = []
    per, extra = divmod(nodes, args.loadgen_procs)
    first = 0
    rate = 0.0 if args.flat_out else 1.0 / args.interval_s
    for k in range(args.loadgen_procs):
        count = per + (1 if k < extra else 0)
        if count == 0:
            continue
        argv = [
            sys.executable, "-m", "xpuctl.controller.lab.loadgen",
            "--target", target, "--nodes", str(count), "--first", str(first),
            "--devices-per-node", str(args.devices_per_node), "--rate", str(rate),
            "--duration-s", str(run_s), "--ramp-s", str(ramp_s),
            "--hot-per-s", str(args.hot_per_s / args.loadgen_procs), "--hot-after-s", str(ramp_s),
            "--seed", str(args.seed),
        ]  # fmt: skip
        if mqtt_url:
            argv += ["--mqtt", mqtt_url]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE))  # noqa: S603 - our own program
        first += count
    return procs


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; print a table (or JSON) on stdout; progress on stderr."""
    per_node = args.devices_per_node
    nodes = args.streams if args.flat_out else math.ceil(args.devices / per_node)
    devices = nodes * per_node
    ramp_s = args.ramp_s if args.ramp_s is not None else args.duration_s / 4
    settle_s = max(2 * args.interval_s, 2.0)
    measure_s = args.duration_s - ramp_s - settle_s
    if measure_s <= 0:
        print(
            f"xpu-controller bench: --duration-s {args.duration_s:g} leaves no time to measure after "
            f"the ramp ({ramp_s:g} s) and settling ({settle_s:g} s); raise --duration-s",
            file=sys.stderr,
        )
        return 2
    quiet = args.json
    port = ports.free_port()
    target = f"127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    py = sys.executable
    work = tempfile.TemporaryDirectory(prefix="xpu-bench-")
    broker: subprocess.Popen[bytes] | None = None
    mqtt_port = 0
    binary = mosquitto_binary()
    if binary is None:
        _say(quiet=quiet, text="bench: mosquitto is not installed: no bus, so no sample-to-command figure")
    else:
        mqtt_port = ports.free_port()
        conf = pathlib.Path(work.name) / "mosquitto.conf"
        conf.write_text(MOSQUITTO_CONF.format(port=mqtt_port))
        broker = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)  # noqa: S603
        wait_port(mqtt_port, broker, "mosquitto")
    # ERROR: the hot samples raise anomalies, which the controller logs as warnings
    serve = [py, "-m", "xpuctl.controller.cli", "--log-level", "ERROR", "serve", "--listen", target]
    serve += ["--window", str(args.window)]
    # a state directory of its own: the default is the operator's (a controller of this user holds
    # its lock, and the bench's simulated nodes would be restored by the next real start)
    serve += ["--state-dir", str(pathlib.Path(work.name) / "state")]
    if mqtt_port:
        serve += ["--mqtt", f"mqtt://127.0.0.1:{mqtt_port}"]
    controller = subprocess.Popen(serve, env=env)  # noqa: S603 - our own program, argv list
    loaders: list[subprocess.Popen[bytes]] = []
    commands: Commands | None = None
    try:
        channel = grpc.insecure_channel(target)
        stub = cluster_pb2_grpc.ClusterStub(channel)
        stub.GetSummary(cpb.GetSummaryRequest(), timeout=30, wait_for_ready=True)
        if mqtt_port:
            commands = Commands(mqtt_port)
        how = "flat out" if args.flat_out else f"every {args.interval_s:g}s"
        _say(
            quiet=quiet,
            text=f"bench: controller pid {controller.pid} on {target}; {args.loadgen} load generator: "
            f"{nodes} nodes x {per_node} devices {how}, ramp {ramp_s:g}s",
        )
        if args.loadgen == "fleet":
            loaders = [
                subprocess.Popen(  # noqa: S603 - our own program, argv list
                    lab.fleet_argv(
                        target,
                        nodes=nodes,
                        devices_per_node=per_node,
                        extra=["--interval-s", str(args.interval_s), "--ramp-s", str(ramp_s), "--node-prefix", "bench"],
                    ),
                    env=env,
                )
            ]
        else:
            mqtt_url = f"mqtt://127.0.0.1:{mqtt_port}" if mqtt_port else ""
            loaders = _loadgens(args, target, nodes, ramp_s, 3600.0, mqtt_url)  # until stopped
        _wait_registered(stub, devices, ramp_s, quiet=quiet)
        time.sleep(settle_s)
        s0 = stub.GetSummary(cpb.GetSummaryRequest(), timeout=10)
        pids = [p.pid for p in loaders]
        t0, c0, f0 = time.monotonic(), cpu_s(controller.pid), sum(cpu_s(p) for p in pids)
        w0 = time.time_ns()
        _say(quiet=quiet, text=f"bench: {s0.devices} devices registered; measuring for {measure_s:.0f}s")
        time.sleep(measure_s)
        s1 = stub.GetSummary(cpb.GetSummaryRequest(), timeout=10)
        t1, c1, f1 = time.monotonic(), cpu_s(controller.pid), sum(cpu_s(p) for p in pids)
        w1 = time.time_ns() - 2 * 10**9  # a command for a later hot sample may still be on its way
        rss = rss_bytes(controller.pid)
        channel.close()
    except RuntimeError as exc:
        print(f"xpu-controller bench: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:  # the controller it started stopped answering: say so, no traceback
        code = controller.poll()
        why = "stopped answering" if code is None else f"exited with status {code}"
        if code is not None and code < 0:
            why = f"was killed by signal {-code}"
        details = getattr(exc, "details", None)  # the channel's errors are also grpc.Call (untyped)
        detail = details() if callable(details) else str(exc)
        print(
            f"xpu-controller bench: the controller (pid {controller.pid}) {why}: {detail}; its log is above",
            file=sys.stderr,
        )
        return 1
    finally:
        reports = _stop_all(loaders, controller, broker, commands)
        work.cleanup()
    wall = t1 - t0
    samples = s1.ingest.samples_total - s0.ingest.samples_total
    per_sample = max(samples, 1)
    result: dict[str, Any] = {
        "samples_per_s": samples / wall,
        "controller_cpu_us_per_sample": (c1 - c0) / per_sample * 1e6,
        "ingest_p50_ms": s1.ingest.ingest_p50_ms,
        "ingest_p99_ms": s1.ingest.ingest_p99_ms,
        "controller_rss_bytes": rss,
        "controller_cpu_cores": (c1 - c0) / wall,
        "loadgen": args.loadgen,
        "loadgen_processes": len(loaders),
        "loadgen_cpu_us_per_sample": (f1 - f0) / per_sample * 1e6,
        "loadgen_cpu_cores": (f1 - f0) / wall,
        "devices": devices,
        "devices_registered": s1.devices,
        "offered_samples_per_s": None if args.flat_out else devices / args.interval_s,
        "flat_out": args.flat_out,
        "interval_s": args.interval_s,
        "measured_s": wall,
        "rejected": dict(s1.ingest.rejected_by_reason),
        "anomalies_open": s1.anomalies_open,
        "machine": f"{os.cpu_count()} CPUs, {_cpu_model()}; load generator on the same machine",
    }
    if args.flat_out:
        result["kept_up"] = bool(s1.ingest.ingest_p99_ms <= KEPT_UP_P99_MS)
    # the hot samples of the measured part (not those of the ramp, when every node says Hello)
    hot = [(str(n), str(d), int(t)) for r in reports for n, d, t in r.get("hot", []) if w0 <= t <= w1]
    if commands is not None and hot:
        lat, decided, missed = critical_latency(hot, commands.seen)
        result["hot_samples"] = len(hot)
        result["hot_without_command"] = missed
        if lat.size:
            result["critical_to_command_p50_ms"] = float(np.percentile(lat, 50))
            result["critical_to_command_p99_ms"] = float(np.percentile(lat, 99))
            result["critical_to_command_max_ms"] = float(lat.max())
            # the part until the controller decided (the rest is its MQTT publish and the broker)
            result["critical_to_decision_p50_ms"] = float(np.percentile(decided, 50))
            result["critical_to_decision_p99_ms"] = float(np.percentile(decided, 99))
    if args.json:
        print(json.dumps(result))
        return 0
    for key, value in result.items():
        shown = f"{value:,.3f}" if isinstance(value, float) else str(value)
        print(f"{key:32s} {shown}")
    return 0


def _wait_registered(stub: cluster_pb2_grpc.ClusterStub, devices: int, ramp_s: float, *, quiet: bool) -> None:
    """Wait until every device is registered (the load generator builds its messages first)."""
    deadline = time.monotonic() + ramp_s + 120
    said = 0.0
    while (n := stub.GetSummary(cpb.GetSummaryRequest(), timeout=10).devices) < devices:
        if time.monotonic() > deadline:
            msg = f"only {n} of {devices} devices registered {ramp_s + 120:.0f} s after the start"
            raise RuntimeError(msg)
        if time.monotonic() - said > 5:
            _say(quiet=quiet, text=f"bench: {n} of {devices} devices registered")
            said = time.monotonic()
        time.sleep(0.5)


def _stop_all(
    loaders: list[subprocess.Popen[bytes]],
    controller: subprocess.Popen[bytes],
    broker: subprocess.Popen[bytes] | None,
    commands: Commands | None,
) -> list[dict[str, Any]]:
    """Stop everything; the pre-encoded load generators' reports (what they sent, when hot)."""
    reports: list[dict[str, Any]] = []
    for proc in loaders:
        proc.terminate()
    for proc in loaders:
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        lines = (out or b"").decode(errors="replace").splitlines()
        reports.extend(json.loads(line) for line in lines if line.startswith("{"))
    if commands is not None:
        commands.stop()
    for proc in [p for p in (controller, broker) if p is not None]:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return reports
