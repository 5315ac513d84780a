"""Iluvatar CoreX through IXML (`libixml.so`), which exports NVML's C API under NVML's names.

Facts (notes vendor-tools 10; gpustack `pyixml` binds the same symbols): the library lives in
`$COREX_HOME/lib64` (default `/usr/local/corex/lib64`); its `nvml*` functions take and return
what NVML's do (mW, mJ, bytes, MHz, C). So this driver is the NVML driver run on a private copy
of nvidia-ml-py's `pynvml` module whose library is IXML (a copy, so that a node with both NVIDIA
and Iluvatar cards keeps two libraries apart; one IXML per process). Whether the hardware honours
`nvmlDeviceSetPowerManagementLimit` is unverified: the devices are settable only when the
library exports the setter and the limit constraints read, and every write is clamped to them
and read back, so an ignored write shows as an enforced limit that did not move.
"""

from __future__ import annotations

import ctypes
import importlib.util
import pathlib
import sys
from collections.abc import Mapping
from typing import Any

from agent.drivers import base, nvidia

LIBRARY = "libixml.so"


def find_library(environ: Mapping[str, str]) -> str | None:
    """Where libixml.so is: `$COREX_HOME/lib64`, then /usr/local/corex/lib64 (None: not installed)."""
    for home in (environ.get("COREX_HOME", ""), "/usr/local/corex"):
        if home and (path := pathlib.Path(home) / "lib64" / LIBRARY).exists():
            return str(path)
    return None


def _private_pynvml() -> Any:
    """A fresh copy of the pynvml module (its own library handle, function-pointer cache and
    error classes: pynvml creates those on `sys.modules[__name__]`, so the copy is registered
    under a name of its own before it runs)."""
    spec = importlib.util.find_spec("pynvml")
    if spec is None or spec.origin is None:
        msg = "the Iluvatar IXML driver needs nvidia-ml-py: pip install 'xpuctl[nvidia]'"
        raise base.DriverError(msg)
    name = "agent.drivers._ixml_pynvml"
    if name in sys.modules:
        return sys.modules[name]
    copy_spec = importlib.util.spec_from_file_location(name, spec.origin)
    assert copy_spec is not None and copy_spec.loader is not None  # a .py file found a moment ago
    module = importlib.util.module_from_spec(copy_spec)
    sys.modules[name] = module
    copy_spec.loader.exec_module(module)
    return module


class IxmlDriver(nvidia.NvmlDriver):
    """Every Iluvatar GPU IXML sees."""

    vendor = "iluvatar"

    def __init__(self, *, library: str) -> None:
        """Load `library` (libixml.so) behind a private pynvml.

        Raises:
            DriverError: nvidia-ml-py is missing, or the library cannot be loaded.
        """
        super().__init__()
        self.nvml = _private_pynvml()
        self.nvml._nvmlGetFunctionPointer_cache.clear()  # noqa: SLF001 - pointers of a previous library
        try:
            self.nvml.nvmlLib = ctypes.CDLL(library)
        except OSError as exc:
            msg = f"cannot load IXML from {library}: {exc}"
            raise base.DriverError(msg) from None
        self.library = library

    def _can_set(self) -> bool:
        return hasattr(self.nvml.nvmlLib, "nvmlDeviceSetPowerManagementLimit")
