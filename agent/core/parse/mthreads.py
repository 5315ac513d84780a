"""`mthreads-gmi` (Moore Threads): its device table, read by header labels.

Layout (1.12 and 2.3 in the fixtures): a `----` banner, then a header of 3 lines whose cells are
separated by `|` without outer borders (`ID   Name | PCIe | %GPU  Mem`, `Device Type [Perf] |
Pcie Lane Width | Temp  MPC Capable`, `| ECC Mode` with the first cells blank), a `+----` rule,
and 3-line records separated by `+----` rules. Memory reads `USEDMiB(TOTALMiB)`. The table shows
no power: power is absent here (mthreads-gmi -q has it; not parsed yet).
"""

from __future__ import annotations

import re

from xpuctl.agent.core import model
from xpuctl.agent.core.parse import common, table

TOOL = "mthreads-gmi"
_MEM = re.compile(r"^\s*(?P<used>[^()]+?)\s*\((?P<total>[^()]+)\)\s*$")


def _cells(line: str, n: int) -> list[str]:
    cells = line.split("|")
    return cells + [""] * (n - len(cells))


def parse(text: str, timestamp_ns: int = 0) -> list[common.Parsed]:
    """Every device of the table.

    Raises:
        ParseError: no `ID ... Name` header or a record that does not match it.
    """
    lines = text.splitlines()
    head = next((i for i, line in enumerate(lines) if line.startswith("ID") and "Name" in line and "|" in line), None)
    if head is None:
        raise common.ParseError(TOOL, 1, lines[0] if lines else "", "no `ID   Name | ...` header")
    rule = next((i for i in range(head, len(lines)) if lines[i].startswith("+")), None)
    if rule is None:
        raise common.ParseError(TOOL, head + 1, lines[head], "no `+----` rule under the header")
    width = len(lines[head].split("|"))
    header = [[table._labels(c) for c in _cells(line, width)] for line in lines[head:rule]]  # noqa: SLF001
    out: list[common.Parsed] = []
    record: list[tuple[int, str]] = []
    for i in range(rule + 1, len(lines)):
        line = lines[i]
        if table.is_rule(line) or not line.strip() or line.strip() == "...":
            if record:
                out.append(_device(record, header, width, timestamp_ns))
                record = []
            if not line.startswith("+") and line.strip() != "...":
                break  # the table's bottom border, a blank line or the truncation mark
            continue
        record.append((i + 1, line))
    if record:
        out.append(_device(record, header, width, timestamp_ns))
    return out


def _device(
    record: list[tuple[int, str]], header: list[list[list[tuple[int, str]]]], width: int, ts: int
) -> common.Parsed:
    line_no, first = record[0]
    problems = []
    if len(record) != len(header):
        problems.append(f"{TOOL} line {line_no}: a record of {len(record)} line(s) under a header of {len(header)}")
    v: dict[str, str] = {}
    for (_, line), labels in zip(record, header, strict=False):
        for cell, cell_labels in zip(_cells(line, width), labels, strict=False):
            v.update(table._values(cell, cell_labels))  # noqa: SLF001
    raw_index = v.get("ID", "")
    if not raw_index.isdigit():
        raise common.ParseError(TOOL, line_no, first, f"no device number in {raw_index!r}")
    index = int(raw_index)
    read = common.Reader()
    used = total = None
    m = _MEM.match(v.get("Mem", ""))
    if m:
        used, total = read.number("memory used", m.group("used"), "MiB"), read.number("memory", m.group("total"), "MiB")
    elif v.get("Mem"):
        read.warnings.append(f"memory: not `USED(TOTAL)`: {v['Mem']!r}")
    info = model.DeviceInfo(
        uuid=f"moorethreads-{index}",
        index=index,
        vendor="moorethreads",
        model=v.get("Name", ""),
        bus_id=v.get("PCIe", ""),
        memory_total_bytes=int(total) if total is not None else None,
        power_cap_settable=False,  # DESIGN 7: no public setter
    )
    sample = model.DeviceSample(
        index=index,
        timestamp_ns=ts,
        utilization=read.number("utilization", v.get("%GPU"), "%"),
        memory_used_bytes=used,
        temperature_c=read.number("temperature", v.get("Temp"), "C"),
    )
    return common.with_warnings(common.Parsed(info=info, sample=sample), [*problems, *read.warnings])
