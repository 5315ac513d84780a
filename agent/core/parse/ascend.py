"""`npu-smi info` (Huawei Ascend): the device table, read by its header labels.

Layout (every version in the fixtures, 20.2 to 25.5): a title row, then a two-line header whose
`|`-separated cells each hold several labels (`Power(W)    Temp(C)    Hugepages-Usage(page)`),
then one two-line record per chip, records separated by `+===...` or `+---...` rules, and an
optional process table after an empty-header block. A value sits under its label: the parser
splits each record cell at its labels' start columns (falling back to token order when a value
overflows its column). `NA` and anonymised names (`xxx`) are absent. Health: OK -> ok, Warning ->
degraded, Alarm/Critical -> failed (npu-smi's own severity words).
"""

from __future__ import annotations

import re

from xpuctl.agent.core import model
from xpuctl.agent.core.parse import common, table

TOOL = "npu-smi"
HEALTH = {
    "ok": model.Health.OK,
    "warning": model.Health.DEGRADED,
    "alarm": model.Health.FAILED,
    "critical": model.Health.FAILED,
}
_TOKENS = re.compile(r"\S+\s*/\s*\S+|\S+")
_LABEL = re.compile(r"\S+(?:\([^)]*\))?")


def _cells(line: str) -> list[str]:
    return line.strip().strip("|").split("|")


def _labels(cell: str) -> list[tuple[int, str]]:
    return [(m.start(), m.group(0)) for m in _LABEL.finditer(cell)]


def _values(cell: str, labels: list[tuple[int, str]]) -> dict[str, str]:
    """The values of one record cell, keyed by label."""
    tokens = _TOKENS.findall(cell)
    if len(tokens) == len(labels):
        return {label: tok for (_, label), tok in zip(labels, tokens, strict=True)}
    out = {}
    for k, (start, label) in enumerate(labels):
        end = labels[k + 1][0] if k + 1 < len(labels) else len(cell)
        out[label] = cell[start:end].strip()
    return out


def parse_info(text: str, timestamp_ns: int = 0) -> list[common.Parsed]:
    """Every chip of an `npu-smi info` table.

    Raises:
        ParseError: no device header, or a record that does not match it.
    """
    lines = text.splitlines()
    head = next((i for i, line in enumerate(lines) if "NPU" in line and "Health" in line and "|" in line), None)
    if head is None or head + 1 >= len(lines):
        raise common.ParseError(TOOL, 1, lines[0] if lines else "", "no `NPU ... | Health | ...` header")
    header = [[_labels(c) for c in _cells(lines[head])], [_labels(c) for c in _cells(lines[head + 1])]]
    out: list[common.Parsed] = []
    skipped: list[common.ParseError] = []
    record: list[tuple[int, str]] = []
    for i in range(head + 2, len(lines)):
        line = lines[i]
        if line.startswith("+"):
            if record:
                out.extend(_chips(record, header, timestamp_ns, skipped))
                record = []
            continue
        if not line.startswith("|"):
            continue
        if "Process" in line and "NPU" in line:  # the process table follows: done
            break
        record.append((i + 1, line))
    if record:
        out.extend(_chips(record, header, timestamp_ns, skipped))
    if not out and skipped:
        raise skipped[0]
    warnings = [f"skipped a record: {exc}" for exc in skipped]
    return [common.with_warnings(p, warnings) for p in out]


def _chips(
    record: list[tuple[int, str]],
    header: list[list[list[tuple[int, str]]]],
    ts: int,
    skipped: list[common.ParseError],
) -> list[common.Parsed]:
    """The chips of a record (several when rules between them were lost); a record that names no
    NPU is skipped (kept in `skipped`, for the error when no chip at all is found).
    """
    out = []
    for r in table.split_record(record, 2):
        try:
            out.append(_chip(r, header, ts))
        except common.ParseError as exc:
            skipped.append(exc)
    return out


def _chip(record: list[tuple[int, str]], header: list[list[list[tuple[int, str]]]], ts: int) -> common.Parsed:
    """One chip's record; what cannot be placed costs its fields only (with a warning).

    Raises:
        ParseError: the record names no NPU: it cannot be a device.
    """
    v: dict[str, str] = {}
    problems: list[str] = []
    if len(record) != 2:
        problems.append(f"{TOOL} line {record[0][0]}: a chip record of {len(record)} line(s), expected 2")
    for (line_no, line), labels in zip(record, header, strict=False):
        cells = _cells(line)
        if len(cells) != len(labels):
            problems.append(f"{TOOL} line {line_no}: {len(cells)} cells under a {len(labels)}-cell header")
            continue
        for cell, cell_labels in zip(cells, labels, strict=True):
            v.update(_values(cell, cell_labels))
    line_no, line = record[0]
    try:
        return common.with_warnings(_device(v, ts), problems)
    except (KeyError, ValueError) as exc:
        raise common.ParseError(TOOL, line_no, line, f"no NPU number ({exc})") from None


