"""amd-smi's per-GPU trees (issue 12.5): `metric`, `static`, `list` and `monitor`, as JSON, text and CSV.

No public capture of `amd-smi metric` exists (shared/notes/vendor-tools.md section 14), so these
documents are built here from its documented key names (vendor-tools.md section 13; amd-smi 6.x
prints plain numbers, later versions `{"value", "unit"}` objects, the text form upper-case keys
indented under `GPU: N`). They are not captures and are not in tests/fixtures. The one real
capture, `amd-smi static --json` of an MI210, is read in test_parsers.py.
"""

from __future__ import annotations

import json

import pytest

from xpuctl.agent.core import parse
from xpuctl.agent.core.parse import amdsmi, detect

MIB = 1 << 20


def _vu(value: object, unit: str) -> dict[str, object]:
    return {"value": value, "unit": unit}


METRIC_NEW = {
    "gpu_data": [
        {
            "gpu": 0,
            "usage": {"gfx_activity": _vu(37, "%"), "umc_activity": _vu(5, "%"), "mm_activity": "N/A"},
            "power": {"socket_power": _vu(412, "W"), "gfx_voltage": "N/A", "power_management": "ENABLED"},
            "clock": {
                "gfx_0": {"clk": _vu(2100, "MHz"), "min_clk": _vu(500, "MHz"), "max_clk": _vu(2100, "MHz")},
                "mem_0": {"clk": _vu(1300, "MHz"), "min_clk": _vu(900, "MHz")},
            },
            "temperature": {"edge": "N/A", "hotspot": _vu(61, "C"), "mem": _vu(48, "C")},
            "ecc": {"total_correctable_count": 3, "total_uncorrectable_count": 0, "cache_correctable_count": 9},
            "mem_usage": {
                "total_vram": _vu(196592, "MB"),
                "used_vram": _vu(8123, "MB"),
                "free_vram": _vu(188469, "MB"),
            },
            "energy": {"total_energy_consumption": _vu(1234567.5, "J")},
        }
    ]
}
# amd-smi 6.0: a bare list, plain numbers in the tool's units, a log line before the document
METRIC_OLD = "WARNING: User is missing the following required groups: render, video.\n" + json.dumps(
    [
        {
            "gpu": 0,
            "usage": {"gfx_activity": 37, "umc_activity": 5},
            "power": {"average_socket_power": 412, "gfx_voltage": "N/A"},
            "clock": {"gfx": {"cur_clk": 2100}, "mem": {"cur_clk": 1300}},
            "temperature": {"edge": "N/A", "hotspot": 61, "mem": 48},
            "ecc": {"total_correctable_count": 3, "total_uncorrectable_count": 0},
            "mem_usage": {"total_vram": 196592, "used_vram": 8123},
        }
    ],
    indent=4,
)
METRIC_TEXT = """\
WARNING: User is missing the following required groups: render, video.
GPU: 0
    USAGE:
        GFX_ACTIVITY: 37 %
        UMC_ACTIVITY: 5 %
        MM_ACTIVITY: N/A
    POWER:
        SOCKET_POWER: 412 W
        GFX_VOLTAGE: N/A
    CLOCK:
        GFX_0:
            CLK: 2100 MHz
            MIN_CLK: 500 MHz
        MEM_0:
            CLK: 1300 MHz
    TEMPERATURE:
        EDGE: N/A
        HOTSPOT: 61 °C
        MEM: 48 °C
    ECC:
        TOTAL_CORRECTABLE_COUNT: 3
        TOTAL_UNCORRECTABLE_COUNT: 0
    MEM_USAGE:
        TOTAL_VRAM: 196592 MB
        USED_VRAM: 8123 MB

GPU: 1
    USAGE:
        GFX_ACTIVITY: N/A
    POWER:
        SOCKET_POWER: 140 W
    TEMPERATURE:
        HOTSPOT: 40 °C
"""
# `amd-smi monitor --json`: one flat object per GPU
MONITOR_JSON = json.dumps(
    [
        {
            "gpu": 0,
            "power_usage": _vu(412, "W"),
            "hotspot_temperature": _vu(61, "C"),
            "memory_temperature": _vu(48, "C"),
            "gfx": _vu(37, "%"),
            "gfx_clk": _vu(2100, "MHz"),
            "mem_clock": _vu(1300, "MHz"),
            "vram_used": _vu(8123, "MB"),
            "vram_total": _vu(196592, "MB"),
            "single_bit_ecc": 3,
            "double_bit_ecc": 0,
        }
    ]
)
METRIC_CSV = """\
gpu,gfx_activity,umc_activity,socket_power,hotspot,mem,total_vram,used_vram
0,37,5,412,61,48,196592,8123
"""
STATIC_TEXT = """\
GPU: 0
    ASIC:
        MARKET_NAME: AMD Instinct MI300X
        DEVICE_ID: 0x74a1
    BUS:
        BDF: 0000:0c:00.0
    LIMIT:
        MAX_POWER: 750 W
        MIN_POWER: 0 W
        SOCKET_POWER: 700 W
        SLOWDOWN_EDGE_TEMPERATURE: N/A
        SLOWDOWN_HOTSPOT_TEMPERATURE: 100 °C
        SHUTDOWN_HOTSPOT_TEMPERATURE: 110 °C
    VRAM:
        TYPE: HBM
        SIZE: 196592 MB
"""
STATIC_CSV = "gpu,market_name,bdf,max_power,min_power,socket_power\n0,AMD Instinct MI300X,0000:0c:00.0,750,0,700\n"


