"""The controller's view of the device model (DESIGN section 3).

The order of METRICS is that of `xpu.v1.Metric` (number = position + 1); the ring store's metric
axis follows it. tests/test_protos.py checks both against the proto (xpuctl/protos/names.py).
"""

from __future__ import annotations

from xpuctl.protos import devices, names

VENDORS: frozenset[str] = frozenset(names.VENDORS)

METRICS = names.METRICS
M: dict[str, int] = {name: i for i, name in enumerate(METRICS)}
N_METRICS = len(METRICS)
# The ring store keeps one more column after the metrics: the device's health code.
HEALTH = N_METRICS
N_STORED = N_METRICS + 1
# metrics that only grow and get large (a device's energy reaches 1e9 J): the ring keeps them to
# full precision (ring.RingStore: float32 offsets from a float64 base per device), the rest as float32
COUNTERS: tuple[int, ...] = tuple(
    M[n] for n in ("energy_j", "ecc_corrected_total", "ecc_uncorrected_total", "work_done")
)

HEALTH_NAMES = names.HEALTH
HEALTH_UNKNOWN = names.HEALTH_UNKNOWN
HEALTH_FAILED = names.HEALTH_FAILED

ID_PATTERN = names.ID_PATTERN


# Identity and capabilities, as the agent declared them: one struct for both sides of the wire
# (xpuctl/protos/devices.py).
DeviceInfo = devices.DeviceInfo
