"""Which drivers an agent runs: `--driver sim|auto|VENDOR` to a list of driver objects.

`auto` takes every vendor library that loads (NVML, IXML, HGML) and every vendor tool on PATH,
preferring the library where both read the same devices. A vendor name takes that vendor's library
when it loads, else its tool (with caps through the vendor library where one exists). `sim` takes
simulated devices of one vendor. Optional libraries are imported only when asked for.
"""

from __future__ import annotations

import logging
import os
import shutil

import msgspec

from xpuctl.agent.drivers import base
from xpuctl.agent.drivers.sim import faults

log = logging.getLogger("xpu.agent")


class DriverChoiceError(base.DriverError):
    """`--driver` names nothing this node can read; the message says what to do instead."""


class SimSpec(msgspec.Struct, frozen=True, kw_only=True):
    """The simulated devices of `--driver sim`."""

    vendor: str = "nvidia"
    devices: int = 8
    seed: int = 0
    faults: list[faults.Fault] = msgspec.field(default_factory=list)
    workload: str = "mixed"


def select(choice: str, *, node_id: str, sim: SimSpec, timeout_s: float) -> list[base.Driver]:
    """The drivers for `--driver choice`.

    Raises:
        DriverChoiceError: an unknown choice, or nothing to read with it.
    """
    if choice == "sim":
        try:
            from xpuctl.agent.drivers.sim.driver import SimDriver  # noqa: PLC0415 - numpy only for the simulator
        except ModuleNotFoundError as exc:  # an install without numpy (a LoongArch node, say: deploy/README.md)
            msg = f"--driver sim needs {exc.name} (pip install {exc.name}); an agent reading real devices does not"
            raise DriverChoiceError(msg) from None

        return [
            SimDriver(
                vendor=sim.vendor,
                node_id=node_id,
                devices=sim.devices,
                seed=sim.seed,
                fault_specs=sim.faults,
                workload=sim.workload,
            )
        ]
    from xpuctl.agent.drivers import tool  # noqa: PLC0415 - only real hardware needs the tool drivers

    if choice == "auto":
        return _auto(timeout_s)
    if choice == "nvidia" and (nvml := nvml_driver()) is not None:
        return [nvml]
    if choice == "iluvatar" and (ixml := nvml_api_driver("iluvatar")) is not None:
        return [ixml]
    if choice == "thead" and (hgml := nvml_api_driver("thead")) is not None:
        return [hgml]  # else ppu-smi, read-only
    if choice not in tool.COMMANDS:
        msg = f"--driver {choice!r}: use auto, sim or one of {', '.join(tool.COMMANDS)}"
        raise DriverChoiceError(msg)
    return [tool_driver(choice, timeout_s)]


def _auto(timeout_s: float) -> list[base.Driver]:
    """Every vendor library that loads and every vendor tool on PATH."""
    from xpuctl.agent.drivers import tool  # noqa: PLC0415

    vendors = tool.available()
    if "hygon" in vendors and "amd" in vendors:
        vendors.remove("amd")  # a DTK node: its rocm-smi shows the same DCUs as hy-smi
    nvml = nvml_driver()
    drivers: list[base.Driver] = [nvml] if nvml is not None else []
    if nvml is not None:
        vendors = [v for v in vendors if v != "nvidia"]  # NVML reads them better than nvidia-smi
    if (ixml := nvml_api_driver("iluvatar")) is not None:
        drivers.append(ixml)
        vendors = [v for v in vendors if v != "iluvatar"]  # IXML reads them and can set caps
    if (hgml := nvml_api_driver("thead")) is not None:
        drivers.append(hgml)
        vendors = [v for v in vendors if v != "thead"]  # HGML reads them and can set caps; ppu-smi only reads
    if shutil.which("brsmi"):
        log.warning(
            "brsmi (Biren) is on PATH, but xpuctl cannot read it yet: no sample of its output has been "
            "published; its devices are not reported. A capture of `brsmi gpu list` lets us add it."
        )
    if not vendors and not drivers:
        msg = (
            "--driver auto found no vendor tool on PATH (looked for "
            + ", ".join(tool.TOOL_NAMES)
            + "); install the vendor tools, or run with --driver sim --sim-vendor VENDOR"
        )
        raise DriverChoiceError(msg)
    log.info("--driver auto: %s", ", ".join([f"{d.vendor} (library)" for d in drivers] + vendors))
    return drivers + [tool_driver(v, timeout_s) for v in vendors]


def tool_driver(vendor: str, timeout_s: float) -> base.Driver:
    """The vendor's tool driver, with caps through the vendor library when it loads: ROCm SMI for
    AMD and Hygon, CNDev for Cambricon.
    """
    from xpuctl.agent.drivers import cndev, rsmi, tool  # noqa: PLC0415

    try:
        if vendor in ("amd", "hygon"):
            return tool.CappedToolDriver(vendor, rsmi.RsmiCaps(), timeout_s=timeout_s)
        if vendor == "cambricon" and (library := cndev.find_library(os.environ)) is not None:
            return tool.CappedToolDriver(vendor, cndev.CndevCaps(library), timeout_s=timeout_s)
    except base.DriverError as exc:
        log.info("%s: caps not available, read-only: %s", vendor, exc)
    return tool.ToolDriver(vendor, timeout_s=timeout_s)


def nvml_api_driver(vendor: str) -> base.Driver | None:
    """IXML (iluvatar) or HGML (thead) when the library and nvidia-ml-py are both there, else None."""
    from xpuctl.agent.drivers import nvml_clones  # noqa: PLC0415 - optional

    cls = nvml_clones.IxmlDriver if vendor == "iluvatar" else nvml_clones.HgmlDriver
    library = nvml_clones.find_ixml(os.environ) if vendor == "iluvatar" else nvml_clones.find_hgml()
    if library is None:
        return None
    try:
        return cls(library=library)
    except base.DriverError as exc:
        log.info("%s not used: %s", cls.api, exc)
        return None


def nvml_driver() -> base.Driver | None:
    """NVML when nvidia-ml-py and libnvidia-ml are both there, else None (nvidia-smi is the fallback)."""
    from xpuctl.agent.drivers import nvidia  # noqa: PLC0415 - optional

    try:
        driver = nvidia.NvmlDriver()
    except base.DriverError as exc:
        log.info("NVML not used: %s", exc)
        return None
    try:
        driver.nvml._LoadNvmlLibrary()  # noqa: SLF001 - the only way to ask pynvml whether NVML loads
    except driver.nvml.NVMLError as exc:
        log.info("NVML not used: %s", exc)
        return None
    return driver
