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

    FRESH: ClassVar[dict[str, float]] = {"prev_util": math.nan, "prev_power": math.nan, "run": 0}

    def __init__(self, cfg: config.Detect) -> None:
        """Thresholds from config; no device seen yet."""
        super().__init__(cfg)
        self.prev_util = np.zeros(0)
        self.prev_power = np.zeros(0)
        self.run = np.zeros(0, dtype=np.int64)

    def evaluate(self, frame: base.Frame) -> base.Verdict:
        """Count the fresh samples that repeat the previous one exactly (column by column: a
        comparison of a (k, 2) array reduced along its rows cost 10 times more).
        """
        need = int(frame.slots.max()) + 1 if frame.slots.size else 0
        if need > self.run.size:
            k = need - self.run.size
            self.prev_util = np.concatenate([self.prev_util, np.full(k, np.nan)])
            self.prev_power = np.concatenate([self.prev_power, np.full(k, np.nan)])
            self.run = np.concatenate([self.run, np.zeros(k, dtype=np.int64)])
        at, fresh = frame.index, frame.fresh
        util, power = frame.col("utilization"), frame.col("power_w")
        prev_util, prev_power = self.prev_util[at], self.prev_power[at]
        same = (util == prev_util) & (power == prev_power) & (power > 0)
        before = self.run[at]
        run = np.where(fresh, np.where(same, before + 1, 0), before)
        self.run[at] = run
        self.prev_util[at] = np.where(fresh, util, prev_util)
        self.prev_power[at] = np.where(fresh, power, prev_power)
        threshold = np.full(run.shape, float(self.cfg.stuck_samples))
        return base.Verdict(
            value=run.astype(float), threshold=threshold, raise_=run >= self.cfg.stuck_samples, clear=run == 0
        )
