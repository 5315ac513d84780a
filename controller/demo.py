"""`xpu-controller demo`: a controller and a simulated mixed fleet on this machine, no setup.

For now it shows the cluster as a refreshed table of devices (worst temperature first); the
embedded MQTT broker, the closed loop and the rich TUI join it with their issues. The fleet runs
as an `xpu-agent fleet` child process, so the controller and the agents stay separate programs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import sys
import time

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from controller.adapters import grpc_api

log = logging.getLogger("xpu.controller.demo")


def render(state: grpc_api.State, now_ns: int, rows: int) -> Group:
    """One frame: totals, then the hottest devices."""
    s = state.views.summary(now_ns)
    devices = sorted(state.views.devices(now_ns), key=lambda d: -(d.values["temperature_c"] or -1e9))
    head = Table.grid(padding=(0, 2))
    head.add_row(
        f"[b]xpuctl demo[/b]  nodes {sum(s.nodes_by_status.values())} "
        f"({s.nodes_by_status.get('online', 0)} online)  devices {s.devices}",
        f"power {s.power_w:,.0f} W",
        "vendors " + ", ".join(f"{v} {n}" for v, n in sorted(s.devices_by_vendor.items())),
    )
    table = Table(title=f"hottest {rows} of {len(devices)} devices", title_justify="left")
    for col in ("node", "idx", "vendor", "model", "health", "util", "power W", "cap W", "temp C"):
        table.add_column(col)
    for d in devices[:rows]:
        v = d.values
        table.add_row(
            d.node_id, str(d.info.index), d.info.vendor, d.info.model, d.health,
            "-" if v["utilization"] is None else f"{v['utilization']:.0%}",
            _num(v["power_w"]), _num(v["power_limit_w"]), _num(v["temperature_c"]),
        )
    return Group(head, table)


def _num(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:,.0f}"


async def run(args: argparse.Namespace) -> int:
    """Controller in this process, fleet in a child; show it until Ctrl-C or --duration-s."""
    state = grpc_api.State()
    server, port = grpc_api.build_server(state, args.listen)
    await server.start()
    target = f"127.0.0.1:{port}"
    fleet = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli", "--log-level", "WARNING", "fleet", "--controller", target,
        "--nodes", str(args.nodes), "--devices-per-node", str(args.devices_per_node),
        "--sim-fault", "thermal_runaway:dev=2:at=20", "--sim-fault", "xid:dev=5:at=40",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    console = Console()
    deadline = time.monotonic() + args.duration_s if args.duration_s else math.inf
    try:
        with Live(console=console, auto_refresh=False) as live:
            while not stop.is_set() and time.monotonic() < deadline:
                live.update(render(state, time.time_ns(), args.rows), refresh=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
    finally:
        fleet.terminate()
        await fleet.wait()
        await server.stop(grace=1.0)
    s = state.views.summary(time.time_ns())
    console.print(
        f"demo: {s.devices} devices of {len(s.devices_by_vendor)} vendors on "
        f"{sum(s.nodes_by_status.values())} nodes; {state.ingest.counters.samples_total:,} samples stored"
    )
    return 0
