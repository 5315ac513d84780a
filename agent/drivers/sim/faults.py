"""Fault specs for simulated devices: `KIND[:dev=I][:at=SECONDS][:for=SECONDS]` (DESIGN 6).

Pure: parsing and the question "is this fault active at simulated time t on device i".
"""

from __future__ import annotations

import math

import msgspec

FAULT_KINDS: tuple[str, ...] = (
    "thermal_runaway",  # cooling fails: temperature climbs past the slowdown limit
    "power_spike",  # cap enforcement fails: draw exceeds the enforced limit
    "ecc_storm",  # corrected ECC errors by the hundred per second, some uncorrected
    "xid",  # critical error events (XID / vendor codes), health degraded
    "stuck",  # utilisation and power frozen at one value
    "straggler",  # one device far slower than its node peers while they are busy
    "fall_off_bus",  # device gone: health failed, no readings, XID 79
    "driver_hang",  # the whole driver call blocks: the agent must mark devices unknown
)


class FaultSpecError(ValueError):
    """A `--sim-fault` spec that cannot be parsed; the message says which part and the fix."""

    def __init__(self, spec: str, problem: str) -> None:
        """`problem` is the part of `spec` that is wrong."""
        super().__init__(
            f"bad --sim-fault {spec!r}: {problem}; expected KIND[:dev=I][:at=SECONDS][:for=SECONDS] "
            f"with KIND one of {', '.join(FAULT_KINDS)}"
        )
        self.spec = spec
        self.problem = problem


class Fault(msgspec.Struct, frozen=True, kw_only=True):
    """One injected fault. `device` None means every device of the driver."""

    kind: str
    device: int | None = None
    at_s: float = 0.0
    for_s: float = math.inf

    def active(self, t_s: float, device: int) -> bool:
        """Whether the fault acts on `device` at simulated time `t_s` (seconds since start)."""
        if self.device is not None and self.device != device:
            return False
        return self.at_s <= t_s < self.at_s + self.for_s


def parse(spec: str) -> Fault:
    """Parse one fault spec.

    Raises:
        FaultSpecError: unknown kind, unknown option, or a value that is not a number >= 0.
    """
    kind, *options = spec.strip().split(":")
    if kind not in FAULT_KINDS:
        raise FaultSpecError(spec, f"unknown kind {kind!r}")
    fields: dict[str, float] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in ("dev", "at", "for"):
            raise FaultSpecError(spec, f"unknown option {option!r}")
        try:
            number = float(value)
        except ValueError:
            raise FaultSpecError(spec, f"{key}={value!r} is not a number") from None
        if not math.isfinite(number) or number < 0:
            raise FaultSpecError(spec, f"{key}={value!r} must be a finite number >= 0")
        if key == "dev" and number != int(number):
            raise FaultSpecError(spec, f"dev={value!r} must be a whole device index")
        fields[key] = number
    return Fault(
        kind=kind,
        device=int(fields["dev"]) if "dev" in fields else None,
        at_s=fields.get("at", 0.0),
        for_s=fields.get("for", math.inf),
    )
