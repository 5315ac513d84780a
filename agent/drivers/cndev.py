"""Power caps of Cambricon MLUs through CNDev (`libcndev.so`; DESIGN 7), by ctypes.

Facts (shared/notes/vendor-tools.md section 5, from the public header in Cambricon/mlu-exporter
`pkg/cndev/include/cndev.h`): caps are whole watts ("decimals unsupported");
`cndevGetPowerManagementLimitationRange` gives `minPowerLimit`/`maxPowerLimit`,
`cndevGetPowerManagementDefaultLimitation` and `cndevGetPowerManagementLimitation` give one
`powerLimit`, `cndevSetPowerManagementLimitation` takes one; every struct starts with an `int
version` that the caller sets; devices are addressed by the handle of
`cndevGetDeviceHandleByIndex`, numbered as cnmon numbers its cards.

What the notes do not pin down, and how this module stays safe anyway:
- the width of the limit fields (16-bit in the header as we read it): a limitation is passed in
  a zeroed 32-bit slot, which reads the same either way on little-endian hosts; the range
  struct is read as two 16-bit fields, and a range that is not plausible (0 < min <= default
  <= max <= 2000 W) makes the device read-only, which is what a different layout produces;
- the handle's width: it is received into, and passed as, a 64-bit slot;
- CNDEV_VERSION: 5, the version mlu-exporter sets; a library that refuses it leaves the device
  read-only.
Every write is clamped to the range, rounded to whole watts, and read back.
"""

from __future__ import annotations

import ctypes
import pathlib
import threading
from collections.abc import Mapping

from agent.drivers import base

LIBRARY = "libcndev.so"
VERSION = 5  # CNDEV_VERSION_5, as mlu-exporter sets it
MAX_PLAUSIBLE_W = 2000.0


class Limitation(ctypes.Structure):
    """cndevPowerManagementLimitation_t: version, powerLimit (W), in a zeroed 32-bit slot."""

    _fields_ = [("version", ctypes.c_int), ("power_limit_w", ctypes.c_uint16), ("_pad", ctypes.c_uint16)]


class LimitationRange(ctypes.Structure):
    """cndevPowerManagementLimitationRange_t: version, minPowerLimit, maxPowerLimit (W)."""

    _fields_ = [("version", ctypes.c_int), ("min_w", ctypes.c_uint16), ("max_w", ctypes.c_uint16),
                ("_spare", ctypes.c_uint32)]  # room, should the library write wider fields


def find_library(environ: Mapping[str, str]) -> str | None:
    """Where libcndev.so is: `$NEUWARE_HOME/lib64`, then /usr/local/neuware/lib64 (None: not installed)."""
    for home in (environ.get("NEUWARE_HOME", ""), "/usr/local/neuware"):
        if home and (path := pathlib.Path(home) / "lib64" / LIBRARY).exists():
            return str(path)
    return None


class CndevCaps:
    """Read and set power caps of CNDev devices (the `caps` of a CappedToolDriver)."""

    def __init__(self, library: str) -> None:
        """Load the library and initialise it.

        Raises:
            DriverError: the library cannot be loaded or initialised.
        """
        try:
            lib = ctypes.CDLL(library)
        except OSError as exc:
            msg = f"cannot load CNDev ({library}): {exc}"
            raise base.DriverError(msg) from None
        lib.cndevInit.argtypes = [ctypes.c_int]
        for name, struct in (
            ("cndevGetPowerManagementLimitationRange", LimitationRange),
            ("cndevGetPowerManagementLimitation", Limitation),
            ("cndevGetPowerManagementDefaultLimitation", Limitation),
            ("cndevSetPowerManagementLimitation", Limitation),
        ):
            getattr(lib, name).argtypes = [ctypes.POINTER(struct), ctypes.c_int64]
        self._has_handles = hasattr(lib, "cndevGetDeviceHandleByIndex")
        if self._has_handles:
            lib.cndevGetDeviceHandleByIndex.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int64)]
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
                handle = ctypes.c_int64(0)
                self._check(f"handle of card {device}", self.lib.cndevGetDeviceHandleByIndex(device, ctypes.byref(handle)))
                self._handles[device] = handle.value
        return self._handles[device]

    def _limitation(self, name: str, device: int) -> float:
        out = Limitation(version=VERSION)
        self._check(f"{name} of card {device}", getattr(self.lib, name)(ctypes.byref(out), self._handle(device)))
        return float(out.power_limit_w)

    def range_w(self, device: int) -> tuple[float, float]:
        """(minimum, maximum) cap in W.

        Raises:
            DriverError: the library failed, or the range is implausible (a layout we do not know).
        """
        out = LimitationRange(version=VERSION)
        with self._lock:
            self._check(f"cap range of card {device}",
                        self.lib.cndevGetPowerManagementLimitationRange(ctypes.byref(out), self._handle(device)))
        lo, hi = float(out.min_w), float(out.max_w)
        if not 0 < lo <= hi <= MAX_PLAUSIBLE_W:
            msg = (f"CNDev cap range of card {device} reads {lo:g}..{hi:g} W, which no MLU has: this libcndev "
                   "lays the range out differently from the header we know; leaving the card read-only")
            raise base.DriverError(msg)
        return lo, hi

    def default_w(self, device: int) -> float:
        """The default cap in W."""
        with self._lock:
            return self._limitation("cndevGetPowerManagementDefaultLimitation", device)

    def cap_w(self, device: int) -> float:
        """The cap in force, in W."""
        with self._lock:
            return self._limitation("cndevGetPowerManagementLimitation", device)

    def set_w(self, device: int, power_w: float) -> float:
        """Clamp to the range, round to whole watts, set, read back; returns the cap in force.

        Raises:
            DriverError: permission (needs root), an implausible range, or the library refused.
        """
        lo, hi = self.range_w(device)
        request = Limitation(version=VERSION, power_limit_w=round(min(max(power_w, lo), hi)))
        with self._lock:
            self._check(f"set cap of card {device}",
                        self.lib.cndevSetPowerManagementLimitation(ctypes.byref(request), self._handle(device)))
        return self.cap_w(device)
