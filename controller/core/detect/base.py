"""What every detector shares: the per-tick frame it reads, the verdict it returns, the finding.

A detector is vectorised over devices: `evaluate(frame)` looks at the devices of `frame.slots`
at once and says, per device, the value it judged, the threshold, whether the raise condition
holds and whether the clear condition holds. It does not keep the raised/cleared state: the
runner (detect/__init__.py) applies hysteresis, so a device raises once, stays raised until its
clear condition holds, and every change becomes one Finding. Pure: time is `frame.now_ns`.
"""

from __future__ import annotations

from typing import ClassVar, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt

from xpuctl.controller import config
from xpuctl.controller.core import model, ring

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]
Scalar = TypeVar("Scalar", bound=np.generic)

INFO, WARNING, CRITICAL = "info", "warning", "critical"


class Frame(msgspec.Struct, kw_only=True):
    """What detectors read in one pass: the newest sample of each device in `slots`, and the store.

    Per-slot arrays are aligned with `slots`; `group` numbers the node of each device (peers share
    a group); `fresh` marks devices with a sample newer than the previous full pass.
    """

    now_ns: int
    slots: I64
    latest: F64
    latest_ts: I64
    store: ring.RingStore
    slowdown_c: F64
    max_w: F64
    group: I64
    fresh: Mask
    last_error_ns: I64
    last_error_code: list[str]  # per slot (index with slots[i]), not per frame row
    layout: Layout | None = None  # set on full passes (slots = every device, in slot order)

    @property
    def index(self) -> slice | I64:
        """What selects this frame's devices from a per-slot array: on a full pass every slot in
        order, as a slice (a view, no copy), else `slots`.
        """
        return slice(0, self.slots.size) if self.layout is not None else self.slots

    def median_by_node(self, values: F64) -> F64:
        """Per device, the median of `values` over its node's devices."""
        if self.layout is not None:
            return self.layout.median(values)
        return group_median(values, self.group)

    def size_by_node(self, values: F64) -> I64:
        """Per device, how many of its node's devices have a finite value."""
        if self.layout is not None:
            return self.layout.size(values)
        return group_size(values, self.group)

    def col(self, metric: str) -> F64:
        """The newest value of one metric per device (NaN = absent)."""
        return self.latest[:, model.M[metric]]

    def back(self, metric: str, n: int) -> tuple[I64, F64]:
        """(timestamps, values) of one metric n samples before the newest, per device."""
        index = model.HEALTH if metric == "health" else model.M[metric]
        return self.store.back(self.slots, index, n)


class Verdict(msgspec.Struct, kw_only=True):
    """A detector's judgement of each device in the frame (arrays aligned with `frame.slots`)."""

    value: F64
    threshold: F64
    raise_: Mask
    clear: Mask


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    """A device's anomaly raised or cleared."""

    slot: int
    kind: str
    severity: str
    raised: bool
    value: float
    threshold: float
    detail: str = ""


SAYS = "value {value:.4g} {op} threshold {threshold:.4g}"


class Detector:
    """Base class: a kind, a severity, and `evaluate`."""

    kind: ClassVar[str] = ""
    severity: ClassVar[str] = WARNING
    # True for detectors cheap and urgent enough to run on every batch (the critical path)
    critical_path: ClassVar[bool] = False
    # how an event says what was measured, with units: `{value}`, `{threshold}` and `{op}` (`>=`
    # when raised, `<` when cleared) are filled in; e.g. "temperature rising {value:.2f} C/s {op} ..."
    says: ClassVar[str] = SAYS

    def __init__(self, cfg: config.Detect) -> None:
        """Thresholds from config (detectors with state add theirs after this)."""
        self.cfg = cfg

    # per-device state: the name of each per-slot array and the value of a device never seen
    FRESH: ClassVar[dict[str, float]] = {}

    def reset(self, slot: int) -> None:
        """Forget what this detector knew of `slot` (its device is gone; the slot may be reused)."""
        for name, fill in self.FRESH.items():
            arr = getattr(self, name)
            if slot < len(arr):
                arr[slot] = fill

    def evaluate(self, frame: Frame) -> Verdict:
        """Judge every device of the frame."""
        raise NotImplementedError

    def detail(self, frame: Frame, i: int) -> str:
        """Extra words for the finding of the frame's i-th device (e.g. an error code)."""
        del frame, i
        return ""


