"""Whitespace-aligned tables: the concise table of `rocm-smi` (AMD) and of Hygon's `hy-smi`/DTK
`rocm-smi`, and `amd-smi monitor`. Read by label, never by position.

Layout: banner lines (`==== ROCm System Management Interface ====`) and rules are skipped. The header
is the first line that starts with a device label (`GPU`, `DCU`, `HCU`, `Device`) and holds another
known label; labels are separated by two or more spaces, so a label may contain one
(`Temp (DieEdge)`). Header lines right under it that start with spaces continue its labels
column by column (`Temp` over `(Edge)` is `Temp (Edge)`; `Name (20 chars)` is a label of its
own). A device starts on a line that starts with its number; lines under it that start with
spaces are read under the continuation labels (the model name of newer rocm-smi). A row's cells
are its runs separated by two or more spaces (`182 W`, `N/A, N/A` stay one cell); when they do
not match the labels one to one, each goes to the label whose column it overlaps most.
Values carry their units (`50.0c`, `34.0°C`, `23.0W`, `1319Mhz`, `83 %`). VRAM% gives no byte
counts, so memory is absent here.
"""

from __future__ import annotations

import re

from xpuctl.agent.core import model
from xpuctl.agent.core.parse import common

INDEX = ("GPU", "DCU", "HCU", "Device")
# field -> labels (any case); a label also matches with a qualifier after it (`Temp (Edge)`)
FIELDS: dict[str, tuple[str, ...]] = {
    "temperature": ("Temp", "GPU_TEMP", "Temperature", "Temp (Edge)", "Temp (DieEdge)", "Temp (Junction)"),
    "power": ("AvgPwr", "Power", "POWER", "Power (Avg)", "Power (Socket)", "Pwr"),
    "cap": ("PwrCap", "Power Cap", "POWER_CAP"),
    "sclk": ("SCLK", "GFX_CLOCK"),
    "mclk": ("MCLK", "MEM_CLOCK"),
    "util": ("GPU%", "DCU%", "HCU%", "GFX_UTIL", "GFX%"),
    "mem_temp": ("MEM_TEMP",),
    "name": ("Name",),
}
KNOWN = {label.lower() for labels in FIELDS.values() for label in labels}
_CELL = re.compile(r"\S(?:\S|\s(?=\S))*")  # a run of text with single spaces inside


def _cells(line: str) -> list[tuple[int, int, str]]:
    """(start, end, text) of each cell: runs separated by two or more spaces."""
    return [(m.start(), m.end(), m.group()) for m in _CELL.finditer(line)]


def _is_banner(line: str) -> bool:
    s = line.strip()
    return not s or s.startswith(("==", "--", "++")) or set(s) <= set("=-+ ")


def _known(label: str) -> bool:
    low = label.lower()
    return low in KNOWN or low.split(" (")[0] in KNOWN


def _header_at(lines: list[str]) -> int | None:
    for i, line in enumerate(lines):
        cells = _cells(line)
        if cells and line[:1].strip() and cells[0][2] in INDEX and any(_known(c[2]) for c in cells[1:]):
            return i
    return None


def _spans(cells: list[tuple[int, int, str]], width: int) -> list[tuple[int, int]]:
    """Each label's column: from its start to the next label's start."""
    starts = [c[0] for c in cells]
    return [(s, starts[k + 1] if k + 1 < len(starts) else width) for k, s in enumerate(starts)]


def _place(row: list[tuple[int, int, str]], labels: list[str], spans: list[tuple[int, int]]) -> dict[str, str]:
    """A row's cells by label: one to one when the counts match, else by the column they overlap."""
    if len(row) == len(labels):
        return {label: text for label, (_, _, text) in zip(labels, row, strict=True)}
    out: dict[str, str] = {}
    for start, end, text in row:
        k = max(range(len(spans)), key=lambda j: min(end, spans[j][1]) - max(start, spans[j][0]))
        out[labels[k]] = f"{out[labels[k]]} {text}" if labels[k] in out else text
    return out


