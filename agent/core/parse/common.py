"""What every vendor-tool parser shares: absent values, units, the parsed record, the error.

Pure: text in, values out. Parsers read by header and label, never by fixed column; a value the
tool marks as missing (`N/A`, `NA`, `-`, `[N/A]`, `[Not Supported]`, anonymised `xxx`) is absent
(None), never 0; a layout a parser does not know raises ParseError naming the tool and the line.
"""

from __future__ import annotations

import json
import re

import msgspec

from xpuctl.agent.core import model

ABSENT: frozenset[str] = frozenset(
    {
        "",
        "n/a",
        "na",
        "-",
        "--",
        "[n/a]",
        "[not supported]",
        "not supported",
        "unknown",
        "[unknown error]",
        "xxx",
        "***",
        "[requested functionality has been deprecated]",
    }
)
MIB = 1 << 20
# unit suffix -> factor to the base unit (W, J, bytes, Hz, Celsius, ratio)
UNITS: dict[str, float] = {
    "w": 1.0,
    "mw": 1e-3,
    "kw": 1e3,
    "j": 1.0,
    "mj": 1e-3,
    "kj": 1e3,
    "uj": 1e-6,
    "b": 1.0,
    "kib": 1 << 10,
    "mib": MIB,
    "gib": 1 << 30,
    "kb": 1e3,
    "mb": MIB,
    "gb": 1 << 30,
    "hz": 1.0,
    "khz": 1e3,
    "mhz": 1e6,
    "ghz": 1e9,
    "c": 1.0,
    "%": 0.01,
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
}
_ANONYMISED = re.compile(r"^\s*[xX*]+\s*[A-Za-z%]*\s*$")  # `xxxxx MiB`: hidden by the capture's author
_NUMBER = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*([A-Za-z%°℃]*)\s*$")
# spellings of one unit: `°C`, `℃`, `C` and `c` are Celsius
_UNIT_SPELLINGS = {"°c": "c", "℃": "c", "°": "c", "deg": "c", "degc": "c"}


class ParseError(ValueError):
    """A tool's output that does not have the layout the parser knows."""

    def __init__(self, tool: str, line_no: int, line: str, problem: str) -> None:
        """Keep the facts; build the message."""
        super().__init__(
            f"{tool} output, line {line_no}: {problem}: {line.strip()[:120]!r}; "
            "run `xpu-agent parse` on the capture and report the layout"
        )
        self.tool, self.line_no, self.line, self.problem = tool, line_no, line, problem


class Parsed(msgspec.Struct, frozen=True, kw_only=True):
    """One device as a tool showed it: identity and capabilities, one sample, and what could not
    be read (each warning names the field and the text; the field is then absent).
    """

    info: model.DeviceInfo
    sample: model.DeviceSample
    warnings: tuple[str, ...] = ()


def with_warnings(parsed: Parsed, warnings: list[str] | tuple[str, ...]) -> Parsed:
    """`parsed` with `warnings` added."""
    if not warnings:
        return parsed
    return msgspec.structs.replace(parsed, warnings=tuple(dict.fromkeys((*parsed.warnings, *warnings))))


class Reader:
    """Reads a device's fields one by one: a field that is not a value is absent (None) and noted,
    so that one unreadable cell costs that field, never the device (issue 12.4).
    """

    def __init__(self) -> None:
        """No warnings yet."""
        self.warnings: list[str] = []

    def number(self, field: str, text: str | None, unit: str = "") -> float | None:
        """`text` as a number in base units (see `number`); None when absent or unreadable."""
        if text is None:
            return None
        try:
            return number(text, unit)
        except ValueError as exc:
            self.warnings.append(f"{field}: {exc}")
            return None

    def pair(self, field: str, text: str | None, unit: str) -> tuple[float | None, float | None]:
        """`used / total` (see `used_total`); (None, None) when unreadable."""
        if text is None:
            return None, None
        try:
            return used_total(text, unit)
        except ValueError as exc:
            self.warnings.append(f"{field}: {exc}")
            return None, None


def absent(text: str) -> bool:
    """Whether a cell means 'no value'."""
    return text.strip().lower() in ABSENT


