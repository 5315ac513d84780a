"""`nvidia-smi --query-gpu=... --format=csv` (and the same query of Iluvatar's `ixsmi`).

Columns are found by the query field names in the header (`power.draw [W]` -> `power.draw`);
values carry their units (`627.40 W`, `143771 MiB`, `100 %`). Without a header (`noheader`), the
caller passes the fields it asked for. Field meanings: NVIDIA's `nvidia-smi --help-query-gpu`.
"""

from __future__ import annotations

import csv
import io
import re

import msgspec

from xpuctl.agent.core import model
from xpuctl.agent.core.parse import common

# query field -> (DeviceSample field, default unit when the value has none)
SAMPLE_FIELDS: dict[str, tuple[str, str]] = {
    "utilization.gpu": ("utilization", "%"),
    "memory.used": ("memory_used_bytes", "MiB"),
    "power.draw": ("power_w", "W"),
    "enforced.power.limit": ("power_limit_w", "W"),
    "temperature.gpu": ("temperature_c", "C"),
    "temperature.memory": ("memory_temperature_c", "C"),
    "clocks.current.sm": ("core_clock_hz", "MHz"),
    "clocks.sm": ("core_clock_hz", "MHz"),
    "clocks.current.memory": ("memory_clock_hz", "MHz"),
    "clocks.mem": ("memory_clock_hz", "MHz"),
    "ecc.errors.corrected.aggregate.total": ("ecc_corrected_total", ""),
    "ecc.errors.uncorrected.aggregate.total": ("ecc_uncorrected_total", ""),
}


def _field(header: str) -> str:
    return header.split("[", 1)[0].strip()


def parse_query_csv(
    text: str,
    *,
    vendor: str = "nvidia",
    tool: str = "nvidia-smi",
    fields: list[str] | None = None,
    timestamp_ns: int = 0,
) -> list[common.Parsed]:
    """Every GPU row of a `--query-gpu` CSV.

    Raises:
        ParseError: no header (and no `fields`), a row of the wrong width, or a value that is not
            a number where one is expected.
    """
    rows = [r for r in csv.reader(io.StringIO(text), skipinitialspace=True) if r and any(c.strip() for c in r)]
    if not rows:
        raise common.ParseError(tool, 1, "", "empty output")
    if fields is None:
        # the header is the first row of query fields; log lines before it are not the tool's
        head = next((k for k, r in enumerate(rows) if {"index", "name"} & {_field(h) for h in r}), None)
        if head is None:
            raise common.ParseError(tool, 1, ",".join(rows[0]), "no header with query fields (use fields=)")
        fields = [_field(h) for h in rows[head]]
        rows = rows[head + 1 :]
    out: list[common.Parsed] = []
    warnings: list[str] = []
    for row in rows:
        if len(row) != len(fields):
            if len(row) > 1:  # a GPU row of another width; a one-cell row is a log line
                warnings.append(f"{tool}: a row of {len(row)} values for {len(fields)} fields: {','.join(row)[:80]!r}")
            continue
        cell = {f: v.strip() for f, v in zip(fields, row, strict=True)}
        try:
            out.append(_device(cell, vendor, len(out), timestamp_ns))
        except ValueError as exc:
            warnings.append(f"{tool}: {exc}: {','.join(row)[:80]!r}")
    if not out:
        why = f"no GPU row ({warnings[0]})" if warnings else "no GPU row"
        raise common.ParseError(tool, 1, ",".join(rows[0]) if rows else "", why)
    return [common.with_warnings(p, warnings) for p in out]


def _device(cell: dict[str, str], vendor: str, row: int, timestamp_ns: int) -> common.Parsed:
    read = common.Reader()

    def num(field: str, unit: str) -> float | None:
        return read.number(field, cell.get(field), unit)

    index = int(num("index", "") or row) if "index" in cell else row
    uuid = cell.get("uuid", "")
    if common.absent(uuid) or set(uuid) <= set("GPU-0"):  # anonymised all-zero UUIDs are no identity
        uuid = ""
    info = model.DeviceInfo(
        uuid=uuid or f"{vendor}-{index}",
        index=index,
        vendor=vendor,
        model=cell.get("name", ""),
        bus_id=cell.get("pci.bus_id", ""),
        driver_version=cell.get("driver_version", ""),
        memory_total_bytes=int(m) if (m := num("memory.total", "MiB")) is not None else None,
        power_limit_min_w=num("power.min_limit", "W"),
        power_limit_max_w=num("power.max_limit", "W"),
        power_limit_default_w=num("power.default_limit", "W"),
        power_cap_settable=vendor == "nvidia",
    )
    values: dict[str, float | None] = {}
    for field, (name, unit) in SAMPLE_FIELDS.items():
        if field in cell and values.get(name) is None:
            values[name] = num(field, unit)
    if values.get("power_limit_w") is None and "power.limit" in cell:
        values["power_limit_w"] = num("power.limit", "W")
    sample = msgspec.structs.replace(model.DeviceSample(index=index, timestamp_ns=timestamp_ns), **values)
    return common.with_warnings(common.Parsed(info=info, sample=sample), read.warnings)


