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
NVIDIA_QUERY = [
    "nvidia-smi",
    "--format=csv",
    (
        "--query-gpu=index,name,uuid,pci.bus_id,driver_version,memory.total,"
        "memory.used,utilization.gpu,power.draw,enforced.power.limit,power.min_limit,power.max_limit,"
        "power.default_limit,temperature.gpu,temperature.memory,clocks.sm,clocks.mem,"
        "ecc.errors.corrected.aggregate.total,ecc.errors.uncorrected.aggregate.total"
    ),
]
# Iluvatar's ixsmi answers nvidia-smi's query (fields from its published CSV, plus power)
IXSMI_QUERY = [
    "ixsmi",
    "--format=csv",
    "--query-gpu=index,name,uuid,pci.bus_id,memory.total,memory.used,utilization.gpu,power.draw,temperature.gpu",
]
# vendor -> the forms of its tool that agent/core/parse reads, the most machine-readable first
# (JSON, CSV, `-q` key/value, then the table; issue 12.5). The driver reads the first form that
# runs and shows a device, and says so when it had to fall back. Sources: shared/notes/vendor-tools.md.
FORMS: dict[str, list[list[str]]] = {
    "nvidia": [NVIDIA_QUERY, ["nvidia-smi", "-q"], ["nvidia-smi"]],
    "ascend": [["npu-smi", "info"]],
    "cambricon": [["cnmon"]],
    "metax": [["mx-smi"]],
    "iluvatar": [IXSMI_QUERY, ["ixsmi"]],
    "kunlunxin": [["xpu-smi", "-q"], ["xpu-smi"]],
    "moorethreads": [["mthreads-gmi"]],
    "enflame": [["efsmi", "-q"], ["efsmi"]],
    # rocm-smi's JSON holds the enforced cap, amd-smi metric's does not: rocm-smi first while ROCm
    # ships it, amd-smi (its successor) after, its identity and cap range from `static`
    "amd": [["rocm-smi", *ROCM_SMI_FLAGS], ["amd-smi", "metric", "--json"], ["amd-smi", "monitor"], ["amd-smi"]],
    # Hygon's renamed rocm-smi takes the same flags (vendor-tools.md section 6)
    "hygon": [["hy-smi", *ROCM_SMI_FLAGS], ["hy-smi"]],
    "thead": [["ppu-smi"]],  # read-only; HGML (libhgml.so) reads and caps when it is installed
}
# a reading form without identity -> the form that gives it (model, bus, cap range), run at discovery
IDENTITY: dict[tuple[str, ...], list[str]] = {("amd-smi", "metric", "--json"): ["amd-smi", "static", "--json"]}
# vendor -> its preferred command (what `--driver VENDOR` runs first)
COMMANDS: dict[str, list[str]] = {vendor: forms[0] for vendor, forms in FORMS.items()}
# tool -> other names of it, tried in order when the first is not on PATH
# (Kunlunxin's older packages install `xpu_smi`)
ALIASES: dict[str, tuple[str, ...]] = {"xpu-smi": ("xpu_smi",)}


# every tool name `--driver auto` looks for, in vendor order
TOOL_NAMES: tuple[str, ...] = tuple(
    dict.fromkeys(n for forms in FORMS.values() for argv in forms for n in (argv[0], *ALIASES.get(argv[0], ())))
)


def found(argv: list[str]) -> list[str] | None:
    """`argv` with its tool's name as it is on PATH (an alias when only that is), None when absent."""
    name = next((n for n in (argv[0], *ALIASES.get(argv[0], ())) if shutil.which(n)), None)
    return None if name is None else [name, *argv[1:]]


def binary(vendor: str) -> str | None:
    """The name of the vendor's tool that is on PATH, if any (the first form's that is)."""
    return next((hit[0] for argv in FORMS[vendor] if (hit := found(argv)) is not None), None)


MAX_OUTPUT_BYTES = 4 << 20


def available() -> list[str]:
    """Vendors whose tool is on PATH (for `--driver auto`)."""
    return [v for v in FORMS if binary(v) is not None]


def _listed(failures: list[tuple[str, str]]) -> str:
    """(command, why) pairs as one line."""
    return "; ".join(f"`{cmd}`: {reason}" for cmd, reason in failures)


