"""The vendor-neutral device model of DESIGN section 3, as the agent holds it.

Every numeric field is in base units (W, J, bytes, Hz, Celsius, ratio 0..1). A value the device
does not report is None, never 0. This module is pure: no I/O, no clocks.
"""

from __future__ import annotations

import enum

import msgspec

from xpuctl.protos import devices, names

VENDORS = names.VENDORS


class Health(enum.IntEnum):
    """Device health; the numbers are those of `xpu.v1.Health`."""

    OK = 1
    DEGRADED = 2
    FAILED = 3
    UNKNOWN = 4


# Sample metrics in the order of `xpu.v1.Metric` (number = position + 1).
METRICS = names.METRICS


# Identity and capabilities: one struct for both sides of the wire (xpuctl/protos/devices.py).
DeviceInfo = devices.DeviceInfo


class ErrorEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A vendor error event: NVIDIA XID, Ascend fault code, Cambricon XID, ..."""

    code: str
    text: str = ""


class DeviceSample(msgspec.Struct, frozen=True, kw_only=True):
    """One reading of one device. `index` is the device's index on the node."""

    index: int
    timestamp_ns: int
    health: Health = Health.OK
    health_reason: str = ""
    utilization: float | None = None
    memory_used_bytes: float | None = None
    power_w: float | None = None
    energy_j: float | None = None
    power_limit_w: float | None = None
    temperature_c: float | None = None
    memory_temperature_c: float | None = None
    core_clock_hz: float | None = None
    memory_clock_hz: float | None = None
    ecc_corrected_total: float | None = None
    ecc_uncorrected_total: float | None = None
    pcie_rx_bytes_per_s: float | None = None
    pcie_tx_bytes_per_s: float | None = None
    work_done: float | None = None
    error_events: tuple[ErrorEvent, ...] = ()


def unknown_sample(index: int, timestamp_ns: int, reason: str) -> DeviceSample:
    """A sample that says only that the device could not be read, and why."""
    return DeviceSample(index=index, timestamp_ns=timestamp_ns, health=Health.UNKNOWN, health_reason=reason)


def as_json_row(info: DeviceInfo, sample: DeviceSample | None) -> dict[str, object]:
    """One object of `xpu-agent once` output: identity, capabilities and the sample's fields.

    Keys are the names of DESIGN section 3; what the source does not show is None (JSON null).
    """
    row: dict[str, object] = msgspec.structs.asdict(info)
    if sample is None:
        row["health"] = Health.UNKNOWN.name.lower()
        row.update(dict.fromkeys(METRICS))
        row["error_events"] = []
        return row
    row["timestamp_ns"] = sample.timestamp_ns
    row["health"] = sample.health.name.lower()
    row["health_reason"] = sample.health_reason or None
    for name in METRICS:
        row[name] = getattr(sample, name)
    row["error_events"] = [msgspec.structs.asdict(e) for e in sample.error_events]
    return row
