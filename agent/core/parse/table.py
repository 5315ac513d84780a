"""The nvidia-smi-style device table, as NVIDIA's `nvidia-smi`, Cambricon's `cnmon`, MetaX's
`mx-smi`, Iluvatar's `ixsmi` and Kunlunxin's `xpu-smi` print it, read by header labels.

Layout: a header of 2 or 3 `|` lines just above the `|===` rule; each header cell holds labels
separated by two or more spaces (`Fan  Temp  Perf  Pwr:Usage/Cap`; a label may contain single
spaces: `Volatile Uncorr. ECC`). Then one record per device with as many lines as the header,
records separated by `+---` rules, until a blank line (the process table follows). A record
cell's values are matched to its labels by, in turn: splitting at runs of two or more spaces,
the same with `a / b` pairs joined, single-space tokens, and last the labels' columns. Which
label means what is the LABELS table below; vendor differences are only in label names.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import msgspec

from xpuctl.agent.core import model
from xpuctl.agent.core.parse import common

# field -> labels (any case), first present wins
LABELS: dict[str, tuple[str, ...]] = {
    "index": ("GPU", "XPU", "PPU", "Card", "Board", "MLU", "DCU", "NPU", "ID"),
    "name": ("Name", "Product Name", "GPU-Name"),
    "bus": ("Bus-Id", "Bus-id", "BusId"),
    "temp": ("Temp", "Temperature"),
    "power": ("Pwr:Usage/Cap", "Power:Usage/Cap", "Pwr:Usage/Cap(W)", "Power-Usage"),
    "memory": ("Memory-Usage", "Memory Usage", "Mem-Usage"),
    "util": ("GPU-Util", "XPU-Util", "PPU-Util", "MLU-Util", "Util", "Volatile GPU-Util", "GFX-Uti", "GFX-Util"),
    "ecc_uncorrected": ("Volatile Uncorr. ECC", "Ecc-Error"),
    "clock_sm": ("Clock-SM",),
    "clock_mem": ("Clock-Mem",),
}
# vendor -> (tool, public power-cap setter? DESIGN 7)
TOOLS: dict[str, tuple[str, bool]] = {
    "nvidia": ("nvidia-smi", True),
    "cambricon": ("cnmon", True),
    "metax": ("mx-smi", False),
    "iluvatar": ("ixsmi", False),
    "kunlunxin": ("xpu-smi", False),
    "thead": ("ppu-smi", False),
    "amd": ("amd-smi", True),  # its default table (AMD-SMI 26); caps through ROCm SMI (DESIGN 7)
}
# vendor -> the header its tool prints, for device rows captured without theirs (read in this
# order, and said so in a warning): ixsmi 4.1 (tests/fixtures/vendor-smi/iluvatar)
KNOWN_HEADERS: dict[str, tuple[str, ...]] = {
    "iluvatar": (
        "| GPU  Name                     | Bus-Id               | Clock-SM  Clock-Mem  |",
        "| Fan  Temp  Perf  Pwr:Usage/Cap|      Memory-Usage    | GPU-Util  Compute M. |",
    ),
}
_WIDE = re.compile(r"\s{2,}")


def _cells(line: str) -> list[str]:
    s = line.strip()
    return s[1:-1].split("|") if s.endswith("|") else s[1:].split("|")


def _spans(line: str) -> list[tuple[int, int]]:
    """Where each `|`-separated cell of a line sits (character offsets), for lining cells up."""
    bars = [i for i, ch in enumerate(line) if ch == "|"]
    if not bars:
        return [(0, len(line))]
    edges = bars if line.rstrip().endswith("|") else [*bars, len(line)]
    return list(itertools.pairwise(edges))


def _labels(cell: str) -> list[tuple[int, str]]:
    out, pos = [], 0
    for piece in _WIDE.split(cell):
        if piece.strip():
            start = cell.index(piece.strip(), pos)
            out.append((start, piece.strip()))
            pos = start + len(piece.strip())
    return out


def _join_slashes(parts: list[str]) -> list[str]:
    out: list[str] = []
    for p in parts:
        if out and (out[-1].endswith("/") or p.startswith("/")) and p != "/" and out[-1] != "/":
            out[-1] = f"{out[-1]} {p}"
        else:
            out.append(p)
    return out


def _values(cell: str, labels: list[tuple[int, str]]) -> dict[str, str]:
    n = len(labels)
    if n == 0:
        return {}
    wide = [p.strip() for p in _WIDE.split(cell.strip()) if p.strip()]
    for attempt in (wide, _join_slashes(wide), _join_slashes(cell.split())):
        if len(attempt) == n:
            return {label: value for (_, label), value in zip(labels, attempt, strict=True)}
    if n == 2 and len(wide) == 1 and " " in wide[0]:
        first, rest = wide[0].split(" ", 1)  # `0000:03:00.0 ...Radeon AI PRO R9700`: an id, then a name
        return {labels[0][1]: first, labels[1][1]: rest.strip()}
    out = {}
    for k, (start, label) in enumerate(labels):
        end = labels[k + 1][0] if k + 1 < n else len(cell)
        out[label] = cell[start:end].strip()
    return out


def is_rule(line: str) -> bool:
    """A border or separator line: only `+ - = |` (and spaces), with a run of `-` or `=`."""
    s = line.strip()
    return bool(s) and set(s) <= set("+-=|: ") and ("--" in s or "==" in s)


def _header_rule(lines: list[str]) -> int | None:
    """The `|===|` (or `+===+`) line under the device header, if any."""
    return next((i for i, line in enumerate(lines) if line.lstrip().startswith(("|=", "+="))), None)


class Grid(msgspec.Struct, kw_only=True):
    """A box table's header: per header line, its cells' spans and labels."""

    lines: list[str]
    spans: list[list[tuple[int, int]]]
    labels: list[list[list[tuple[int, str]]]]

    @classmethod
    def of(cls, header: list[str]) -> Grid:
        """The grid of these header lines."""
        return cls(
            lines=header,
            spans=[_spans(line) for line in header],
            labels=[[_labels(c) for c in _cells(line)] for line in header],
        )


def records(lines: list[str], first: int) -> Iterator[list[tuple[int, str]]]:
    """The device records from line `first` on: runs of `|` lines between rules, until the table
    ends (a blank line or any other line). Line numbers are 1-based.
    """
    record: list[tuple[int, str]] = []
    for i in range(first, len(lines)):
        line = lines[i]
        if "Processes" in line or line.lstrip().startswith(("|=", "+=")):
            break  # the process table below the devices
        if is_rule(line):
            if record:
                yield record
                record = []
            continue
        if not line.strip().startswith("|"):
            break
        record.append((i + 1, line))
    if record:
        yield record


def _split(found: Iterator[list[tuple[int, str]]], size: int) -> Iterator[list[tuple[int, str]]]:
    for record in found:
        yield from split_record(record, size)


def split_record(record: list[tuple[int, str]], size: int) -> list[list[tuple[int, str]]]:
    """A record as the header shapes it: a run of several records whose separators were lost (a
    whole multiple of the header's line count) is cut into records of that size.
    """
    if size > 0 and len(record) > size and len(record) % size == 0:
        return [record[k : k + size] for k in range(0, len(record), size)]
    return [record]


def read_record(record: list[tuple[int, str]], grid: Grid) -> tuple[dict[str, str], list[str]]:
    """A record's values by label (lower-cased), and what could not be placed.

    Record line k is read under header line k; a cell is read under the header cell it overlaps
    most, so a missing or extra `|` costs only that cell, not the record.
    """
    v: dict[str, str] = {}
    problems: list[str] = []
    if len(record) != len(grid.lines):
        problems.append(f"a record of {len(record)} line(s) under a header of {len(grid.lines)}")
    for (_, line), spans, labels in zip(record, grid.spans, grid.labels, strict=False):
        cells = _cells(line)
        if len(cells) == len(labels):
            pairs = list(zip(cells, labels, strict=True))
        else:
            problems.append(f"{len(cells)} cells under a {len(labels)}-cell header: {line.strip()[:80]!r}")
            pairs, claimed = [], set()
            for (start, end), cell in zip(_spans(line), cells, strict=False):
                best = max(range(len(spans)), key=lambda k: min(end, spans[k][1]) - max(start, spans[k][0]))
                if best not in claimed:  # a stray cell does not overwrite the one already read there
                    claimed.add(best)
                    pairs.append((cell, labels[best]))
        for cell, cell_labels in pairs:
            v.update({k.lower(): val for k, val in _values(cell, cell_labels).items()})
    return v, problems


def parse(text: str, vendor: str, timestamp_ns: int = 0) -> list[common.Parsed]:
    """Every device row of the table; rows that are not devices are skipped with a warning.

    Raises:
        ParseError: no device could be found (no header and no known one, or no device row).
    """
    tool, settable = TOOLS[vendor]
    lines = text.splitlines()
    rule = _header_rule(lines)
    warnings: list[str] = []
    if rule is not None:
        top = rule
        while top > 0 and lines[top - 1].lstrip().startswith("|") and not is_rule(lines[top - 1]):
            top -= 1
        if top == rule:
            raise common.ParseError(tool, rule + 1, lines[rule], "no header lines above the rule")
        grid, first = Grid.of(lines[top:rule]), rule + 1
    elif vendor in KNOWN_HEADERS and any(re.match(r"\s*\|\s*\d+\s", line) for line in lines):
        grid = Grid.of(list(KNOWN_HEADERS[vendor]))
        first = next(i for i, line in enumerate(lines) if line.strip().startswith("|"))
        warnings.append(f"{tool}: device rows without their header: read in the order {tool} prints them")
    else:
        raise common.ParseError(
            tool, 1, next((x for x in lines if x.strip()), ""), "no `|====` rule under a device header"
        )
    out: list[common.Parsed] = []
    seen: set[int] = set()
    for record in _split(records(lines, first), len(grid.lines)):
        v, problems = read_record(record, grid)
        line_no, first_line = record[0]
        where = f"{tool} line {line_no}"
        try:
            parsed = _device(v, vendor, settable=settable, ts=timestamp_ns)
        except ValueError as exc:
            warnings.append(f"{where}: not a device row ({exc}): {first_line.strip()[:80]!r}")
            continue
        if parsed.info.index in seen:
            warnings.append(f"{where}: device {parsed.info.index} again; the first row kept")
            continue
        seen.add(parsed.info.index)
        out.append(common.with_warnings(parsed, [*warnings, *(f"{where}: {p}" for p in problems)]))
    if not out:
        line = next((x for x in lines[first:] if x.strip()), "")
        raise common.ParseError(tool, first + 1, line, "no device row under the header")
    return out


def _get(v: dict[str, str], field: str) -> str | None:
    return next((v[label.lower()] for label in LABELS[field] if label.lower() in v), None)


def _device(v: dict[str, str], vendor: str, *, settable: bool, ts: int) -> common.Parsed:
    """One device from its values by label; a field that cannot be read is absent, with a warning.

    Raises:
        ValueError: no device number: not a device row.
    """
    raw_index = _get(v, "index")
    if raw_index is None or not raw_index.isdigit():
        msg = f"no device number (a {'/'.join(LABELS['index'])} column) in {raw_index!r}"
        raise ValueError(msg)
    index = int(raw_index)
    read = common.Reader()
    power, cap = read.pair("power", _get(v, "power"), "W")
    used, total = read.pair("memory", _get(v, "memory"), "MiB")
    bus = (_get(v, "bus") or "").split()
    ecc = _get(v, "ecc_uncorrected")
    info = model.DeviceInfo(
        uuid=f"{vendor}-{index}",
        index=index,
        vendor=vendor,
        model=_get(v, "name") or "",
        bus_id=bus[0] if bus else "",
        memory_total_bytes=int(total) if total is not None else None,
        power_cap_settable=settable,
    )
    sample = model.DeviceSample(
        index=index,
        timestamp_ns=ts,
        utilization=read.number("utilization", _get(v, "util"), "%"),
        memory_used_bytes=used,
        power_w=power,
        power_limit_w=cap,
        temperature_c=read.number("temperature", _get(v, "temp"), "C"),
        core_clock_hz=read.number("core clock", _get(v, "clock_sm"), "MHz"),
        memory_clock_hz=read.number("memory clock", _get(v, "clock_mem"), "MHz"),
        # the ECC cell shows a count, or words when ECC or the column is off (`Off`, MIG's `On`)
        ecc_uncorrected_total=float(ecc) if ecc is not None and ecc.isdigit() else None,
    )
    return common.with_warnings(common.Parsed(info=info, sample=sample), read.warnings)


def parse_topology(text: str, vendor: str = "metax", timestamp_ns: int = 0) -> list[common.Parsed]:
    """A `... topo -m` link matrix (MetaX `mx-smi topo -m`, nvidia-smi alike): the devices are the
    `GPUn` rows; identity only (links and affinities are not in the device model).

    Raises:
        ParseError: no matrix header of `GPU0 GPU1 ...` columns.
    """
    lines = text.splitlines()
    head = next(
        (i for i, line in enumerate(lines) if line.split()[:1] == ["GPU0"] and line.startswith((" ", "\t"))), None
    )
    if head is None:
        raise common.ParseError(
            f"{TOOLS.get(vendor, (vendor,))[0]} topo", 1, lines[0] if lines else "", "no `GPU0 GPU1 ...` header"
        )
    out = []
    for line in lines[head + 1 :]:
        first = line.split()[:1]
        if not first or not re.fullmatch(r"GPU\d+", first[0]):
            break
        index = int(first[0][3:])
        info = model.DeviceInfo(
            uuid=f"{vendor}-{index}",
            index=index,
            vendor=vendor,
            model="",
            power_cap_settable=TOOLS.get(vendor, ("", False))[1],
        )
        out.append(common.Parsed(info=info, sample=model.DeviceSample(index=index, timestamp_ns=timestamp_ns)))
    return out
