"""`nvidia-smi --query-gpu=... --format=csv` (and the same query of Iluvatar's `ixsmi`).

Columns are found by the query field names in the header (`power.draw [W]` -> `power.draw`);
values carry their units (`627.40 W`, `143771 MiB`, `100 %`). Without a header (`noheader`), the
caller passes the fields it asked for. Field meanings: NVIDIA's `nvidia-smi --help-query-gpu`.
"""

from __future__ import annotations

import csv
import io
import re

from agent.core import model
from agent.core.parse import common

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


def parse_query_csv(text: str, *, vendor: str = "nvidia", tool: str = "nvidia-smi",
                    fields: list[str] | None = None, timestamp_ns: int = 0) -> list[common.Parsed]:
    """Every GPU row of a `--query-gpu` CSV.

    Raises:
        ParseError: no header (and no `fields`), a row of the wrong width, or a value that is not
            a number where one is expected.
    """
    rows = [r for r in csv.reader(io.StringIO(text), skipinitialspace=True) if r and any(c.strip() for c in r)]
    if not rows:
        raise common.ParseError(tool, 1, "", "empty output")
    if fields is None:
        fields = [_field(h) for h in rows[0]]
        if "index" not in fields and "name" not in fields:
            raise common.ParseError(tool, 1, ",".join(rows[0]), "no header with query fields (use fields=)")
        rows = rows[1:]
        first_line = 2
    else:
        first_line = 1
    out = []
    for k, row in enumerate(rows):
        line_no = first_line + k
        if len(row) != len(fields):
            raise common.ParseError(tool, line_no, ",".join(row), f"{len(row)} values for {len(fields)} fields")
        cell = {f: v.strip() for f, v in zip(fields, row, strict=True)}
        try:
            out.append(_device(cell, vendor, k, timestamp_ns))
        except ValueError as exc:
            raise common.ParseError(tool, line_no, ",".join(row), str(exc)) from None
    return out


def _device(cell: dict[str, str], vendor: str, row: int, timestamp_ns: int) -> common.Parsed:
    def num(field: str, unit: str) -> float | None:
        return common.number(cell[field], unit) if field in cell else None

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
    sample = model.DeviceSample(index=index, timestamp_ns=timestamp_ns, **values)
    return common.Parsed(info=info, sample=sample)


# `ixsmi --format=csv,noheader --query-gpu=...` as GPUStack runs it (fixture source in tests)
IXSMI_GPUSTACK_FIELDS = ["index", "name", "memory.total", "memory.used", "utilization.gpu", "temperature.gpu"]


def parse_ixsmi_csv(text: str, timestamp_ns: int = 0) -> list[common.Parsed]:
    """Iluvatar's `ixsmi` query CSV: with a header, or GPUStack's noheader field list."""
    first = text.lstrip().split("\n", 1)[0]
    fields = None if ("index" in first or "name" in first) else IXSMI_GPUSTACK_FIELDS
    return parse_query_csv(text, vendor="iluvatar", tool="ixsmi", fields=fields, timestamp_ns=timestamp_ns)


_GPU_SECTION = re.compile(r"^GPU [0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]$")


def parse_q(text: str, timestamp_ns: int = 0) -> list[common.Parsed]:
    """`nvidia-smi -q`: one `GPU <bus id>` section per GPU, read by section and label.

    Raises:
        ParseError: no `GPU 0000...` section, or a value that is not a number where one is expected.
    """
    tree = common.kv_tree(text)
    driver = next((v for path, v, _ in tree if path == ("Driver Version",)), "")
    gpus: dict[str, dict[tuple[str, ...], tuple[str, int]]] = {}
    for path, value, line_no in tree:
        if len(path) > 1 and _GPU_SECTION.match(path[0]):
            gpus.setdefault(path[0], {})[path[1:]] = (value, line_no)
    if not gpus:
        lines = text.splitlines()
        raise common.ParseError("nvidia-smi -q", 1, lines[0] if lines else "", "no `GPU <bus id>` section")
    out = []
    for index, (section, v) in enumerate(gpus.items()):
        first_line = min(n for _, n in v.values()) - 1

        def num(*path: str, unit: str = "", v: dict[tuple[str, ...], tuple[str, int]] = v) -> float | None:
            cell = v.get(path)
            return None if cell is None else common.number(cell[0], unit)

        try:
            uuid = v.get(("GPU UUID",), ("", 0))[0]
            if set(uuid) <= set("GPU-0"):  # all-zero: anonymised by the capture's author
                uuid = ""
            total = num("FB Memory Usage", "Total", unit="MiB")
            power = num("GPU Power Readings", "Average Power Draw", unit="W")
            if power is None:
                power = num("GPU Power Readings", "Power Draw", unit="W")
            info = model.DeviceInfo(
                uuid=uuid or f"nvidia-{index}",
                index=index,
                vendor="nvidia",
                model=v.get(("Product Name",), ("", 0))[0],
                bus_id=v.get(("PCI", "Bus Id"), (section.split(" ", 1)[1], 0))[0],
                driver_version=driver,
                memory_total_bytes=int(total) if total is not None else None,
                power_limit_min_w=num("GPU Power Readings", "Min Power Limit", unit="W"),
                power_limit_max_w=num("GPU Power Readings", "Max Power Limit", unit="W"),
                power_limit_default_w=num("GPU Power Readings", "Default Power Limit", unit="W"),
                power_cap_settable=True,
            )
            sample = model.DeviceSample(
                index=index,
                timestamp_ns=timestamp_ns,
                utilization=num("Utilization", "GPU", unit="%"),
                memory_used_bytes=num("FB Memory Usage", "Used", unit="MiB"),
                power_w=power,
                power_limit_w=num("GPU Power Readings", "Current Power Limit", unit="W"),
                temperature_c=num("Temperature", "GPU Current Temp", unit="C"),
                memory_temperature_c=num("Temperature", "Memory Current Temp", unit="C"),
                core_clock_hz=num("Clocks", "SM", unit="MHz"),
                memory_clock_hz=num("Clocks", "Memory", unit="MHz"),
                ecc_corrected_total=num("ECC Errors", "Aggregate", "DRAM Correctable"),
                ecc_uncorrected_total=num("ECC Errors", "Aggregate", "DRAM Uncorrectable"),
            )
        except ValueError as exc:
            raise common.ParseError("nvidia-smi -q", first_line, section, str(exc)) from None
        out.append(common.Parsed(info=info, sample=sample))
    return out
