"""`/metrics` for Prometheus: device metrics under OpenTelemetry names, and the controller's health.

Names follow the OpenTelemetry `hw.*` semantic conventions and the standard OTel-to-Prometheus
translation (DESIGN 3): `hw.power` (W) -> `hw_power_watts`, `hw.energy` (J, counter) ->
`hw_energy_joules_total`, `hw.temperature` (Cel) -> `hw_temperature_celsius`,
`hw.gpu.utilization` (1) -> `hw_gpu_utilization_ratio`, `hw.gpu.memory.usage` (By) ->
`hw_gpu_memory_usage_bytes`, `hw.errors` -> `hw_errors_total{error_type}`, `hw.status` ->
`hw_status{hw_state}`; attributes `hw.id`, `hw.vendor`, `hw.model` become labels `hw_id`,
`hw_vendor`, `hw_model`. What OTel has no name for lives under `xpu_` (power limit, clocks, PCIe).
A device with no value for a metric has no line for it (absent, not 0).

The server is a minimal HTTP/1.1 responder on asyncio streams (GET /metrics only): it moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import math
import platform
import time
from collections.abc import Awaitable

import numpy as np

from xpuctl.common import cli, tls
from xpuctl.controller import hub
from xpuctl.controller.core import model, registry
from xpuctl.protos import names

log = logging.getLogger("xpu.controller.metrics")
VERSION = cli.package_version()

# (metric in the store, Prometheus name, type, help, extra labels)
DEVICE_METRICS: tuple[tuple[str, str, str, str, str], ...] = (
    ("power_w", "hw_power_watts", "gauge", "Instantaneous power drawn by the device (OTel hw.power).", ""),
    ("energy_j", "hw_energy_joules_total", "counter", "Energy consumed by the device (OTel hw.energy).", ""),
    ("temperature_c", "hw_temperature_celsius", "gauge", "Device temperatures (OTel hw.temperature).", 'sensor="core"'),
    ("memory_temperature_c", "hw_temperature_celsius", "gauge", "", 'sensor="memory"'),
    (
        "utilization",
        "hw_gpu_utilization_ratio",
        "gauge",
        "Fraction of time the device was busy (OTel hw.gpu.utilization).",
        "",
    ),
    ("memory_used_bytes", "hw_gpu_memory_usage_bytes", "gauge", "Device memory in use (OTel hw.gpu.memory.usage).", ""),
    (
        "ecc_corrected_total",
        "hw_errors_total",
        "counter",
        "Errors reported by the device (OTel hw.errors).",
        'error_type="ecc_corrected"',
    ),
    ("ecc_uncorrected_total", "hw_errors_total", "counter", "", 'error_type="ecc_uncorrected"'),
    ("power_limit_w", "xpu_power_limit_watts", "gauge", "Power limit the device enforces now.", ""),
    ("core_clock_hz", "xpu_core_clock_hertz", "gauge", "Core clock.", ""),
    ("memory_clock_hz", "xpu_memory_clock_hertz", "gauge", "Memory clock.", ""),
    ("pcie_rx_bytes_per_s", "xpu_pcie_receive_bytes_per_second", "gauge", "PCIe receive throughput.", ""),
    ("pcie_tx_bytes_per_s", "xpu_pcie_transmit_bytes_per_second", "gauge", "PCIe transmit throughput.", ""),
)
HEALTH_STATES = tuple(names.HEALTH.values())
BUS_COUNTERS = {
    "commands_sent": "Commands published to agents (each resend counts).",
    "events_sent": "Events published on the bus.",
    "dropped_outgoing": "Messages dropped because the outgoing queue was full.",
    "superseded_unsent": "Queued commands not sent: their device had a newer command by then.",
    "fenced_unsent": "Queued commands and leases not sent: this controller no longer acted for its shard.",
    "garbage_in": "Unreadable messages received (answers, states, statuses).",
    "results_in": "Answers of agents received.",
    "unknown_results": "Answers to commands the controller does not know (late, forged or repeated).",
    "foreign_results": "Answers to a command from a node it was not sent to (ignored: a hostile node).",
    "connects": "Sessions with the broker that came up.",
    "disconnects": "Sessions with the broker that were lost.",
}


def escape(value: str) -> str:
    """A label value as the text format writes it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def number(x: float) -> str:
    """A sample value as the text format writes it."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x))


def render(state: hub.Hub, now_ns: int) -> str:
    """The whole exposition, text format 0.0.4."""
    reg, store = state.registry, state.store
    n = len(reg)
    slots = np.arange(n, dtype=np.int64)
    latest = store.latest(slots)
    job_of = state.jobs.job_of_uuid
    labels = [
        f'hw_id="{escape(i.uuid)}",hw_vendor="{i.vendor}",hw_model="{escape(i.model)}",xpu_node="{escape(node)}"'
        + (f',job_id="{escape(job_of[i.uuid])}"' if i.uuid in job_of else "")  # while a job runs on it
        for i, node in zip(reg.infos, reg.node_of_slot, strict=True)
    ]
    # Only devices of online nodes export values (issue 18.4): a stopped node's last readings
    # would otherwise count in sum(hw_power_watts) for good. Their hw_status says `unknown`.
    status = {node_id: node.status(now_ns, state.liveness) for node_id, node in reg.nodes.items()}
    # A gone device (missing from its node's newest Hello) leaves the page altogether.
    live = [
        here and status.get(node) == registry.NodeStatus.ONLINE
        for node, here in zip(reg.node_of_slot, reg.present, strict=True)
    ]
    anomalous = np.zeros(n, dtype=bool)
    for mask in state.control.detectors.open.values():
        anomalous[: min(n, mask.size)] |= mask[:n]
    out: list[str] = []
    declared: set[str] = set()
    for metric, name, kind, text, extra in DEVICE_METRICS:
        if name not in declared:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")
            declared.add(name)
        col = latest[:, model.M[metric]] if n else np.zeros(0)
        sep = "," + extra if extra else ""
        out.extend(
            f"{name}{{{labels[s]}{sep}}} {number(v)}"
            for s, v in enumerate(col.tolist())
            if live[s] and not math.isnan(v)
        )
    out.append(
        "# HELP hw_status Operational status of the device (OTel hw.status): 1 for its state; degraded while "
        "an anomaly is open, unknown while its node is not online."
    )
    out.append("# TYPE hw_status gauge")
    health = latest[:, model.HEALTH] if n else np.zeros(0)
    for s, code in enumerate(health.tolist()):
        if not reg.present[s]:
            continue
        state_name = "unknown" if math.isnan(code) or not live[s] else model.HEALTH_NAMES.get(int(code), "unknown")
        if state_name == "ok" and anomalous[s]:
            state_name = "degraded"
        out.extend(f'hw_status{{{labels[s]},hw_state="{h}"}} {1 if h == state_name else 0}' for h in HEALTH_STATES)
    out.extend(_identity(state, labels, live, status))
    out.extend(_cluster(state, now_ns))
    out.append("")
    return "\n".join(out)


def _identity(state: hub.Hub, labels: list[str], live: list[bool], status: dict[str, registry.NodeStatus]) -> list[str]:
    """Per device its identity and its open anomalies; per node its liveness; the build."""
    reg = state.registry
    out = [
        "# HELP xpu_device_info Identity of each device (value 1): index as its tool numbers it, PCI bus, driver.",
        "# TYPE xpu_device_info gauge",
    ]
    for s, info in enumerate(reg.infos):
        if reg.present[s]:
            out.append(
                f'xpu_device_info{{{labels[s]},index="{info.index}",pci_bus_id="{escape(info.bus_id or "")}",'
                f'driver_version="{escape(info.driver_version or "")}"}} 1'
            )
    out += [
        "# HELP xpu_device_anomaly 1 for each anomaly open on a device, by detector and severity.",
        "# TYPE xpu_device_anomaly gauge",
    ]
    severity = {d.kind: d.severity for d in state.control.detectors.detectors}
    for kind, mask in state.control.detectors.open.items():
        for s in np.flatnonzero(mask[: len(reg)]).tolist():
            if live[s]:
                out.append(f'xpu_device_anomaly{{{labels[s]},detector="{kind}",severity="{severity[kind]}"}} 1')
    out += [
        "# HELP xpu_node_status Liveness of each node: 1 for its status (online, stale, offline).",
        "# TYPE xpu_node_status gauge",
    ]
    for node_id in sorted(reg.nodes):
        now = names.NODE_STATUS[int(status[node_id])]
        out.extend(
            f'xpu_node_status{{xpu_node="{escape(node_id)}",status="{name}"}} {int(name == now)}'
            for name in names.NODE_STATUS.values()
        )
    out += [
        "# HELP xpu_build_info The controller's version (value 1).",
        "# TYPE xpu_build_info gauge",
        f'xpu_build_info{{version="{escape(VERSION)}",python="{platform.python_version()}"}} 1',
    ]
    return out


def _cluster(state: hub.Hub, now_ns: int) -> list[str]:
    s = state.views.summary(now_ns)
    c = state.ingest.counters
    p50, p99 = state.ingest.latency.quantiles()
    out = [
        "# HELP xpu_cluster_power_watts Power drawn by every device, from the newest samples.",
        "# TYPE xpu_cluster_power_watts gauge",
        f"xpu_cluster_power_watts {number(s.power_w)}",
        "# HELP xpu_cluster_power_budget_watts The cluster power budget (absent when none is set).",
        "# TYPE xpu_cluster_power_budget_watts gauge",
    ]
    if state.budget_w is not None:
        out.append(f"xpu_cluster_power_budget_watts {number(state.budget_w)}")
    out += [
        "# HELP xpu_power_budget_feasible 0 when the cappable devices' floors and the fixed loads exceed the budget.",
        "# TYPE xpu_power_budget_feasible gauge",
        f"xpu_power_budget_feasible {int(state.control.feasible)}",
    ]
    out += ["# HELP xpu_nodes Nodes by liveness.", "# TYPE xpu_nodes gauge"]
    for status in names.NODE_STATUS.values():
        out.append(f'xpu_nodes{{status="{status}"}} {s.nodes_by_status.get(status, 0)}')
    out += [
        "# HELP xpu_devices Devices known to the controller.",
        "# TYPE xpu_devices gauge",
        f"xpu_devices {s.devices}",
    ]
    out += ["# HELP xpu_anomalies_open Open anomalies by detector.", "# TYPE xpu_anomalies_open gauge"]
    for kind, mask in state.control.detectors.open.items():
        out.append(f'xpu_anomalies_open{{detector="{kind}"}} {int(mask.sum())}')
    counters: tuple[tuple[str, str, int], ...] = (
        ("xpu_ingest_batches_total", "Telemetry batches received.", c.batches_total),
        ("xpu_ingest_samples_total", "Device samples stored.", c.samples_total),
        (
            "xpu_ingest_duplicate_batches_total",
            "Batches received twice (after a reconnect) and dropped.",
            c.duplicate_batches_total,
        ),
        ("xpu_ingest_gap_batches_total", "Batches agents dropped before sending them.", c.gap_batches_total),
        ("xpu_ingest_error_events_total", "Vendor error events (XID, ...) received.", c.error_events_total),
        ("xpu_events_dropped_total", "Events a slow WatchEvents client did not take.", state.events_dropped),
        ("xpu_state_saves_total", "Saves of the desired state (budget, cordons, priorities, commands).", state.saves),
        (
            "xpu_state_save_errors_total",
            "Saves of the desired state that failed (see state.save_failed).",
            state.save_errors,
        ),
    )
    bus_stats = state.bus_stats() if state.bus_stats is not None else {}
    counters += tuple(
        (f"xpu_bus_{name}_total", help_text, bus_stats[name])
        for name, help_text in BUS_COUNTERS.items()
        if name in bus_stats
    )
    for name, text, value in counters:
        out += [f"# HELP {name} {text}", f"# TYPE {name} counter", f"{name} {value}"]
    if "up" in bus_stats:
        out += [
            "# HELP xpu_bus_up 1 while the controller's session with the MQTT broker is up.",
            "# TYPE xpu_bus_up gauge",
            f"xpu_bus_up {bus_stats['up']}",
        ]
    own = state.ownership
    if own is not None:  # a shard candidate (DESIGN 11)
        acting = int(own.acting(time.monotonic()))
        out += [
            "# HELP xpu_shard_owner 1 while this controller acts for its shard (owns it, lease confirmed).",
            "# TYPE xpu_shard_owner gauge",
            f'xpu_shard_owner{{shard="{own.shard}"}} {acting}',
            "# HELP xpu_shard_epoch The shard's fencing epoch as this controller knows it.",
            "# TYPE xpu_shard_epoch gauge",
            f'xpu_shard_epoch{{shard="{own.shard}"}} {own.epoch}',
            "# HELP xpu_shard_takeovers_total Times this controller became the shard's owner.",
            "# TYPE xpu_shard_takeovers_total counter",
            f'xpu_shard_takeovers_total{{shard="{own.shard}"}} {own.takeovers}',
            "# HELP xpu_shard_fences_total Times it stopped acting because its lease could have lapsed or was lost.",
            "# TYPE xpu_shard_fences_total counter",
            f'xpu_shard_fences_total{{shard="{own.shard}"}} {own.fences}',
        ]
    out += [
        "# HELP xpu_ingest_rejected_total Samples or messages rejected, by reason.",
        "# TYPE xpu_ingest_rejected_total counter",
    ]
    for reason, value in sorted(c.rejected_by_reason.items()):
        out.append(f'xpu_ingest_rejected_total{{reason="{reason}"}} {value}')
    out += [
        "# HELP xpu_api_denied_total Cluster API calls refused by the access rules, by gRPC status.",
        "# TYPE xpu_api_denied_total counter",
    ]
    for code in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        out.append(f'xpu_api_denied_total{{code="{code}"}} {state.denied.get(code, 0)}')
    out += ["# HELP xpu_actions_total Power-cap commands by outcome.", "# TYPE xpu_actions_total counter"]
    for outcome in ("issued", "applied", "failed", "expired", "superseded"):
        out.append(f'xpu_actions_total{{state="{outcome}"}} {state.control.ledger.totals.get(outcome, 0)}')
    out += [
        "# HELP xpu_ingest_latency_p50_seconds Median sample age when stored, over the recent window.",
        "# TYPE xpu_ingest_latency_p50_seconds gauge",
        f"xpu_ingest_latency_p50_seconds {number(p50 / 1e3)}",
        "# HELP xpu_ingest_latency_p99_seconds 99th percentile of sample age when stored, recent window.",
        "# TYPE xpu_ingest_latency_p99_seconds gauge",
        f"xpu_ingest_latency_p99_seconds {number(p99 / 1e3)}",
    ]
    return out


GZIP_FROM_BYTES = 1024  # smaller bodies go as they are


def accepts_gzip(request: bytes) -> bool:
    """Whether the request's `Accept-Encoding` names gzip (without `;q=0`)."""
    for line in request.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"accept-encoding":
            for item in value.split(b","):
                coding, _, params = item.strip().partition(b";")
                if coding.strip().lower() == b"gzip":
                    return params.replace(b" ", b"") not in (b"q=0", b"q=0.0", b"q=0.00", b"q=0.000")
    return False


