"""`power_over_cap`: a device drawing more than its enforced limit, sample after sample.

That is an enforcement failure (a firmware or driver fault, or a limiter out of band): the power
loop cannot trust the cap of such a device. A single sample over the limit is normal (limits
are enforced over a window), so the condition must hold on `overcap_samples` in a row.
"""

from __future__ import annotations

import numpy as np

from controller import config
from controller.core.detect import base


class OverCap(base.Detector):
    """Power above limit x ratio + margin on the last n samples."""

    kind = "power_over_cap"
    severity = base.CRITICAL

    def __init__(self, cfg: config.Detect) -> None:
        """Thresholds from config."""
        self.cfg = cfg

    def evaluate(self, frame: base.Frame) -> base.Verdict:
        """Raise when all of the last n samples are over; clear when the newest is not."""
        n = self.cfg.overcap_samples
        power = frame.window("power_w", n)
        limit = frame.window("power_limit_w", n)
        bound = limit * self.cfg.overcap_ratio + self.cfg.overcap_margin_w
        with np.errstate(invalid="ignore"):
            over = power > bound
        raise_ = over.all(axis=1)
        clear = ~over[:, -1]
        return base.Verdict(value=power[:, -1], threshold=bound[:, -1], raise_=raise_, clear=clear)
