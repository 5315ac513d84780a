"""Reconnect delays: exponential backoff with full jitter (pure; the caller brings the random)."""

from __future__ import annotations


def delay_s(attempt: int, *, base_s: float, cap_s: float, uniform01: float) -> float:
    """The wait before reconnect attempt `attempt` (0 = first retry).

    Full jitter: uniform in [0, min(cap, base * 2**attempt)], so that many agents cut off at once
    do not come back at once.
    """
    ceiling = min(cap_s, base_s * (2.0 ** min(attempt, 32)))
    return ceiling * min(max(uniform01, 0.0), 1.0)
