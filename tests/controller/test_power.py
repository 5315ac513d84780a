"""The allocator and the power loop's rules, sample by sample (pure; no clocks)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpuctl.controller import config
from xpuctl.controller.core import power
from xpuctl.controller.errors import InfeasibleBudget

F64 = npt.NDArray[np.float64]
Fleet = tuple[F64, F64, F64, F64]  # floor, ceiling, demand, weight per device


@st.composite
def fleets(draw: st.DrawFn) -> Fleet:
    n = draw(st.integers(1, 40))
    floor = np.array(draw(st.lists(st.floats(10, 400), min_size=n, max_size=n)))
    span = np.array(draw(st.lists(st.floats(0, 600), min_size=n, max_size=n)))
    demand = np.array(draw(st.lists(st.floats(0, 1200), min_size=n, max_size=n)))
    weight = np.array(draw(st.lists(st.floats(0.01, 100), min_size=n, max_size=n)))
    return floor, floor + span, demand, weight


@pytest.mark.slow  # hundreds of Hypothesis examples
@settings(max_examples=300, deadline=None)
@given(fleet=fleets(), budget_w=st.floats(0, 30_000))
def test_caps_are_in_range_and_the_expected_draw_fits_the_budget(fleet: Fleet, budget_w: float) -> None:
    floor, ceiling, demand, weight = fleet
    try:
        caps = power.allocate(budget_w, floor, ceiling, demand, weight)
    except InfeasibleBudget as exc:
        assert np.minimum(floor, np.clip(demand, 0, ceiling)).sum() > budget_w
        assert f"{budget_w:.0f} W" in str(exc)  # noqa: PT017 - Hypothesis decides which branch holds
        return
    assert np.all(caps >= floor - 1e-6)
    assert np.all(caps <= ceiling + 1e-6)
    assert power.expected_w(caps, demand).sum() <= budget_w + 1e-6
    # nothing is left on the table: either the budget is spent or every cap is at its ceiling
    assert (
        power.expected_w(caps, demand).sum() >= budget_w - 1e-6
        or np.allclose(caps, ceiling)
        or np.all(caps >= np.minimum(demand, ceiling) - 1e-6)
    )


@pytest.mark.slow  # hundreds of Hypothesis examples
@settings(max_examples=200, deadline=None)
@given(fleet=fleets(), budget_w=st.floats(0, 30_000))
def test_fill_spends_exactly_the_amount(fleet: Fleet, budget_w: float) -> None:
    floor, ceiling, _, weight = fleet
    out = power.fill(floor, ceiling, weight, budget_w)
    room = (ceiling - floor).sum()
    assert out.sum() - floor.sum() == pytest.approx(min(budget_w, room), rel=1e-9, abs=1e-6)
    assert np.all(out <= ceiling + 1e-9) and np.all(out >= floor - 1e-9)


def test_weights_share_the_budget_in_proportion() -> None:
    floor = np.array([100.0, 100.0])
    caps = power.allocate(500.0, floor, np.array([1000.0, 1000.0]), np.array([1000.0, 1000.0]), np.array([1.0, 3.0]))
    assert caps == pytest.approx([175.0, 325.0])


def inputs(n: int, *, power_w: float, limit_w: float, hot: bool = False) -> power.Inputs:
    return power.Inputs(
        settable=np.ones(n, dtype=bool),
        min_w=np.full(n, 200.0),
        max_w=np.full(n, 700.0),
        default_w=np.full(n, 700.0),
        weight=np.ones(n),
        power_w=np.full(n, power_w),
        recent_max_w=np.full(n, power_w),
        limit_w=np.full(n, limit_w),
        hot=np.full(n, hot),
    )


@settings(max_examples=100, deadline=None)
@given(budget_w=st.floats(2000, 6000), draw_w=st.floats(250, 690))
def test_no_action_inside_the_deadband(budget_w: float, draw_w: float) -> None:
    ctl = power.PowerController(config.Power(budget_w=budget_w))
    inp = inputs(8, power_w=draw_w, limit_w=700.0)
    for _ in range(30):  # converge
        for c in ctl.decide(inp).commands:
            inp.limit_w[c.slot] = c.cap_w
        inp.power_w = np.minimum(draw_w, inp.limit_w)
        inp.recent_max_w = inp.power_w.copy()
    # converged: a change smaller than the deadband must not produce a command
    before = ctl.target_w.copy()
    inp.power_w = inp.power_w + 0.5
    decision = ctl.decide(inp)
    moved = [c for c in decision.commands if abs(c.cap_w - before[c.slot]) < 10.0]
    assert not moved


def test_rises_are_slew_limited_and_cuts_are_not() -> None:
    ctl = power.PowerController(config.Power(budget_w=8 * 700.0, slew_frac=0.2))
    inp = inputs(8, power_w=300.0, limit_w=300.0)  # held at 300 W, drawing all of it
    d = ctl.decide(inp)
    assert d.commands and all(c.cap_w == pytest.approx(300 + 0.2 * 500) for c in d.commands)
    ctl.budget_w = 8 * 250.0
    d = ctl.decide(inputs(8, power_w=400.0, limit_w=400.0))
    assert all(c.cap_w <= 250.0 + 1e-6 for c in d.commands)


def test_infeasible_budget_is_reported_not_raised() -> None:
    ctl = power.PowerController(config.Power(budget_w=500.0))
    d = ctl.decide(inputs(8, power_w=600.0, limit_w=700.0))
    assert not d.feasible and "raise the budget" in d.problem
    assert all(c.cap_w == 200.0 for c in d.commands)  # every device at its floor


def test_emergency_cuts_at_once_and_the_ceiling_recovers_slowly() -> None:
    cfg = config.Power(budget_w=None, emergency_step_frac=0.3, recovery_frac=0.05)
    ctl = power.PowerController(cfg)
    ctl.grow(8)
    cmd = ctl.emergency(2, min_w=200.0, max_w=700.0, power_w=600.0, limit_w=700.0, why="thermal")
    assert cmd is not None and cmd.emergency and cmd.cap_w == pytest.approx(420.0)
    hot = inputs(8, power_w=420.0, limit_w=420.0)
    hot.hot[2] = True
    ctl.decide(hot)  # the period of the emergency: no second cut yet
    assert ctl.thermal_ceiling_w[2] == pytest.approx(420.0)
    ctl.decide(hot)  # still hot a period later: cut again
    assert ctl.thermal_ceiling_w[2] == pytest.approx(294.0)
    cool = inputs(8, power_w=290.0, limit_w=294.0)
    d = ctl.decide(cool)
    assert ctl.thermal_ceiling_w[2] == pytest.approx(294.0 + 25.0)
    assert [c.cap_w for c in d.commands if c.slot == 2] == [pytest.approx(319.0)]
    for _ in range(20):
        ctl.decide(cool)
    assert np.isinf(ctl.thermal_ceiling_w[2])


def test_a_device_at_its_floor_is_not_cut_again() -> None:
    ctl = power.PowerController(config.Power())
    assert ctl.emergency(0, min_w=200.0, max_w=700.0, power_w=200.0, limit_w=200.0, why="thermal") is None
