"""`amd-smi metric`, `static`, `list` and `monitor` (AMD), as JSON, as text or as CSV.

Every form is a tree of keys per GPU (`tree.py`): JSON (`[{"gpu": 0, ...}]` or
`{"gpu_data": [...]}`, leaves `{"value": 7, "unit": "%"}` or plain), the indented text form
(`GPU: 0` / `    USAGE:` / `        GFX_ACTIVITY: 7 %`) and CSV (one row per GPU, the flattened
keys as columns). This module only declares where each field sits; key names are those of
amd-smi 6.x to 26.x (`usage.gfx_activity`, `power.socket_power`, `temperature.hotspot`,
`mem_usage.used_vram`, `clock.gfx_0.clk`, `ecc.total_*_count`, `energy.total_energy_consumption`,
`limit.{min,max,socket}_power`, `asic.market_name`, `bus.bdf`; `monitor`'s flat `power_usage`,
`hotspot_temperature`, `gfx_clk`, `vram_used`; sources: shared/notes/vendor-tools.md section 13 and
the fixtures). A static view has readings of no kind; a metric view has no identity but the
index: what a form does not show stays absent. The hotspot (junction) sensor is the temperature,
as with rocm-smi: it is the one the device throttles on.
"""

from __future__ import annotations

import re

from xpuctl.agent.core import model
from xpuctl.agent.core.parse import common, tree

TOOL = "amd-smi"
_LIMITS = ("limit", "slowdown", "shutdown", "critical", "emergency", "max", "min", "default", "cap", "locked")
F = tree.Field
FIELDS: dict[str, tree.Field] = {
    "util": F(("usage_gfx_activity", "gfx_activity", "gfx_usage", "gfx_util", "gfx_busy", "=gfx")),
    "power": F(
        ("power_socket_power", "current_socket_power", "average_socket_power", "power_usage", "=socket_power"),
        _LIMITS,
    ),
    "cap": F(
        ("limit_socket_power", "socket_power_limit", "power_cap", "power_limit", "ppt0_socket_power"),
        ("min", "max", "default"),
    ),
    "cap_min": F(("limit_min_power", "min_power_limit", "min_power_cap", "power_cap_min", "=min_power")),
    "cap_max": F(("limit_max_power", "max_power_limit", "max_power_cap", "power_cap_max", "=max_power")),
    "cap_default": F(("default_power_cap", "default_power_limit")),
    "temp": F(
        (
            "temperature_hotspot",
            "hotspot_temperature",
            "temperature_junction",
            "junction_temperature",
            "temperature_edge",
            "edge_temperature",
            "gpu_temperature",
            "=hotspot",
            "=edge",
        ),
        _LIMITS,
    ),
    "mem_temp": F(
        ("temperature_mem", "temperature_vram", "memory_temperature", "mem_temperature", "vram_temperature"), _LIMITS
    ),
    "mem_used": F(("mem_usage_used_vram", "used_vram", "vram_used", "vram_usage_used")),
    "mem_total": F(("mem_usage_total_vram", "total_vram", "vram_total", "vram_size", "vram_usage_total")),
    "gfx_clock": F(("clock_gfx_0_clk", "clock_gfx_clk", "gfx_cur_clk", "gfx_0_clk", "gfx_clk", "gfx_clock"), _LIMITS),
    "mem_clock": F(("clock_mem_0_clk", "clock_mem_clk", "mem_cur_clk", "mem_0_clk", "mem_clk", "mem_clock"), _LIMITS),
    "ecc_ce": F(("ecc_total_correctable_count", "total_correctable_count", "single_bit_ecc")),
    "ecc_ue": F(("ecc_total_uncorrectable_count", "total_uncorrectable_count", "double_bit_ecc")),
    "energy": F(("energy_total_energy_consumption", "total_energy_consumption", "energy_accumulator")),
    "slowdown": F(("limit_slowdown_hotspot_temperature", "slowdown_hotspot_temperature", "slowdown_temperature")),
    "shutdown": F(("limit_shutdown_hotspot_temperature", "shutdown_hotspot_temperature", "shutdown_temperature")),
    "model": F(("asic_market_name", "market_name", "product_name")),
    "bus": F(("bus_bdf", "=bdf", "pcie_bdf")),
    "uuid": F(("=uuid", "asic_uuid", "gpu_uuid")),
}
_GPU_TEXT = re.compile(r"^\s*GPU\s*:\s*\d+\s*$", re.MULTILINE)
_GPU_JSON = re.compile(r'"gpu"\s*:\s*\d+')
_GPU_CSV = re.compile(r"^\s*gpu\s*,", re.MULTILINE | re.IGNORECASE)