def _row(p: parse.Parsed) -> tuple[object, ...]:
    s = p.sample
    return (
        s.utilization,
        s.power_w,
        s.temperature_c,
        s.memory_temperature_c,
        s.memory_used_bytes,
        p.info.memory_total_bytes,
        s.core_clock_hz,
        s.memory_clock_hz,
        s.ecc_corrected_total,
        s.ecc_uncorrected_total,
    )


GPU0 = (0.37, 412.0, 61.0, 48.0, 8123.0 * MIB, 196592 * MIB, 2100e6, 1300e6, 3.0, 0.0)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("metric --json (value/unit objects)", json.dumps(METRIC_NEW, indent=4)),
        ("metric --json (amd-smi 6.0 plain numbers)", METRIC_OLD),
        ("metric (text)", METRIC_TEXT),
        ("monitor --json (flat keys)", MONITOR_JSON),
    ],
)
def test_every_form_of_metric_reads_the_same_gpu(name: str, text: str) -> None:
    assert amdsmi.looks_like(text) and detect.vendor_of(text) == "amd", name
    got = parse.parse("amd", text)
    assert got[0].info.index == 0 and got[0].info.vendor == "amd"
    assert _row(got[0]) == GPU0, name
    assert got[0].sample.power_limit_w is None  # a metric view does not show the cap
    assert not got[0].warnings


def test_metric_text_keeps_each_gpu_and_its_absent_fields() -> None:
    got = parse.parse("amd", METRIC_TEXT)
    assert [p.info.index for p in got] == [0, 1]
    assert got[0].sample.energy_j is None and got[1].sample.power_w == 140.0
    assert got[1].sample.utilization is None and got[1].sample.temperature_c == 40.0  # N/A is null, not 0


def test_metric_csv_reads_the_columns_it_has() -> None:
    (p,) = parse.parse("amd", METRIC_CSV)
    assert (p.sample.utilization, p.sample.power_w, p.sample.temperature_c) == (0.37, 412.0, 61.0)
    assert p.sample.memory_used_bytes == 8123 * MIB and p.sample.power_limit_w is None


@pytest.mark.parametrize("text", [STATIC_TEXT, STATIC_CSV])
def test_static_views_give_identity_and_the_cap(text: str) -> None:
    (p,) = parse.parse("amd", text)
    assert (p.info.model, p.info.bus_id) == ("AMD Instinct MI300X", "0000:0c:00.0")
    assert (p.info.power_limit_min_w, p.info.power_limit_max_w) == (None, 750.0)  # 0 W: not reported
    assert p.sample.power_limit_w == 700.0 and p.sample.power_w is None  # socket power is the cap here


def test_static_text_reads_the_hotspot_limits_not_the_edge() -> None:
    (p,) = parse.parse("amd", STATIC_TEXT)
    assert (p.info.temp_slowdown_c, p.info.temp_shutdown_c) == (100.0, 110.0)
    assert p.info.memory_total_bytes == 196592 * MIB
    assert p.sample.temperature_c is None  # a limit is not a reading


def test_an_unreadable_field_costs_that_field() -> None:
    (p,) = parse.parse("amd", METRIC_TEXT.replace("SOCKET_POWER: 412 W", "SOCKET_POWER: lots W", 1))[:1]
    assert p.sample.power_w is None and p.sample.temperature_c == 61.0
    assert any(w.startswith("power: ") for w in p.warnings), p.warnings


@pytest.mark.parametrize(
    "text",
    ['{"gpu_data": []}', "GPU: none\n", "WARNING: amdgpu driver not loaded\n", '[{"gpu": 0, "usage": '],
)
def test_no_gpu_is_a_clear_error(text: str) -> None:
    with pytest.raises(parse.ParseError) as err:
        parse.parse("amd", text)
    assert "amd-smi" in str(err.value) or "rocm-smi" in str(err.value)