def _device(v: dict[str, str], ts: int) -> common.Parsed:
    npu = int(v["NPU"])
    chip = int(v.get("Chip", "0"))
    logical = v.get("Device")
    index = int(logical) if logical and logical.isdigit() else npu  # npu-smi addresses 910s by NPU id
    name = v.get("Name", "")
    model_name = "Ascend" if common.absent(name) else (name if name.lower().startswith("ascend") else f"Ascend {name}")
    read = common.Reader()
    mem_used, mem_total = read.pair("memory", v.get("Memory-Usage(MB)"), "MB")
    hbm_used, hbm_total = read.pair("HBM", v.get("HBM-Usage(MB)"), "MB")
    # 910-class parts: HBM is the device memory, "Memory" the on-board DDR; an HBM size the tool
    # does not show is not a reason to report the DDR instead (a wrong number): it stays unknown
    if hbm_total or (hbm_total is None and hbm_used is not None):
        mem_used, mem_total = hbm_used, hbm_total
    health_word = v.get("Health", "").strip()
    health = HEALTH.get(health_word.lower(), model.Health.UNKNOWN)
    util = read.number("AICore utilization", v.get("AICore(%)"), "%")
    info = model.DeviceInfo(
        uuid=f"ascend-npu{npu}-chip{chip}",
        index=index,
        vendor="ascend",
        model=model_name,
        bus_id=v.get("Bus-Id", ""),
        memory_total_bytes=int(mem_total) if mem_total is not None else None,
        power_cap_settable=False,  # DESIGN 7: no public power-cap setter
    )
    sample = model.DeviceSample(
        index=index,
        timestamp_ns=ts,
        health=health,
        health_reason="" if health == model.Health.OK else f"npu-smi health {health_word or '(blank)'}",
        utilization=util,
        memory_used_bytes=mem_used,
        power_w=read.number("power", v.get("Power(W)"), "W"),
        temperature_c=read.number("temperature", v.get("Temp(C)"), "C"),
    )
    return common.with_warnings(common.Parsed(info=info, sample=sample), read.warnings)


def parse_mapping(text: str, timestamp_ns: int = 0) -> list[common.Parsed]:
    """`npu-smi info -m`: the NPU / chip / logic-id map. Devices are the chips with a logic id
    (the `Mcu` board controller has `-`); it shows identity only, so every reading is absent.

    Raises:
        ParseError: no `NPU ID  Chip ID  Chip Logic ID  Chip Name` header, or a short row.
    """
    lines = text.splitlines()
    head = next((i for i, line in enumerate(lines) if line.startswith("NPU ID") and "Chip Logic ID" in line), None)
    if head is None:
        raise common.ParseError(
            "npu-smi info -m", 1, lines[0] if lines else "", "no `NPU ID  Chip ID  Chip Logic ID` header"
        )
    labels = [x.strip() for x in re.split(r"\s{2,}", lines[head].strip())]
    out = []
    for n in range(head + 1, len(lines)):
        if not lines[n].strip():
            continue
        cells = [x.strip() for x in re.split(r"\s{2,}", lines[n].strip())]
        if not cells[0].isdigit():
            break  # the map ended: what follows is not npu-smi's (a log line)
        if len(cells) != len(labels):
            raise common.ParseError(
                "npu-smi info -m", n + 1, lines[n], f"{len(cells)} values under {len(labels)} labels"
            )
        v = dict(zip(labels, cells, strict=True))
        logic = v.get("Chip Logic ID", "-")
        if not logic.isdigit():
            continue  # the board's MCU, not a compute chip
        name = v.get("Chip Name", "")
        model_name = (
            "Ascend"
            if name.lower().endswith("xxx")
            else (name if name.lower().startswith("ascend") else f"Ascend {name}")
        )
        index = int(logic)
        info = model.DeviceInfo(
            uuid=f"ascend-npu{v['NPU ID']}-chip{v['Chip ID']}",
            index=index,
            vendor="ascend",
            model=model_name,
            power_cap_settable=False,
        )
        out.append(common.Parsed(info=info, sample=model.DeviceSample(index=index, timestamp_ns=timestamp_ns)))
    return out


def _blocks(text: str) -> list[dict[str, tuple[str, int]]]:
    """`Key : value` blocks separated by blank lines; keys without the space before a unit
    (`NPU Temperature (C)` is `NPU Temperature(C)`).
    """
    blocks: list[dict[str, tuple[str, int]]] = [{}]
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            if blocks[-1]:
                blocks.append({})
            continue
        key, sep, value = line.partition(" : ")
        if not sep:
            key, sep, value = line.partition(":")
        if sep:
            blocks[-1][re.sub(r"\s+\(", "(", key.strip())] = (value.strip(), n)
    return [b for b in blocks if b]


