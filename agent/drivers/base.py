"""The driver interface every vendor module implements.

A driver's methods block (they call vendor libraries or tools); the agent runs each call off the
event loop with a timeout (agent/adapters/sampler.py), so a driver never needs asyncio.
"""

from __future__ import annotations

import ctypes
import pathlib
from collections.abc import Mapping
from typing import Protocol

from xpuctl.agent.core import model


class DriverError(Exception):
    """A driver call failed; the message names the vendor, the call and what is needed."""


def load_library(library: str, api: str) -> ctypes.CDLL:
    """Load a vendor's shared library by name or path.

    Raises:
        DriverError: it cannot be loaded; the message names the API, the library and why.
    """
    try:
        return ctypes.CDLL(library)
    except OSError as exc:
        msg = f"cannot load {api} from {library}: {exc}"
        raise DriverError(msg) from None


def sdk_library(environ: Mapping[str, str], home_var: str, default_home: str, name: str) -> str | None:
    """Where a vendor SDK's `name` is: `$home_var`, then `default_home`, each in lib64 then lib.

    The SDKs install under a home of their own on every CPU; lib64 is their x86 and most aarch64
    packages' folder, lib some others' (no folder named for an architecture is assumed). None: not
    installed there.
    """
    for home in (environ.get(home_var, ""), default_home):
        for folder in ("lib64", "lib"):
            if home and (path := pathlib.Path(home) / folder / name).exists():
                return str(path)
    return None


class Driver(Protocol):
    """What the agent needs of a vendor: find devices, read them, cap their power."""

    vendor: str

    def discover(self) -> list[model.DeviceInfo]:
        """The devices this driver sees, with identity and capabilities."""
        ...

    def capabilities(self, index: int) -> model.DeviceInfo:
        """Fresh capabilities of one device (ranges can change after a driver reload)."""
        ...

    def sample(self, timestamp_ns: int) -> list[model.DeviceSample]:
        """One reading per device, stamped `timestamp_ns`."""
        ...

    def set_power_cap(self, index: int, power_w: float) -> float:
        """Set a device's power cap, clamped to its range; returns the enforced cap read back.

        Raises:
            DriverError: the device cannot be capped (power_cap_settable is false) or the call failed.
        """
        ...

    def close(self) -> None:
        """Release the vendor library or tool and wake any call blocked inside it."""
        ...


class Caps(Protocol):
    """A vendor library that sets power caps beside a tool that reads (ROCm SMI, CNDev)."""

    def range_w(self, device: int) -> tuple[float, float]:
        """(minimum, maximum) cap in W."""
        ...

    def default_w(self, device: int) -> float:
        """The default cap in W."""
        ...

    def set_w(self, device: int, power_w: float) -> float:
        """Clamp, set, read back; returns the cap in force (W)."""
        ...
