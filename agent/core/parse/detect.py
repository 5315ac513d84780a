"""Which vendor's tool printed a capture (`xpu-agent parse auto`), from what each tool writes.

Pure. Each rule is a pattern the tool prints and no other does (its banner, its log title, its
own labels or the vendor's model names); the first rule that matches names the vendor. Rules of
tools that copy another's layout (ppu-smi, ixsmi, xpu-smi and mx-smi print an nvidia-smi-like
grid; hy-smi prints rocm-smi's) come before the tool they copy.
"""

from __future__ import annotations

import re

# (vendor, pattern), the first match wins; sources: tests/fixtures/vendor-smi and its SOURCES.md
RULES: tuple[tuple[str, str], ...] = (
    ("thead", r"PPU-SMI|\bPPU-Util\b|\bPPU-ZW"),
    ("iluvatar", r"IX-ML|\bIluvatar\b"),
    ("kunlunxin", r"XPU-SMI|XPUSMI LOG|XPU-RT Version|\bXPU-Util\b|\bKunlun"),
    ("metax", r"MX-SMI|MetaX System Management|\bMetaX\b|MACA Version"),
    ("cambricon", r"\bCNMON\b|\bcnmon\b|\bMLU\d|Cambricon"),
    ("moorethreads", r"mthreads-gmi|\bMTT S\d"),
    ("enflame", r"EFSMI|Enflame|\bGCU Virt\b"),
    ("ascend", r"npu-smi|\bNPU ID\b|Chip Logic ID|\bAscend\b|\bAICore\(%\)"),
    (
        "hygon",
        (
            r"\bhy-smi\b|\bHCU%|\bDCU%|\bHCU\[\d+\]|\bDCU\[\d+\]|^\s*(HCU|DCU)\s+Temp|\bHygon\b|\bDTK\b"
            r"|Haiguang|^Virtual Device \d+:|\bZ100|\bK100|\bBW\d{3,4}\b"
        ),
    ),
    (
        "amd",
        (
            r"AMD-SMI|ROCm System Management|ROCm SMI|\"gpu_data\"|\bGFX_UTIL\b|\bGPU\[\d+\]\s*:|\"card\d+\""
            r"|^\s*GPU:\s*\d+\s*$|\"gpu\"\s*:\s*\d+|^\s*gpu\s*,.*\b(socket_power|gfx|power_usage|market_name)"
        ),
    ),
    (
        "nvidia",
        r"NVIDIA-SMI|NVSMI LOG|\bNVIDIA\b|^\s*#\s*gpu\s+pwr|\bindex\s*,\s*name\b|\bpower\.draw\b",
    ),
)
_COMPILED = tuple((vendor, re.compile(pattern, re.MULTILINE)) for vendor, pattern in RULES)


def vendor_of(text: str) -> str | None:
    """The vendor whose tool printed `text`; None when no rule tells."""
    return next((vendor for vendor, rule in _COMPILED if rule.search(text)), None)
