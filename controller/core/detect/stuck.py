"""`stuck`: a device whose utilisation and power readings are frozen.

Real readings jitter: power moves by tenths of a watt from sample to sample even at idle. A
device whose utilisation and power both repeat exactly for `stuck_samples` fresh samples has a
hung firmware or a telemetry path that replays the last value. Idle devices that report 0 %
utilisation still move in power, so they do not count.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from xpuctl.controller import config
from xpuctl.controller.core.detect import base


class Stuck(base.Detector):
    """Identical utilisation and power on n fresh samples in a row."""

    kind = "stuck"
    says = "{value:.0f} identical samples in a row {op} {threshold:.0f}"
    severity = base.WARNING

    FRESH: ClassVar[dict[str, float]] = {"prev": math.nan, "run": 0}

    def __init__(self, cfg: config.Detect) -> None:
        """Thresholds from config; run lengths start at 0."""
        super().__init__(cfg)
        self.prev = np.zeros((0, 2))
        self.run = np.zeros(0, dtype=np.int64)

    def evaluate(self, frame: base.Frame) -> base.Verdict:
        """Count repeats of (utilisation, power) on fresh samples."""
        need = int(frame.slots.max()) + 1 if frame.slots.size else 0
        if need > self.run.size:
            k = need - self.run.size
            self.prev = np.concatenate([self.prev, np.full((k, 2), np.nan)])
            self.run = np.concatenate([self.run, np.zeros(k, dtype=np.int64)])
        now = np.stack([frame.col("utilization"), frame.col("power_w")], axis=1)
        same = (now == self.prev[frame.slots]).all(axis=1) & (now[:, 1] > 0)
        slots = frame.slots[frame.fresh]
        self.run[slots] = np.where(same[frame.fresh], self.run[slots] + 1, 0)
        self.prev[slots] = now[frame.fresh]
        run = self.run[frame.slots]
        threshold = np.full(run.shape, float(self.cfg.stuck_samples))
        return base.Verdict(
            value=run.astype(float), threshold=threshold, raise_=run >= self.cfg.stuck_samples, clear=run == 0
        )