# `ixsmi --format=csv,noheader --query-gpu=...` as GPUStack runs it (fixture source in tests)
IXSMI_GPUSTACK_FIELDS = ["index", "name", "memory.total", "memory.used", "utilization.gpu", "temperature.gpu"]


def parse_ixsmi_csv(text: str, timestamp_ns: int = 0) -> list[common.Parsed]:
    """Iluvatar's `ixsmi` query CSV: with a header, or GPUStack's noheader field list."""
    first = text.lstrip().split("\n", 1)[0]
    fields = None if ("index" in first or "name" in first) else IXSMI_GPUSTACK_FIELDS
    return parse_query_csv(text, vendor="iluvatar", tool="ixsmi", fields=fields, timestamp_ns=timestamp_ns)


_GPU_SECTION = re.compile(r"^(GPU|XPU) [0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]$")

# field -> alternative paths under a device section: nvidia-smi -q first, then Kunlunxin's xpu-smi -q
Q_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "model": (("Product Name",),),
    "uuid": (("GPU UUID",), ("XPU UUID",)),
    "bus": (("PCI", "Bus Id"),),
    "mem_total": (("FB Memory Usage", "Total"), ("Memory Usage", "Total")),
    "mem_used": (("FB Memory Usage", "Used"), ("Memory Usage", "Used")),
    "util": (("Utilization", "GPU"), ("Utilization", "Xpu")),
    "power": (
        ("GPU Power Readings", "Average Power Draw"),
        ("GPU Power Readings", "Power Draw"),
        ("GPU Power Readings", "Instantaneous Power Draw"),
        ("Power Readings", "Average Power Draw"),
        ("Power Readings", "Power Draw"),
        ("Power Readings", "Instantaneous Power Draw"),
    ),
    "limit": (
        ("GPU Power Readings", "Current Power Limit"),
        ("Power Readings", "Enforced Power Limit"),
        ("Power Readings", "Current Power Limit"),
    ),
    "min": (("GPU Power Readings", "Min Power Limit"), ("Power Readings", "Min Power Limit")),
    "max": (("GPU Power Readings", "Max Power Limit"), ("Power Readings", "Max Power Limit")),
    "default": (("GPU Power Readings", "Default Power Limit"), ("Power Readings", "Default Power Limit")),
    "temp": (("Temperature", "GPU Current Temp"), ("Temperature", "XPU Current Temp")),
    "mem_temp": (("Temperature", "Memory Current Temp"),),
    "clock": (("Clocks", "SM"), ("Clocks", "Cluster")),
    "mem_clock": (("Clocks", "Memory"),),
    "ecc_c": (("ECC Errors", "Aggregate", "DRAM Correctable"),),
    "ecc_u": (("ECC Errors", "Aggregate", "DRAM Uncorrectable"),),
}


def parse_q(text: str, timestamp_ns: int = 0, *, vendor: str = "nvidia") -> list[common.Parsed]:
    """`nvidia-smi -q` (and Kunlunxin's look-alike `xpu-smi -q`): one `GPU|XPU <bus id>` section
    per device, read by section and label.

    Raises:
        ParseError: no device section, or a value that is not a number where one is expected.
    """
    tool = "nvidia-smi -q" if vendor == "nvidia" else "xpu-smi -q"
    tree = common.kv_tree(text)
    driver = next((v for path, v, _ in tree if path == ("Driver Version",)), "")
    devices: dict[str, dict[tuple[str, ...], tuple[str, int]]] = {}
    for path, value, line_no in tree:
        if len(path) > 1 and _GPU_SECTION.match(path[0]):
            devices.setdefault(path[0], {})[path[1:]] = (value, line_no)
    if not devices:
        lines = text.splitlines()
        raise common.ParseError(tool, 1, lines[0] if lines else "", "no `GPU <bus id>` or `XPU <bus id>` section")
    return [
        _q_device(section, v, index, vendor, tool, driver, timestamp_ns)
        for index, (section, v) in enumerate(devices.items())
    ]


