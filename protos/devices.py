"""A device's identity and capabilities (DESIGN 3), as both sides of the wire hold them, and the
one conversion between it and `xpu.v1.DeviceInfo`.

The agent declares these in its Hello; the controller registers them and serves them back in the
Cluster API. Everything else of each side's device model (samples, rows of the ring store) stays
in that side's `core/model.py`.
"""

from __future__ import annotations

import msgspec

from xpuctl.protos.xpu.v1 import telemetry_pb2 as pb


class DeviceInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Identity and capabilities of one device; a capability the device does not report is None."""

    uuid: str
    index: int
    vendor: str
    model: str
    bus_id: str = ""
    driver_version: str = ""
    memory_total_bytes: int | None = None
    power_limit_min_w: float | None = None
    power_limit_max_w: float | None = None
    power_limit_default_w: float | None = None
    power_cap_settable: bool = False
    temp_slowdown_c: float | None = None
    temp_shutdown_c: float | None = None
    simulated: bool = False


# proto3 `optional` fields: unset on the wire when the device does not report them
_OPTIONAL = (
    "memory_total_bytes",
    "power_limit_min_w",
    "power_limit_max_w",
    "power_limit_default_w",
    "temp_slowdown_c",
    "temp_shutdown_c",
)


def to_pb(info: DeviceInfo) -> pb.DeviceInfo:
    """DeviceInfo -> proto; absent capabilities stay unset."""
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
    for name in _OPTIONAL:
        value = getattr(info, name)
        if value is not None:
            setattr(msg, name, value)
    return msg


def from_pb(d: pb.DeviceInfo) -> DeviceInfo:
    """Proto -> DeviceInfo; an unset capability is None."""
    optional = {name: getattr(d, name) for name in _OPTIONAL if d.HasField(name)}
    return DeviceInfo(
        uuid=d.uuid,
        index=d.index,
        vendor=d.vendor,
        model=d.model,
        bus_id=d.bus_id,
        driver_version=d.driver_version,
        power_cap_settable=d.power_cap_settable,
        simulated=d.simulated,
        **optional,
    )
