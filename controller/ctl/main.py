"""`xpuctl`: the operator's CLI against a controller's Cluster API.

Human tables by default, `--json` for scripts. Exit codes: 0 ok, 2 usage, 3 controller
unreachable, 4 the controller refused the request (the message says why), 5 not allowed (no or
a wrong operator credential). `top` is the live
dashboard (controller/ctl/top.py).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from xpuctl.client import Client, ClientError, Denied, Tls, Unreachable, default_address
from xpuctl.common import cli, exits, pipes, tls
from xpuctl.controller.core import dashboard
from xpuctl.controller.ctl import k8s, slurm
from xpuctl.protos import names
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb

EXIT_UNREACHABLE = exits.UNREACHABLE
EXIT_REFUSED = exits.REFUSED
EXIT_DENIED = exits.DENIED


def _opt(msg: object, name: str) -> float | None:
    return getattr(msg, name) if msg.HasField(name) else None  # type: ignore[attr-defined]


def summary_json(s: cpb.Summary) -> dict[str, object]:
    """The `xpuctl summary --json` object (DESIGN 6 keys first)."""
    return {
        "nodes": s.nodes,
        "nodes_online": s.nodes_online,
        "nodes_stale": s.nodes_stale,
        "nodes_offline": s.nodes_offline,
        "devices": s.devices,
        "devices_by_vendor": dict(s.devices_by_vendor),
        "devices_by_health": dict(s.devices_by_health),
        "power_w": s.power_w,
        "budget_w": _opt(s, "budget_w"),
        "anomalies_open": s.anomalies_open,
        "ingest": {
            "batches_total": s.ingest.batches_total,
            "samples_total": s.ingest.samples_total,
            "duplicate_batches_total": s.ingest.duplicate_batches_total,
            "gap_batches_total": s.ingest.gap_batches_total,
            "rejected_by_reason": dict(s.ingest.rejected_by_reason),
            "ingest_p50_ms": s.ingest.ingest_p50_ms,
            "ingest_p99_ms": s.ingest.ingest_p99_ms,
            "streams_open": s.ingest.streams_open,
        },
        "history": {
            "url": s.history.url,
            "exported": s.history.exported,
            "dropped": s.history.dropped,
            "failed": s.history.failed,
            "last_error": s.history.last_error,
        }
        if s.history.url
        else None,
    }


def device_json(d: cpb.Device) -> dict[str, object]:
    """One object of `xpuctl devices --json`."""
    info = d.info
    return {
        "node_id": d.node_id,
        "uuid": info.uuid,
        "index": info.index,
        "vendor": info.vendor,
        "model": info.model,
        "health": names.health_name(d.health),
        "health_reason": d.health_reason or None,
        "power_w": _opt(d, "power_w"),
        "power_limit_w": _opt(d, "power_limit_w"),
        "temperature_c": _opt(d, "temperature_c"),
        "utilization": _opt(d, "utilization"),
        "memory_used_bytes": _opt(d, "memory_used_bytes"),
        "memory_total_bytes": _opt(info, "memory_total_bytes"),
        "power_cap_settable": info.power_cap_settable,
        "power_limit_min_w": _opt(info, "power_limit_min_w"),
        "power_limit_max_w": _opt(info, "power_limit_max_w"),
        "cordoned": d.cordoned,
        "headroom_cap_w": d.headroom_cap_w,
        "headroom_ceiling_w": d.headroom_ceiling_w,
        "node_status": names.node_status_name(d.node_status),
        "timestamp_ns": d.timestamp_ns,
        "cordon_reason": d.cordon_reason or None,
        "anomalies": list(d.anomalies),
        # the rest of what the API says of a device (additive keys)
        "weight": d.weight or 1.0,
        "bus_id": info.bus_id or None,
        "driver_version": info.driver_version or None,
        "power_limit_default_w": _opt(info, "power_limit_default_w"),
        "temp_slowdown_c": _opt(info, "temp_slowdown_c"),
        "temp_shutdown_c": _opt(info, "temp_shutdown_c"),
        "simulated": info.simulated,
        "energy_j": _opt(d, "energy_j"),
        "memory_temperature_c": _opt(d, "memory_temperature_c"),
        "core_clock_hz": _opt(d, "core_clock_hz"),
        "memory_clock_hz": _opt(d, "memory_clock_hz"),
        "ecc_corrected_total": _opt(d, "ecc_corrected_total"),
        "ecc_uncorrected_total": _opt(d, "ecc_uncorrected_total"),
        "pcie_rx_bytes_per_s": _opt(d, "pcie_rx_bytes_per_s"),
        "pcie_tx_bytes_per_s": _opt(d, "pcie_tx_bytes_per_s"),
        "job_id": d.job_id or None,
    }


def event_json(e: cpb.Event) -> dict[str, object]:
    """One line of `xpuctl events --json` (JSON lines)."""
    return {
        "timestamp_ns": e.timestamp_ns,
        "kind": e.kind,
        "node_id": e.node_id or None,
        "device_uuid": e.device_uuid or None,
        "severity": e.severity,
        "message": e.message,
        "value": e.value,
        "threshold": e.threshold,
        "detector": e.detector or None,
        "action_id": e.action_id or None,
        "id": e.id or None,
    }


def job_json(j: cpb.Job) -> dict[str, object]:
    """One object of `xpuctl jobs --json`."""
    return {
        "job_id": j.job_id,
        "user": j.user or None,
        "state": "ended" if j.ended_ns else "running",
        "started_ns": j.started_ns,
        "ended_ns": j.ended_ns or None,
        "duration_s": j.duration_s,
        "energy_j": j.energy_j,
        "energy_kwh": j.energy_j / 3.6e6,
        "mean_power_w": j.mean_power_w,
        "method": j.method,
        "devices": [
            {
                "uuid": d.uuid,
                "node_id": d.node_id,
                "index": d.index,
                "energy_j": d.energy_j,
                "method": d.method,
                "start_ns": d.start_ns,
                "end_ns": d.end_ns or None,
            }
            for d in j.devices
        ],
    }


def _print_jobs(console: Console, found: Sequence[cpb.Job]) -> None:
    table = Table(title=f"{len(found)} job(s)", title_justify="left")
    for col in ("job", "user", "state", "devices", "duration", "energy kWh", "energy J", "mean W", "method"):
        table.add_column(col, justify="left" if col in ("job", "user", "state", "devices", "method") else "right")
    for j in found:
        nodes = sorted({d.node_id for d in j.devices})
        where = (
            f"{len(j.devices)} on {', '.join(nodes)}" if len(nodes) <= 3 else f"{len(j.devices)} on {len(nodes)} nodes"
        )
        table.add_row(
            cell(j.job_id),
            cell(j.user or "-"),
            "ended" if j.ended_ns else "running",
            cell(where),
            f"{j.duration_s:,.0f} s",
            f"{j.energy_j / 3.6e6:,.4f}",
            f"{j.energy_j:,.0f}",
            f"{j.mean_power_w:,.0f}",
            j.method or "-",
        )
    console.print(table)


def budget_json(b: cpb.PowerBudget) -> dict[str, object]:
    """`xpuctl budget --json`."""
    return {"budget_w": _opt(b, "budget_w"), "power_w": b.power_w, "feasible": b.feasible}


def node_json(n: cpb.Node) -> dict[str, object]:
    """One object of `xpuctl nodes --json`."""
    return {
        "node_id": n.node_id,
        "boot_id": n.boot_id,
        "status": names.node_status_name(n.status),
        "agent_version": n.agent_version,
        "labels": dict(n.labels),
        "devices": n.devices,
        "power_w": n.power_w,
        "last_seen_ns": n.last_seen_ns,
        "first_seq": n.first_seq,
        "acked_seq": n.acked_seq,
        "batches_stored": n.batches_stored,
        "duplicate_batches": n.duplicate_batches,
        "gap_batches": n.gap_batches,
        "dropped_total": n.dropped_total,
        "connected": n.connected,
        "weight": n.weight or 1.0,
    }


def _fmt(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _print_summary(console: Console, s: cpb.Summary) -> None:
    budget = f"{s.budget_w:,.0f} W" if s.HasField("budget_w") else "none"
    table = Table(title="xpuctl cluster summary", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row(
        "nodes",
        f"{s.nodes} ({s.nodes_online} online, {s.nodes_stale} stale, {s.nodes_offline} offline)",
    )
    table.add_row("devices", str(s.devices))
    table.add_row("by vendor", ", ".join(f"{k} {v}" for k, v in sorted(s.devices_by_vendor.items())) or "-")
    table.add_row("by health", ", ".join(f"{k} {v}" for k, v in sorted(s.devices_by_health.items())) or "-")
    table.add_row("power", f"{s.power_w:,.0f} W (budget {budget})")
    table.add_row("anomalies open", str(s.anomalies_open))
    i = s.ingest
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(i.rejected_by_reason.items())) or "none"
    table.add_row(
        "ingest",
        f"{i.samples_total:,} samples in {i.batches_total:,} batches, "
        f"p50 {i.ingest_p50_ms:.1f} ms, p99 {i.ingest_p99_ms:.1f} ms, {i.streams_open} streams",
    )
    table.add_row("rejected", rejected)
    h = s.history
    if h.url:
        trouble = f"; failing: {h.last_error}" if h.last_error else ""
        table.add_row("history", f"to {h.url}: {h.exported:,} periods exported, {h.dropped:,} dropped{trouble}")
    console.print(table)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    r"""`text` with control characters shown as escapes (`\x1b`, `\n`).

    Strings that agents and operators wrote (models, versions, reasons, messages) are kept as they
    are, but must not move the cursor, recolour or clear the terminal of whoever prints them.
    """
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def cell(text: str) -> Text:
    """A table cell of foreign text: escaped, and never read as rich markup (`[red]`)."""
    return Text(printable(text))


def _print_nodes(console: Console, nodes: Sequence[cpb.Node]) -> None:
    table = Table(title=f"{len(nodes)} node(s)", title_justify="left")
    for col in ("node", "status", "devices", "power W", "acked seq", "gaps", "dups", "dropped", "agent"):
        table.add_column(col, justify="right" if col not in ("node", "status", "agent") else "left")
    for n in nodes:
        table.add_row(
            cell(n.node_id),
            names.node_status_name(n.status),
            str(n.devices),
            f"{n.power_w:,.0f}",
            str(n.acked_seq),
            str(n.gap_batches),
            str(n.duplicate_batches),
            str(n.dropped_total),
            cell(n.agent_version),
        )
    console.print(table)


DEVICE_COLUMNS = ("node", "idx", "device", "vendor", "model", "health", "util", "power W", "cap W", "temp C", "mem GiB")
_LEFT = frozenset({0, 2, 3, 4, 5})  # text columns; the rest are numbers, right-aligned


def _device_cells(d: cpb.Device) -> tuple[str, ...]:
    """One row of the devices table, foreign text escaped (`printable`)."""
    util, mem = _opt(d, "utilization"), _opt(d, "memory_used_bytes")
    return (
        printable(d.node_id),
        str(d.info.index),
        printable(d.info.uuid),
        printable(d.info.vendor),
        printable(d.info.model),
        names.health_name(d.health) + (" (cordoned)" if d.cordoned else ""),
        "-" if util is None else f"{util:.0%}",
        _fmt(_opt(d, "power_w"), ",.0f"),
        _fmt(_opt(d, "power_limit_w"), ",.0f"),
        _fmt(_opt(d, "temperature_c"), ".0f"),
        "-" if mem is None else f"{mem / (1 << 30):.1f}",
    )


def _print_devices(console: Console, devices: Sequence[cpb.Device]) -> None:
    table = Table(title=f"{len(devices)} device(s)", title_justify="left")
    for k, col in enumerate(DEVICE_COLUMNS):
        table.add_column(col, justify="left" if k in _LEFT else "right")
    for d in devices:
        table.add_row(*(Text(c) for c in _device_cells(d)))  # Text: never read as rich markup
    console.print(table)


# metric -> (label, unit, factor from the API's base unit) for `xpuctl device`
SHOWN: dict[str, tuple[str, str, float]] = {
    "utilization": ("utilisation", "%", 100.0),
    "memory_used_bytes": ("memory used", "GiB", 1 / (1 << 30)),
    "power_w": ("power", "W", 1.0),
    "energy_j": ("energy", "kJ", 1e-3),
    "power_limit_w": ("power cap", "W", 1.0),
    "temperature_c": ("temperature", "C", 1.0),
    "memory_temperature_c": ("memory temperature", "C", 1.0),
    "core_clock_hz": ("core clock", "MHz", 1e-6),
    "memory_clock_hz": ("memory clock", "MHz", 1e-6),
    "ecc_corrected_total": ("ECC corrected", "errors", 1.0),
    "ecc_uncorrected_total": ("ECC uncorrected", "errors", 1.0),
    "pcie_rx_bytes_per_s": ("PCIe rx", "MB/s", 1e-6),
    "pcie_tx_bytes_per_s": ("PCIe tx", "MB/s", 1e-6),
}


def _quantity(value: float | None, unit: str, factor: float = 1.0) -> str:
    return "-" if value is None else f"{value * factor:,.4g} {unit}".rstrip()


def _print_device(console: Console, d: cpb.Device, recent: Sequence[cpb.Event]) -> None:
    """One device as `nvidia-smi -q` shows one GPU: identity, readings, capabilities, state."""
    info = d.info
    table = Table(title=f"device {printable(info.uuid)}", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.timestamp_ns / 1e9)) if d.timestamp_ns else "-"
    rows: list[tuple[str, str]] = [
        ("node", f"{d.node_id} ({names.node_status_name(d.node_status)})"),
        ("index", str(info.index)),
        ("vendor / model", f"{info.vendor} / {info.model or '-'}" + (" (simulated)" if info.simulated else "")),
        ("bus id", info.bus_id or "-"),
        ("driver", info.driver_version or "-"),
        ("health", names.health_name(d.health) + (f": {d.health_reason}" if d.health_reason else "")),
        ("sampled at", stamp),
    ]
    rows += [(label, _quantity(_opt(d, name), unit, factor)) for name, (label, unit, factor) in SHOWN.items()]
    total = _opt(info, "memory_total_bytes")
    lo, hi, default = (_opt(info, k) for k in ("power_limit_min_w", "power_limit_max_w", "power_limit_default_w"))
    rows += [
        ("memory total", _quantity(total, "GiB", 1 / (1 << 30))),
        ("cap range", f"{_quantity(lo, 'W')} .. {_quantity(hi, 'W')} (default {_quantity(default, 'W')})"),
        ("cap settable", "yes" if info.power_cap_settable else "no (a fixed load for the power loop)"),
        (
            "slowdown / shutdown",
            f"{_quantity(_opt(info, 'temp_slowdown_c'), 'C')} / {_quantity(_opt(info, 'temp_shutdown_c'), 'C')}",
        ),
        ("headroom", f"{d.headroom_cap_w:,.0f} W under its cap, {d.headroom_ceiling_w:,.0f} W to its maximum"),
        ("weight", f"{d.weight or 1.0:g}"),
        ("cordoned", f"yes: {d.cordon_reason}" if d.cordoned else "no"),
        ("anomalies open", ", ".join(d.anomalies) or "none"),
    ]
    for label, value in rows:
        table.add_row(label, cell(value))
    console.print(table)
    console.print(f"recent commands and events ({len(recent)}):" if recent else "recent commands and events: none kept")
    for e in recent[-10:]:
        when = time.strftime("%H:%M:%S", time.localtime(e.timestamp_ns / 1e9))
        console.print(Text(f"  {when} {printable(e.kind):<18} {printable(e.message)}"))


SORT_KEYS = {
    "power": lambda d: -(d.power_w if d.HasField("power_w") else -1),
    "temp": lambda d: -(d.temperature_c if d.HasField("temperature_c") else -1e9),
    "util": lambda d: -(d.utilization if d.HasField("utilization") else -1),
    "node": lambda d: (d.node_id, d.info.index),
}


_AGE = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")


def since_ns(text: str) -> int:
    """An argument type: `90s`, `10m`, `2h`, `1d` ago, or a local time `YYYY-MM-DD[THH:MM[:SS]]`, in ns.

    Raises:
        argparse.ArgumentTypeError: neither.
    """
    m = _AGE.match(text.strip())
    if m:
        seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return time.time_ns() - int(seconds * 1e9)
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return int(time.mktime(time.strptime(text.strip(), fmt)) * 1e9)
        except ValueError:
            continue
    msg = f"{text!r} is neither an age (90s, 10m, 2h, 1d) nor a time (2026-11-30T08:00:00)"
    raise argparse.ArgumentTypeError(msg)


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="xpuctl",
        description="xpuctl operator CLI",
        epilog="The controller address defaults to $XPUCTL_CONTROLLER, else 127.0.0.1:50051.",
    )
    cli.add_version(parser)
    parser.add_global(
        "--controller",
        type=cli.address,
        default=None,
        metavar="HOST[:PORT]",
        help="default $XPUCTL_CONTROLLER, else 127.0.0.1:50051; the port defaults to 50051",
    )
    parser.add_global("--tls-ca-file", default=None, metavar="PEM", help="CA of the controller; turns TLS on")
    parser.add_global("--tls-cert-file", default=None, metavar="PEM", help="client certificate (mTLS)")
    parser.add_global("--tls-key-file", default=None, metavar="PEM", help="its key")
    parser.add_global("--tls-server-name", default=None, help="name in the controller's certificate, if not its host")
    parser.add_global(
        "--token-file", default=None, metavar="FILE", help="operator bearer token (first line), sent over TLS only"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summary", help="cluster totals")
    s.add_argument("--json", action="store_true")
    n = sub.add_parser("nodes", help="nodes with liveness and delivery counters")
    n.add_argument("--json", action="store_true")
    d = sub.add_parser("devices", help="devices with their latest sample")
    d.add_argument("--json", action="store_true")
    d.add_argument("--node", default="", help="only this node")
    d.add_argument("--vendor", default="", help="only this vendor")
    d.add_argument("--health", default="", choices=["", *names.HEALTH.values()])
    d.add_argument("--sort", default="node", choices=sorted(SORT_KEYS))
    d.add_argument(
        "-o", "--output", choices=["table", "wide"], default="table", help="wide: every column at full width"
    )
    nested = _add_commands(sub)
    parser.share_globals(sub)
    for verbs in nested:
        parser.share_globals(verbs)
    return parser


def _add_commands(sub: argparse._SubParsersAction) -> list[argparse._SubParsersAction]:  # type: ignore[type-arg]
    dv = sub.add_parser("device", help="one device with the recent history of a metric")
    dv.add_argument("uuid")
    dv.add_argument("--metric", default="power_w", choices=METRIC_NAMES)
    dv.add_argument("--limit", type=cli.positive(int), default=60, help="newest samples of history")
    dv.add_argument("--json", action="store_true")
    ev = sub.add_parser("events", help="events (anomalies, actions, nodes, budget) as they happen")
    ev.add_argument(
        "--follow",
        action="store_true",
        help="keep printing, reconnecting when the controller goes (else: stop after --seconds)",
    )
    ev.add_argument(
        "--since",
        type=since_ns,
        default=0,
        metavar="AGE|TIME",
        help="first the kept events since then: an age (90s, 10m, 2h) or a time (2026-11-30T08:00:00)",
    )
    ev.add_argument("--device", default="", help="only this device's events")
    ev.add_argument("--seconds", type=cli.positive(float), default=5.0, help="without --follow: listen this long")
    ev.add_argument("--kind", action="append", default=[], help="kind prefix, e.g. anomaly. (repeatable)")
    ev.add_argument("--node", default="")
    ev.add_argument("--json", action="store_true", help="one JSON object per line")
    ev.add_argument(
        "--verbose",
        action="store_true",
        help="also debug events: each routine power-cap command (else one power.period line per period)",
    )
    b = sub.add_parser("budget", help="show the power budget, or set it (W; 0 removes it)")
    b.add_argument("watts", nargs="?", type=float)
    b.add_argument("--json", action="store_true")
    pr = sub.add_parser("priority", help="weight of a device or a node in the power allocation")
    target = pr.add_mutually_exclusive_group(required=True)
    target.add_argument("--device", default="")
    target.add_argument("--node", default="")
    pr.add_argument("weight", type=float, nargs="?", help="set it (without: show it)")
    pr.add_argument("--json", action="store_true")
    for name in ("cordon", "uncordon"):
        c = sub.add_parser(name, help=f"{name} a device or every device of a node")
        target = c.add_mutually_exclusive_group(required=True)
        target.add_argument("--device", default="")
        target.add_argument("--node", default="")
        c.add_argument("--reason", default="", help="why (required to cordon)")
        c.add_argument("--json", action="store_true")
    rel = sub.add_parser("release", help="let a device go from its node (a card moved to another machine)")
    rel.add_argument("--device", required=True)
    rel.add_argument("--reason", required=True, help="why (kept in the device.released event)")
    rel.add_argument("--json", action="store_true")
    jb = sub.add_parser("jobs", help="scheduler jobs with their devices and energy")
    jb.add_argument("--job", default="", help="only this job")
    jb.add_argument("--running", action="store_true", help="only running jobs")
    jb.add_argument("--json", action="store_true")
    top = sub.add_parser("top", help="live dashboard (Ctrl-C quits)")
    top.add_argument("--interval-s", type=cli.positive(float), default=1.0, help="refresh period")
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    return [slurm.add_parser(sub), k8s.add_parser(sub)]


METRIC_NAMES = list(names.METRICS)


def _run(args: argparse.Namespace, xpu: Client, console: Console) -> int:
    if args.command == "summary":
        s = xpu.summary()
        print(json.dumps(summary_json(s))) if args.json else _print_summary(console, s)
    elif args.command == "nodes":
        nodes = xpu.nodes()
        if args.json:
            print(json.dumps([node_json(x) for x in nodes]))
        else:  # into a pipe or a file: full width, nothing cut
            _print_nodes(console if sys.stdout.isatty() else Console(width=10_000, soft_wrap=True), nodes)
    elif args.command == "devices":
        devices = sorted(
            xpu.devices(node_id=args.node, vendor=args.vendor, health=args.health), key=SORT_KEYS[args.sort]
        )
        if args.json:
            print(json.dumps([device_json(x) for x in devices]))
        elif len(devices) > PLAIN_FROM_ROWS or not sys.stdout.isatty() or args.output == "wide":
            _print_plain(devices)
        else:
            _print_devices(console, devices)
    elif args.command == "device":
        r = xpu.device(args.uuid, metric=args.metric, limit=args.limit)
        history = [{"timestamp_ns": p.timestamp_ns, "value": p.value} for p in r.history]
        recent = xpu.recent(args.uuid)
        if args.json:
            kept = [event_json(e) for e in recent]
            print(
                json.dumps({"device": device_json(r.device), "metric": args.metric, "history": history, "events": kept})
            )
        else:
            _print_device(console, r.device, recent)
            values = [p.value for p in r.history]
            if values:
                console.print(
                    f"{args.metric}: last {len(values)} samples, min {min(values):,.4g}, "
                    f"max {max(values):,.4g}, now {values[-1]:,.4g}"
                )
                console.print(dashboard.sparkline(tuple(values), 80))
            else:
                console.print(f"{args.metric}: no samples")
    elif args.command == "events":
        _events(args, xpu)
    elif args.command == "budget":
        b = xpu.budget() if args.watts is None else xpu.set_budget(args.watts)
        if args.json:
            print(json.dumps(budget_json(b)))
        else:
            budget = f"{b.budget_w:,.0f} W" if b.HasField("budget_w") else "none"
            state = "feasible" if b.feasible else "INFEASIBLE: the cappable devices' floors exceed it"
            console.print(f"budget {budget}; cluster power {b.power_w:,.0f} W; {state}")
    elif args.command == "priority":
        return _priority(args, xpu, console)
    elif args.command in ("cordon", "uncordon"):
        if args.command == "cordon":
            n = xpu.cordon(args.reason, device_uuid=args.device, node_id=args.node)
        else:
            n = xpu.uncordon(device_uuid=args.device, node_id=args.node, reason=args.reason)
        if args.json:
            print(json.dumps({"devices": n}))
        else:
            console.print(f"{args.command}ed {n} device(s)")
    elif args.command == "jobs":
        found = xpu.jobs(job_id=args.job, running_only=args.running)
        if args.json:
            print(json.dumps([job_json(j) for j in found]))
        else:
            _print_jobs(console if sys.stdout.isatty() else Console(width=10_000, soft_wrap=True), found)
    elif args.command == "release":
        node = xpu.release(args.device, args.reason)
        if args.json:
            print(json.dumps({"device_uuid": args.device, "released_from": node}))
        else:
            console.print(f"released {args.device} from node {node}: another node may declare it now")
    return 0


PLAIN_FROM_ROWS = 500  # a longer device list is printed as plain columns: rich takes seconds for 10,000 rows


def _print_plain(devices: Sequence[cpb.Device]) -> None:
    """The devices table as plain aligned columns, at full width: fast at 10,000 rows, and what a
    pipe, a file or `-o wide` gets.
    """
    rows = [DEVICE_COLUMNS, *(_device_cells(d) for d in devices)]
    widths = [max(len(r[k]) for r in rows) for k in range(len(DEVICE_COLUMNS))]
    lines = [f"{len(devices)} device(s)"]
    for r in rows:
        cells = (c.ljust(w) if k in _LEFT else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths, strict=True)))
        lines.append("  ".join(cells).rstrip())
    sys.stdout.write("\n".join(lines) + "\n")


def _priority(args: argparse.Namespace, xpu: Client, console: Console) -> int:
    if args.weight is not None:
        xpu.set_priority(args.weight, device_uuid=args.device, node_id=args.node)
    if args.device:
        weight = xpu.device(args.device, limit=1).device.weight
        target = {"device_uuid": args.device}
    else:
        nodes = {n.node_id: n for n in xpu.nodes()}
        if args.node not in nodes:
            print(
                f"xpuctl: priority: NOT_FOUND: no node {printable(args.node)!r}; `xpuctl nodes` lists them",
                file=sys.stderr,
            )
            return EXIT_REFUSED
        weight, target = nodes[args.node].weight, {"node_id": args.node}
    weight = weight or 1.0
    if args.json:
        print(json.dumps({**target, "weight": weight}))
    else:
        verb = "set to" if args.weight is not None else "is"
        console.print(f"priority of {printable(args.device or args.node)} {verb} {weight:g}")
    return 0


def _print_event(e: cpb.Event, *, as_json: bool, verbose: bool) -> None:
    if e.severity == "debug" and not verbose:
        return
    if as_json:
        print(json.dumps(event_json(e)), flush=True)
    else:
        stamp = time.strftime("%H:%M:%S", time.localtime(e.timestamp_ns / 1e9))
        print(f"{stamp} {printable(e.severity):<8} {printable(e.kind):<18} {printable(e.message)}", flush=True)


def _events(args: argparse.Namespace, xpu: Client) -> None:
    """Print events; with --follow, reconnect (after the last one seen) when the controller goes."""
    if not args.follow:
        for e in xpu.events(
            kinds=args.kind, node_id=args.node, device_uuid=args.device, since_ns=args.since, seconds=args.seconds
        ):
            _print_event(e, as_json=args.json, verbose=args.verbose)
        return

    def gone(exc: ClientError) -> None:  # once per outage
        print(f"xpuctl: events: controller gone ({exc.code}); reconnecting...", file=sys.stderr, flush=True)

    for e in xpu.watch(kinds=args.kind, node_id=args.node, device_uuid=args.device, since_ns=args.since, on_gone=gone):
        _print_event(e, as_json=args.json, verbose=args.verbose)


def tls_settings(args: argparse.Namespace) -> Tls | None:
    """The client's TLS settings from the flags (None: plaintext).

    Raises:
        tls.TlsError: a token or certificate without --tls-ca-file.
    """
    if args.tls_ca_file is None:
        if args.token_file or args.tls_cert_file:
            what = "--token-file" if args.token_file else "--tls-cert-file"
            raise tls.TlsError(
                what, args.token_file or args.tls_cert_file, "needs --tls-ca-file (credentials go over TLS only)"
            )
        return None
    return Tls(
        ca_file=args.tls_ca_file,
        cert_file=args.tls_cert_file,
        key_file=args.tls_key_file,
        token_file=args.token_file,
        server_name=args.tls_server_name,
    )


@pipes.quiet_when_the_reader_leaves
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `xpuctl`."""
    args = _parser().parse_args(argv)
    if args.controller is None:
        try:
            args.controller = default_address()
        except ValueError as exc:
            print(f"xpuctl: {exc}", file=sys.stderr)
            return 2
    try:
        settings = tls_settings(args)
        if args.command == "top":
            from xpuctl.controller.ctl import top  # noqa: PLC0415 - only top needs the asyncio client

            try:
                return top.run(args.controller, interval_s=args.interval_s, once=args.once, tls=settings)
            except KeyboardInterrupt:
                return 0
        if args.command == "slurm":
            return slurm.run(args, args.controller, settings)
        if args.command == "k8s":
            return k8s.run(args, args.controller, settings)
        xpu = Client(args.controller, tls=settings)
    except tls.TlsError as exc:
        print(f"xpuctl: {exc}", file=sys.stderr)
        return 2
    with xpu:
        try:
            return _run(args, xpu, Console())
        except KeyboardInterrupt:
            return 0
        except ValueError as exc:  # an argument the client checks (a health or metric name)
            print(f"xpuctl: {args.command}: {exc}", file=sys.stderr)
            return 2
        except Denied as exc:
            print(f"xpuctl: {args.command}: {exc.code}: {printable(exc.details)}", file=sys.stderr)
            print(
                "xpuctl: pass an operator credential: --token-file, or --tls-cert-file/--tls-key-file",
                file=sys.stderr,
            )
            return EXIT_DENIED
        except Unreachable as exc:
            print(
                f"xpuctl: cannot reach the controller at {args.controller}: {printable(exc.details)}", file=sys.stderr
            )
            print("xpuctl: is `xpu-controller serve` running there? (--controller HOST:PORT)", file=sys.stderr)
            if settings is None:
                print("xpuctl: if it serves TLS ([tls] in its config), pass --tls-ca-file", file=sys.stderr)
            return EXIT_UNREACHABLE
        except ClientError as exc:
            print(f"xpuctl: {args.command}: {exc.code}: {printable(exc.details)}", file=sys.stderr)
            return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
