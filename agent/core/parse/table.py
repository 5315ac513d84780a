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

import re

from xpuctl.agent.core import model
from xpuctl.agent.core.parse import common

# field -> labels, first present wins
LABELS: dict[str, tuple[str, ...]] = {
    "index": ("GPU", "XPU", "Card", "Board"),
    "name": ("Name",),
    "bus": ("Bus-Id", "Bus-id"),
    "temp": ("Temp",),
    "power": ("Pwr:Usage/Cap",),
    "memory": ("Memory-Usage",),
    "util": ("GPU-Util", "XPU-Util", "Util"),
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
}
_WIDE = re.compile(r"\s{2,}")


def _cells(line: str) -> list[str]:
    s = line.strip()
    return s[1:-1].split("|") if s.endswith("|") else s[1:].split("|")


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
    out = {}
    for k, (start, label) in enumerate(labels):
        end = labels[k + 1][0] if k + 1 < n else len(cell)
        out[label] = cell[start:end].strip()
    return out


def parse(text: str, vendor: str, timestamp_ns: int = 0) -> list[common.Parsed]:
    """Every device row of the table.

    Raises:
        ParseError: no `|===` header rule, or a record that does not match the header.
    """
    tool, settable = TOOLS[vendor]
    lines = text.splitlines()
    rule = next((i for i, line in enumerate(lines) if line.lstrip().startswith("|=")), None)
    if rule is None:
        raise common.ParseError(tool, 1, lines[0] if lines else "", "no `|====` rule under a device header")
    top = rule
    while top > 0 and lines[top - 1].lstrip().startswith("|") and not lines[top - 1].lstrip().startswith("|-"):
        top -= 1
    header = [[_labels(c) for c in _cells(line)] for line in lines[top:rule]]
    if not header:
        raise common.ParseError(tool, rule + 1, lines[rule], "no header lines above the rule")
    out: list[common.Parsed] = []
    record: list[tuple[int, str]] = []
    for i in range(rule + 1, len(lines)):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith(("+", "|-")):
            if record:
                out.append(_record(record, header, tool, vendor, settable=settable, ts=timestamp_ns))
                record = []
            continue
        if not stripped.startswith("|"):
            break  # end of the device table
        record.append((i + 1, line))
    if record:
        out.append(_record(record, header, tool, vendor, settable=settable, ts=timestamp_ns))
    return out


def _record(
    record: list[tuple[int, str]],
    header: list[list[list[tuple[int, str]]]],
    tool: str,
    vendor: str,
    *,
    settable: bool,
    ts: int,
) -> common.Parsed:
    line_no, first = record[0]
    if len(record) != len(header):
        raise common.ParseError(
            tool, line_no, first, f"a device record has {len(record)} lines, the header {len(header)}"
        )
    v: dict[str, str] = {}
    for (n, line), labels in zip(record, header, strict=True):
        cells = _cells(line)
        if len(cells) != len(labels):
            raise common.ParseError(tool, n, line, f"{len(cells)} cells under a {len(labels)}-cell header")
        for cell, cell_labels in zip(cells, labels, strict=True):
            v.update(_values(cell, cell_labels))
    try:
        return _device(v, vendor, settable=settable, ts=ts)
    except (ValueError, KeyError) as exc:
        raise common.ParseError(tool, line_no, first, str(exc)) from None


def _get(v: dict[str, str], field: str) -> str | None:
    return next((v[label] for label in LABELS[field] if label in v), None)


def _device(v: dict[str, str], vendor: str, *, settable: bool, ts: int) -> common.Parsed:
    raw_index = _get(v, "index")
    if raw_index is None or not raw_index.isdigit():
        msg = f"no device number (a {'/'.join(LABELS['index'])} column) in {raw_index!r}"
        raise ValueError(msg)
    index = int(raw_index)
    power, cap = common.used_total(_get(v, "power") or "", "W")
    used, total = common.used_total(_get(v, "memory") or "", "MiB")
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
        utilization=common.number(_get(v, "util") or "", "%"),
        memory_used_bytes=used,
        power_w=power,
        power_limit_w=cap,
        temperature_c=common.number(_get(v, "temp") or "", "C"),
        core_clock_hz=common.number(_get(v, "clock_sm") or "", "MHz"),
        memory_clock_hz=common.number(_get(v, "clock_mem") or "", "MHz"),
        # the ECC cell shows a count, or words when ECC or the column is off (`Off`, MIG's `On`)
        ecc_uncorrected_total=float(ecc) if ecc is not None and ecc.isdigit() else None,
    )
    return common.Parsed(info=info, sample=sample)


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
