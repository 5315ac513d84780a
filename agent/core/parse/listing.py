"""Device lists: `nvidia-smi -L`, `ixsmi -L` and their kind, one device a line.

`GPU 0: Iluvatar MR50 (UUID: GPU-9724efd1-...)`: the index, the name and, when shown, the uuid
(the device's own, kept as its identity). Identity only: a list shows no readings.
"""

from __future__ import annotations

import re

from xpuctl.agent.core import model
from xpuctl.agent.core.parse import common

LINE = re.compile(
    r"^\s*(?:GPU|XPU|PPU|NPU|MLU|DCU|Device)\s+(?P<index>\d+)\s*:\s*(?P<name>.*?)\s*(?:\(UUID:\s*(?P<uuid>[^)\s]+)\s*\))?\s*$"
)


def looks_like(text: str) -> bool:
    """Whether this is a list: every non-blank line a `GPU N: NAME` line, or at least one with its
    `(UUID: ...)` and no table around (log lines before or after a list are no reason to refuse it).
    """
    lines = [line for line in text.splitlines() if line.strip()]
    matches = [LINE.match(line) for line in lines]
    if lines and all(matches):
        return True
    return any(m and m.group("uuid") for m in matches) and not any("|" in line for line in lines)


def parse(text: str, vendor: str, tool: str, timestamp_ns: int = 0) -> list[common.Parsed]:
    """Every listed device.

    Raises:
        ParseError: no line lists a device.
    """
    out = []
    for line in text.splitlines():
        m = LINE.match(line)
        if m is None:
            continue
        index = int(m.group("index"))
        info = model.DeviceInfo(
            uuid=m.group("uuid") or f"{vendor}-{index}", index=index, vendor=vendor, model=m.group("name")
        )
        out.append(common.Parsed(info=info, sample=model.DeviceSample(index=index, timestamp_ns=timestamp_ns)))
    if not out:
        lines = text.splitlines()
        raise common.ParseError(f"{tool} -L", 1, lines[0] if lines else "", "no `GPU N: NAME (UUID: ...)` line")
    return out
