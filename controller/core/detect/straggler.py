"""`straggler`: a device far below its node peers while they are busy.

The devices of a node usually run one job in lockstep, so one slow device holds back all of them
(a degraded link, a throttled part). Per node: the median and the MAD (median absolute
deviation) of the devices' mean utilisation over `straggler_samples`; a device raises when it is
more than `straggler_mads` MADs and `straggler_min_gap` below the median while the median is at
least `straggler_peers_busy`. MAD, not the standard deviation, so the straggler itself does not
widen the band it is judged by.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from xpuctl.controller import config
from xpuctl.controller.core.detect import base

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution x this = its standard deviation


class Straggler(base.Detector):
    """Per-node robust outlier on utilisation."""

    kind = "straggler"
    says = "utilisation {value:.0%} under the node median {op} {threshold:.0%}"
    severity = base.WARNING

    FRESH: ClassVar[dict[str, float]] = {"mean": math.nan}

    def __init__(self, cfg: config.Detect) -> None:
        """Thresholds from config; no history yet."""
        super().__init__(cfg)
        self.mean = np.zeros(0)

    def _smoothed(self, frame: base.Frame) -> base.F64:
        """Per device an exponential moving mean of utilisation over ~straggler_samples samples."""
        need = int(frame.slots.max()) + 1 if frame.slots.size else 0
        if need > self.mean.size:
            self.mean = np.concatenate([self.mean, np.full(need - self.mean.size, np.nan)])
        util = frame.col("utilization")
        upd = frame.fresh & np.isfinite(util)
        slots = frame.slots[upd]
        a = 2.0 / (self.cfg.straggler_samples + 1)
        old = self.mean[slots]
        self.mean[slots] = np.where(np.isfinite(old), old + a * (util[upd] - old), util[upd])
        gone = frame.fresh & ~np.isfinite(util)
        self.mean[frame.slots[gone]] = np.nan
        return self.mean[frame.slots]

    def evaluate(self, frame: base.Frame) -> base.Verdict:
        """Gap below the node median, in utilisation."""
        util = self._smoothed(frame)
        median = frame.median_by_node(util)
        mad = frame.median_by_node(np.abs(util - median)) * MAD_TO_SIGMA
        peers = frame.size_by_node(util)
        band = np.maximum(self.cfg.straggler_mads * mad, self.cfg.straggler_min_gap)
        gap = median - util
        with np.errstate(invalid="ignore"):
            judged = (peers >= self.cfg.straggler_min_peers) & (median >= self.cfg.straggler_peers_busy)
            raise_ = judged & (gap > band)
            clear = ~judged | ~(gap > band / 2)
        return base.Verdict(value=gap, threshold=band, raise_=raise_, clear=clear)
