"""Parsers of vendor management-tool output (pure; the tools are run by the drivers' adapters).

`parse(vendor, text)` picks the parser by vendor and by what the text looks like, and returns one
Parsed (DeviceInfo + DeviceSample) per device. `xpu-agent parse VENDOR FILE` prints the result as
`xpu-agent once` would. Formats covered so far are FORMATS below; the nvidia-smi-style table
(`table.py`) serves nvidia, cambricon, metax, iluvatar and kunlunxin.
"""

from __future__ import annotations

import re

from xpuctl.agent.core.parse import (
    amdsmi,
    ascend,
    common,
    concise,
    detect,
    enflame,
    listing,
    mthreads,
    nvidia,
    rocm,
    table,
)

__all__ = ["FORMATS", "ParseError", "Parsed", "detect", "parse"]

ParseError = common.ParseError
Parsed = common.Parsed

FORMATS: dict[str, str] = {
    "nvidia": "nvidia-smi (the table), nvidia-smi -q, nvidia-smi -L, or nvidia-smi --query-gpu=... --format=csv",
    "iluvatar": "ixsmi (the table, or its device rows alone), ixsmi -L, or ixsmi --query-gpu=... --format=csv",
    "cambricon": "cnmon",
    "metax": "mx-smi, or mx-smi topo -m",
    "kunlunxin": "xpu-smi (or xpu_smi), or xpu-smi -q",
    "thead": "ppu-smi (the table)",
    "moorethreads": "mthreads-gmi",
    "enflame": "efsmi, or efsmi -q",
    "ascend": "npu-smi info, npu-smi info -m, or npu-smi info -t usages|common -i N",
    "amd": "rocm-smi ... --json, rocm-smi (concise), amd-smi monitor, or amd-smi metric|static|list|monitor (text, --json or --csv)",
    "hygon": "hy-smi / rocm-smi ... --json, their concise table, or hy-smi virtual -show-device-info",
}


def parse(vendor: str, text: str, timestamp_ns: int = 0) -> list[common.Parsed]:
    """Parse one capture of `vendor`'s tool; sentinel readings come out null (`common.screen`).

    Raises:
        ParseError: a layout the parser does not know (the message names the tool and the line).
        KeyError: a vendor with no parser yet (the message lists those there are).
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(8)
    try:
        return [common.screen(p) for p in _parse(vendor, text, timestamp_ns)]
    except common.ParseError as exc:
        version = _version_line(text)
        if version is None:
            raise
        raise common.ParseError(exc.tool, exc.line_no, exc.line, f"{exc.problem} (the tool says {version!r})") from None


_VERSION = re.compile(r"(?i)\bversion\b|\b[A-Z]+-SMI\s+v?\d|\bIX-ML:\s*\d|\bv\d+\.\d+")


def _version_line(text: str) -> str | None:
    """The first line that names the tool's or the driver's version, trimmed; None without one."""
    line = next((x for x in text.splitlines() if _VERSION.search(x)), None)
    return None if line is None else " ".join(line.strip(" |+=-").split())[:120]


def _parse(vendor: str, text: str, timestamp_ns: int) -> list[common.Parsed]:
    if vendor == "kunlunxin" and "XPUSMI LOG" in text:
        return nvidia.parse_q(text, timestamp_ns=timestamp_ns, vendor="kunlunxin")
    if vendor == "metax" and "Device link type matrix" in text:
        return table.parse_topology(text, "metax", timestamp_ns=timestamp_ns)
    if vendor == "hygon" and re.search(r"^Virtual Device \d+:", text, re.MULTILINE):
        return rocm.parse_virtual(text, timestamp_ns=timestamp_ns)
    lines = text.splitlines()
    if vendor in table.TOOLS and listing.looks_like(text):
        return listing.parse(text, vendor, table.TOOLS[vendor][0], timestamp_ns=timestamp_ns)
    is_table = table._header_rule(lines) is not None or any(re.match(r"\s*\|\s*\d+\s", x) for x in lines)  # noqa: SLF001
    if vendor in table.TOOLS and (is_table or vendor not in ("nvidia", "iluvatar", "amd")):
        return table.parse(text, vendor, timestamp_ns=timestamp_ns)
    if vendor == "nvidia" and re.search(r"^\s*#\s*gpu\s", text, re.MULTILINE):
        return nvidia.parse_dmon(text, timestamp_ns=timestamp_ns)
    if vendor == "nvidia" and "NVSMI LOG" in text:
        return nvidia.parse_q(text, timestamp_ns=timestamp_ns)
    if vendor == "nvidia":
        return nvidia.parse_query_csv(text, timestamp_ns=timestamp_ns)
    if vendor == "iluvatar":
        return nvidia.parse_ixsmi_csv(text, timestamp_ns=timestamp_ns)
    if vendor == "ascend" and re.search(r"^\s*NPU ID\s{2,}.*Chip Logic ID", text, re.MULTILINE):
        return ascend.parse_mapping(text, timestamp_ns=timestamp_ns)
    if vendor == "ascend" and re.search(r"^\s*(NPU ID|Total Count)\s+:", text, re.MULTILINE):
        return ascend.parse_t(text, timestamp_ns=timestamp_ns)
    if vendor == "ascend":
        return ascend.parse_info(text, timestamp_ns=timestamp_ns)
    if vendor == "enflame" and "DEV ID" not in text:
        return enflame.parse_table(text, timestamp_ns=timestamp_ns)
    if vendor == "enflame":
        return enflame.parse_q(text, timestamp_ns=timestamp_ns)
    if vendor == "moorethreads":
        return mthreads.parse(text, timestamp_ns=timestamp_ns)
    if vendor == "amd" and amdsmi.looks_like(text):
        return amdsmi.parse(text, timestamp_ns=timestamp_ns)
    if vendor in ("amd", "hygon") and re.search(r"^\s*(GPU|DCU|HCU)\[\d+\]\s*:", text, re.MULTILINE):
        return rocm.parse_lines(text, vendor, timestamp_ns=timestamp_ns)
    if vendor in ("amd", "hygon") and not _is_json(text):
        return concise.parse(text, vendor, timestamp_ns=timestamp_ns)
    if vendor in ("amd", "hygon"):
        return rocm.parse_json(text, vendor, timestamp_ns=timestamp_ns)
    msg = f"no parser for {vendor!r} output yet; there are: {', '.join(f'{v} ({f})' for v, f in FORMATS.items())}"
    raise KeyError(msg)


def _is_json(text: str) -> bool:
    """Whether `text` holds a JSON document, or starts one that breaks off (log lines around it
    allowed; a `[INFO]` log line is not a JSON array).
    """
    return common.json_document(text) is not None or bool(re.search(r'^\s*[\[{]\s*(["{\[]|$)', text, re.MULTILINE))
