"""`stale`: a device whose telemetry stopped (node silent) or whose driver stopped answering.

A device is stale when its newest sample is older than `stale_after_s`, or when its agent has
reported it `unknown` (a hung or failing driver call) on the last `unknown_samples` samples.
"""

from __future__ import annotations

import numpy as np

from xpuctl.controller.core import model
from xpuctl.controller.core.detect import base
from xpuctl.protos import names

HEALTH_UNKNOWN = names.HEALTH_UNKNOWN


class Stale(base.Detector):
    """Old or unknown telemetry."""

    kind = "stale"
    says = "no fresh sample for {value:.1f} s {op} {threshold:.1f} s"
    severity = base.WARNING

    def evaluate(self, frame: base.Frame) -> base.Verdict:
        """Age of the newest sample (s) against `stale_after_s`."""
        age_s = np.where(frame.latest_ts > 0, (frame.now_ns - frame.latest_ts) / 1e9, np.inf)
        health = frame.latest[:, model.HEALTH]
        _, first = frame.back("health", self.cfg.unknown_samples - 1)
        unknown = (health == HEALTH_UNKNOWN) & (first == HEALTH_UNKNOWN)  # unknown since n samples
        # a device that has never reported is not stale yet (node liveness covers silent nodes)
        old = (frame.latest_ts > 0) & (age_s > self.cfg.stale_after_s)
        threshold = np.full(age_s.shape, self.cfg.stale_after_s)
        clear = ~old & (health != HEALTH_UNKNOWN)
        return base.Verdict(value=age_s, threshold=threshold, raise_=old | unknown, clear=clear)
