"""`power_over_cap`: a device drawing more than its enforced limit, sample after sample.

That is an enforcement failure (a firmware or driver fault, or a limiter out of band): the power
loop cannot trust the cap of such a device. A single sample over the limit is normal (limits
are enforced over a window), so the condition must hold on `overcap_samples` in a row.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from xpuctl.controller import config
from xpuctl.controller.core.detect import base


class OverCap(base.Detector):
    """Power above limit x ratio + margin on the last n samples."""

    kind = "power_over_cap"
    says = "power {value:.0f} W {op} {threshold:.0f} W (its cap and the tolerance)"
    severity = base.CRITICAL

    FRESH: ClassVar[dict[str, float]] = {"run": 0}

    def __init__(self, cfg: config.Detect) -> None:  # noqa: D107 - see the class
        super().__init__(cfg)
        self.run = np.zeros(0, dtype=np.int64)

    def evaluate(self, frame: base.Frame) -> base.Verdict:
        """Count fresh samples over the bound in a row; raise at n, clear when the newest is not."""
        need = int(frame.slots.max()) + 1 if frame.slots.size else 0
        if need > self.run.size:
            self.run = np.concatenate([self.run, np.zeros(need - self.run.size, dtype=np.int64)])
        power = frame.col("power_w")
        bound = frame.col("power_limit_w") * self.cfg.overcap_ratio + self.cfg.overcap_margin_w
        with np.errstate(invalid="ignore"):
            over = power > bound
        fresh = frame.slots[frame.fresh]
        self.run[fresh] = np.where(over[frame.fresh], self.run[fresh] + 1, 0)
        run = self.run[frame.slots]
        return base.Verdict(value=power, threshold=bound, raise_=run >= self.cfg.overcap_samples, clear=~over)
