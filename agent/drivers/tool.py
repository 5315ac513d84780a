"""A read-only driver that runs a vendor's management tool and parses its output.

The tool runs as a child process (argv list, never a shell) with a timeout that kills it, so a
hung tool cannot pile up threads; the sampler adds its own per-call timeout on top (DESIGN 7).
A tool that exits non-zero, hangs, or prints what the parser does not know raises DriverError
naming the tool and the reason: the sampler marks the devices unknown and the agent goes on.
Parsing is in agent/core/parse (pure). Caps: tool drivers never set them; vendors with a public
setter get it through their library (CappedToolDriver); a plain tool driver reports every device
as not settable, so the controller counts it as a fixed load instead of sending caps that fail.
"""

from __future__ import annotations

import logging
import shutil
import subprocess

import msgspec

from xpuctl.agent.core import model, parse
from xpuctl.agent.drivers import base

log = logging.getLogger("xpu.agent.tool")

ROCM_SMI_FLAGS = [
    "--showid",
    "--showmeminfo",
    "vram",
    "--showpower",
    "--showuse",
    "--showtemp",
    "--showproductname",
    "--showuniqueid",
    "--json",
]
# vendor -> the command whose output agent/core/parse reads (sources: shared/notes/vendor-tools.md)
COMMANDS: dict[str, list[str]] = {
    "nvidia": [
        "nvidia-smi",
        "--format=csv",
        (
            "--query-gpu=index,name,uuid,pci.bus_id,driver_version,memory.total,"
            "memory.used,utilization.gpu,power.draw,enforced.power.limit,power.min_limit,power.max_limit,"
            "power.default_limit,temperature.gpu,temperature.memory,clocks.sm,clocks.mem,"
            "ecc.errors.corrected.aggregate.total,ecc.errors.uncorrected.aggregate.total"
        ),
    ],
    "ascend": ["npu-smi", "info"],
    "cambricon": ["cnmon"],
    "metax": ["mx-smi"],
    "iluvatar": ["ixsmi"],
    "kunlunxin": ["xpu-smi"],
    "moorethreads": ["mthreads-gmi"],
    "enflame": ["efsmi", "-q"],
    "amd": ["rocm-smi", *ROCM_SMI_FLAGS],
    # Hygon's renamed rocm-smi takes the same flags (vendor-tools.md section 6)
    "hygon": ["hy-smi", *ROCM_SMI_FLAGS],
    "thead": ["ppu-smi"],  # read-only; HGML (libhgml.so) reads and caps when it is installed
}
# vendor -> other names of its tool, tried in order when the first is not on PATH
# (Kunlunxin's older packages install `xpu_smi`)
ALIASES: dict[str, tuple[str, ...]] = {"kunlunxin": ("xpu_smi",)}


def binary(vendor: str) -> str | None:
    """The name of the vendor's tool that is on PATH, if any."""
    names = (COMMANDS[vendor][0], *ALIASES.get(vendor, ()))
    return next((n for n in names if shutil.which(n)), None)


MAX_OUTPUT_BYTES = 4 << 20


def available() -> list[str]:
    """Vendors whose tool is on PATH (for `--driver auto`)."""
    return [v for v in COMMANDS if binary(v) is not None]