def _q_device(
    section: str, v: dict[tuple[str, ...], tuple[str, int]], index: int, vendor: str, tool: str, driver: str, ts: int
) -> common.Parsed:
    def raw(field: str) -> str | None:
        # a path matches where its sections are ancestors of the key in that order, at any depth
        # (610 nests the limits under `GPU Ceiling Power Limit`); the first one with a value wins
        for want in Q_PATHS[field]:
            for path, (value, _) in v.items():
                if path[-1] == want[-1] and _under(path[:-1], want[:-1]) and not common.absent(value):
                    return value
        return None

    read = common.Reader()

    def num(field: str, unit: str = "") -> float | None:
        return read.number(field, raw(field), unit)

    try:
        uuid = raw("uuid") or ""
        if set(uuid) <= set("GPU-0"):  # all-zero: anonymised by the capture's author
            uuid = ""
        total = num("mem_total", "MiB")
        info = model.DeviceInfo(
            uuid=uuid or f"{vendor}-{index}",
            index=index,
            vendor=vendor,
            model=raw("model") or "",
            bus_id=raw("bus") or section.split(" ", 1)[1],
            driver_version=driver,
            memory_total_bytes=int(total) if total is not None else None,
            power_limit_min_w=num("min", "W"),
            power_limit_max_w=num("max", "W"),
            power_limit_default_w=num("default", "W"),
            power_cap_settable=vendor == "nvidia",
        )
        sample = model.DeviceSample(
            index=index,
            timestamp_ns=ts,
            utilization=num("util", "%"),
            memory_used_bytes=num("mem_used", "MiB"),
            power_w=num("power", "W"),
            power_limit_w=num("limit", "W"),
            temperature_c=num("temp", "C"),
            memory_temperature_c=num("mem_temp", "C"),
            core_clock_hz=num("clock", "MHz"),
            memory_clock_hz=num("mem_clock", "MHz"),
            ecc_corrected_total=num("ecc_c"),
            ecc_uncorrected_total=num("ecc_u"),
        )
    except ValueError as exc:  # only the identity can fail now: the readings degrade one by one
        first_line = min(n for _, n in v.values()) - 1
        raise common.ParseError(tool, first_line, section, str(exc)) from None
    return common.with_warnings(common.Parsed(info=info, sample=sample), read.warnings)


def _under(sections: tuple[str, ...], want: tuple[str, ...]) -> bool:
    """Whether `want` appears in `sections` in order (not necessarily next to each other)."""
    it = iter(sections)
    return all(any(s == w for s in it) for w in want)


# dmon column -> (DeviceSample field, unit)
DMON: dict[str, tuple[str, str]] = {
    "pwr": ("power_w", "W"),
    "gtemp": ("temperature_c", "C"),
    "mtemp": ("memory_temperature_c", "C"),
    "sm": ("utilization", "%"),
    "mclk": ("memory_clock_hz", "MHz"),
    "pclk": ("core_clock_hz", "MHz"),
}


def parse_dmon(text: str, timestamp_ns: int = 0) -> list[common.Parsed]:
    """`nvidia-smi dmon`: a `# gpu pwr gtemp ...` header and rows over time; the newest row per GPU.

    Raises:
        ParseError: no `# gpu` header, or a row of the wrong width.
    """
    lines = text.splitlines()
    head = next((i for i, line in enumerate(lines) if line.lstrip("# ").startswith("gpu ")), None)
    if head is None:
        raise common.ParseError("nvidia-smi dmon", 1, lines[0] if lines else "", "no `# gpu ...` header")
    labels = lines[head].lstrip("#").split()
    newest: dict[int, tuple[int, dict[str, str]]] = {}
    for n in range(head + 1, len(lines)):
        if lines[n].lstrip().startswith("#") or not lines[n].strip():
            continue
        cells = lines[n].split()
        if not cells[0].isdigit():
            continue  # not a sample row: a log line between dmon's rows
        if len(cells) != len(labels):
            raise common.ParseError(
                "nvidia-smi dmon", n + 1, lines[n], f"{len(cells)} values under {len(labels)} labels"
            )
        newest[int(cells[0])] = (n + 1, dict(zip(labels, cells, strict=True)))
    out = []
    for index, (line_no, v) in sorted(newest.items()):
        try:
            values = {field: common.number(v[col], unit) for col, (field, unit) in DMON.items() if col in v}
        except ValueError as exc:
            raise common.ParseError("nvidia-smi dmon", line_no, lines[line_no - 1], str(exc)) from None
        info = model.DeviceInfo(uuid=f"nvidia-{index}", index=index, vendor="nvidia", model="", power_cap_settable=True)
        out.append(
            common.Parsed(
                info=info,
                sample=msgspec.structs.replace(model.DeviceSample(index=index, timestamp_ns=timestamp_ns), **values),
            )
        )
    return out
