"""Ring store: the last `window` samples of every metric of every device, in numpy.

Layout: `values[slot, metric, k]` (float32, NaN = absent) and `timestamps[slot, k]` (int64 ns),
with a write position `head[slot]` and a fill `count[slot]` per device, since devices report
independently. Invariant: for each slot, the `count[slot]` entries ending just before `head[slot]`
(modulo window) are that device's latest samples, oldest first; nothing else is valid.
Appends are vectorised over the rows of a batch: no Python loop per value. Pure: no clocks.

Precision: gauges (power, temperature, utilisation, ...) keep float32's 7 digits, more than any
tool prints, which halves the store (10,000 devices x 600 samples: 360 MB instead of 720 MB).
Counters (`counters`: energy, ECC totals, work done) grow without bound, and float32 would blur a
device's 1e9 J to 64 J steps: they are kept as float32 offsets from a float64 base per device and
counter, so that every value within 2**20 of the base keeps a step of 1/8 unit or finer. When a
value moves farther than that from its base (a year of energy, or a counter reset), the base
moves to it and the device's stored offsets shift with it (a rare, per-device Python step); after
a jump (a reset from 1e9 J to 0) the values before it keep float32's relative precision (64 J
steps at 1e9 J), the ones after it full precision.
Reads give float64 with the base added back.

The newest sample of every device is also kept apart, dense and in float64 (`newest[slot]`,
`newest_ts[slot]`): the tick and the critical path read it for every device, and a gather of one
column across the ring's (slot, metric, k) layout cost 3 ms at 10,000 devices against 0.1 ms
(issue 13). It is the value as it came (no float32 rounding).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
REBASE_AT = float(2**20)  # a counter offset beyond this moves the base (float32: steps <= 1/8)


class RingStore:
    """Per-device ring buffers over a fixed metric axis."""

    GROWTH_SLOTS = 1024

    def __init__(self, *, n_metrics: int, window: int, capacity: int = 64, counters: tuple[int, ...] = ()) -> None:
        """Preallocate room for `capacity` devices; grows in steps of GROWTH_SLOTS. `counters` are
        the metrics kept to full precision (see the module docstring).
        """
        if window < 1:
            msg = f"ring window must be >= 1 sample, got {window}"
            raise ValueError(msg)
        self.n_metrics = n_metrics
        self.window = window
        self.capacity = 0
        self.counters = np.array(counters, dtype=np.int64)
        self.counter_of = {m: j for j, m in enumerate(counters)}
        self.values: F32 = np.empty((0, n_metrics, window), dtype=np.float32)
        self.base: F64 = np.empty((0, len(counters)))
        self.timestamps: I64 = np.empty((0, window), dtype=np.int64)
        self.head: I64 = np.zeros(0, dtype=np.int64)
        self.count: I64 = np.zeros(0, dtype=np.int64)
        self.newest: F64 = np.empty((0, n_metrics))
        self.newest_ts: I64 = np.zeros(0, dtype=np.int64)
        self.ensure_capacity(capacity)

    def ensure_capacity(self, slots: int) -> None:
        """Make room for at least `slots` devices.

        Growth is in whole steps of GROWTH_SLOTS, not doubling: at 10,000 devices a 600-sample
        window is ~740 MB, and doubling would reserve up to twice what is used. Devices register
        only at Hello, so the copies are rare.
        """
        if slots <= self.capacity:
            return
        step = self.GROWTH_SLOTS
        new = max(slots, self.capacity + 1)
        if self.capacity:  # the first allocation is exactly what was asked for
            new = -(-new // step) * step
        values = np.full((new, self.n_metrics, self.window), np.nan, dtype=np.float32)
        values[: self.capacity] = self.values
        timestamps = np.zeros((new, self.window), dtype=np.int64)
        timestamps[: self.capacity] = self.timestamps
        base = np.full((new, len(self.counters)), np.nan)
        base[: self.capacity] = self.base
        self.values, self.timestamps, self.base = values, timestamps, base
        newest = np.full((new, self.n_metrics), np.nan)
        newest[: self.capacity] = self.newest
        self.newest = newest
        self.newest_ts = np.concatenate([self.newest_ts, np.zeros(new - self.capacity, dtype=np.int64)])
        self.head = np.concatenate([self.head, np.zeros(new - self.capacity, dtype=np.int64)])
        self.count = np.concatenate([self.count, np.zeros(new - self.capacity, dtype=np.int64)])
        self.capacity = new

    def clear(self, slot: int) -> None:
        """Empty one device's history (its slot is freed for another device)."""
        if slot < self.capacity:
            self.values[slot] = np.nan
            self.base[slot] = np.nan
            self.timestamps[slot] = 0
            self.head[slot] = self.count[slot] = 0
            self.newest[slot] = np.nan
            self.newest_ts[slot] = 0

    def append(self, slots: I64, timestamps_ns: I64, values: F64) -> None:
        """Store one sample for each of `slots` (distinct), rows of `values` shaped (k, n_metrics)."""
        if slots.size == 0:
            return
        pos = self.head[slots]
        self.newest[slots] = values
        self.newest_ts[slots] = timestamps_ns
        if self.counters.size:
            values = values.copy()
            values[:, self.counters] = self._offsets(slots, values[:, self.counters])
        self.values[slots, :, pos] = values
        self.timestamps[slots, pos] = timestamps_ns
        self.head[slots] = (pos + 1) % self.window
        self.count[slots] = np.minimum(self.count[slots] + 1, self.window)

    def _offsets(self, slots: I64, counts: F64) -> F64:
        """Counter values (k, n_counters) as offsets from their bases, moving the bases that are
        new (first value of the device) or too far (see the module docstring).
        """
        base = self.base[slots]
        off = counts - base
        moved = False
        if np.isnan(off).any():  # a device's first value, or a counter it does not report (NaN)
            fresh = np.isnan(base) & ~np.isnan(counts)
            if fresh.any():
                base[fresh] = counts[fresh]
                off[fresh] = 0.0
                moved = True
        far = np.abs(off) > REBASE_AT  # NaN compares False
        if far.any():  # rare: a year of energy, or a reset
            for r, j in zip(*np.nonzero(far), strict=True):
                slot, metric = int(slots[r]), int(self.counters[j])
                self.values[slot, metric, :] += np.float32(base[r, j] - counts[r, j])
                base[r, j], off[r, j] = counts[r, j], 0.0
            moved = True
        if moved:
            self.base[slots] = base
        return off

    def _full(self, slots: I64, metric: int, vals: F32) -> F64:
        """Stored values of one metric as float64, the counter's base added back."""
        out = vals.astype(np.float64)
        j = self.counter_of.get(metric)
        if j is not None:
            base = self.base[slots, j]
            out += base.reshape(base.shape + (1,) * (out.ndim - base.ndim))
        return out

    def latest(self, slots: I64) -> F64:
        """The newest values of `slots`, shaped (k, n_metrics); NaN rows for empty slots."""
        return self.newest[slots]

    def latest_timestamps(self, slots: I64) -> I64:
        """The newest timestamp of `slots` (0 for empty slots)."""
        return self.newest_ts[slots]

    def history(self, slot: int, metric: int, limit: int | None = None) -> tuple[I64, F64]:
        """One device's metric in time order (oldest first), at most `limit` newest samples."""
        n = int(self.count[slot])
        if limit is not None:
            n = min(n, limit)
        idx = (self.head[slot] - n + np.arange(n)) % self.window
        vals = self._full(np.array([slot]), metric, self.values[slot, metric, idx][None, :])[0]
        return self.timestamps[slot, idx].copy(), vals

    def window_view(self, slots: I64, metric: int, last: int, *, since_ns: int | None = None) -> F64:
        """The `last` newest values of one metric for many devices, shaped (k, last), oldest first.

        Entries older than a device's fill, or (with `since_ns`) sampled before it, are NaN.
        """
        offsets = np.arange(-last, 0)
        idx = self.head[slots, None] + offsets[None, :]
        if last <= self.window:
            idx[idx < 0] += self.window  # head is in [0, window): cheaper than a modulo
        else:
            idx %= self.window
        out = self._full(slots, metric, self.values[slots[:, None], metric, idx])
        out[(offsets[None, :] + self.count[slots, None]) < 0] = np.nan
        if since_ns is not None:
            out[self.timestamps[slots[:, None], idx] < since_ns] = np.nan
        return out

    def back(self, slots: I64, metric: int, n: int) -> tuple[I64, F64]:
        """(timestamps, values) of one metric `n` samples before the newest (0 = the newest).

        One gather per call: cheaper than a window when only two points of it are needed.
        Devices with fewer than n + 1 samples give timestamp 0 and NaN.
        """
        w = self.window
        pos = (self.head[slots] - 1 - n) % w
        # flat gathers: a third cheaper than indexing the 2-D and 3-D arrays with two index arrays
        ts = np.take(self.timestamps.reshape(-1), slots * w + pos)
        vals = self._full(slots, metric, np.take(self.values.reshape(-1), (slots * self.n_metrics + metric) * w + pos))
        short = self.count[slots] <= n
        ts[short] = 0
        vals[short] = np.nan
        return ts, vals
