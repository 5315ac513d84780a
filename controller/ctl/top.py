"""`xpuctl top`: the live dashboard against a controller's Cluster API.

Keys (dashboard.View): q quits, s cycles the order, / filters by node or vendor, v picks a vendor,
h shows the keys, Esc clears the filters.

Every interval: GetSummary, GetPowerBudget and ListDevices; a WatchEvents stream feeds the event
list in between. A controller that goes away is shown as `reconnecting` and is retried every
interval, by itself. Frames are drawn by controller/tui/view.py from a dashboard Snapshot, at most
once per interval, from this loop (`Live(auto_refresh=False)`), so rich's thread never reads state.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import sys
import termios
import time
import tty
from collections.abc import Iterator

from rich.console import Console
from rich.live import Live

from xpuctl.client import AsyncClient, ClientError, Tls
from xpuctl.controller.core import dashboard
from xpuctl.controller.tui import view
from xpuctl.protos import names
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb

HISTORY = 300  # samples of cluster power kept for the sparkline


def row_of(d: cpb.Device) -> dashboard.DeviceRow:
    """A Cluster API device as a dashboard row."""

    def opt(msg: object, name: str) -> float | None:
        return getattr(msg, name) if msg.HasField(name) else None  # type: ignore[attr-defined]

    return dashboard.DeviceRow(
        node_id=d.node_id,
        uuid=d.info.uuid,
        index=d.info.index,
        vendor=d.info.vendor,
        model=d.info.model,
        health=names.health_name(d.health),
        utilization=opt(d, "utilization"),
        power_w=opt(d, "power_w"),
        power_limit_w=opt(d, "power_limit_w"),
        temperature_c=opt(d, "temperature_c"),
        temp_slowdown_c=opt(d.info, "temp_slowdown_c"),
        anomalies=tuple(d.anomalies),
        cordoned=d.cordoned,
    )


class Top:
    """The dashboard's state: the last answers, power history, events."""

    def __init__(self, target: str) -> None:
        """Nothing fetched yet."""
        self.target = target
        self.history: collections.deque[float] = collections.deque(maxlen=HISTORY)
        self.events: collections.deque[dashboard.EventRow] = collections.deque(maxlen=200)
        self.snapshot: dashboard.Snapshot | None = None
        self.problem = ""
        self.view = dashboard.View()
        self.rows: list[dashboard.DeviceRow] = []
        self.vendors: list[str] = []
        self.summary: cpb.Summary | None = None
        self.budget: cpb.PowerBudget | None = None
        self.changed = asyncio.Event()  # a key was pressed: draw now

    def key(self, ch: str) -> None:
        """One key from the terminal; the next frame shows what it changed."""
        self.view.key(ch, self.vendors)
        if self.summary is not None and self.budget is not None:
            self._build(self.summary, self.budget)
        self.changed.set()

    async def _watch(self, xpu: AsyncClient) -> None:
        while True:
            try:
                async for e in xpu.watch():  # across outages by itself; the poll reports them
                    if e.severity == "debug":  # a routine command: its period's power.period line says it
                        continue
                    self.events.append(
                        dashboard.EventRow(
                            timestamp_ns=e.timestamp_ns, kind=e.kind, severity=e.severity, message=e.message
                        )
                    )
            except ClientError:
                pass  # refused (a standby, a credential): the poll says so; try again
            await asyncio.sleep(1.0)

    async def poll(self, xpu: AsyncClient) -> None:
        """One round of questions; on failure keep the last frame and say so."""
        try:
            summary = await xpu.summary()
            budget = await xpu.budget()
            devices = await xpu.devices()
        except ClientError as exc:
            self.problem = f"controller {exc}"
            if self.snapshot is not None:
                self.snapshot = dashboard.Snapshot(
                    **{
                        **{f: getattr(self.snapshot, f) for f in self.snapshot.__struct_fields__},
                        "connected": False,
                        "problem": self.problem,
                    }
                )
            return
        self.problem = ""
        self.history.append(summary.power_w)
        self.rows = [row_of(d) for d in devices]
        self.vendors = sorted({r.vendor for r in self.rows})
        self.summary, self.budget = summary, budget
        self._build(summary, budget)

    def _build(self, summary: cpb.Summary, budget: cpb.PowerBudget) -> None:
        v = self.view
        self.snapshot = dashboard.build(
            v.pick(self.rows),
            title=f"xpuctl top - {self.target}",
            timestamp_ns=time.time_ns(),
            budget_w=budget.budget_w if budget.HasField("budget_w") else None,
            power_history_w=list(self.history),
            nodes_total=summary.nodes,
            nodes_online=summary.nodes_online,
            events=list(self.events),
            problem="" if budget.feasible else "budget infeasible: the cappable devices' floors exceed it",
            sort=v.sort,
            view=v.describe(),
            show_help=v.help,
        )


def waiting(target: str, problem: str) -> dashboard.Snapshot:
    """The frame before the first answer."""
    return dashboard.build(
        [],
        title=f"xpuctl top - {target}",
        timestamp_ns=time.time_ns(),
        budget_w=None,
        power_history_w=[],
        nodes_total=0,
        nodes_online=0,
        events=[],
        connected=False,
        problem=problem or "connecting ...",
    )


async def _main(
    target: str,
    interval_s: float,
    *,
    once: bool,
    tls: Tls | None,
) -> int:
    app = Top(target)
    console = Console()
    async with AsyncClient(target, tls=tls, timeout_s=5.0) as xpu:
        watcher = asyncio.create_task(app._watch(xpu), name="top.events")  # noqa: SLF001
        try:
            if once:
                await app.poll(xpu)
                snap = app.snapshot or waiting(target, app.problem)
                console.print(view.render(snap, console.size.width, console.size.height))
                return 0 if app.snapshot is not None else 3
            with Live(console=console, auto_refresh=False, screen=False, transient=False) as live, keys(app):
                next_poll = 0.0
                while not app.view.quit:
                    if time.monotonic() >= next_poll:
                        await app.poll(xpu)
                        next_poll = time.monotonic() + interval_s
                    snap = app.snapshot or waiting(target, app.problem)
                    live.update(view.render(snap, console.size.width, console.size.height - 1), refresh=True)
                    app.changed.clear()
                    with contextlib.suppress(TimeoutError):  # the next poll, or a key, whichever first
                        await asyncio.wait_for(app.changed.wait(), timeout=max(next_poll - time.monotonic(), 0.0))
                return 0
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


@contextlib.contextmanager
def keys(app: Top) -> Iterator[None]:
    """Keys from the terminal, one at a time, without Enter and without echo (cbreak), while the
    dashboard is on screen; nothing when stdin is not a terminal. The terminal is restored after.
    """
    if not sys.stdin.isatty():
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    loop = asyncio.get_running_loop()
    try:
        tty.setcbreak(fd)
        loop.add_reader(fd, lambda: app.key(os.read(fd, 1).decode(errors="replace")))
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run(
    target: str,
    *,
    interval_s: float = 1.0,
    once: bool = False,
    tls: Tls | None = None,
) -> int:
    """Run until Ctrl-C (or one frame with `once`); TLS with `tls`."""
    try:
        return asyncio.run(_main(target, max(interval_s, 0.2), once=once, tls=tls))
    except KeyboardInterrupt:
        return 0
