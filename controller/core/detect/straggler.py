"""`straggler`: a device far below its node peers while they are busy.

The devices of a node usually run one job in lockstep, so one slow device holds back all of them
(a degraded link, a throttled part). Per node: the median and the MAD (median absolute
deviation) of the devices' mean utilisation over `straggler_samples`; a device raises when it is
more than `straggler_mads` MADs and `straggler_min_gap` below the median while the median is at
least `straggler_peers_busy`. MAD, not the standard deviation, so the straggler itself does not
widen the band it is judged by.
"""

from __future__ import annotations

import numpy as np

from controller import config
from controller.core.detect import base

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution x this = its standard deviation


class Straggler(base.Detector):
    """Per-node robust outlier on utilisation."""

    kind = "straggler"
    severity = base.WARNING

    def __init__(self, cfg: config.Detect) -> None:
        """Thresholds from config."""
        self.cfg = cfg

    def evaluate(self, frame: base.Frame) -> base.Verdict:
        """Gap below the node median, in utilisation."""
        util = _mean_utilization(frame, self.cfg.straggler_samples)
        median = base.group_median(util, frame.group)
        mad = base.group_median(np.abs(util - median), frame.group) * MAD_TO_SIGMA
        peers = base.group_size(util, frame.group)
        band = np.maximum(self.cfg.straggler_mads * mad, self.cfg.straggler_min_gap)
        gap = median - util
        with np.errstate(invalid="ignore"):
            judged = (peers >= self.cfg.straggler_min_peers) & (median >= self.cfg.straggler_peers_busy)
            raise_ = judged & (gap > band)
            clear = ~judged | ~(gap > band / 2)
        return base.Verdict(value=gap, threshold=band, raise_=raise_, clear=clear)


def _mean_utilization(frame: base.Frame, n: int) -> base.F64:
    """Mean of each device's last n utilisation samples; NaN for a device with none."""
    window = frame.window("utilization", n)
    ok = np.isfinite(window)
    count = ok.sum(axis=1)
    total = np.where(ok, window, 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)
