"""The controller's view of the device model (DESIGN section 3).

The order of METRICS is that of `xpu.v1.Metric` (number = position + 1); the ring store's metric
axis follows it. tests/controller/test_model.py checks both against the proto.
"""

from __future__ import annotations

import re

import msgspec

VENDORS: frozenset[str] = frozenset(
    (
        "nvidia",
        "amd",
        "ascend",
        "cambricon",
        "hygon",
        "metax",
        "moorethreads",
        "enflame",
        "iluvatar",
        "kunlunxin",
        "biren",
        "thead",
        "sunrise",
    )
)

METRICS: tuple[str, ...] = (
    "utilization",
    "memory_used_bytes",
    "power_w",
    "energy_j",
    "power_limit_w",
    "temperature_c",
    "memory_temperature_c",
    "core_clock_hz",
    "memory_clock_hz",
    "ecc_corrected_total",
    "ecc_uncorrected_total",
    "pcie_rx_bytes_per_s",
    "pcie_tx_bytes_per_s",
    "work_done",
)
M: dict[str, int] = {name: i for i, name in enumerate(METRICS)}
N_METRICS = len(METRICS)
# The ring store keeps one more column after the metrics: the device's health code.
HEALTH = N_METRICS
N_STORED = N_METRICS + 1

HEALTH_NAMES: dict[int, str] = {1: "ok", 2: "degraded", 3: "failed", 4: "unknown"}
HEALTH_UNKNOWN = 4

# Node ids become MQTT topic levels and file names: keep them plain.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class DeviceInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Identity and capabilities of one device, as its agent declared them."""

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