# field -> keys, first present wins (npu-smi 21 to 25: `-t common`, `usages`, `temp`, `power`, `board`)
T_KEYS: dict[str, tuple[str, ...]] = {
    "util": ("Aicore Usage Rate(%)", "NPU Utilization(%)"),
    "temp": ("Temperature(C)", "NPU Temperature(C)", "Chip Temperature(C)"),
    "power": ("NPU Real-time Power(W)", "Power Dissipation(W)", "Real-time Power(W)", "Power(W)"),
    "freq": ("Aicore curFreq(MHZ)", "Aicore curFreq(MHz)"),
    "hbm": ("HBM Capacity(MB)",),
    "ddr": ("DDR Capacity(MB)",),
    "model": ("Chip Name", "Product Name"),
}


def parse_t(text: str, timestamp_ns: int = 0) -> list[common.Parsed]:
    """`npu-smi info -t common|usages|temp|power|board -i N` and `npu-smi info -l`.

    `Key : value` blocks. `-l` lists NPUs (`Total Count`, then `NPU ID`/`Chip Count` per NPU):
    identity only. The `-t` views describe one NPU: a block holding a `Chip ID` belongs to that
    chip (usages prints it last, common first), a block with `Chip Name : mcu` is the board
    controller (not a device); a view without any `Chip ID` (board, `-t power` of a card) holds
    the NPU's keys for each of its `Chip Count` chips. Power is the chip's own, else the board's
    when the NPU has one chip (shared otherwise: absent, with a warning). Memory is the
    capacity the view prints; a usage rate alone gives no byte count (absent, not derived).

    Raises:
        ParseError: no `NPU ID` line.
    """
    blocks = _blocks(text)
    if any("Total Count" in b for b in blocks):
        return _listed(blocks, timestamp_ns)
    npu = next((b["NPU ID"][0] for b in blocks if "NPU ID" in b), None)
    if npu is None:
        lines = text.splitlines()
        raise common.ParseError("npu-smi info -t", 1, lines[0] if lines else "", "no `NPU ID : n` line")
    chips: dict[int, dict[str, tuple[str, int]]] = {}
    board: dict[str, tuple[str, int]] = {}
    count = 1
    for b in blocks:
        if "Chip Count" in b and b["Chip Count"][0].isdigit():
            count = int(b["Chip Count"][0])
        if b.get("Chip Name", ("", 0))[0].lower() == "mcu":
            board = b
        elif "Chip ID" in b and b["Chip ID"][0].isdigit():
            chips.setdefault(int(b["Chip ID"][0]), {}).update(b)
    shared: list[str] = []
    if not chips:  # a per-NPU view (board, or power of a whole card): the NPU's keys, for each chip
        own = {k: v for b in blocks if b is not board for k, v in b.items()}
        if count > 1 and (watts := next((own.pop(k)[0] for k in T_KEYS["power"] if k in own), None)):
            shared.append(f"power: the card's {watts} W is shared by its {count} chips: not given to one")
        chips = dict.fromkeys(range(count), own)
    out = []
    for chip, v in sorted(chips.items()):
        read = common.Reader()
        read.warnings.extend(shared)

        def get(field: str, v: dict[str, tuple[str, int]] = v) -> str | None:
            return next((v[k][0] for k in T_KEYS[field] if k in v), None)

        power = read.number("power", get("power"), "W")
        if power is None and count == 1:
            power = read.number("board power", next((board[k][0] for k in T_KEYS["power"] if k in board), None), "W")
        cap = read.number("HBM capacity", get("hbm"), "MB") or read.number("DDR capacity", get("ddr"), "MB")
        name = get("model") or ""
        info = model.DeviceInfo(
            uuid=f"ascend-npu{npu}-chip{chip}",
            index=chip,
            vendor="ascend",
            model="" if common.absent(name) or name.lower() == "mcu" else name,
            memory_total_bytes=int(cap) if cap else None,
            power_cap_settable=False,
        )
        sample = model.DeviceSample(
            index=chip,
            timestamp_ns=timestamp_ns,
            utilization=read.number("utilization", get("util"), "%"),
            temperature_c=read.number("temperature", get("temp"), "C"),
            power_w=power,
            core_clock_hz=read.number("core clock", get("freq"), "MHz"),
        )
        out.append(common.with_warnings(common.Parsed(info=info, sample=sample), read.warnings))
    return out


def _listed(blocks: list[dict[str, tuple[str, int]]], timestamp_ns: int) -> list[common.Parsed]:
    """`npu-smi info -l`: one device per chip of each listed NPU, identity only."""
    out = []
    for b in blocks:
        if "NPU ID" not in b or not b["NPU ID"][0].isdigit():
            continue
        npu = int(b["NPU ID"][0])
        chips = int(b["Chip Count"][0]) if b.get("Chip Count", ("", 0))[0].isdigit() else 1
        for chip in range(chips):
            info = model.DeviceInfo(
                uuid=f"ascend-npu{npu}-chip{chip}", index=npu, vendor="ascend", model="", power_cap_settable=False
            )
            out.append(common.Parsed(info=info, sample=model.DeviceSample(index=npu, timestamp_ns=timestamp_ns)))
    return out