class ToolDriver:
    """Devices of one vendor, read through its tool in the best form it answers."""

    def __init__(self, vendor: str, *, timeout_s: float = 10.0, argv: list[str] | None = None) -> None:
        """`argv` overrides the vendor's forms with one command."""
        self.vendor = vendor
        self.forms = [argv] if argv is not None else FORMS[vendor]
        self.argv = self.forms[0]
        self.timeout_s = timeout_s
        self.tool = self.argv[0]
        self._infos: dict[int, model.DeviceInfo] = {}
        self._warned: set[str] = set()  # parse warnings already logged (a tool runs every second)

    def _run(self, argv: list[str]) -> str:
        tool = argv[0]
        try:
            done = subprocess.run(  # noqa: S603 - a fixed argv, never a shell
                argv, capture_output=True, timeout=self.timeout_s, check=False
            )
        except FileNotFoundError:
            raise base.DriverError(self._missing(tool)) from None
        except subprocess.TimeoutExpired:
            msg = f"{tool} did not finish within {self.timeout_s:g}s (killed)"
            raise base.DriverError(msg) from None
        except OSError as exc:
            msg = f"{tool} could not run: {exc.strerror}"
            raise base.DriverError(msg) from None
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip().splitlines()
            msg = f"{tool} exited with status {done.returncode}: {err[-1][:200] if err else 'no message'}"
            raise base.DriverError(msg)
        return done.stdout[:MAX_OUTPUT_BYTES].decode(errors="replace")

    def _missing(self, tool: str) -> str:
        return f"{tool} is not on PATH; install the {self.vendor} driver tools or pick another --driver"

    def _read(self, timestamp_ns: int, argv: list[str] | None = None) -> list[parse.Parsed]:
        argv = argv or self.argv
        text = self._run(argv)
        seen = parse.detect.vendor_of(text) if self.vendor in ("amd", "hygon") else None
        if seen in ("amd", "hygon") and seen != self.vendor:  # DTK's rocm-smi on a Hygon DCU node
            log.info("%s prints %s devices: reading them as %s", argv[0], seen, seen)
            self.vendor = seen
        try:
            parsed = parse.parse(self.vendor, text, timestamp_ns)
        except parse.ParseError as exc:
            raise base.DriverError(str(exc)) from None
        for warning in {w for p in parsed for w in p.warnings} - self._warned:  # each once per driver
            self._warned.add(warning)
            log.warning("%s: %s", argv[0], warning)
        return parsed

    def _pick_form(self) -> list[parse.Parsed]:
        """Read through the first form that runs and shows a device; it becomes the driver's."""
        failures: list[tuple[str, str]] = []  # (the command, why it was not read)
        for form in self.forms:
            argv = found(form)
            if argv is None:
                if all(cmd != form[0] for cmd, _ in failures):  # each missing tool once
                    failures.append((form[0], self._missing(form[0])))
                continue
            try:
                parsed = self._read(0, argv)
            except base.DriverError as exc:
                failures.append((" ".join(argv)[:60], str(exc)))
                continue
            if not parsed:
                failures.append((" ".join(argv)[:60], "no device"))
                continue
            if failures:
                log.warning("%s: reading `%s` (%s)", self.vendor, " ".join(argv)[:80], _listed(failures))
            self.argv, self.tool = argv, argv[0]
            return parsed
        if len(failures) == 1:
            raise base.DriverError(failures[0][1])
        raise base.DriverError(f"no form of the {self.vendor} tool could be read: {_listed(failures)}")

    def _identity(self, infos: list[model.DeviceInfo]) -> list[model.DeviceInfo]:
        """`infos` completed by the identity form of a reading form that lacks it (amd-smi static)."""
        key = next((k for k in IDENTITY if tuple(self.argv[1:]) == k[1:]), None)
        argv = found(IDENTITY[key]) if key is not None else None
        if argv is None:
            return infos
        try:
            more = {p.info.index: p.info for p in self._read(0, argv)}
        except base.DriverError as exc:
            log.warning("%s: no model or cap range (`%s`: %s)", self.vendor, " ".join(argv), exc)
            return infos
        out = []
        for info in infos:
            extra = more.get(info.index)
            if extra is not None:
                missing = {
                    name: getattr(extra, name)
                    for name in info.__struct_fields__
                    if getattr(info, name) in ("", None) and getattr(extra, name) not in ("", None)
                }
                info = msgspec.structs.replace(info, uuid=extra.uuid, **missing)  # noqa: PLW2901
            out.append(info)
        return out

    def discover(self) -> list[model.DeviceInfo]:
        """Run the tool once; its devices, not settable through this driver (it only reads)."""
        infos = self._identity([p.info for p in self._pick_form()])
        infos = [msgspec.structs.replace(i, power_cap_settable=False) for i in infos]
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