class Layout:
    """Devices arranged as a (groups x largest group) matrix, for per-node statistics in one sort.

    Built once per registry version; `rows`/`cols` place each element of the per-device arrays.
    """

    def __init__(self, group: I64) -> None:
        """Place every element by its group number."""
        order = np.argsort(group, kind="stable")
        sorted_g = group[order]
        starts = (
            np.flatnonzero(np.r_[True, sorted_g[1:] != sorted_g[:-1]]) if group.size else np.zeros(0, dtype=np.int64)
        )
        sizes = np.diff(np.r_[starts, group.size])
        self.n_groups = starts.size
        self.width = int(sizes.max()) if sizes.size else 0
        row_of_sorted = np.repeat(np.arange(self.n_groups), sizes)
        col_of_sorted = np.arange(group.size) - np.repeat(starts, sizes)
        self.rows = np.empty(group.size, dtype=np.int64)
        self.cols = np.empty(group.size, dtype=np.int64)
        self.rows[order] = row_of_sorted
        self.cols[order] = col_of_sorted
        # the usual fleet: every node has as many devices, registered one node after another, so
        # that the matrix is the per-device array reshaped (no scatter, no gather)
        self.dense = (
            bool(group.size)
            and bool((sizes == self.width).all())
            and bool((self.rows == np.arange(group.size) // self.width).all())
        )

    def _matrix(self, values: F64) -> F64:
        """The values as (groups x largest group), +inf for non-finite values and empty places."""
        finite = np.where(np.isfinite(values), values, np.inf)
        if self.dense:
            return finite.reshape(self.n_groups, self.width)
        m = np.full((self.n_groups, self.width), np.inf)
        m[self.rows, self.cols] = finite
        return m

    def _per_element(self, per_group: npt.NDArray[Scalar]) -> npt.NDArray[Scalar]:
        return np.repeat(per_group, self.width) if self.dense else per_group[self.rows]

    def median(self, values: F64) -> F64:
        """Per element, the median of its group's finite values (NaN where the group has none)."""
        m = self._matrix(values)
        m.sort(axis=1)
        n = np.isfinite(m).sum(axis=1)
        lo = m[np.arange(self.n_groups), np.maximum((n - 1) // 2, 0)]
        hi = m[np.arange(self.n_groups), np.maximum(n // 2, 0)]
        with np.errstate(invalid="ignore"):
            med = np.where(n > 0, (lo + hi) / 2, np.nan)
        return self._per_element(med)

    def size(self, values: F64) -> I64:
        """Per element, how many finite values its group has."""
        if self.dense:
            counts = np.isfinite(values).reshape(self.n_groups, self.width).sum(axis=1)
        else:
            counts = np.bincount(self.rows[np.isfinite(values)], minlength=self.n_groups)
        return self._per_element(counts)


def group_median(values: F64, group: I64) -> F64:
    """Per element, the median of `values` over the elements of its group (NaN values ignored).

    Vectorised: one lexsort, then index arithmetic per group. Elements whose value is NaN get the
    median of their group's others; a group with no finite value gives NaN.
    """
    out = np.full(values.shape, np.nan)
    ok = np.isfinite(values)
    if not ok.any():
        return out
    g, v = group[ok], values[ok]
    order = np.lexsort((v, g))
    g_sorted, v_sorted = g[order], v[order]
    uniq, start, count = np.unique(g_sorted, return_index=True, return_counts=True)
    lo = v_sorted[start + (count - 1) // 2]
    hi = v_sorted[start + count // 2]
    med = (lo + hi) / 2
    pos = np.searchsorted(uniq, group)
    pos = np.clip(pos, 0, uniq.size - 1)
    found = uniq[pos] == group
    out[found] = med[pos[found]]
    return out


def group_size(values: F64, group: I64) -> I64:
    """Per element, how many finite values its group has."""
    ok = np.isfinite(values)
    if group.size == 0:
        return np.zeros(0, dtype=np.int64)
    counts = np.bincount(group[ok], minlength=int(group.max()) + 1)
    return counts[group]
