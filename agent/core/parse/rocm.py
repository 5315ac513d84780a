"""`rocm-smi ... --json` (AMD, and Hygon's DCU build of it): one object per `cardN`.

Keys are labels with their unit in the last parentheses (`Average Graphics Package Power (W)`,
`VRAM Total Used Memory (B)`, Hygon: `vram Total Used Memory (MiB)`, `DCU use (%)`). The parser
matches labels case-insensitively and takes the unit from the key, so both builds and every
version in the fixtures read the same way. Temperature is the junction (hotspot) sensor when
there is one, as the slowdown limits refer to it; else the edge sensor.
"""

from __future__ import annotations

import json
import re

from xpuctl.agent.core import model
from xpuctl.agent.core.parse import common

_KEY = re.compile(r"^(?P<label>.*?)\s*\((?P<unit>[^()]*)\)\s*$")
POWER = ("average graphics package power", "current socket graphics package power")
LIMIT = ("max graphics package power",)
UTIL = ("gpu use", "dcu use", "hcu use")  # Hygon renamed DCU to HCU after dtk2504
JUNCTION = ("temperature (sensor junction)",)
EDGE = ("temperature (sensor edge)",)
MEMORY_T = ("temperature (sensor memory)", "temperature (sensor mem)", "temperature (sensor hbm 0)")
VRAM_TOTAL = ("vram total memory",)
VRAM_USED = ("vram total used memory",)


def _table(card: dict[str, object]) -> dict[str, tuple[str, str]]:
    """Label (lower case) -> (value, unit)."""
    out = {}
    for key, value in card.items():
        m = _KEY.match(key)
        label, unit = (m.group("label"), m.group("unit")) if m else (key, "")
        out[label.strip().lower()] = (str(value), unit)
    return out


def _pick(t: dict[str, tuple[str, str]], labels: tuple[str, ...], read: common.Reader) -> float | None:
    """The first of `labels` there is, as a number (None and a warning when it is not one)."""
    for label in labels:
        if label in t:
            value, unit = t[label]
            return read.number(label, value, unit if unit.lower() in common.UNITS else "")
    return None


def parse_json(text: str, vendor: str = "amd", timestamp_ns: int = 0) -> list[common.Parsed]:
    """Every card of a `rocm-smi --json` capture.

    Raises:
        ParseError: not JSON, or no `cardN` objects.
    """
    tool = "rocm-smi" if vendor == "amd" else "rocm-smi (hy-smi)"
    try:
        doc = json.loads(common.json_document(text) or text)
    except json.JSONDecodeError as exc:
        raise common.ParseError(
            tool, exc.lineno, text.splitlines()[exc.lineno - 1] if text else "", f"not JSON: {exc.msg}"
        ) from None
    cards = (
        {k: v for k, v in doc.items() if isinstance(v, dict) and re.fullmatch(r"card\d+", k)}
        if isinstance(doc, dict)
        else {}
    )
    if not cards:
        raise common.ParseError(tool, 1, text.splitlines()[0] if text else "", "no `cardN` objects")
    out = []
    for key in sorted(cards, key=lambda k: int(k[4:])):
        t = _table(cards[key])
        index = int(key[4:])
        out.append(_device(t, vendor, index, timestamp_ns))
    return out


def _device(t: dict[str, tuple[str, str]], vendor: str, index: int, ts: int) -> common.Parsed:
    read = common.Reader()
    name = t.get("card series", t.get("device name", ("", "")))[0]
    uid = t.get("unique id", ("", ""))[0]
    total = _pick(t, VRAM_TOTAL, read)
    limit = _pick(t, LIMIT, read)
    temp = _pick(t, JUNCTION, read)
    if temp is None:
        temp = _pick(t, EDGE, read)
    info = model.DeviceInfo(
        uuid=f"{vendor}-{uid}" if uid and not common.absent(uid) else f"{vendor}-card{index}",
        index=index,
        vendor=vendor,
        model=name,
        memory_total_bytes=int(total) if total is not None else None,
        power_limit_max_w=limit,
        power_cap_settable=True,  # DESIGN 7: amdsmi (AMD) and Hygon's rocm-smi library set caps
    )
    sample = model.DeviceSample(
        index=index,
        timestamp_ns=ts,
        utilization=_pick(t, UTIL, read),
        memory_used_bytes=_pick(t, VRAM_USED, read),
        power_w=_pick(t, POWER, read),
        power_limit_w=limit,
        temperature_c=temp,
        memory_temperature_c=_pick(t, MEMORY_T, read),
    )
    return common.with_warnings(common.Parsed(info=info, sample=sample), read.warnings)


_LINE = re.compile(r"^(?P<kind>GPU|DCU|HCU)\[(?P<index>\d+)\]\s*:\s*(?P<rest>.*)$")


def parse_lines(text: str, vendor: str = "amd", timestamp_ns: int = 0) -> list[common.Parsed]:
    """The `GPU[n] : Label (unit): value` lines of `rocm-smi -u --showmeminfo vram` (Hygon:
    `HCU[n]`/`DCU[n]`), read into the same label table as the JSON output.

    Raises:
        ParseError: no `GPU[n] : ...` line.
    """
    cards: dict[int, dict[str, object]] = {}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m is None:
            continue
        key, sep, value = m.group("rest").rpartition(":")
        if sep:
            cards.setdefault(int(m.group("index")), {})[key.strip()] = value.strip()
    if not cards:
        lines = text.splitlines()
        tool = "rocm-smi" if vendor == "amd" else "hy-smi"
        raise common.ParseError(tool, 1, lines[0] if lines else "", "no `GPU[n] : label: value` lines")
    return [_device(_table(cards[i]), vendor, i, timestamp_ns) for i in sorted(cards)]


_VIRTUAL = re.compile(r"^Virtual Device (?P<index>\d+):\s*$")


def parse_virtual(text: str, timestamp_ns: int = 0) -> list[common.Parsed]:
    """`hy-smi virtual -show-device-info` (Hygon): the virtual devices carved from the DCUs, with
    their global memory; identity and size only (readings are absent).

    Raises:
        ParseError: no `Virtual Device n:` block, or a memory size that is not a number.
    """
    out: list[common.Parsed] = []
    current: int | None = None
    values: dict[int, dict[str, tuple[str, int]]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        m = _VIRTUAL.match(line.strip())
        if m:
            current = int(m.group("index"))
            values[current] = {}
            continue
        key, sep, value = line.partition(":")
        if current is not None and sep:
            values[current][key.strip()] = (value.strip(), n)
    if not values:
        lines = text.splitlines()
        raise common.ParseError("hy-smi virtual", 1, lines[0] if lines else "", "no `Virtual Device n:` block")
    for index, v in sorted(values.items()):
        raw, line_no = v.get("Global memory", ("", 0))
        try:
            size = common.number(raw.replace("bytes", "B"), "B")
        except ValueError as exc:
            raise common.ParseError("hy-smi virtual", line_no, raw, str(exc)) from None
        actual = v.get("Actual Device", ("?", 0))[0]
        info = model.DeviceInfo(
            uuid=f"hygon-vdev{index}",
            index=index,
            vendor="hygon",
            model=f"virtual on DCU {actual}",
            memory_total_bytes=int(size) if size is not None else None,
        )
        out.append(common.Parsed(info=info, sample=model.DeviceSample(index=index, timestamp_ns=timestamp_ns)))
    return out
