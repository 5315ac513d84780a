"""`xpu-controller bench`: ingest capacity of one controller process against a simulated fleet.

Starts `xpu-controller serve` and an `xpu-agent fleet` load generator as two processes on this
machine (so the load generator competes with the controller for the same cores: the report says
so and gives both processes' CPU time per sample), ramps to N devices, then measures over the
steady part: samples stored per second, controller CPU microseconds per sample, ingest latency
p50/p99 (sample timestamp to stored, over the controller's most recent 65,536 samples) and RSS.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import socket
import subprocess
import sys
import time
from typing import Any

import grpc

from xpuctl.controller import lab
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb
from xpuctl.protos.xpu.v1 import cluster_pb2_grpc

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; print a table (or JSON) on stdout; progress on stderr."""
    per_node = args.devices_per_node
    nodes = math.ceil(args.devices / per_node)
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
    port = _free_port()
    target = f"127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    py = sys.executable
    controller = subprocess.Popen(  # noqa: S603 - our own program, argv list
        [
            py,
            "-m",
            "xpuctl.controller.cli",
            "--log-level",
            "WARNING",
            "serve",
            "--listen",
            target,
            "--window",
            str(args.window),
        ],
        env=env,
    )
    fleet: subprocess.Popen[bytes] | None = None
    try:
        channel = grpc.insecure_channel(target)
        stub = cluster_pb2_grpc.ClusterStub(channel)
        stub.GetSummary(cpb.GetSummaryRequest(), timeout=30, wait_for_ready=True)
        _say(
            quiet=args.json,
            text=f"bench: controller pid {controller.pid} on {target}; starting fleet of "
            f"{nodes} nodes x {per_node} devices every {args.interval_s:g}s, ramp {ramp_s:g}s",
        )
        fleet = subprocess.Popen(  # noqa: S603 - our own program, argv list
            lab.fleet_argv(
                target,
                nodes=nodes,
                devices_per_node=per_node,
                extra=["--interval-s", str(args.interval_s), "--ramp-s", str(ramp_s), "--node-prefix", "bench"],
            ),
            env=env,
        )
        time.sleep(ramp_s + settle_s)
        s0 = stub.GetSummary(cpb.GetSummaryRequest(), timeout=10)
        t0, c0, f0 = time.monotonic(), cpu_s(controller.pid), cpu_s(fleet.pid)
        _say(quiet=args.json, text=f"bench: {s0.devices} devices registered; measuring for {measure_s:.0f}s")
        time.sleep(measure_s)
        s1 = stub.GetSummary(cpb.GetSummaryRequest(), timeout=10)
        t1, c1, f1 = time.monotonic(), cpu_s(controller.pid), cpu_s(fleet.pid)
        rss = rss_bytes(controller.pid)
        channel.close()
    finally:
        for proc in (fleet, controller):
            if proc is not None:
                proc.terminate()
        for proc in (fleet, controller):
            if proc is not None:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
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
        "loadgen_cpu_us_per_sample": (f1 - f0) / per_sample * 1e6,
        "loadgen_cpu_cores": (f1 - f0) / wall,
        "devices": devices,
        "devices_registered": s1.devices,
        "offered_samples_per_s": devices / args.interval_s,
        "interval_s": args.interval_s,
        "measured_s": wall,
        "rejected": dict(s1.ingest.rejected_by_reason),
        "machine": f"{os.cpu_count()} CPUs, {_cpu_model()}; load generator on the same machine",
    }
    if args.json:
        print(json.dumps(result))
        return 0
    for key, value in result.items():
        shown = f"{value:,.3f}" if isinstance(value, float) else str(value)
        print(f"{key:32s} {shown}")
    return 0
