"""`amd-smi static --json` (AMD): identity and capabilities, no readings.

Values come as `{"value": N, "unit": "W"}` objects under `limit` (power range, slowdown and
shutdown temperatures, the hotspot sensor's being the one the device throttles on), `asic`
(`market_name`), `bus` and `vram` where present. The sample holds the enforced limit only
(`socket_power`); everything else a static query does not show is absent.
"""

from __future__ import annotations

import json

from xpuctl.agent.core import model
from xpuctl.agent.core.parse import common

TOOL = "amd-smi static"


def _v(obj: object, *path: str) -> float | None:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    if isinstance(obj, dict):
        value, unit = obj.get("value"), str(obj.get("unit", ""))
        return common.number(str(value), unit) if value is not None else None
    if isinstance(obj, int | float):
        return float(obj)
    return common.number(str(obj)) if isinstance(obj, str) else None


def parse_static(text: str, timestamp_ns: int = 0) -> list[common.Parsed]:
    """Every GPU of the capture.

    Raises:
        ParseError: not JSON, or no `gpu_data` list (nor a bare list of GPUs).
    """
    try:
        doc = json.loads(common.json_document(text) or text)
    except json.JSONDecodeError as exc:
        lines = text.splitlines()
        raise common.ParseError(
            TOOL, exc.lineno, lines[exc.lineno - 1] if lines else "", f"not JSON: {exc.msg}"
        ) from None
    gpus = doc.get("gpu_data") if isinstance(doc, dict) else doc
    if not isinstance(gpus, list) or not all(isinstance(g, dict) and "gpu" in g for g in gpus):
        raise common.ParseError(TOOL, 1, text.splitlines()[0] if text else "", "no `gpu_data` list of GPUs")
    out = []
    for g in gpus:
        index = int(g["gpu"])
        try:
            lo, hi = _v(g, "limit", "min_power"), _v(g, "limit", "max_power")
            total = _v(g, "vram", "size")
            info = model.DeviceInfo(
                uuid=f"amd-{index}",
                index=index,
                vendor="amd",
                model=str(g.get("asic", {}).get("market_name", "")),
                bus_id=str(g.get("bus", {}).get("bdf", "")),
                memory_total_bytes=int(total) if total is not None else None,
                # a 0 W minimum means "not reported" on this part: the floor is unknown, not 0
                power_limit_min_w=lo or None,
                power_limit_max_w=hi,
                power_limit_default_w=hi,
                power_cap_settable=hi is not None,  # DESIGN 7: amdsmi sets caps
                temp_slowdown_c=_v(g, "limit", "slowdown_hotspot_temperature"),
                temp_shutdown_c=_v(g, "limit", "shutdown_hotspot_temperature"),
            )
        except ValueError as exc:
            raise common.ParseError(TOOL, 1, f"gpu {index}", str(exc)) from None
        sample = model.DeviceSample(
            index=index, timestamp_ns=timestamp_ns, power_limit_w=_v(g, "limit", "socket_power")
        )
        out.append(common.Parsed(info=info, sample=sample))
    return out
