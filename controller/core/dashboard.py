"""The dashboard's view-model (`xpuctl top`, the demo): what to show, worst first. Pure.

The TUI (controller/tui/) only draws a Snapshot; building one is the same whether the rows come
from the controller's own state (the demo) or from the Cluster API (`xpuctl top`). At 10,000
devices the snapshot aggregates (by vendor and health) and keeps only the worst devices and nodes
it can show, so drawing stays cheap.
"""

from __future__ import annotations

import math

import msgspec

HEALTH_RANK = {"failed": 3, "unknown": 2, "degraded": 1, "ok": 0}
ORDERS = ("worst", "power", "temp", "util", "node")


class DeviceRow(msgspec.Struct, frozen=True, kw_only=True):
    """One device as the dashboard sees it."""

    node_id: str
    uuid: str
    index: int
    vendor: str
    model: str
    health: str
    utilization: float | None
    power_w: float | None
    power_limit_w: float | None
    temperature_c: float | None
    temp_slowdown_c: float | None
    anomalies: tuple[str, ...] = ()
    cordoned: bool = False


class NodeRow(msgspec.Struct, frozen=True, kw_only=True):
    """One node, aggregated."""

    node_id: str
    devices: int
    power_w: float
    worst_health: str
    anomalies: int
    hottest_c: float | None


