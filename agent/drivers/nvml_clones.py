"""Vendor libraries that export NVML's C API: Iluvatar's IXML and T-Head's HGML.

Both take and return what NVML does (mW, mJ, bytes, MHz, C; the same structs), so each driver
here is the NVML driver (agent/drivers/nvidia.py) run on a private copy of nvidia-ml-py's
`pynvml` module whose library is the vendor's. A private copy keeps its own library handle,
function-pointer cache and error classes, so NVIDIA and other cards on one node stay apart.

- IXML (Iluvatar CoreX; notes vendor-tools 10, gpustack `pyixml`): `libixml.so` in
  `$COREX_HOME/lib64` (default /usr/local/corex/lib64), symbols under NVML's own names.
  Whether the hardware honours `nvmlDeviceSetPowerManagementLimit` is unverified.
- HGML (T-Head PPU; DESIGN 7): `libhgml.so`, the same API with the prefix `hgml` in place of
  `nvml` (`hgmlInitWithFlags`, `hgmlDeviceGetPowerUsage` in mW, `hgmlDeviceSetPowerManagementLimit`
  taking mW). Source: gpustack-runtime 0.2.6 (PyPI), `detector/pyhgml/__init__.py` (its bindings,
  structs identical to NVML's) and `detector/thead.py` (mW -> W by /1000).

Devices are settable only when the library exports the setter and the limit constraints read;
every write is clamped to them and read back, so an ignored write shows as an enforced limit
that did not move.
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys
from collections.abc import Mapping
from typing import Any

from xpuctl.agent.drivers import base, nvidia


def find_ixml(environ: Mapping[str, str]) -> str | None:
    """Where libixml.so is: `$COREX_HOME`, then /usr/local/corex (lib64 or lib; None: not installed)."""
    return base.sdk_library(environ, "COREX_HOME", "/usr/local/corex", "libixml.so")


class Prefixed:
    """A loaded library whose NVML names are looked up under another prefix (`hgmlInit` for `nvmlInit`)."""

    def __init__(self, lib: ctypes.CDLL, prefix: str) -> None:
        """Wrap `lib`."""
        self._lib, self._prefix = lib, prefix

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 - ctypes functions of any signature
        """The library's function for an NVML name."""
        if name.startswith("nvml"):
            name = self._prefix + name.removeprefix("nvml")
        return getattr(self._lib, name)


def _private_pynvml(vendor: str) -> Any:  # noqa: ANN401 - pynvml is untyped
    """A copy of the pynvml module for `vendor`. pynvml creates its error classes on
    `sys.modules[__name__]`, so the copy is registered under a name of its own before it runs.
    """
    spec = importlib.util.find_spec("pynvml")
    if spec is None or spec.origin is None:
        msg = f"the {vendor} driver needs nvidia-ml-py: pip install 'xpuctl[nvidia]'"
        raise base.DriverError(msg)
    name = f"xpuctl.agent.drivers._pynvml_{vendor}"
    if name in sys.modules:
        return sys.modules[name]
    copy_spec = importlib.util.spec_from_file_location(name, spec.origin)
    if copy_spec is None or copy_spec.loader is None:  # a .py file found a moment ago: cannot happen
        msg = f"cannot load a private copy of pynvml from {spec.origin}"
        raise base.DriverError(msg)
    module = importlib.util.module_from_spec(copy_spec)
    sys.modules[name] = module
    copy_spec.loader.exec_module(module)
    return module


class _CloneDriver(nvidia.NvmlDriver):
    """The NVML driver on a vendor library with NVML's API."""

    prefix = "nvml"

    def __init__(self, *, library: str) -> None:
        """Load `library` behind a private pynvml (one library per vendor and process).

        Raises:
            DriverError: nvidia-ml-py is missing, or the library cannot be loaded.
        """
        super().__init__()
        self.nvml = _private_pynvml(self.vendor)
        self.nvml._nvmlGetFunctionPointer_cache.clear()  # noqa: SLF001 - pointers of a previous library
        lib = base.load_library(library, self.api)
        self.nvml.nvmlLib = lib if self.prefix == "nvml" else Prefixed(lib, self.prefix)
        self.library = library

    def _can_set(self) -> bool:
        return hasattr(self.nvml.nvmlLib, "nvmlDeviceSetPowerManagementLimit")


class IxmlDriver(_CloneDriver):
    """Every Iluvatar GPU IXML sees."""

    vendor = "iluvatar"
    api = "IXML"


class HgmlDriver(_CloneDriver):
    """Every T-Head PPU HGML sees."""

    vendor = "thead"
    api = "HGML"
    prefix = "hgml"


def find_hgml() -> str | None:
    """libhgml.so if the dynamic loader finds it (None: not installed)."""
    try:
        ctypes.CDLL("libhgml.so")
    except OSError:
        return None
    return "libhgml.so"