def parse(text: str, vendor: str, timestamp_ns: int = 0, *, tool: str | None = None) -> list[common.Parsed]:
    """Every device row.

    Raises:
        ParseError: no header with a device label, or no device row under it.
    """
    tool = tool or ("rocm-smi" if vendor == "amd" else "hy-smi")
    lines = [line.rstrip() for line in text.splitlines()]
    head = _header_at(lines)
    if head is None:
        first = next((x for x in lines if not _is_banner(x)), lines[0] if lines else "")
        raise common.ParseError(tool, 1, first, "no `GPU  Temp  AvgPwr ...` header")
    width = max(len(x) for x in lines)
    main = _cells(lines[head])
    labels, spans = [c[2] for c in main], _spans(main, width)
    extra: list[tuple[str, tuple[int, int]]] = []  # continuation labels, read on a device's later lines
    n = head + 1
    while n < len(lines) and lines[n][:1] == " " and not lines[n].lstrip()[:1].isdigit():
        for start, end, label in _cells(lines[n]):
            k = max(range(len(spans)), key=lambda j: min(end, spans[j][1]) - max(start, spans[j][0]))
            if label.startswith("(") and not extra_overlaps(start, end, extra):
                labels[k] = f"{labels[k]} {label}"  # `Temp` + `(Edge)`
            else:
                extra.append((label, (start, end)))
        n += 1
    devices: list[tuple[int, dict[str, str], list[str]]] = []
    for i in range(n, len(lines)):
        line = lines[i]
        if _is_banner(line):
            if devices and line.strip():
                break  # the closing banner
            continue
        row = _cells(line)
        if row and row[0][2].isdigit() and row[0][0] <= spans[0][1]:
            devices.append((i + 1, _place(row, labels, spans), []))
        elif line[:1] == " " and devices and extra:
            devices[-1][2].extend(text for _, _, text in row)
        elif devices:
            break
    if not devices:
        raise common.ParseError(tool, head + 2, lines[head + 1] if head + 1 < len(lines) else "", "no device row")
    names = [label for label, _ in extra]
    return [_device(v, rest, names, labels, vendor, timestamp_ns) for _, v, rest in devices]


def extra_overlaps(start: int, end: int, extra: list[tuple[str, tuple[int, int]]]) -> bool:
    """Whether a continuation label already sits at these columns."""
    return any(min(end, e) > max(start, s) for _, (s, e) in extra)


def _pick(v: dict[str, str], labels: list[str], field: str) -> str | None:
    wanted = [w.lower() for w in FIELDS[field]]
    for want in wanted:  # the exact label first, then one with a qualifier (`Temp (Edge)`)
        for label in labels:
            if label.lower() == want and label in v:
                return v[label]
    for want in wanted:
        for label in labels:
            if label.lower().split(" (")[0] == want and label in v:
                return v[label]
    return None


def _device(
    v: dict[str, str], rest: list[str], names: list[str], labels: list[str], vendor: str, ts: int
) -> common.Parsed:
    index = int(v[labels[0]])
    read = common.Reader()
    name = next((text for label, text in zip(names, rest, strict=False) if "name" in label.lower()), "")
    info = model.DeviceInfo(
        uuid=f"{vendor}-card{index}", index=index, vendor=vendor, model=name, power_cap_settable=True
    )  # DESIGN 7: ROCm SMI sets caps on both
    sample = model.DeviceSample(
        index=index,
        timestamp_ns=ts,
        temperature_c=read.number("temperature", _pick(v, labels, "temperature"), "C"),
        memory_temperature_c=read.number("memory temperature", _pick(v, labels, "mem_temp"), "C"),
        power_w=read.number("power", _pick(v, labels, "power"), "W"),
        power_limit_w=read.number("power cap", _pick(v, labels, "cap"), "W"),
        core_clock_hz=read.number("core clock", _pick(v, labels, "sclk"), "MHz"),
        memory_clock_hz=read.number("memory clock", _pick(v, labels, "mclk"), "MHz"),
        utilization=read.number("utilization", _pick(v, labels, "util"), "%"),
    )
    return common.with_warnings(common.Parsed(info=info, sample=sample), read.warnings)