class ToolDriver:
    """Devices of one vendor, read through its tool."""

    def __init__(self, vendor: str, *, timeout_s: float = 10.0, argv: list[str] | None = None) -> None:
        """`argv` overrides the vendor's default command."""
        self.vendor = vendor
        self.argv = argv or COMMANDS[vendor]
        if argv is None and (found := binary(vendor)) is not None:
            self.argv = [found, *self.argv[1:]]
        self.timeout_s = timeout_s
        self.tool = self.argv[0]
        self._infos: dict[int, model.DeviceInfo] = {}
        self._warned: set[str] = set()  # parse warnings already logged (a tool runs every second)

    def _read(self, timestamp_ns: int) -> list[parse.Parsed]:
        try:
            done = subprocess.run(  # noqa: S603 - a fixed argv, never a shell
                self.argv, capture_output=True, timeout=self.timeout_s, check=False
            )
        except FileNotFoundError:
            msg = f"{self.tool} is not on PATH; install the {self.vendor} driver tools or pick another --driver"
            raise base.DriverError(msg) from None
        except subprocess.TimeoutExpired:
            msg = f"{self.tool} did not finish within {self.timeout_s:g}s (killed)"
            raise base.DriverError(msg) from None
        except OSError as exc:
            msg = f"{self.tool} could not run: {exc.strerror}"
            raise base.DriverError(msg) from None
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip().splitlines()
            msg = f"{self.tool} exited with status {done.returncode}: {err[-1][:200] if err else 'no message'}"
            raise base.DriverError(msg)
        text = done.stdout[:MAX_OUTPUT_BYTES].decode(errors="replace")
        seen = parse.detect.vendor_of(text) if self.vendor in ("amd", "hygon") else None
        if seen in ("amd", "hygon") and seen != self.vendor:  # DTK's rocm-smi on a Hygon DCU node
            log.info("%s prints %s devices: reading them as %s", self.tool, seen, seen)
            self.vendor = seen
        try:
            parsed = parse.parse(self.vendor, text, timestamp_ns)
        except parse.ParseError as exc:
            raise base.DriverError(str(exc)) from None
        for warning in {w for p in parsed for w in p.warnings} - self._warned:  # each once per driver
            self._warned.add(warning)
            log.warning("%s: %s", self.tool, warning)
        return parsed

    def discover(self) -> list[model.DeviceInfo]:
        """Run the tool once; its devices, not settable through this driver (it only reads)."""
        infos = [msgspec.structs.replace(p.info, power_cap_settable=False) for p in self._read(0)]
        self._infos = {i.index: i for i in infos}
        return infos

    def capabilities(self, index: int) -> model.DeviceInfo:
        """What discover saw of one device."""
        return self._infos[index]

    def sample(self, timestamp_ns: int) -> list[model.DeviceSample]:
        """Run the tool; one sample per device it shows."""
        return [p.sample for p in self._read(timestamp_ns)]

    def set_power_cap(self, index: int, power_w: float) -> float:
        """Tool drivers are read-only (CappedToolDriver adds a library setter).

        Raises:
            DriverError: always; the message says where caps are set.
        """
        del index, power_w
        msg = f"the {self.tool} driver is read-only; power caps go through the vendor library (DESIGN 7)"
        raise base.DriverError(msg)

    def close(self) -> None:
        """Nothing held between calls."""


class CappedToolDriver(ToolDriver):
    """A tool driver whose vendor library sets caps: ROCm SMI for AMD and Hygon, CNDev for Cambricon (DESIGN 7)."""

    def __init__(self, vendor: str, caps: base.Caps, *, timeout_s: float = 10.0, argv: list[str] | None = None) -> None:
        """Read through the tool, cap through `caps`."""
        super().__init__(vendor, timeout_s=timeout_s, argv=argv)
        self.caps = caps

    def discover(self) -> list[model.DeviceInfo]:
        """The tool's devices, with the library's cap range and default."""
        out = []
        for info in super().discover():
            try:
                lo, hi = self.caps.range_w(info.index)
                default = self.caps.default_w(info.index)
            except base.DriverError as exc:
                log.info("%s device %d: caps not available, a fixed load: %s", self.vendor, info.index, exc)
                out.append(info)  # no cap on this one: a fixed load
                continue
            if not lo <= default <= hi:
                log.warning(
                    "%s device %d: default cap %g W outside %g..%g W; read-only",
                    self.vendor,
                    info.index,
                    default,
                    lo,
                    hi,
                )
                out.append(info)
                continue
            capped = msgspec.structs.replace(
                info, power_limit_min_w=lo, power_limit_max_w=hi, power_limit_default_w=default, power_cap_settable=True
            )
            self._infos[capped.index] = capped
            out.append(capped)
        return out

    def set_power_cap(self, index: int, power_w: float) -> float:
        """Set through the library; returns the cap read back."""
        return self.caps.set_w(index, power_w)
