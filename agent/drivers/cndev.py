"""Power caps of Cambricon MLUs through CNDev (`libcndev.so`; DESIGN 7), by ctypes.

Facts, with sources:
- shared/notes/vendor-tools.md section 5, from the public header in Cambricon/mlu-exporter
  `pkg/cndev/include/cndev.h`: caps are whole watts ("decimals unsupported");
  `cndevGetPowerManagementLimitationRange` gives `minPowerLimit`/`maxPowerLimit`,
  `cndevGetPowerManagementDefaultLimitation` and `cndevGetPowerManagementLimitation` give one
  `powerLimit`, `cndevSetPowerManagementLimitation` takes one; structs start with `int version`.
- gpustack-runtime 0.2.6 (PyPI) `detector/pycndev/__init__.py`: `cndevInit(0)`;
  `cndevDevice_t` is an int32 handle from `cndevGetDeviceHandleByIndex(int, cndevDevice_t *)`;
  CNDEV_VERSION_5 = 5; `cndevGetDevicePowerInfo(cndevDevicePowerInfo_t *, cndevDevice_t)` fills
  int32 `usage, cap, machine, tdp, maxPower` and 16 reserved int32, in W, with no version field.

What neither pins down is the width of the limitation fields (16-bit as we read the header).
So this module never trusts them alone: a limitation is passed in a zeroed 32-bit slot (the same
bytes either way on little-endian hosts); the range must be plausible (0 < min <= max <= 2000 W)
and the limit read through the limitation struct must equal the `cap` of the power-info struct,
whose layout is known; and the cap is read back through the power-info struct after a write.
Any mismatch leaves the card read-only (a fixed load), so a different layout can never set or
report a wrong number. Writes are clamped to the range and rounded to whole watts.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Mapping

from xpuctl.agent.drivers import base

LIBRARY = "libcndev.so"
VERSION = 5  # CNDEV_VERSION_5, as mlu-exporter sets it
MAX_PLAUSIBLE_W = 2000.0


class Limitation(ctypes.Structure):
    """cndevPowerManagementLimitation_t: version, powerLimit (W), in a zeroed 32-bit slot."""

    _fields_ = [("version", ctypes.c_int), ("power_limit_w", ctypes.c_uint16), ("_pad", ctypes.c_uint16)]


class PowerInfo(ctypes.Structure):
    """cndevDevicePowerInfo_t (W, no version field; layout from gpustack-runtime's pycndev)."""

    _fields_ = [
        ("usage", ctypes.c_int32),
        ("cap", ctypes.c_int32),
        ("machine", ctypes.c_int32),
        ("tdp", ctypes.c_int32),
        ("max_power", ctypes.c_int32),
        ("reserved", ctypes.c_int32 * 16),
    ]


class LimitationRange(ctypes.Structure):
    """cndevPowerManagementLimitationRange_t: version, minPowerLimit, maxPowerLimit (W)."""

    _fields_ = [
        ("version", ctypes.c_int),
        ("min_w", ctypes.c_uint16),
        ("max_w", ctypes.c_uint16),
        ("_spare", ctypes.c_uint32),
    ]  # room, should the library write wider fields


def find_library(environ: Mapping[str, str]) -> str | None:
    """Where libcndev.so is: `$NEUWARE_HOME`, then /usr/local/neuware (lib64 or lib; None: not installed)."""
    return base.sdk_library(environ, "NEUWARE_HOME", "/usr/local/neuware", LIBRARY)


class CndevCaps:
    """Read and set power caps of CNDev devices (the `caps` of a CappedToolDriver)."""

    def __init__(self, library: str) -> None:
        """Load the library and initialise it.

        Raises:
            DriverError: the library cannot be loaded or initialised.
        """
        lib = base.load_library(library, "CNDev")
        lib.cndevInit.argtypes = [ctypes.c_int]
        for name, struct in (
            ("cndevGetPowerManagementLimitationRange", LimitationRange),
            ("cndevGetPowerManagementLimitation", Limitation),
            ("cndevGetPowerManagementDefaultLimitation", Limitation),
            ("cndevSetPowerManagementLimitation", Limitation),
        ):
            getattr(lib, name).argtypes = [ctypes.POINTER(struct), ctypes.c_int32]
        lib.cndevGetDevicePowerInfo.argtypes = [ctypes.POINTER(PowerInfo), ctypes.c_int32]
        self._has_handles = hasattr(lib, "cndevGetDeviceHandleByIndex")
        if self._has_handles:
            lib.cndevGetDeviceHandleByIndex.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int32)]
        if hasattr(lib, "cndevGetErrorString"):
            lib.cndevGetErrorString.argtypes = [ctypes.c_int]
            lib.cndevGetErrorString.restype = ctypes.c_char_p
        self.lib = lib
        self._lock = threading.Lock()
        self._handles: dict[int, int] = {}
        self._check("init", lib.cndevInit(0))

    def _check(self, what: str, status: int) -> None:
        if status == 0:
            return
        text = f"status {status}"
        if hasattr(self.lib, "cndevGetErrorString"):
            raw = self.lib.cndevGetErrorString(status)
            text = f"{raw.decode(errors='replace')} (status {status})" if raw else text
        msg = f"CNDev {what}: {text}; setting power caps needs root (run the actuator as root)"
        raise base.DriverError(msg)

    def _handle(self, device: int) -> int:
        """The device's handle (the card index itself with a CNDev that has no handles)."""
        if device not in self._handles:
            if not self._has_handles:
                self._handles[device] = device
            else:
                handle = ctypes.c_int32(0)
                self._check(
                    f"handle of card {device}", self.lib.cndevGetDeviceHandleByIndex(device, ctypes.byref(handle))
                )
                self._handles[device] = handle.value
        return self._handles[device]

    def _limitation(self, name: str, device: int) -> float:
        out = Limitation(version=VERSION)
        self._check(f"{name} of card {device}", getattr(self.lib, name)(ctypes.byref(out), self._handle(device)))
        return float(out.power_limit_w)

    def range_w(self, device: int) -> tuple[float, float]:
        """(minimum, maximum) cap in W, after checking that the limitation structs read right.

        Raises:
            DriverError: the library failed, or its structs do not read as we lay them out.
        """
        out = LimitationRange(version=VERSION)
        with self._lock:
            self._check(
                f"cap range of card {device}",
                self.lib.cndevGetPowerManagementLimitationRange(ctypes.byref(out), self._handle(device)),
            )
            current = self._limitation("cndevGetPowerManagementLimitation", device)
            enforced = self._power_info(device).cap
        lo, hi = float(out.min_w), float(out.max_w)
        if not 0 < lo <= hi <= MAX_PLAUSIBLE_W:
            msg = (
                f"CNDev cap range of card {device} reads {lo:g}..{hi:g} W, which no MLU has: this libcndev "
                "lays the range out differently from the header we know; leaving the card read-only"
            )
            raise base.DriverError(msg)
        if abs(current - enforced) > 1:
            msg = (
                f"CNDev limit of card {device} reads {current:g} W but its power info says {enforced} W: this "
                "libcndev lays the limitation out differently from the header we know; leaving the card read-only"
            )
            raise base.DriverError(msg)
        return lo, hi

    def _power_info(self, device: int) -> PowerInfo:
        out = PowerInfo()
        self._check(
            f"power info of card {device}", self.lib.cndevGetDevicePowerInfo(ctypes.byref(out), self._handle(device))
        )
        return out

    def default_w(self, device: int) -> float:
        """The default cap in W."""
        with self._lock:
            return self._limitation("cndevGetPowerManagementDefaultLimitation", device)

    def cap_w(self, device: int) -> float:
        """The cap in force, in W (from the power-info struct, whose layout is known)."""
        with self._lock:
            return float(self._power_info(device).cap)

    def set_w(self, device: int, power_w: float) -> float:
        """Clamp to the range, round to whole watts, set, read back; returns the cap in force.

        Raises:
            DriverError: permission (needs root), an implausible range, or the library refused.
        """
        lo, hi = self.range_w(device)
        request = Limitation(version=VERSION, power_limit_w=round(min(max(power_w, lo), hi)))
        with self._lock:
            self._check(
                f"set cap of card {device}",
                self.lib.cndevSetPowerManagementLimitation(ctypes.byref(request), self._handle(device)),
            )
        return self.cap_w(device)
