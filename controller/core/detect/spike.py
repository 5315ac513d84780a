"""`spike`: a device's power jumps far from its own recent behaviour, and its node peers' do not.

Per device an exponentially weighted mean and variance of power (weight `spike_alpha` for each
fresh sample); z = (power - mean) / max(std, floor). A job starting or stopping moves every
device of a node at once, so a device raises only when |z| > `spike_z` while the median z of its
node stays below `spike_peer_z`. Needs `straggler_min_peers` devices on the node to tell the two
apart, and 10 samples of warm-up per device.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from xpuctl.controller import config
from xpuctl.controller.core.detect import base

WARMUP_SAMPLES = 10


class Spike(base.Detector):
    """EWMA z-score of power, judged against the node's peers."""

    kind = "spike"
    says = "power {value:.1f} standard deviations from its recent mean {op} {threshold:.1f}"
    severity = base.WARNING

    FRESH: ClassVar[dict[str, float]] = {"mean": 0.0, "var": 0.0, "seen": 0, "z": 0.0}

    def __init__(self, cfg: config.Detect) -> None:
        """Thresholds from config; no history yet."""
        super().__init__(cfg)
        self.mean = np.zeros(0)
        self.var = np.zeros(0)
        self.seen = np.zeros(0, dtype=np.int64)
        self.z = np.zeros(0)

    def _grow(self, n: int) -> None:
        if n > self.seen.size:
            k = n - self.seen.size
            self.mean = np.concatenate([self.mean, np.zeros(k)])
            self.var = np.concatenate([self.var, np.zeros(k)])
            self.seen = np.concatenate([self.seen, np.zeros(k, dtype=np.int64)])
            self.z = np.concatenate([self.z, np.zeros(k)])

    def evaluate(self, frame: base.Frame) -> base.Verdict:
        """Update the EWMA with fresh samples; z against the values before the update."""
        self._grow(int(frame.slots.max()) + 1 if frame.slots.size else 0)
        power = frame.col("power_w")
        upd = frame.fresh & np.isfinite(power)
        at = frame.index  # whole arrays on a full pass: no gather and scatter of the fresh rows
        mean, var, seen = self.mean[at], self.var[at], self.seen[at]
        floor = np.nan_to_num(frame.max_w, nan=100.0) * self.cfg.spike_sigma_floor_frac
        first = seen == 0
        a = self.cfg.spike_alpha
        with np.errstate(invalid="ignore"):
            diff = power - mean
            z = np.where(first, 0.0, diff / np.maximum(np.sqrt(var), floor))
            self.mean[at] = np.where(upd, np.where(first, power, mean + a * diff), mean)
            self.var[at] = np.where(upd, np.where(first, 0.0, (1 - a) * (var + a * diff * diff)), var)
        self.seen[at] = seen + upd
        zs = np.where(upd, z, self.z[at])
        self.z[at] = zs
        peer_z = frame.median_by_node(zs)
        peers = frame.size_by_node(zs)
        warm = self.seen[frame.slots] > WARMUP_SAMPLES
        judged = warm & (peers >= self.cfg.straggler_min_peers)
        # a device dropping to a cap it was just given is obeying, not spiking
        limit = frame.col("power_limit_w")
        with np.errstate(invalid="ignore"):
            obeying = (zs < 0) & (power >= 0.97 * limit)
        raise_ = judged & ~obeying & (np.abs(zs) > self.cfg.spike_z) & (np.abs(peer_z) < self.cfg.spike_peer_z)
        clear = ~(np.abs(zs) > self.cfg.spike_clear_z)
        threshold = np.full(zs.shape, self.cfg.spike_z)
        return base.Verdict(value=zs, threshold=threshold, raise_=raise_ & upd, clear=clear & ~raise_)
