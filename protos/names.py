"""The names the wire contract shares (DESIGN 3, 4 and 6): vendors, metric order, health and node
status. One list each, for both sides of the wire; tests/test_protos.py checks them against the
`.proto` enums.
"""

from __future__ import annotations

import re

# The vendors of DESIGN 3, in the order the CLI lists them. A simulated device carries its real vendor.
VENDORS: tuple[str, ...] = (
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

# Sample metrics in the order of `xpu.v1.Metric` (number = position + 1): the column order of a
# Batch and the metric axis of the controller's ring store.
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

# `xpu.v1.Health` numbers and the names the CLI, /metrics (OTel hw.state) and JSON use.
HEALTH: dict[int, str] = {1: "ok", 2: "degraded", 3: "failed", 4: "unknown"}
HEALTH_UNKNOWN = 4
HEALTH_FAILED = 3

# `xpu.v1.NodeStatus` numbers and their names.
NODE_STATUS: dict[int, str] = {1: "online", 2: "stale", 3: "offline"}
NODE_ONLINE = 1

# Node ids become MQTT topic levels and file names: keep them plain.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def health_name(code: int) -> str:
    """The name of a `xpu.v1.Health` number; "unknown" for 0 (unspecified) or a number we do not know."""
    return HEALTH.get(code, "unknown")


def node_status_name(code: int) -> str:
    """The name of a `xpu.v1.NodeStatus` number; "unknown" for 0 or a number we do not know."""
    return NODE_STATUS.get(code, "unknown")
