"""Draws one dashboard frame (controller/core/dashboard.py Snapshot) for a given terminal size.

Pure: a snapshot and a size in, a rich renderable out; no clocks, no I/O. Layout, top to bottom:
a header (power against budget with a sparkline, nodes, vendors, health, anomalies), the worst
devices, the worst nodes when there is room, and the event feed. Rows are cut to fit the height,
so the frame works from 80x24 up.
"""

from __future__ import annotations

import time

from rich.console import Group, RenderableType
from rich.styled import Styled
from rich.table import Table
from rich.text import Text

from xpuctl.controller.core import dashboard

HEALTH_STYLE = {"ok": "green", "degraded": "yellow", "failed": "bold red", "unknown": "magenta"}
SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "dim"}


def _num(x: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if x is None else fmt.format(x)


def _bar(frac: float | None, width: int) -> Text:
    if frac is None:
        return Text("-".ljust(width))
    frac = min(max(frac, 0.0), 1.0)
    full = round(frac * width)
    style = "green" if frac < 0.7 else "yellow" if frac < 0.9 else "red"
    return Text("█" * full, style=style) + Text("·" * (width - full), style="dim")


def header(s: dashboard.Snapshot, width: int) -> RenderableType:
    """Power and budget, counts."""
    budget = "no budget" if s.budget_w is None else f"budget {s.budget_w:,.0f} W"
    use = None if not s.budget_w else s.power_w / s.budget_w
    state = "" if s.connected else "  [bold red]reconnecting[/]"
    line1 = Text.from_markup(
        f"[b]{s.title}[/b]  {time.strftime('%H:%M:%S', time.gmtime(s.timestamp_ns / 1e9))}Z{state}"
    )
    spark_w = max(10, width - 60)
    line2 = Text(f"power {s.power_w:,.0f} W / {budget} ") + _bar(use, 12)
    line2 += Text("  " + dashboard.sparkline(s.power_history_w, spark_w, s.budget_w), style="cyan")
    vendors = ", ".join(f"{v} {n}" for v, n in s.by_vendor)
    health = "  ".join(f"[{HEALTH_STYLE.get(h, '')}]{h} {n}[/]" for h, n in s.by_health)
    line3 = Text.from_markup(
        f"nodes {s.nodes_online}/{s.nodes_total} online  devices {s.devices_total}  "
        f"anomalies open [{'bold red' if s.anomalies_open else 'green'}]{s.anomalies_open}[/]  {health}"
    )
    line4 = Text(f"vendors: {vendors}")  # wraps: every vendor stays visible
    lines: list[RenderableType] = [line1, line2, line3, line4]
    if s.view:
        lines.append(Text(s.view + "   (h: keys)", style="bold cyan", overflow="ellipsis", no_wrap=True))
    if s.problem:
        lines.append(Text(s.problem, style="bold red", overflow="ellipsis", no_wrap=True))
    return Group(*lines)


def devices_table(s: dashboard.Snapshot, rows: int, width: int) -> Table:
    """The worst devices."""
    wide = width >= 120
    t = Table(
        box=None,
        pad_edge=False,
        expand=False,
        title_justify="left",
        show_edge=False,
        title=f"{'worst ' if not s.view else ''}{min(rows, len(s.worst_devices))} of {s.devices_total} devices",
    )
    t.add_column("node", no_wrap=True, overflow="ellipsis", max_width=18 if wide else 10)
    t.add_column("#", justify="right", no_wrap=True)
    t.add_column("vendor", no_wrap=True, max_width=12 if wide else 9, overflow="ellipsis")
    if wide:
        t.add_column("model", no_wrap=True, max_width=24, overflow="ellipsis")
    t.add_column("util", no_wrap=True)
    t.add_column("power/cap W", justify="right", no_wrap=True)
    t.add_column("temp", justify="right", no_wrap=True)
    t.add_column("health", no_wrap=True)
    t.add_column("anomaly", no_wrap=True, overflow="ellipsis")
    for d in s.worst_devices[:rows]:
        cells: list[RenderableType] = [d.node_id, str(d.index), d.vendor]
        if wide:
            cells.append(d.model)
        cells += [
            _bar(d.utilization, 10 if wide else 5) + Text(" -  " if d.utilization is None else f"{d.utilization:4.0%}"),
            f"{_num(d.power_w)}/{_num(d.power_limit_w)}",
            _num(d.temperature_c, "{:.0f}C"),
            Text(d.health + (" C" if d.cordoned else ""), style=HEALTH_STYLE.get(d.health, "")),
            Text(",".join(d.anomalies) or "", style="bold red" if d.anomalies else ""),
        ]
        t.add_row(*cells)
    return t


def nodes_table(s: dashboard.Snapshot, rows: int) -> Table:
    """The worst nodes."""
    t = Table(
        box=None,
        pad_edge=False,
        expand=False,
        show_edge=False,
        title_justify="left",
        title=f"worst {min(rows, len(s.worst_nodes))} of {s.nodes_total} nodes",
    )
    for col in ("node", "devices", "power W", "hottest", "worst health", "anomalies"):
        t.add_column(col, no_wrap=True)
    for n in s.worst_nodes[:rows]:
        t.add_row(
            n.node_id,
            str(n.devices),
            f"{n.power_w:,.0f}",
            _num(n.hottest_c, "{:.0f}C"),
            Text(n.worst_health, style=HEALTH_STYLE.get(n.worst_health, "")),
            str(n.anomalies),
        )
    return t


def feed(s: dashboard.Snapshot, rows: int) -> Group:
    """The newest events, newest last."""
    lines = [Text("events", style="bold")]
    for e in s.events[-rows:] if rows > 0 else ():
        stamp = time.strftime("%H:%M:%S", time.gmtime(e.timestamp_ns / 1e9))
        lines.append(
            Text(
                f"{stamp} {e.kind}: {e.message}",
                style=SEVERITY_STYLE.get(e.severity, ""),
                overflow="ellipsis",
                no_wrap=True,
            )
        )
    return Group(*lines)


def keys() -> Group:
    """`xpuctl top`'s keys (h)."""
    return Group(Text("keys", style="bold"), *(Text("  " + line) for line in dashboard.HELP))


def render(s: dashboard.Snapshot, width: int, height: int) -> RenderableType:
    """One frame that fits width x height; dimmed when it is the last one from a controller that
    is not answering (the header says `reconnecting`).
    """
    frame = _frame(s, width, height)
    return frame if s.connected else Styled(frame, "dim")


def _frame(s: dashboard.Snapshot, width: int, height: int) -> RenderableType:
    vendors_len = len("vendors: ") + sum(len(f"{v} {n}, ") for v, n in s.by_vendor)
    head_lines = 3 + max(1, -(-vendors_len // max(width, 1))) + (1 if s.problem else 0) + (1 if s.view else 0)
    room = max(height - head_lines - 1, 6)
    feed_rows = max(3, room // 4)
    table_room = room - feed_rows - 1
    show_nodes = height >= 40 and s.worst_nodes
    node_rows = min(len(s.worst_nodes), table_room // 3) if show_nodes else 0
    device_rows = max(table_room - (node_rows + 3 if show_nodes else 0) - 3, 1)
    if s.help:
        return Group(header(s, width), keys(), feed(s, feed_rows))
    parts: list[RenderableType] = [header(s, width), devices_table(s, device_rows, width)]
    if show_nodes:
        parts.append(nodes_table(s, node_rows))
    parts.append(feed(s, feed_rows))
    return Group(*parts)
