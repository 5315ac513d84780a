"""The one place where the agent's model turns into `xpu.v1` protobuf messages."""

from __future__ import annotations

import math
from typing import cast

from xpuctl.agent.core import model
from xpuctl.protos import devices as devices_pb
from xpuctl.protos.xpu.v1 import telemetry_pb2 as pb

# model.METRICS[i] is xpu.v1.Metric number i + 1
METRIC_NUMBERS: dict[str, int] = {name: i + 1 for i, name in enumerate(model.METRICS)}


def hello(
    *,
    node_id: str,
    boot_id: str,
    agent_version: str,
    devices: list[model.DeviceInfo],
    labels: dict[str, str],
    interval_s: float,
    acked_seq: int,
) -> bytes:
    """An encoded AgentMessage carrying Hello."""
    msg = pb.AgentMessage(
        hello=pb.Hello(
            node_id=node_id,
            boot_id=boot_id,
            agent_version=agent_version,
            devices=[devices_pb.to_pb(d) for d in devices],
            labels=labels,
            interval_s=interval_s,
            acked_seq=acked_seq,
        )
    )
    return msg.SerializeToString()


def batch(
    *,
    seq: int,
    dropped_total: int,
    samples: list[model.DeviceSample],
    rows: list[int],
) -> bytes:
    """An encoded AgentMessage carrying one column-wise Batch.

    `rows[i]` is the position of samples[i]'s device in the Hello's device list.
    """
    b = pb.Batch(
        seq=seq,
        dropped_total=dropped_total,
        device=rows,
        timestamp_ns=[s.timestamp_ns for s in samples],
        # protoc's stubs type enum fields as the enum class; on the wire they are ints
        health=cast("list[pb.Health]", [int(s.health) for s in samples]),
    )
    if any(s.health_reason for s in samples):
        b.health_reason.extend(s.health_reason for s in samples)
    for name, number in METRIC_NUMBERS.items():
        values = [getattr(s, name) for s in samples]
        if all(v is None for v in values):
            continue
        column = b.columns.add(metric=number)
        column.values.extend(math.nan if v is None else v for v in values)
        if any(v is None for v in values):
            column.present.extend(v is not None for v in values)
    for row, s in enumerate(samples):
        for event in s.error_events:
            b.errors.add(row=row, code=event.code, text=event.text)
    return pb.AgentMessage(batch=b).SerializeToString()