def number(text: str, default_unit: str = "") -> float | None:
    """A number with an optional unit suffix (`69.33 W`, `81559 MiB`, `45 %`), in base units.

    Returns None for an absent marker. Raises ValueError for anything else that is not a number.
    """
    if absent(text) or _ANONYMISED.match(text):
        return None
    m = _NUMBER.match(text)
    if m is None:
        msg = f"not a number: {text!r}"
        raise ValueError(msg)
    unit = (m.group(2) or default_unit).lower()
    unit = _UNIT_SPELLINGS.get(unit, unit)
    if unit and unit not in UNITS:
        msg = f"unknown unit {unit!r} in {text!r}"
        raise ValueError(msg)
    return float(m.group(1)) * UNITS.get(unit, 1.0)


def used_total(text: str, unit: str) -> tuple[float | None, float | None]:
    """`used / total` (e.g. `4252 / 15137` MB) in base units; absent parts are None."""
    if absent(text):
        return None, None
    text = re.sub(r"(?i)\[?\bN/A\b\]?", "NA", text)  # `N/A / N/A`: the slash of N/A is not the separator
    used, sep, total = text.partition("/")
    if not sep:
        return number(used, unit), None
    total_unit = re.sub(r"[\d.\s]", "", total)  # `826/65536 MiB`: the used part takes the total's unit
    if absent(total) or total_unit.lower() not in UNITS:  # `0 / N/A`: no unit to take
        total_unit = unit
    return number(used, total_unit if not re.search(r"[A-Za-z%]", used) else unit), number(total, unit)


# `Key : value` (whitespace before the colon, so `GPU 00000000:00:09.0` stays a section title)
_KV_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>\S.*?)\s+:(?:\s+(?P<value>.*?))?\s*$")


def kv_tree(text: str) -> list[tuple[tuple[str, ...], str, int]]:
    """`Key : value` lines nested by indentation (nvidia-smi -q, xpu-smi -q, npu-smi -t ...).

    Returns (path of section names and the key, value, line number) for every value line; a line
    without a colon opens a section at its indentation.
    """
    out: list[tuple[tuple[str, ...], str, int]] = []
    stack: list[tuple[int, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        m = _KV_LINE.match(line)
        if m is None:
            stack.append((indent, line.strip()))
            continue
        out.append(((*(s for _, s in stack), m.group("key")), m.group("value") or "", n))
    return out


# What tools print for a reading the device did not give: all bits set in a 16- or 32-bit field
SENTINELS: frozenset[float] = frozenset({65535.0, 65534.0, 4294967295.0, 4294967294.0})
_LIVE = ("power_w", "power_limit_w", "temperature_c", "memory_temperature_c", "core_clock_hz", "memory_clock_hz")


def screen(parsed: Parsed) -> Parsed:
    """Sentinel readings to null, with a health reason (issue 12.4).

    A reading of 65535 (or 2**32-1) is the tool's `no value`, not a value. A device that shows one is
    not reporting: its `0 C` and `100 %` beside it are not readings either (a hung Iluvatar card
    shows `65535W`, `0C`, `100%`).
    """
    s = parsed.sample
    hits = [name for name in _LIVE if getattr(s, name) in SENTINELS]
    if not hits:
        return parsed
    changes: dict[str, object] = dict.fromkeys(hits)
    if s.temperature_c == 0:
        changes["temperature_c"] = None
    if s.utilization == 1.0:
        changes["utilization"] = None
    shown = ", ".join(f"{name} {getattr(s, name):g}" for name in hits)
    reason = f"the tool shows sentinel values ({shown}): readings not trusted; the device may be hung"
    sample = msgspec.structs.replace(s, health_reason=reason, **changes)
    return with_warnings(msgspec.structs.replace(parsed, sample=sample), [f"device {s.index}: {reason}"])


def json_document(text: str) -> str | None:
    """The JSON document in `text`, without the log lines a wrapper or a vGPU layer printed
    before or after it (issue 12.2); None when there is none.
    """
    starts = [m.start() for m in re.finditer(r"^\s*[\[{]", text, re.MULTILINE)]
    for start in starts:
        try:
            _, end = json.JSONDecoder().raw_decode(text, start + len(text[start:]) - len(text[start:].lstrip()))
        except json.JSONDecodeError:
            continue
        return text[start:end]
    return None