async def _handle(state: hub.Hub, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        async with asyncio.timeout(10):
            request = await reader.readuntil(b"\r\n\r\n")
        method, _, rest = request.partition(b" ")
        path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        if method != b"GET" or path != b"/metrics":
            body, status = b"only GET /metrics is served here\n", b"404 Not Found"
            ctype = b"text/plain; charset=utf-8"
        else:
            body = render(state, time.time_ns()).encode()
            status, ctype = b"200 OK", b"text/plain; version=0.0.4; charset=utf-8"
        encoding = b""
        if accepts_gzip(request) and len(body) > GZIP_FROM_BYTES:
            # Prometheus asks for it; the text of 10,000 devices is ~10x smaller (level 1 is fast)
            body, encoding = gzip.compress(body, compresslevel=1, mtime=0), b"\r\nContent-Encoding: gzip"
        writer.write(
            b"HTTP/1.1 "
            + status
            + b"\r\nContent-Type: "
            + ctype
            + encoding
            + b"\r\nVary: Accept-Encoding"
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + body
        )
        await writer.drain()
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as exc:
        log.info("metrics request dropped: %s", exc)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def serve(state: hub.Hub, listen: str, tls_files: tls.ServerFiles | None = None) -> asyncio.Server:
    """Start the /metrics server on HOST:PORT; with `tls_files`, HTTPS that demands a client
    certificate from the site CA (it lists every device id: with mTLS on, it is not left open).

    Raises:
        OSError: the address cannot be bound.
        tls.TlsError: a TLS file cannot be used.
    """
    host, _, port = listen.rpartition(":")

    def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> Awaitable[None]:
        return _handle(state, r, w)

    if tls_files is None:
        return await asyncio.start_server(handle, host or "127.0.0.1", int(port))
    ctx = tls.server_ssl_context(tls_files)
    return await asyncio.start_server(handle, host or "127.0.0.1", int(port), ssl=ctx, ssl_handshake_timeout=10)
