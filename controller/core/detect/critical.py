"""`error_event`: critical error events the device reported (NVIDIA XID, Ascend fault codes,
Cambricon XID ...). Every event the agents forward is one the vendor tool reports as a fault,
so any event raises; the anomaly clears `error_clear_after_s` after the last one, and not while
the device reports `failed` health. Runs on the critical path.
"""

from __future__ import annotations

import numpy as np

from xpuctl.controller.core import model
from xpuctl.controller.core.detect import base

HEALTH_FAILED = 3


class CriticalErrors(base.Detector):
    """A device with a recent error event."""

    kind = "error_event"
    says = "an error event {value:.0f} s ago (an event is open for {threshold:.0f} s)"
    severity = base.CRITICAL
    critical_path = True

    def evaluate(self, frame: base.Frame) -> base.Verdict:
        """Raise on an event in the last clear period; clear after it (unless failed)."""
        last = frame.last_error_ns
        age_s = np.where(last > 0, (frame.now_ns - last) / 1e9, np.inf)
        recent = age_s <= self.cfg.error_clear_after_s
        failed = frame.latest[:, model.HEALTH] == HEALTH_FAILED
        threshold = np.full(age_s.shape, self.cfg.error_clear_after_s)
        return base.Verdict(value=age_s, threshold=threshold, raise_=recent, clear=~recent & ~failed)

    def detail(self, frame: base.Frame, i: int) -> str:
        """The last error code."""
        code = frame.last_error_code[int(frame.slots[i])]
        return f"code {code}" if code else ""
