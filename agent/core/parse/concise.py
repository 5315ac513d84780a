"""The concise table of `rocm-smi` (AMD) and of Hygon's `hy-smi`/DTK `rocm-smi`.

One header line of whitespace-separated labels (`GPU Temp AvgPwr SCLK MCLK Fan Perf PwrCap
VRAM% GPU%`; Hygon says DCU or, since dtk2504, HCU), then one line per device with the units in
the values (`50.0c`, `23.0W`, `1319Mhz`, `0%`). Columns are found by label; `VRAM%` gives no
byte counts, so memory is absent here.
"""

from __future__ import annotations

from xpuctl.agent.core import model
from xpuctl.agent.core.parse import common

INDEX = ("GPU", "DCU", "HCU")
UTIL = ("GPU%", "DCU%", "HCU%")


def parse(text: str, vendor: str, timestamp_ns: int = 0) -> list[common.Parsed]:
    """Every device row.

    Raises:
        ParseError: no `GPU|DCU|HCU  Temp ...` header, or a row of the wrong width.
    """
    tool = "rocm-smi" if vendor == "amd" else "hy-smi"
    lines = text.splitlines()
    head = next(
        (i for i, line in enumerate(lines) if line.split()[:1] and line.split()[0] in INDEX and "Temp" in line.split()),
        None,
    )
    if head is None:
        raise common.ParseError(tool, 1, lines[0] if lines else "", "no `GPU  Temp  AvgPwr ...` header")
    labels = lines[head].split()
    out = []
    for n in range(head + 1, len(lines)):
        cells = lines[n].split()
        if not cells or not cells[0].isdigit():
            break
        if len(cells) != len(labels):
            raise common.ParseError(tool, n + 1, lines[n], f"{len(cells)} values under {len(labels)} labels")
        v = dict(zip(labels, cells, strict=True))
        index = int(cells[0])
        try:
            util = next((v[k] for k in UTIL if k in v), "")
            info = model.DeviceInfo(
                uuid=f"{vendor}-card{index}", index=index, vendor=vendor, model="", power_cap_settable=True
            )  # DESIGN 7: ROCm SMI sets caps on both
            sample = model.DeviceSample(
                index=index,
                timestamp_ns=timestamp_ns,
                temperature_c=common.number(v.get("Temp", ""), "C"),
                power_w=common.number(v.get("AvgPwr", ""), "W"),
                power_limit_w=common.number(v.get("PwrCap", ""), "W"),
                core_clock_hz=common.number(v.get("SCLK", ""), "MHz"),
                memory_clock_hz=common.number(v.get("MCLK", ""), "MHz"),
                utilization=common.number(util, "%"),
            )
        except ValueError as exc:
            raise common.ParseError(tool, n + 1, lines[n], str(exc)) from None
        out.append(common.Parsed(info=info, sample=sample))
    return out
