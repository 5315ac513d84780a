"""ECC detectors: any new uncorrected error, and a storm of corrected ones.

An uncorrected error means data was lost: one is enough to raise `ecc_uncorrected`, which
clears after `ecc_clear_after_s` without another. Corrected errors are normal in small numbers;
hundreds per second (`ecc_storm`) announce a failing memory part. The counters are cumulative
totals, so rates come from differences, and a counter that goes backwards (a driver reload)
counts as no increase.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from xpuctl.controller import config
from xpuctl.controller.core.detect import base


class EccUncorrected(base.Detector):
    """A new uncorrected ECC error since the previous pass."""

    kind = "ecc_uncorrected"
    says = "{value:.0f} new uncorrected ECC error(s)"
    severity = base.CRITICAL

    FRESH: ClassVar[dict[str, float]] = {"prev": math.nan, "last_increase_ns": 0}

    def __init__(self, cfg: config.Detect) -> None:
        """Thresholds from config; no device seen yet."""
        super().__init__(cfg)
        self.prev = np.zeros(0)
        self.last_increase_ns = np.zeros(0, dtype=np.int64)

    def _grow(self, n: int) -> None:
        if n > self.prev.size:
            k = n - self.prev.size
            self.prev = np.concatenate([self.prev, np.full(k, np.nan)])
            self.last_increase_ns = np.concatenate([self.last_increase_ns, np.zeros(k, dtype=np.int64)])

    def evaluate(self, frame: base.Frame) -> base.Verdict:
        """Raise on an increase of the total; clear after a quiet spell."""
        self._grow(int(frame.slots.max()) + 1 if frame.slots.size else 0)
        total = frame.col("ecc_uncorrected_total")
        prev = self.prev[frame.slots]
        with np.errstate(invalid="ignore"):
            increase = np.where(np.isfinite(prev) & np.isfinite(total), total - prev, 0.0)
        increase = np.maximum(increase, 0.0)
        rose = increase > 0
        self.last_increase_ns[frame.slots[rose]] = frame.now_ns
        self.prev[frame.slots] = np.where(np.isfinite(total), total, prev)
        quiet_s = (frame.now_ns - self.last_increase_ns[frame.slots]) / 1e9
        clear = quiet_s > self.cfg.ecc_clear_after_s
        return base.Verdict(value=increase, threshold=np.zeros(increase.shape), raise_=rose, clear=clear & ~rose)


class EccStorm(base.Detector):
    """Corrected ECC errors per second over the last samples."""

    kind = "ecc_storm"
    says = "{value:.3g} corrected ECC errors/s {op} {threshold:.3g}/s"
    severity = base.WARNING

    def evaluate(self, frame: base.Frame) -> base.Verdict:
        """Rate = (newest - oldest) / their time apart."""
        n = max(2, self.cfg.ecc_window_samples)
        total = frame.col("ecc_corrected_total")
        then_ts, then = frame.back("ecc_corrected_total", n - 1)
        dt_s = (frame.latest_ts - then_ts) / 1e9
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.where((then_ts > 0) & (dt_s > 0), np.maximum(total - then, 0.0) / dt_s, np.nan)
            raise_ = rate >= self.cfg.ecc_storm_per_s
            clear = ~(rate >= self.cfg.ecc_storm_clear_per_s)
        threshold = np.full(rate.shape, self.cfg.ecc_storm_per_s)
        return base.Verdict(value=rate, threshold=threshold, raise_=raise_, clear=clear)
