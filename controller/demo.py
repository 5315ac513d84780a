"""`xpu-controller demo`: the whole system on this machine, no setup.

An embedded MQTT broker (amqtt), the controller (gRPC ingest, detectors, power loop), and a
simulated mixed fleet of every vendor (an `xpu-agent fleet` child process, so the controller and
the agents stay separate programs). Two faults are injected (a thermal runaway at 20 s and XID
errors at 40 s), and after 15 s the power budget is set to 85% of what the fleet draws (or to
`--budget-w`), so the loop has work to do. Shown as a refreshed table until Ctrl-C or
`--duration-s`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import socket
import sys
import time

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from controller import config, service
from controller.adapters import grpc_api

log = logging.getLogger("xpu.controller.demo")
AUTO_BUDGET_AFTER_S = 15.0
AUTO_BUDGET_FRAC = 0.85
# every vendor, with NVIDIA on a quarter of the nodes as on most sites; half the nodes can be capped
DEMO_VENDORS = (
    "nvidia,amd,nvidia,hygon,nvidia,cambricon,nvidia,iluvatar,"
    "ascend,metax,moorethreads,enflame,kunlunxin,biren,thead,sunrise"
)


def render(state: grpc_api.State, now_ns: int, rows: int) -> Group:
    """One frame: totals and budget, the hottest devices, the latest events."""
    s = state.views.summary(now_ns)
    devices = sorted(state.views.devices(now_ns), key=lambda d: -(d.values["temperature_c"] or -1e9))
    budget = "none" if state.budget_w is None else f"{state.budget_w:,.0f} W"
    head = Table.grid(padding=(0, 2))
    head.add_row(
        f"[b]xpuctl demo[/b]  nodes {sum(s.nodes_by_status.values())} "
        f"({s.nodes_by_status.get('online', 0)} online)  devices {s.devices}",
        f"power {s.power_w:,.0f} W / budget {budget}",
        f"anomalies open {state.control.anomalies_open()}",
        f"commands applied {state.control.ledger.totals.get('applied', 0)}",
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
    events = Table(title="latest events", title_justify="left", show_header=False)
    events.add_column("when")
    events.add_column("event")
    for e in list(state.recent_events)[-6:]:
        events.add_row(time.strftime("%H:%M:%S", time.localtime(e.timestamp_ns / 1e9)), f"{e.kind}: {e.message}")
    return Group(head, table, events)


def _num(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:,.0f}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run(args: argparse.Namespace) -> int:
    """Broker + controller in this process, fleet in a child; show it until Ctrl-C or --duration-s."""
    cfg = config.Config(power=config.Power(budget_w=args.budget_w), bus=config.Bus(url="embedded"))
    svc = service.Service(cfg, listen=args.listen, embedded_port=_free_port())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    svc_stop = asyncio.Event()
    svc_task = asyncio.create_task(svc.run(svc_stop), name="demo.controller")
    ready = asyncio.create_task(svc.ready.wait())
    await asyncio.wait({svc_task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if svc_task.done():
        ready.cancel()
        await svc_task  # raises what stopped it (a port in use, ...)
        return 1
    fleet = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli", "--log-level", "WARNING", "fleet",
        "--controller", f"127.0.0.1:{svc.port}", "--mqtt", str(svc.bus_url),
        "--nodes", str(args.nodes), "--devices-per-node", str(args.devices_per_node),
        "--vendors", DEMO_VENDORS, "--workloads", "training,inference,mixed",
        "--sim-fault", "thermal_runaway:dev=2:at=20", "--sim-fault", "xid:dev=5:at=40",
    )
    state = svc.state
    console = Console()
    started = time.monotonic()
    deadline = started + args.duration_s if args.duration_s else math.inf
    try:
        with Live(console=console, auto_refresh=False) as live:
            while not stop.is_set() and time.monotonic() < deadline:
                if state.budget_w is None and args.budget_w is None and time.monotonic() - started > AUTO_BUDGET_AFTER_S:
                    draw = state.views.summary(time.time_ns()).power_w
                    state.publish(state.control.set_budget(round(AUTO_BUDGET_FRAC * draw), time.time_ns()).events)
                live.update(render(state, time.time_ns(), args.rows), refresh=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
    finally:
        fleet.terminate()
        await fleet.wait()
        svc_stop.set()
        await svc_task
    s = state.views.summary(time.time_ns())
    totals = state.control.ledger.totals
    console.print(
        f"demo: {s.devices} devices of {len(s.devices_by_vendor)} vendors on {sum(s.nodes_by_status.values())} nodes; "
        f"{state.ingest.counters.samples_total:,} samples stored; "
        f"{sum(1 for e in state.recent_events if e.kind == 'anomaly.raised')} anomalies raised; "
        f"{totals.get('applied', 0)} commands applied, {totals.get('expired', 0)} expired"
    )
    return 0
