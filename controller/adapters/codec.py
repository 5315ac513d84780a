"""The one `xpu.v1` protobuf <-> controller-model conversion.

Decoding reads a column-wise Batch's fields once (`stage`, which checks its shape), then turns
many staged batches into one frame of numpy arrays (`frame`: np.fromiter over the packed repeated
fields of all of them), so no Python code runs per value on the ingest path and the numpy calls
are paid per frame, not per batch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple, cast

import numpy as np
from google.protobuf.message import DecodeError

from xpuctl.controller.core import events, ingest, jobs, model, registry, views
from xpuctl.controller.errors import ProtocolViolation
from xpuctl.protos import devices
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb
from xpuctl.protos.xpu.v1 import telemetry_pb2 as pb

HEALTH_BY_NAME = {name: code for code, name in model.HEALTH_NAMES.items()}
_TEMPERATURE = model.M["temperature_c"]


def _bad(reason: str, message: str) -> ProtocolViolation:
    return ProtocolViolation("INVALID_ARGUMENT", reason, message)


def decode_agent_message(raw: bytes) -> pb.AgentMessage:
    """Parse the bytes of one stream message.

    Raises:
        ProtocolViolation: INVALID_ARGUMENT for bytes that are no AgentMessage, or one with neither
            hello nor batch.
    """
    msg = pb.AgentMessage()
    try:
        msg.ParseFromString(raw)
    except DecodeError as exc:
        raise _bad("malformed", f"malformed AgentMessage ({len(raw)} bytes): {exc}") from exc
    if msg.WhichOneof("kind") is None:
        raise _bad("malformed", f"AgentMessage ({len(raw)} bytes) carries neither hello nor batch")
    return msg


def hello_facts(h: pb.Hello) -> ingest.HelloFacts:
    """Hello proto -> facts."""
    return ingest.HelloFacts(
        node_id=h.node_id,
        boot_id=h.boot_id,
        agent_version=h.agent_version,
        devices=[devices.from_pb(d) for d in h.devices],
        labels=dict(h.labels),
        interval_s=h.interval_s if math.isfinite(h.interval_s) else 0.0,
        acked_seq=h.acked_seq,
    )


class Staged(NamedTuple):
    """A Batch read and checked, its columns not yet copied into arrays (`frame` does that for
    many batches at once). The sequences are the message's own repeated fields.
    """

    seq: int
    dropped_total: int
    rows: int
    device: Sequence[int]
    timestamp_ns: Sequence[int]
    health: Sequence[int]
    metrics: list[int]  # the index of each column's metric
    chunks: list[Sequence[float]]  # each column's values
    masks: list[tuple[int, Sequence[bool]]]  # (metric, present) of the columns that have one
    health_reason: list[str]
    errors: list[tuple[int, str, str]]
    errors_dropped: int  # error events past max_error_events_per_batch, not decoded
    hottest_c: float  # the highest temperature_c of its rows (-inf: none reported)


def stage(b: pb.Batch, limits: ingest.Limits) -> Staged:
    """Read a Batch's fields once and check its shape; error events past `limits` are counted,
    not decoded.

    Raises:
        ProtocolViolation: INVALID_ARGUMENT when a column's length differs from the row count.
    """
    k = len(b.device)

    def check(name: str, n: int) -> None:
        if n != k:
            raise _bad("bad_batch", f"Batch seq {b.seq}: {name} has {n} entries for {k} rows")

    stamps, health, reasons = b.timestamp_ns, b.health, b.health_reason
    check("timestamp_ns", len(stamps))
    check("health", len(health))
    if reasons:
        check("health_reason", len(reasons))
    metrics: list[int] = []
    chunks: list[Sequence[float]] = []
    masks: list[tuple[int, Sequence[bool]]] = []
    hottest = -math.inf
    # one pass over the columns, each field read once (upb builds a new wrapper on every read)
    for col in b.columns:
        m = col.metric - 1
        if not 0 <= m < model.N_METRICS:
            continue  # a metric from a newer agent: ignored, not an error
        col_values = col.values
        if len(col_values) != k:
            check(f"column {model.METRICS[m]}", len(col_values))
        metrics.append(m)
        chunks.append(col_values)
        col_present = col.present
        if col_present:
            check(f"column {model.METRICS[m]} present", len(col_present))
            masks.append((m, col_present))
        if m == _TEMPERATURE and k:
            hottest = max(col_values)
            if math.isnan(hottest):  # a NaN first: max() keeps it
                hottest = max((v for v in col_values if not math.isnan(v)), default=-math.inf)
    errors = []
    chars = limits.max_error_text_chars
    for e in itertools.islice(b.errors, limits.max_error_events_per_batch):
        if e.row >= k:
            raise _bad("bad_batch", f"Batch seq {b.seq}: error event for row {e.row} of {k}")
        errors.append((e.row, e.code[:chars], e.text[:chars]))
    return Staged(
        seq=b.seq,
        dropped_total=b.dropped_total,
        rows=k,
        device=b.device,
        timestamp_ns=stamps,
        health=health,
        metrics=metrics,
        chunks=chunks,
        masks=masks,
        health_reason=list(reasons) if reasons else [],
        errors=errors,
        errors_dropped=len(b.errors) - len(errors) if errors else 0,
        hottest_c=hottest,
    )


def frame(staged: list[Staged]) -> ingest.Frame:
    """Staged batches -> one frame of arrays, in a fixed number of C-level passes whatever their
    number: every column's values go in with one np.fromiter and one fancy-indexed store.
    """
    m = len(staged)
    chain = itertools.chain.from_iterable
    rows = np.fromiter((s.rows for s in staged), np.int64, m)
    starts = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(rows, out=starts[1:])
    n = int(starts[-1])
    values = np.full((n, model.N_METRICS), np.nan)
    present = np.zeros((n, model.N_METRICS), dtype=bool)
    columns = np.fromiter((len(s.metrics) for s in staged), np.int64, m)
    length = np.repeat(rows, columns)  # per column: its batch's rows
    total = int(length.sum())
    if total:
        metric = np.fromiter(chain(s.metrics for s in staged), np.int64, int(columns.sum()))
        flat = np.fromiter(chain(chain(s.chunks for s in staged)), np.float64, total)
        # column j's values are rows first[j] .. first[j] + length[j] of its metric
        first = np.repeat(starts[:-1], columns)
        within = np.arange(total) - np.repeat(np.cumsum(length) - length, length)
        at_row, at_metric = np.repeat(first, length) + within, np.repeat(metric, length)
        values[at_row, at_metric] = flat
        present[at_row, at_metric] = True
    for i, s in enumerate(staged):
        for mi, col_present in s.masks:
            p = np.fromiter(col_present, bool, s.rows)
            a = int(starts[i])
            present[a : a + s.rows, mi] = p
            values[a : a + s.rows, mi][~p] = np.nan
    return ingest.Frame(
        seq=[s.seq for s in staged],
        dropped_total=[s.dropped_total for s in staged],
        starts=starts,
        device=np.fromiter(chain(s.device for s in staged), np.int64, n),
        timestamp_ns=np.fromiter(chain(s.timestamp_ns for s in staged), np.int64, n),
        health=np.fromiter(chain(s.health for s in staged), np.int64, n),
        values=values,
        present=present,
        health_reason=[s.health_reason for s in staged],
        errors=[s.errors for s in staged],
        errors_dropped=[s.errors_dropped for s in staged],
    )


def batch_columns(b: pb.Batch, limits: ingest.Limits) -> ingest.BatchColumns:
    """Column-wise Batch proto -> arrays (`stage` and `frame` of one batch).

    Raises:
        ProtocolViolation: INVALID_ARGUMENT when a column's length differs from the row count.
    """
    return frame([stage(b, limits)]).batch(0)


def ack(answer: ingest.Answer) -> bytes:
    """Answer -> encoded ControllerMessage."""
    msg = pb.ControllerMessage(
        ack=pb.Ack(
            boot_id=answer.boot_id,
            acked_seq=answer.acked_seq,
            batch_seq=answer.batch_seq,
            rejected_samples=answer.rejected,
            rejection=answer.rejection,
        )
    )
    return msg.SerializeToString()


def device_pb(v: views.DeviceView) -> cpb.Device:
    """DeviceView -> Device proto."""
    msg = cpb.Device(
        node_id=v.node_id,
        info=devices.to_pb(v.info),
        health=cast("pb.Health", HEALTH_BY_NAME.get(v.health, 4)),
        health_reason=v.health_reason,
        timestamp_ns=v.timestamp_ns,
        cordoned=v.cordoned,
        headroom_cap_w=v.headroom_cap_w,
        headroom_ceiling_w=v.headroom_ceiling_w,
        node_status=cast("cpb.NodeStatus", int(v.node_status)),
        cordon_reason=v.cordon_reason,
        anomalies=list(v.anomalies),
    )
    for name, value in v.values.items():
        if value is not None and name != "work_done":
            setattr(msg, name, value)
    return msg


def node_pb(v: views.NodeView) -> cpb.Node:
    """NodeView -> Node proto."""
    return cpb.Node(
        node_id=v.node_id,
        boot_id=v.boot_id,
        status=cast("cpb.NodeStatus", int(v.status)),
        agent_version=v.agent_version,
        labels=v.labels,
        devices=v.devices,
        power_w=v.power_w,
        last_seen_ns=v.last_seen_ns,
        first_seq=v.first_seq,
        acked_seq=v.acked_seq,
        batches_stored=v.batches_stored,
        duplicate_batches=v.duplicate_batches,
        gap_batches=v.gap_batches,
        dropped_total=v.dropped_total,
        connected=v.connected,
    )


def device_filter(req: cpb.ListDevicesRequest) -> views.DeviceFilter:
    """ListDevicesRequest -> filter."""
    return views.DeviceFilter(
        node_id=req.node_id,
        vendor=req.vendor,
        health=model.HEALTH_NAMES.get(req.health, "") if req.health else "",
        cordoned=req.cordoned if req.HasField("cordoned") else None,
        min_headroom_w=req.min_headroom_w if req.HasField("min_headroom_w") else None,
    )


def summary_pb(
    s: views.SummaryView,
    counters: ingest.Counters,
    p50_ms: float,
    p99_ms: float,
    streams_open: int,
    budget_w: float | None,
    anomalies_open: int = 0,
) -> cpb.Summary:
    """SummaryView + ingest counters -> Summary proto."""
    msg = cpb.Summary(
        nodes=sum(s.nodes_by_status.values()),
        nodes_online=s.nodes_by_status.get(registry.NodeStatus.ONLINE.name.lower(), 0),
        nodes_stale=s.nodes_by_status.get(registry.NodeStatus.STALE.name.lower(), 0),
        nodes_offline=s.nodes_by_status.get(registry.NodeStatus.OFFLINE.name.lower(), 0),
        devices=s.devices,
        devices_by_vendor=s.devices_by_vendor,
        devices_by_health=s.devices_by_health,
        power_w=s.power_w,
        anomalies_open=anomalies_open,
        ingest=cpb.IngestStats(
            batches_total=counters.batches_total,
            samples_total=counters.samples_total,
            duplicate_batches_total=counters.duplicate_batches_total,
            gap_batches_total=counters.gap_batches_total,
            rejected_by_reason=counters.rejected_by_reason,
            ingest_p50_ms=p50_ms,
            ingest_p99_ms=p99_ms,
            streams_open=streams_open,
        ),
    )
    if budget_w is not None:
        msg.budget_w = budget_w
    return msg


def event_pb(e: events.Event) -> cpb.Event:
    """Event -> proto."""
    return cpb.Event(
        timestamp_ns=e.timestamp_ns,
        kind=e.kind,
        node_id=e.node_id,
        device_uuid=e.device_uuid,
        severity=e.severity,
        message=e.message,
        value=e.value,
        threshold=e.threshold,
        detector=e.detector,
        action_id=e.action_id,
        id=e.id,
    )


def job_pb(job: jobs.Job, devices: list[cpb.JobDevice], now_ns: int) -> cpb.Job:
    """A job with its devices' energy (measured by the caller) and the totals.

    Its duration runs from its start to its end (to `now_ns` while it runs); its energy is the
    sum of its devices'; its method is theirs, or `counter+integrated` when they differ.
    """
    energy = sum(d.energy_j for d in devices)
    duration_s = max(0.0, ((job.ended_ns or now_ns) - job.started_ns) / 1e9)
    methods = sorted({d.method for d in devices})
    return cpb.Job(
        job_id=job.job_id,
        user=job.user,
        started_ns=job.started_ns,
        ended_ns=job.ended_ns,
        devices=devices,
        energy_j=energy,
        duration_s=duration_s,
        mean_power_w=energy / duration_s if duration_s > 0 else 0.0,
        method="+".join(methods),
    )
