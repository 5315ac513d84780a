"""`efsmi -q` (Enflame GCU): `Key : value` blocks per `DEV ID n`, nested by indentation.

Read by label inside its section (`Power Info / Cur Power`), so added or missing keys do not
shift anything. Units are in the values (`96 W`, `42976 MiB`, `35 ℃`, `0.0 %`). `Power Capa` is
the enforced power limit; Enflame has no public setter (DESIGN 7).
"""

from __future__ import annotations

import re

from xpuctl.agent.core import model
from xpuctl.agent.core.parse import common, table

TOOL = "efsmi -q"
_KV = re.compile(r"^(?P<indent>\s*)(?P<key>[^:]+?)\s*:\s*(?P<value>.*)$")


def _blocks(text: str) -> list[tuple[int, int, dict[str, str]]]:
    """(device id, line number, {"Section/Key": value}) per `DEV ID` block."""
    out: list[tuple[int, int, dict[str, str]]] = []
    current: dict[str, str] | None = None
    section = ""
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("DEV ID"):
            try:
                dev = int(line.split()[-1])
            except ValueError:
                raise common.ParseError(TOOL, n, line, "a DEV ID that is not a number") from None
            current = {}
            out.append((dev, n, current))
            continue
        if current is None or not line.strip() or line.strip() == "...":
            continue
        m = _KV.match(line)
        if m is None:
            section = line.strip()
            continue
        current[f"{section}/{m.group('key').strip()}"] = m.group("value").strip()
    return out


def _num(v: dict[str, str], key: str, unit: str, read: common.Reader | None = None) -> float | None:
    """A value of a block; with `read`, one that is not a number is null and noted, not an error."""
    raw = v.get(key)
    if raw is None:
        return None
    if read is not None:
        return read.number(key, raw, unit)
    return common.number(raw, unit)


def parse_q(text: str, timestamp_ns: int = 0) -> list[common.Parsed]:
    """Every `DEV ID` block.

    Raises:
        ParseError: no `DEV ID` block, or a value that is not a number where one is expected.
    """
    blocks = _blocks(text)
    if not blocks:
        lines = text.splitlines()
        raise common.ParseError(TOOL, 1, lines[0] if lines else "", "no `DEV ID n` block")
    out = []
    for dev, line_no, v in blocks:
        read = common.Reader()
        try:
            total = _num(v, "Device Mem Info/Total Size", "MiB", read)
            health = v.get("Device Info/Health", "").lower()
            bus = v.get("PCIe Info/Bus")
            info = model.DeviceInfo(
                uuid=v.get("Device Info/Dev UUID") or f"enflame-{dev}",
                index=dev,
                vendor="enflame",
                model=v.get("Device Info/Dev Name", ""),
                bus_id=(
                    f"{v.get('PCIe Info/Domain', '0000')}:{bus}:{v.get('PCIe Info/Dev', '00')}."
                    f"{v.get('PCIe Info/Func', '0')}"
                )
                if bus
                else "",
                driver_version=v.get("Driver Info/Ver", ""),
                memory_total_bytes=int(total) if total is not None else None,
                power_cap_settable=False,
            )
            sample = model.DeviceSample(
                index=dev,
                timestamp_ns=timestamp_ns,
                health=model.Health.OK
                if health == "true"
                else model.Health.DEGRADED
                if health == "false"
                else model.Health.UNKNOWN,
                health_reason="" if health == "true" else f"efsmi health {health or '(absent)'}",
                utilization=_num(v, "Device Usage Info/GCU Usage", "%", read),
                memory_used_bytes=_num(v, "Device Mem Info/Used Size", "MiB", read),
                power_w=_num(v, "Power Info/Cur Power", "W", read),
                power_limit_w=_num(v, "Power Info/Power Capa", "W", read),
                temperature_c=_num(v, "Temperature Info/GCU Temp", "C", read),
                memory_clock_hz=_num(v, "Clock Info/Mem CLK", "MHz", read),
            )
        except ValueError as exc:
            raise common.ParseError(TOOL, line_no, f"DEV ID {dev}", str(exc)) from None
        out.append(common.with_warnings(common.Parsed(info=info, sample=sample), read.warnings))
    return out


TABLE_TOOL = "efsmi"


def parse_table(text: str, timestamp_ns: int = 0) -> list[common.Parsed]:
    """`efsmi`'s default table (v1.2): a 2-line header framed by `|----` rules, 2-line records.

    Labels: `DEV NAME | FW VER | BUS-ID ECC` / `TEMP Dpm Pwr(Usage/Cap) | Mem GCU Virt | DUsed SN`.
    `Mem` is the device memory size. `DUsed` is a percentage whose meaning no public source states
    (memory in use, or the GCU's load?): it is not turned into a number it may not be, so memory in
    use and utilisation are absent here (`efsmi -q` has both). `Pwr(Usage/Cap)` prints the two
    values without a slash.

    Raises:
        ParseError: no `DEV ... NAME` header, or a record that does not match it.
    """
    lines = text.splitlines()
    head = next((i for i, line in enumerate(lines) if line.startswith("|") and "DEV" in line and "NAME" in line), None)
    if head is None:
        raise common.ParseError(TABLE_TOOL, 1, lines[0] if lines else "", "no `| DEV  NAME | ...` header")
    grid = table.Grid.of(lines[head : head + 2])
    out: list[common.Parsed] = []
    skipped: list[common.ParseError] = []
    records: list[list[tuple[int, str]]] = [[]]
    for n in range(head + 3, len(lines)):
        line = lines[n]
        if table.is_rule(line):
            records.append([])
            continue
        if not line.startswith("|"):
            break
        records[-1].append((n + 1, line))
    for record in records:
        for r in table.split_record(record, 2) if record else []:
            try:  # a record that cannot be a device is skipped; the others are read
                out.append(_table_device(r, grid, timestamp_ns))
            except common.ParseError as exc:
                skipped.append(exc)
    if not out and skipped:
        raise skipped[0]
    return [common.with_warnings(p, [f"skipped a record: {exc}" for exc in skipped]) for p in out]


def _table_device(record: list[tuple[int, str]], grid: table.Grid, ts: int) -> common.Parsed:
    """One device of the table, read by the box-table engine (a missing or extra `|` or line costs
    the values it held, with a warning); only a record without a device number is refused.
    """
    line_no, first = record[0]
    v, problems = table.read_record(record, grid)
    read = common.Reader()
    read.warnings.extend(f"line {line_no}: {p}" for p in problems)
    if not v.get("dev", "").isdigit():
        raise common.ParseError(TABLE_TOOL, line_no, first, "a device record without a device number")
    index = int(v["dev"])
    pwr = v.get("pwr(usage/cap)", "").split()
    if len(pwr) not in (0, 2):
        read.warnings.append(f"power: not `usage cap`: {' '.join(pwr)!r}")
    total = read.number("memory size", v.get("mem"), "MiB")
    info = model.DeviceInfo(
        uuid=f"enflame-{index}",
        index=index,
        vendor="enflame",
        model=v.get("name", ""),
        bus_id=v.get("bus-id", ""),
        memory_total_bytes=int(total) if total is not None else None,
        power_cap_settable=False,
    )
    sample = model.DeviceSample(
        index=index,
        timestamp_ns=ts,
        temperature_c=read.number("temperature", v.get("temp"), "C"),
        power_w=read.number("power", pwr[0], "W") if len(pwr) == 2 else None,
        power_limit_w=read.number("power cap", pwr[1], "W") if len(pwr) == 2 else None,
    )
    return common.with_warnings(common.Parsed(info=info, sample=sample), read.warnings)
