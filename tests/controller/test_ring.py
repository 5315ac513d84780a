"""The ring store against per-device deques (Hypothesis)."""

from __future__ import annotations

import collections
import itertools

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
    store = ring.RingStore(n_metrics=N_METRICS, window=window, capacity=capacity, counters=(2,))
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
    every = np.arange(store.capacity, dtype=np.int64)
    expected = [list(model.get(s, ())) for s in range(store.capacity)]
    for n, metric in itertools.product(range(window + 1), (1, 2)):  # `back`, a gauge and the counter
        bts, bv = store.back(every, metric, n)
        for s, expect in enumerate(expected):
            if n < len(expect):
                assert (int(bts[s]), float(bv[s])) == (expect[-1 - n][0], expect[-1 - n][1][metric])
            else:
                assert int(bts[s]) == 0 and np.isnan(bv[s])


def test_window_must_be_positive() -> None:
    import pytest  # noqa: PLC0415

    with pytest.raises(ValueError, match="window must be >= 1"):
        ring.RingStore(n_metrics=1, window=0)


def test_counters_keep_full_precision_across_rebases_and_resets() -> None:
    # Issue 13.5: gauges are float32; a counter near 1e9 J keeps its half joules through the moves
    # of its base (every 2**20 units) and through a reset to a small value
    store = ring.RingStore(n_metrics=N_METRICS, window=5, counters=(2,))
    slot = np.array([0])
    sent: list[float] = []
    for k in range(40):
        energy = 1e9 + k * 300_000.5 if k < 30 else 3.5 + k  # a reset at k = 30
        sent.append(energy)
        store.append(slot, np.array([k + 1]), np.array([[123.456, float(k), energy]]))
        _, got = store.history(0, 2)
        if k < 30:  # exact, through every move of the base
            assert got.tolist() == sent[-5:], k
        else:  # after the reset: the new values exact, the ones before it within float32 of the jump
            new = min(k - 29, 5)
            assert got.tolist()[-new:] == sent[-new:], k
            assert np.allclose(got[:-new], sent[-5:-new], rtol=1e-7, atol=0), k
        assert store.latest(slot)[0, 2] == energy
        if k:
            assert store.back(slot, 2, 1)[1][0] == pytest.approx(sent[-2], rel=1e-7)
    assert abs(store.latest(slot)[0, 0] - 123.456) < 1e-4  # a gauge: float32, 7 digits
    assert store.values.dtype == np.float32 and store.values.nbytes == 64 * N_METRICS * 5 * 4


def test_the_newest_sample_is_kept_exact_and_forgotten_with_its_slot() -> None:
    # Issue 13: the newest sample is kept apart in float64 (the tick reads it for every device).
    store = ring.RingStore(n_metrics=N_METRICS, window=4, capacity=2)
    exact = 0.1 + 2**-40  # not a float32
    store.append(np.array([1]), np.array([7]), np.array([[exact, 2.0, 3.0]]))
    assert store.latest(np.array([1]))[0].tolist() == [exact, 2.0, 3.0]
    assert store.latest_timestamps(np.array([0, 1])).tolist() == [0, 7]
    assert store.history(1, 0)[1][0] != exact  # the ring itself holds float32
    store.clear(1)
    assert np.isnan(store.latest(np.array([1]))).all() and store.latest_timestamps(np.array([1]))[0] == 0
