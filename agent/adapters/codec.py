"""The one place where the agent's model turns into `xpu.v1` protobuf messages."""

from __future__ import annotations

import math

from xpuctl.agent.core import model
from xpuctl.protos.xpu.v1 import telemetry_pb2 as pb

# model.METRICS[i] is xpu.v1.Metric number i + 1
METRIC_NUMBERS: dict[str, int] = {name: i + 1 for i, name in enumerate(model.METRICS)}
_OPTIONAL_INFO = (
    "memory_total_bytes",
    "power_limit_min_w",
    "power_limit_max_w",
    "power_limit_default_w",
    "temp_slowdown_c",
    "temp_shutdown_c",
)


def device_info(info: model.DeviceInfo) -> pb.DeviceInfo:
    """DeviceInfo struct -> proto (absent capabilities stay unset)."""
    msg = pb.DeviceInfo(
        uuid=info.uuid,
        index=info.index,
        vendor=info.vendor,
        model=info.model,
        bus_id=info.bus_id,
        driver_version=info.driver_version,
        power_cap_settable=info.power_cap_settable,
        simulated=info.simulated,
    )
    for name in _OPTIONAL_INFO:
        value = getattr(info, name)
        if value is not None:
            setattr(msg, name, value)
    return msg


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
            devices=[device_info(d) for d in devices],
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
        health=[int(s.health) for s in samples],
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