class EventRow(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the feed."""

    timestamp_ns: int
    kind: str
    severity: str
    message: str


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Everything one frame shows."""

    title: str
    timestamp_ns: int
    connected: bool
    power_w: float
    budget_w: float | None
    power_history_w: tuple[float, ...]
    nodes_total: int
    nodes_online: int
    devices_total: int
    by_vendor: tuple[tuple[str, int], ...]
    by_health: tuple[tuple[str, int], ...]
    anomalies_open: int
    worst_devices: tuple[DeviceRow, ...]
    worst_nodes: tuple[NodeRow, ...]
    events: tuple[EventRow, ...]
    problem: str = ""
    view: str = ""  # how the rows are picked and ordered, when not the default (`xpuctl top` keys)
    help: bool = False  # show the keys instead of the device table


# `xpuctl top`'s orders of the device table, cycled by `s`: the worst first (the default), or by
# one reading, highest first, or by node
def _by(value: float | None) -> float:
    return -value if value is not None and math.isfinite(value) else math.inf


class View(msgspec.Struct, kw_only=True):
    """What the operator asked `xpuctl top` to show, changed one key at a time (`key`).

    q quits; s cycles the order; / starts a filter on node id or vendor (Enter ends it, Esc drops
    it); v cycles through the vendors present; h shows the keys; Esc clears the filters.
    """

    sort: str = "worst"
    text: str = ""
    vendor: str = ""
    typing: bool = False
    help: bool = False
    quit: bool = False

    def key(self, ch: str, vendors: list[str]) -> None:
        """One key press; `vendors` are those present, for `v`."""
        if self.typing:
            if ch in ("\r", "\n"):
                self.typing = False
            elif ch == "\x1b":
                self.typing, self.text = False, ""
            elif ch in ("\x7f", "\b"):
                self.text = self.text[:-1]
            elif ch.isprintable():
                self.text += ch
            return
        if ch == "q":
            self.quit = True
        elif ch == "s":
            self.sort = ORDERS[(ORDERS.index(self.sort) + 1) % len(ORDERS)]
        elif ch == "/":
            self.typing, self.text = True, ""
        elif ch == "v":
            choices = ["", *sorted(vendors)]
            self.vendor = choices[(choices.index(self.vendor) + 1) % len(choices)] if self.vendor in choices else ""
        elif ch in ("h", "?"):
            self.help = not self.help
        elif ch == "\x1b":
            self.text, self.vendor = "", ""

    def pick(self, rows: list[DeviceRow]) -> list[DeviceRow]:
        """The rows the filters let through."""
        text = self.text.lower()
        return [
            d
            for d in rows
            if (not self.vendor or d.vendor == self.vendor)
            and (not text or text in d.node_id.lower() or text in d.vendor.lower())
        ]

    def describe(self) -> str:
        """The header's line: order and filters (empty when all are the defaults)."""
        parts = [] if self.sort == "worst" else [f"sorted by {self.sort}"]
        if self.typing or self.text:
            parts.append(f"filter: {self.text}" + ("_" if self.typing else ""))
        if self.vendor:
            parts.append(f"vendor: {self.vendor}")
        return "  ".join(parts)


HELP = (
    "q  quit",
    "s  sort: worst first, then by power, temperature, utilisation, node",
    "/  filter by node id or vendor (type, then Enter; Esc drops it)",
    "v  show one vendor at a time (again: the next; after the last: all)",
    "Esc  clear the filters",
    "h  this help (again: back)",
)


def badness(d: DeviceRow) -> float:
    """Sort key, larger = worse: anomalies, then health, then closeness to the slowdown temperature."""
    score = 1000.0 * len(d.anomalies) + 100.0 * HEALTH_RANK.get(d.health, 2)
    if d.temperature_c is not None:
        limit = d.temp_slowdown_c if d.temp_slowdown_c is not None else 90.0
        score += max(0.0, 50.0 - (limit - d.temperature_c))
    return score


def build(
    rows: list[DeviceRow],
    *,
    title: str,
    timestamp_ns: int,
    budget_w: float | None,
    power_history_w: list[float],
    nodes_total: int,
    nodes_online: int,
    events: list[EventRow],
    max_devices: int = 200,
    max_nodes: int = 50,
    max_events: int = 50,
    connected: bool = True,
    problem: str = "",
    sort: str = "worst",
    view: str = "",
    show_help: bool = False,
) -> Snapshot:
    """Aggregate the rows and keep the worst few of each kind."""
    by_vendor: dict[str, int] = {}
    by_health: dict[str, int] = {}
    nodes: dict[str, list[DeviceRow]] = {}
    power = 0.0
    anomalies = 0
    for d in rows:
        by_vendor[d.vendor] = by_vendor.get(d.vendor, 0) + 1
        by_health[d.health] = by_health.get(d.health, 0) + 1
        nodes.setdefault(d.node_id, []).append(d)
        if d.power_w is not None and math.isfinite(d.power_w):
            power += d.power_w
        anomalies += len(d.anomalies)
    order = {
        "worst": lambda d: (-badness(d), d.node_id, d.index),
        "power": lambda d: (_by(d.power_w), d.node_id, d.index),
        "temp": lambda d: (_by(d.temperature_c), d.node_id, d.index),
        "util": lambda d: (_by(d.utilization), d.node_id, d.index),
        "node": lambda d: (0.0, d.node_id, d.index),
    }[sort]
    worst = sorted(rows, key=order)[:max_devices]
    node_rows = [
        NodeRow(
            node_id=n,
            devices=len(ds),
            power_w=sum(d.power_w or 0.0 for d in ds),
            worst_health=max((d.health for d in ds), key=lambda h: HEALTH_RANK.get(h, 2)),
            anomalies=sum(len(d.anomalies) for d in ds),
            hottest_c=max((d.temperature_c for d in ds if d.temperature_c is not None), default=None),
        )
        for n, ds in nodes.items()
    ]
    node_rows.sort(key=lambda n: (-n.anomalies, -HEALTH_RANK.get(n.worst_health, 2), -(n.hottest_c or 0.0), n.node_id))
    return Snapshot(
        title=title,
        timestamp_ns=timestamp_ns,
        connected=connected,
        power_w=power,
        budget_w=budget_w,
        power_history_w=tuple(power_history_w),
        nodes_total=nodes_total,
        nodes_online=nodes_online,
        devices_total=len(rows),
        by_vendor=tuple(sorted(by_vendor.items(), key=lambda kv: (-kv[1], kv[0]))),
        by_health=tuple(sorted(by_health.items(), key=lambda kv: -HEALTH_RANK.get(kv[0], 2))),
        anomalies_open=anomalies,
        worst_devices=tuple(worst),
        worst_nodes=tuple(node_rows[:max_nodes]),
        events=tuple(events[-max_events:]),
        problem=problem,
        view=view,
        help=show_help,
    )


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: tuple[float, ...], width: int, top: float | None = None) -> str:
    """The last `width` values as block characters, scaled to max(values, top)."""
    vals = [v for v in values if math.isfinite(v)][-width:]
    if not vals:
        return ""
    hi = max(*vals, top or 0.0)
    lo = min(vals)
    lo = min(lo, hi * 0.5)
    span = hi - lo or 1.0
    return "".join(SPARKS[min(len(SPARKS) - 1, int((v - lo) / span * (len(SPARKS) - 1) + 0.5))] for v in vals)