def looks_like(text: str) -> bool:
    """Whether `text` is one of amd-smi's per-GPU trees (not rocm-smi's `GPU[0] :` lines, not
    monitor's whitespace table, which `concise` reads).
    """
    return bool(_GPU_TEXT.search(text) or _GPU_JSON.search(text) or _GPU_CSV.search(text))


def parse(text: str, timestamp_ns: int = 0) -> list[common.Parsed]:
    """Every GPU of the capture, each field read where this version puts it.

    Raises:
        ParseError: no GPU in the capture (not JSON with a `gpu` list, no `GPU: N` line, no CSV
            header with a `gpu` column).
    """
    try:
        found = tree.devices(text, "gpu")
    except ValueError as exc:  # a JSON document that breaks off
        found, reason = [], str(exc)
    else:
        reason = "no GPU: no `GPU: N` line, no JSON list of objects with a `gpu` number, no CSV `gpu` column"
    if not found:
        lines = text.splitlines()
        raise common.ParseError(TOOL, 1, lines[0] if lines else "", reason)
    return [_device(index, doc, timestamp_ns) for index, doc in found]


def _device(index: int, doc: tree.Doc, ts: int) -> common.Parsed:
    if "socket_power" in doc and any(k == "max_power" or k.endswith("_max_power") for k in doc):
        # a static view flattened without its sections (CSV): its socket power is the cap
        doc = {("limit_socket_power" if k == "socket_power" else k): v for k, v in doc.items()}
    read = common.Reader()

    def get(field: str, unit: str = "") -> float | None:
        return read.number(field, tree.pick(doc, FIELDS[field]), unit)

    def text(field: str) -> str:
        value = tree.pick(doc, FIELDS[field]) or ""
        return "" if common.absent(value) else value

    lo, hi, total = get("cap_min", "W"), get("cap_max", "W"), get("mem_total", "MB")
    default = get("cap_default", "W")
    uuid = text("uuid")
    info = model.DeviceInfo(
        uuid=f"amd-{uuid}" if uuid else f"amd-{index}",
        index=index,
        vendor="amd",
        model=text("model"),
        bus_id=text("bus"),
        memory_total_bytes=int(total) if total else None,
        # a 0 W minimum means "not reported" on this part: the floor is unknown, not 0
        power_limit_min_w=lo or None,
        power_limit_max_w=hi,
        power_limit_default_w=default or hi,
        power_cap_settable=hi is not None,  # DESIGN 7: amdsmi sets caps
        temp_slowdown_c=get("slowdown", "C"),
        temp_shutdown_c=get("shutdown", "C"),
    )
    sample = model.DeviceSample(
        index=index,
        timestamp_ns=ts,
        utilization=get("util", "%"),
        memory_used_bytes=get("mem_used", "MB"),
        power_w=get("power", "W"),
        energy_j=get("energy", "J"),
        power_limit_w=get("cap", "W"),
        temperature_c=get("temp", "C"),
        memory_temperature_c=get("mem_temp", "C"),
        core_clock_hz=get("gfx_clock", "MHz"),
        memory_clock_hz=get("mem_clock", "MHz"),
        ecc_corrected_total=get("ecc_ce"),
        ecc_uncorrected_total=get("ecc_ue"),
    )
    return common.with_warnings(common.Parsed(info=info, sample=sample), read.warnings)
