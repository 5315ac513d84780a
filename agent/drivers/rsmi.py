"""Power caps through ROCm SMI (`librocm_smi64`, AMD's and Hygon's builds; DESIGN 7), by ctypes.

Caps are in µW. The range comes from rsmi_dev_power_cap_range_get, the default from
rsmi_dev_power_cap_default_get; a write is clamped to the range, and the cap is read back. The
device numbering is ROCm SMI's, which is the `cardN` order of `rocm-smi`/`hy-smi` output.
Status codes (rocm_smi.h): 0 success, 1 invalid args, 2 not supported, 4 permission.
"""

from __future__ import annotations

import ctypes
import pathlib
import threading

from xpuctl.agent.drivers import base

UW = 1e-6
STATUS = {1: "invalid arguments", 2: "not supported", 3: "file error", 4: "permission denied", 8: "not initialised"}


class RsmiCaps:
    """Read and set power caps of ROCm SMI devices."""

    def __init__(self, library: str = "librocm_smi64.so") -> None:
        """Load the library and initialise it.

        Raises:
            DriverError: the library cannot be loaded or initialised.
        """
        lib = base.load_library(library, "ROCm SMI")
        u32, u64, p64 = ctypes.c_uint32, ctypes.c_uint64, ctypes.POINTER(ctypes.c_uint64)
        lib.rsmi_init.argtypes = [u64]
        lib.rsmi_dev_power_cap_range_get.argtypes = [u32, u32, p64, p64]
        lib.rsmi_dev_power_cap_get.argtypes = [u32, u32, p64]
        lib.rsmi_dev_power_cap_default_get.argtypes = [u32, p64]
        lib.rsmi_dev_power_cap_set.argtypes = [u32, u32, u64]
        self.lib = lib
        self._lock = threading.Lock()
        self._check("init", lib.rsmi_init(0))

    @staticmethod
    def _check(what: str, status: int) -> None:
        if status == 4:
            msg = f"ROCm SMI {what}: permission denied; setting power caps needs root (run the actuator as root)"
            raise base.DriverError(msg)
        if status != 0:
            msg = f"ROCm SMI {what}: {STATUS.get(status, f'status {status}')}"
            raise base.DriverError(msg)

    def range_w(self, device: int) -> tuple[float, float]:
        """(minimum, maximum) cap in W."""
        hi, lo = ctypes.c_uint64(), ctypes.c_uint64()
        with self._lock:
            self._check(
                "cap range", self.lib.rsmi_dev_power_cap_range_get(device, 0, ctypes.byref(hi), ctypes.byref(lo))
            )
        return lo.value * UW, hi.value * UW

    def default_w(self, device: int) -> float:
        """The default cap in W."""
        cap = ctypes.c_uint64()
        with self._lock:
            self._check("default cap", self.lib.rsmi_dev_power_cap_default_get(device, ctypes.byref(cap)))
        return cap.value * UW

    def cap_w(self, device: int) -> float:
        """The cap in force, in W."""
        cap = ctypes.c_uint64()
        with self._lock:
            self._check("cap", self.lib.rsmi_dev_power_cap_get(device, 0, ctypes.byref(cap)))
        return cap.value * UW

    def set_w(self, device: int, power_w: float) -> float:
        """Clamp, set, read back; returns the cap in force.

        Raises:
            DriverError: permission (needs root) or the library refused.
        """
        lo, hi = self.range_w(device)
        uw = round(min(max(power_w, lo), hi) / UW)
        with self._lock:
            self._check(f"set cap of device {device}", self.lib.rsmi_dev_power_cap_set(device, 0, uw))
        return self.cap_w(device)


# PCI vendor ids of the GPUs whose caps ROCm SMI writes: AMD, and Hygon's DCUs (pci.ids: 1d94
# "Chengdu Haiguang IC Design Co., Ltd.")
VENDOR_IDS = frozenset({"0x1002", "0x1d94"})


def cap_paths(sysfs: str = "/sys") -> list[str]:
    """The directories ROCm SMI writes caps in (`hwmon/hwmonN/power1_cap` of each AMD or Hygon
    GPU), as the host names them (`/sys/devices/.../0000:03:00.0/hwmon`): what the agent's unit
    must be allowed to write under its read-only /sys (`xpu-agent config cap-paths`).
    """
    root = pathlib.Path(sysfs)
    out = []
    for card in sorted((root / "class" / "drm").glob("card*")):
        if not card.name[4:].isdigit():
            continue  # a connector (card0-DP-1), not a GPU
        device = (card / "device").resolve()
        try:
            vendor = (device / "vendor").read_text().strip().lower()
        except OSError:
            continue
        if vendor in VENDOR_IDS and (device / "hwmon").is_dir():
            out.append("/sys/" + str((device / "hwmon").relative_to(root.resolve())))
    return list(dict.fromkeys(out))
