"""The ring store against per-device deques (Hypothesis)."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from xpuctl.controller.core import ring

N_METRICS = 3


@st.composite
def appends(draw: st.DrawFn) -> list[list[int]]:
    return draw(st.lists(st.lists(st.integers(0, 11), unique=True, max_size=12), max_size=40))


@pytest.mark.slow  # hundreds of Hypothesis examples
@given(window=st.integers(1, 7), script=appends(), capacity=st.integers(1, 4))
def test_ring_matches_deques(window: int, script: list[list[int]], capacity: int) -> None:
    store = ring.RingStore(n_metrics=N_METRICS, window=window, capacity=capacity)
    model: dict[int, collections.deque[tuple[int, list[float]]]] = collections.defaultdict(
        lambda: collections.deque(maxlen=window)
    )
    for step, slots in enumerate(script):
        store.ensure_capacity(max(slots, default=0) + 1)
        vals = np.array([[step * 100 + s * 10 + m for m in range(N_METRICS)] for s in slots], dtype=float)
        vals = vals.reshape(len(slots), N_METRICS)
        t = step + 1  # the timestamp of this step's samples
        store.append(np.array(slots, dtype=np.int64), np.full(len(slots), t, dtype=np.int64), vals)
        for s, row in zip(slots, vals.tolist(), strict=True):
            model[s].append((t, row))
    for s in range(store.capacity):
        expect = list(model.get(s, ()))
        assert int(store.count[s]) == len(expect)
        ts, v = store.history(s, 1)
        assert ts.tolist() == [e[0] for e in expect]
        assert v.tolist() == [e[1][1] for e in expect]
        if expect:
            assert store.latest(np.array([s]))[0].tolist() == expect[-1][1]
            view = store.window_view(np.array([s]), 2, window)[0]
            tail = [e[1][2] for e in expect]
            assert view[window - len(tail) :].tolist() == tail
            assert np.isnan(view[: window - len(tail)]).all()
        else:
            assert np.isnan(store.latest(np.array([s]))).all()


def test_window_must_be_positive() -> None:
    import pytest  # noqa: PLC0415

    with pytest.raises(ValueError, match="window must be >= 1"):
        ring.RingStore(n_metrics=1, window=0)
