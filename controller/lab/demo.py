"""`xpu-controller demo`: the whole system on this machine, no setup.

An embedded MQTT broker (amqtt), the controller (gRPC ingest, detectors, power loop), and a
simulated mixed fleet of every vendor (an `xpu-agent fleet` child process, so the controller and
the agents stay separate programs). Faults are injected over time (a thermal runaway at 8 s, XID
errors at 12 s, an ECC storm at 30 s, a straggler at 45 s), and after 15 s the power budget is set
to 85% of what the fleet draws (or to `--budget-w`), so the loop has work to do. Shown in the
`xpuctl top` dashboard until Ctrl-C or `--duration-s`; `--headless` runs the same without it and
prints a summary (`--json`: one object).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import pathlib
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import cast

from rich.console import Console
from rich.live import Live

from xpuctl.common import cli, ports
from xpuctl.controller import config, hub, lab, service
from xpuctl.controller.core import dashboard
from xpuctl.controller.tui import view

log = logging.getLogger("xpu.controller.demo")
AUTO_BUDGET_AFTER_S = 15.0
# faults over time, on the first node (NVIDIA, training) and beyond: what the detectors catch
FAULTS = (
    "--sim-fault",
    "thermal_runaway:dev=2:at=8",
    "--sim-fault",
    "xid:dev=5:at=12",
    "--sim-fault",
    "ecc_storm:dev=6:at=30:for=30",
    "--sim-fault",
    "straggler:dev=1:at=45:for=30",
)
AUTO_BUDGET_FRAC = 0.85
# every vendor, with NVIDIA on a quarter of the nodes as on most sites; half the nodes can be capped
DEMO_VENDORS = (
    "nvidia,amd,nvidia,hygon,nvidia,cambricon,nvidia,iluvatar,"
    "ascend,metax,moorethreads,enflame,kunlunxin,biren,thead,sunrise"
)


def snapshot(state: hub.Hub, now_ns: int, history: list[float], title: str = "xpuctl demo") -> dashboard.Snapshot:
    """A dashboard Snapshot straight from the controller's state (no gRPC in the demo)."""
    rows = [
        dashboard.DeviceRow(
            node_id=d.node_id,
            uuid=d.info.uuid,
            index=d.info.index,
            vendor=d.info.vendor,
            model=d.info.model,
            health=d.health,
            utilization=d.values["utilization"],
            power_w=d.values["power_w"],
            power_limit_w=d.values["power_limit_w"],
            temperature_c=d.values["temperature_c"],
            temp_slowdown_c=d.info.temp_slowdown_c,
            anomalies=d.anomalies,
            cordoned=d.cordoned,
        )
        for d in state.views.devices(now_ns)
    ]
    s = state.views.summary(now_ns)
    shown = [e for e in itertools.islice(reversed(state.recent_events), 2000) if e.severity != "debug"][:50]
    events = [
        dashboard.EventRow(timestamp_ns=e.timestamp_ns, kind=e.kind, severity=e.severity, message=e.message)
        for e in reversed(shown)  # routine commands are summed up by power.period lines
    ]
    return dashboard.build(
        rows,
        title=title,
        timestamp_ns=now_ns,
        budget_w=state.budget_w,
        power_history_w=history,
        nodes_total=sum(s.nodes_by_status.values()),
        nodes_online=s.nodes_by_status.get("online", 0),
        events=events,
        problem="" if state.control.feasible else "budget infeasible: the cappable devices' floors exceed it",
    )


def _num(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:,.0f}"


