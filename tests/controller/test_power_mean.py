"""The loop planned on the mean (`[power] plan = "mean"`, issue 17.2), rule by rule and on a
simulated fleet (pure; no clocks).
"""

from __future__ import annotations

import numpy as np
import pytest

from xpuctl.controller import config
from xpuctl.controller.core import power
from xpuctl.controller.lab import powerbench


def mean_inputs(n: int, *, mean_w: float, power_w: float, limit_w: float) -> power.Inputs:
    """Devices (n) of 200-700 W that drew `mean_w` on average and draw `power_w` now."""
    return power.Inputs(
        settable=np.ones(n, dtype=bool),
        min_w=np.full(n, 200.0),
        max_w=np.full(n, 700.0),
        default_w=np.full(n, 700.0),
        weight=np.ones(n),
        power_w=np.full(n, power_w),
        recent_max_w=np.full(n, max(mean_w, power_w)),
        limit_w=np.full(n, limit_w),
        hot=np.zeros(n, dtype=bool),
        mean_w=np.full(n, mean_w),
        held_w=np.full(n, min(mean_w, power_w)),
    )


def on_mean(budget_w: float) -> power.PowerController:
    return power.PowerController(config.Power(budget_w=budget_w, plan="mean", reserve_frac=0.0))


def test_levels_are_the_peak_the_mean_and_the_least_of_the_last_samples() -> None:
    window = np.array(
        [
            [np.nan, 100.0, 300.0, 200.0, 400.0, 500.0, 600.0],
            [np.nan] * 7,  # no sample in the window
        ]
    )
    levels = power.Levels.of(window)
    assert levels.peak[0] == 600.0 and levels.mean[0] == pytest.approx(350.0)
    assert levels.held[0] == 200.0  # the least of the last HELD_SAMPLES (5) samples
    assert np.isnan(levels.peak[1]) and np.isnan(levels.mean[1]) and np.isnan(levels.held[1])
    both = power.Levels.concat([levels, power.Levels.of(window[:1])])
    assert both.mean.size == 3 and both.mean[2] == levels.mean[0]
    assert power.Levels.of(np.zeros((0, 30))).peak.size == 0


def test_loads_without_a_setter_count_at_their_mean_or_their_power_now() -> None:
    inp = mean_inputs(8, mean_w=300.0, power_w=300.0, limit_w=700.0)
    assert inp.mean_w is not None
    inp.settable[4:] = False
    inp.mean_w[4:] = 100.0  # idle for most of the window ...
    inp.power_w[4:] = 600.0  # ... and a job started: counted from its first sample
    assert on_mean(8 * 700.0).decide(inp).fixed_w == pytest.approx(4 * 600.0)
    inp.power_w[4:] = 50.0  # a lull under its mean: the mean
    assert on_mean(8 * 700.0).decide(inp).fixed_w == pytest.approx(4 * 100.0)


def test_what_the_devices_draw_now_over_the_budget_is_cut_at_once() -> None:
    # the mean says 250 W (idle until a moment ago), the devices draw 600 W now: the plan alone
    # would see room; the draw now says the budget is broken next period unless caps come down
    budget_w = 8 * 400.0
    inp = mean_inputs(8, mean_w=250.0, power_w=600.0, limit_w=700.0)
    d = on_mean(budget_w).decide(inp)
    caps = np.full(8, 700.0)
    for c in d.commands:
        caps[c.slot] = c.cap_w
        assert c.cap_w < 700.0 and c.reason == "budget"
    assert np.minimum(caps, 600.0).sum() <= budget_w + 1e-6


def test_a_cut_waits_until_the_budget_or_a_raise_needs_it() -> None:
    # devices 4-7: caps of 600 W, drawing 500 W on average; the plan would give them 475 W
    inp = mean_inputs(8, mean_w=500.0, power_w=500.0, limit_w=600.0)
    assert inp.mean_w is not None and inp.held_w is not None
    inp.limit_w[:4] = inp.power_w[:4] = inp.mean_w[:4] = inp.held_w[:4] = 300.0  # 0-3 held at 300 W
    # nobody wants more than the budget leaves free: the peak plan cuts 4-7 to their targets,
    # the mean plan sends nothing (a cut now and a raise later are two commands)
    free = 4 * 300.0 + 4 * 500.0 + 4 * 25.0 + 200.0
    peak = power.PowerController(config.Power(budget_w=free, reserve_frac=0.0)).decide(inp)
    assert [c for c in peak.commands if c.slot >= 4 and c.cap_w < 600.0]
    assert not [c for c in on_mean(free).decide(inp).commands if c.slot >= 4]
    # a budget all taken: 0-3 want 25 W more each (held at their caps), and only cuts of 4-7 to
    # their targets pay for that; each raise is paid for, with the headroom left
    tight = 8 * 400.0
    d = on_mean(tight).decide(inp)
    raises = [c for c in d.commands if c.slot < 4]
    cuts = [c for c in d.commands if c.slot >= 4]
    assert raises and all(c.cap_w > 300.0 for c in raises)
    assert cuts and all(c.cap_w < 600.0 for c in cuts)
    freed = sum(500.0 - min(c.cap_w, 500.0) for c in cuts)
    assert sum(c.cap_w - 300.0 for c in raises) <= freed - power.RAISE_HEADROOM_FRAC * tight + 1e-6


@pytest.mark.slow  # a simulated fleet for 5 simulated minutes, planned both ways
def test_planned_on_the_mean_a_fleet_draws_more_of_its_budget_and_keeps_it() -> None:
    ref = powerbench.simulate("uncapped", nodes=8, seconds=300, seed=3, budget_w=None)
    budget = 0.7 * ref.mean_power_w
    over = [k for k, w in enumerate(ref.series_w) if w > budget]

    def draw(run: powerbench.Run) -> float:
        return sum(run.series_w[k] for k in over) / len(over) / budget

    peak = powerbench.simulate("xpuctl", nodes=8, seconds=300, seed=3, budget_w=budget)
    mean = powerbench.simulate("xpuctl", nodes=8, seconds=300, seed=3, budget_w=budget, power=config.Power(plan="mean"))
    assert draw(mean) >= draw(peak) + 0.02, (draw(mean), draw(peak))
    assert mean.work_tdp_s > peak.work_tdp_s
    assert powerbench._longest(mean.series_w, budget * 1.02) <= 2


def test_a_raise_waits_for_the_raise_deadband_and_a_cut_does_not() -> None:
    # four devices of 200-700 W held at 400 W; the budget leaves each 430 W: +30 W is more than
    # the deadband (5% of the 500 W range: 25 W) but less than a raise deadband of 10% (50 W)
    inp = mean_inputs(4, mean_w=400.0, power_w=400.0, limit_w=400.0)
    plain = on_mean(4 * 430.0).decide(inp).commands
    assert len(plain) == 4 and all(c.cap_w == pytest.approx(430.0) for c in plain)
    cfg = config.Power(budget_w=4 * 430.0, plan="mean", reserve_frac=0.0, raise_deadband_frac=0.1)
    assert power.PowerController(cfg).decide(inp).commands == []
    # a budget below what they draw: the cut goes at once, raise deadband or not
    cfg = config.Power(budget_w=4 * 300.0, plan="mean", reserve_frac=0.0, raise_deadband_frac=0.1)
    cuts = power.PowerController(cfg).decide(inp).commands
    assert cuts and all(c.cap_w < 400.0 for c in cuts)