def default_listen() -> str:
    """127.0.0.1:50051 when it is free, so that `xpuctl` attaches with no flag; else a free port."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", cli.GRPC_PORT))
        except OSError:
            log.info("port %d is taken: the demo listens on another (the attach line names it)", cli.GRPC_PORT)
            return "127.0.0.1:0"
    return f"127.0.0.1:{cli.GRPC_PORT}"


@contextlib.contextmanager
def logs_to(path: pathlib.Path) -> Iterator[None]:
    """Everything written to stderr (log lines, the fleet's, gRPC's and amqtt's own) goes to `path`
    while the dashboard is on screen, so that nothing scrolls over it; stderr is back afterwards.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("ab") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


async def run(args: argparse.Namespace) -> int:
    """Broker + controller in this process, fleet in a child; show it until Ctrl-C or --duration-s."""
    cfg = config.Config(power=config.Power(budget_w=args.budget_w), bus=config.Bus(url="embedded"))
    console = Console()
    log_file = None if args.headless else pathlib.Path(tempfile.gettempdir()) / f"xpuctl-demo-{os.getpid()}.log"
    with contextlib.ExitStack() as stack:
        if log_file is not None:
            console.print(f"demo: logs go to {log_file} while the dashboard is on screen")
            stack.enter_context(logs_to(log_file))
        code = await _run(args, cfg, console, log_file)
    if log_file is not None:
        console.print(f"demo: its logs are in {log_file}")
    return code


async def _run(args: argparse.Namespace, cfg: config.Config, console: Console, log_file: pathlib.Path | None) -> int:
    svc = service.Service(cfg, listen=args.listen or default_listen(), embedded_port=ports.free_port())
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
        *lab.fleet_argv(
            f"127.0.0.1:{svc.port}",
            nodes=args.nodes,
            devices_per_node=args.devices_per_node,
            extra=[
                "--mqtt",
                str(svc.bus_url),
                "--vendors",
                DEMO_VENDORS,
                "--workloads",
                "training,inference,mixed",
                *FAULTS,
            ],
        )
    )
    state = svc.state
    attach = f"xpuctl --controller 127.0.0.1:{svc.port}"
    title = f"xpuctl demo · attach: {attach} top" + (f" · logs: {log_file}" if log_file else "")
    if log_file is None:
        log.info("the demo's controller is on 127.0.0.1:%d; attach with: %s summary", svc.port, attach)
    started = time.monotonic()
    deadline = started + args.duration_s if args.duration_s else math.inf
    history: list[float] = []
    max_power = 0.0
    live = (
        None
        if args.headless
        else Live(console=console, auto_refresh=False, screen=False, redirect_stdout=False, redirect_stderr=False)
    )
    try:
        if live is not None:
            live.start()
        while not stop.is_set() and time.monotonic() < deadline:
            now_ns = time.time_ns()
            power = state.views.summary(now_ns).power_w
            history.append(power)
            del history[:-300]
            if time.monotonic() - started > AUTO_BUDGET_AFTER_S / 2:  # the fleet is up by then
                max_power = max(max_power, power)
            if state.budget_w is None and args.budget_w is None and time.monotonic() - started > AUTO_BUDGET_AFTER_S:
                state.set_budget(round(AUTO_BUDGET_FRAC * power), now_ns)
            if live is not None:
                frame = view.render(
                    snapshot(state, now_ns, history, title), console.size.width, console.size.height - 1
                )
                live.update(frame, refresh=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
    finally:
        if live is not None:
            live.stop()
        fleet.terminate()
        await fleet.wait()
        svc_stop.set()
        await svc_task
    now_ns = time.time_ns()
    s = state.views.summary(now_ns)
    counts = state.event_counts
    summary = {
        "devices": s.devices,
        "vendors": len(s.devices_by_vendor),
        "nodes": sum(s.nodes_by_status.values()),
        "samples": state.ingest.counters.samples_total,
        "anomalies_raised": counts.get("anomaly.raised", 0),
        "anomalies_cleared": counts.get("anomaly.cleared", 0),
        "actions_applied": counts.get("action.applied", 0),
        "actions_expired": counts.get("action.expired", 0),
        "max_power_w": round(max_power, 1),
        "budget_w": state.budget_w,
        "detectors_raised": sorted(state.raised_by_detector),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        budget = "none" if summary["budget_w"] is None else f"{summary['budget_w']:,.0f} W"
        console.print(
            f"demo: {summary['devices']} devices of {summary['vendors']} vendors on {summary['nodes']} nodes; "
            f"{summary['samples']:,} samples stored; {summary['anomalies_raised']} anomalies raised "
            f"({', '.join(cast('list[str]', summary['detectors_raised'])) or 'none'}), {summary['anomalies_cleared']} cleared; "
            f"{summary['actions_applied']} commands applied, {summary['actions_expired']} expired; "
            f"max power {summary['max_power_w']:,.0f} W, budget {budget}"
        )
    return 0
