"""The allocator and the power loop's rules, sample by sample (pure; no clocks)."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpuctl.controller import config
from xpuctl.controller.core import control, ledger, power
from xpuctl.controller.errors import InfeasibleBudget
from xpuctl.controller.lab.simcluster import SimCluster

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


def test_a_cold_owner_lowers_caps_but_raises_none_until_warm() -> None:
    ctl = power.PowerController(config.Power(budget_w=8 * 700.0, slew_frac=0.2))
    ctl.hold_raises = True  # a new shard owner, before warmup_s of history (issue 14.4)
    assert not ctl.decide(inputs(8, power_w=300.0, limit_w=300.0)).commands  # would raise: held
    ctl.budget_w = 8 * 250.0
    d = ctl.decide(inputs(8, power_w=400.0, limit_w=400.0))
    assert d.commands and all(c.cap_w <= 250.0 + 1e-6 for c in d.commands)  # a cut is not held
    ctl.hold_raises = False
    ctl.budget_w = 8 * 700.0
    assert ctl.decide(inputs(8, power_w=250.0, limit_w=250.0)).commands  # warm: it raises again


def test_infeasible_budget_is_reported_not_raised() -> None:
    ctl = power.PowerController(config.Power(budget_w=500.0))
    d = ctl.decide(inputs(8, power_w=600.0, limit_w=700.0))
    assert not d.feasible and "raise the budget" in d.problem
    assert all(c.cap_w == 200.0 for c in d.commands)  # every device at its floor


def test_emergency_cuts_at_once_and_the_ceiling_recovers_slowly() -> None:
    cfg = config.Power(budget_w=None, emergency_step_frac=0.3, recovery_frac=0.05, thermal_memory_periods=100)
    ctl = power.PowerController(cfg)
    ctl.grow(8)
    cmd = ctl.emergency(2, min_w=200.0, max_w=700.0, power_w=600.0, limit_w=700.0, why="thermal")
    assert cmd is not None and cmd.emergency and cmd.cap_w == pytest.approx(420.0)
    hot = inputs(8, power_w=420.0, limit_w=420.0)
    hot.hot[2] = True
    ctl.decide(hot)  # the period of the emergency: no second cut yet
    assert ctl.thermal_ceiling_w[2] == pytest.approx(420.0)
    ctl.decide(hot)  # still hot and climbing a period later: cut again by the full step
    assert ctl.thermal_ceiling_w[2] == pytest.approx(294.0)
    cool = inputs(8, power_w=290.0, limit_w=294.0)
    d = ctl.decide(cool)
    assert ctl.thermal_ceiling_w[2] == pytest.approx(294.0 + 25.0)
    assert [c.cap_w for c in d.commands if c.slot == 2] == [pytest.approx(319.0)]
    for _ in range(20):
        ctl.decide(cool)
    # it recovers, but only to just under the power it last ran hot at (420 W), while it remembers
    assert ctl.thermal_ceiling_w[2] == pytest.approx(0.95 * 420.0)
    for _ in range(100):
        ctl.decide(cool)
    assert np.isinf(ctl.thermal_ceiling_w[2])  # forgotten after thermal_memory_periods


def test_a_device_held_near_its_limit_settles_instead_of_swinging() -> None:
    cfg = config.Power(budget_w=None, emergency_step_frac=0.3, thermal_settle_periods=10)
    ctl = power.PowerController(cfg)
    ctl.grow(1)
    ctl.emergency(0, min_w=200.0, max_w=700.0, power_w=700.0, limit_w=700.0, why="thermal")  # to 490 W
    warm = inputs(1, power_w=490.0, limit_w=490.0)
    warm.hot[0] = True
    warm.rising = np.zeros(1, dtype=bool)  # hot, but no longer climbing fast
    ceilings = []
    for _ in range(30):
        ctl.decide(warm)
        warm.power_w[0] = warm.limit_w[0] = min(490.0, float(ctl.thermal_ceiling_w[0]))
        ceilings.append(float(ctl.thermal_ceiling_w[0]))
    # a small step (5%) every 10 periods, never a dive to the floor
    assert ceilings[0] == pytest.approx(490.0) and ceilings[9] == pytest.approx(490.0 * 0.95)
    assert ceilings[19] == pytest.approx(490.0 * 0.95**2) and min(ceilings) > 400.0
    assert all(b <= a for a, b in itertools.pairwise(ceilings))  # monotone


def test_a_device_at_its_floor_is_not_cut_again() -> None:
    ctl = power.PowerController(config.Power())
    assert ctl.emergency(0, min_w=200.0, max_w=700.0, power_w=200.0, limit_w=200.0, why="thermal") is None


def test_caps_lost_to_a_fail_safe_are_enforced_again() -> None:
    # Issue 18.1: the loop took its own last target as the device's cap, so devices that an agent's
    # fail-safe (or a restart) put back on their default cap were never capped again.
    ctl = power.PowerController(config.Power(budget_w=8 * 400.0, reconcile_periods=3))
    inp = inputs(8, power_w=700.0, limit_w=700.0)
    for _ in range(10):  # converge: the agents apply every command, telemetry shows it
        for c in ctl.decide(inp).commands:
            ctl.applied(c.slot, c.cap_w)
            inp.limit_w[c.slot] = c.cap_w
        inp.power_w = np.minimum(700.0, inp.limit_w)
        inp.recent_max_w = inp.power_w.copy()
    assert inp.limit_w.sum() <= 8 * 400.0 + 1e-6
    assert ctl.decide(inp).commands == []  # settled: nothing to do
    # fail-safe: every agent restores its default cap; telemetry says so
    inp.limit_w = np.full(8, 700.0)
    inp.power_w = np.full(8, 700.0)
    inp.recent_max_w = inp.power_w.copy()
    recapped = {c.slot: c.cap_w for c in ctl.decide(inp).commands}
    assert sorted(recapped) == list(range(8))
    assert sum(recapped.values()) <= 8 * 400.0 + 1e-6


def test_an_open_command_is_not_sent_again_before_telemetry_can_show_it() -> None:
    ctl = power.PowerController(config.Power(budget_w=8 * 400.0, reconcile_periods=3))
    inp = inputs(8, power_w=700.0, limit_w=700.0)
    first = ctl.decide(inp).commands
    assert len(first) == 8
    # the commands are in flight: telemetry still shows the old limit
    inp.pending = np.ones(8, dtype=bool)
    for _ in range(5):
        assert ctl.decide(inp).commands == []
    # answered (no longer open), and telemetry caught up
    inp.pending = None
    for c in first:
        ctl.applied(c.slot, c.cap_w)
        inp.limit_w[c.slot] = c.cap_w
    for _ in range(5):
        assert ctl.decide(inp).commands == []


def test_a_simulated_fleet_is_held_under_budget_again_after_a_fail_safe() -> None:
    # Through telemetry, as the controller sees it: simulated nodes report their enforced limits.
    cluster = SimCluster(["nvidia", "amd", "nvidia", "hygon"], seed=3, workloads=["training"] * 4)

    def run(seconds: int) -> list[float]:
        powers = []
        for _ in range(seconds):
            out = cluster.step()
            tick = cluster.tick()
            cluster.apply(out.send + tick.send)
            powers.append(cluster.power_w())
        return powers

    uncapped = max(run(20))
    budget_w = 0.7 * uncapped
    cluster.control.set_budget(budget_w, cluster.now_ns)
    assert max(run(20)[-5:]) <= budget_w * 1.02
    # every agent fails safe: its devices go back to their default caps
    for node in cluster.nodes:
        for i in range(node.n):
            node.set_cap(i, float(node.profiles[i].power_limit_default_w or node.profiles[i].power_limit_max_w))
    assert max(run(2)) > budget_w * 1.05  # over budget right after the fail-safe
    assert max(run(10)[-3:]) <= budget_w * 1.02  # and capped again within a few periods


def test_setting_a_budget_answers_for_that_budget() -> None:
    # Issue 18.12: SetPowerBudget answered with the feasibility of the previous period.
    cluster = SimCluster(["nvidia", "amd"], seed=5, workloads=["training"] * 2)
    for _ in range(5):
        cluster.apply(cluster.step().send + cluster.tick().send)
    ctl = cluster.control
    out = ctl.set_budget(10.0, cluster.now_ns)
    assert [e.kind for e in out.events] == ["budget.changed", "budget.infeasible"]
    assert "raise the budget" in out.events[1].message
    assert not feasible(ctl)
    out = ctl.set_budget(1e6, cluster.now_ns)
    assert feasible(ctl)
    assert [e.kind for e in out.events] == ["budget.changed", "budget.feasible"]
    assert [e.kind for e in ctl.set_budget(None, cluster.now_ns).events] == ["budget.changed"]


def feasible(ctl: control.Control) -> bool:
    """The loop's feasibility now (a call, so that the type checker keeps no earlier narrowing)."""
    return ctl.feasible


def test_fixed_loads_are_held_for_a_time_window_and_forgotten_when_the_node_is_offline() -> None:
    # Issue 18.3: a fixed load was the highest power of its last 30 samples however old, and an
    # offline node's last load stayed reserved for good.
    def silent_ascend_node(window_s: float, silent_s: int) -> npt.NDArray[np.float64]:
        """The ascend devices' reserved loads after their node went silent for `silent_s`."""
        cfg = config.Config(power=config.Power(demand_window_s=window_s))
        cluster = SimCluster(["nvidia", "ascend"], seed=1, workloads=["training"] * 2, cfg=cfg, window=600)
        for _ in range(10):
            cluster.apply(cluster.step().send + cluster.tick().send)
        ascend = [slot for slot, info in enumerate(cluster.registry.infos) if info.vendor == "ascend"]
        cluster.offline.add(1)  # the ascend node (no cap setter: a fixed load) stops sending
        for _ in range(silent_s):
            cluster.apply(cluster.step().send + cluster.tick().send)
        return cluster.control.inputs(cluster.now_ns).recent_max_w[ascend]

    assert np.isfinite(silent_ascend_node(window_s=120, silent_s=10)).all()  # held within the window
    assert np.isnan(silent_ascend_node(window_s=10, silent_s=12)).all()  # not past it (the node is stale)
    assert np.isnan(silent_ascend_node(window_s=120, silent_s=35)).all()  # offline: forgotten


def test_a_raise_never_forces_a_cut_and_a_forced_cut_is_a_deadband_at_least() -> None:
    # 8 devices of 200-700 W; the budget is all taken: devices 0-3 held at their 400 W caps want more
    # (a raise), devices 4-7 have 400 W caps and draw 380 W
    ctl = power.PowerController(config.Power(budget_w=8 * 400.0, deadband_frac=0.05, reserve_frac=0.0))
    inp = inputs(8, power_w=400.0, limit_w=400.0)
    inp.power_w[4:] = 380.0
    inp.recent_max_w[4:] = 380.0
    d = ctl.decide(inp)
    cuts = [c for c in d.commands if c.cap_w < 400.0]
    raises = [c for c in d.commands if c.cap_w > 400.0]
    # the raises fit only what the cuts freed; every cut is at least the deadband (25 W) or to its target
    assert all(400.0 - c.cap_w >= 25.0 - 1e-6 for c in cuts)
    freed = sum(min(400.0, 380.0 * 1.05) - min(c.cap_w, 380.0 * 1.05) for c in cuts)
    assert sum(c.cap_w - 400.0 for c in raises) <= freed + 1e-6


@pytest.mark.slow  # a simulated fleet for 5 simulated minutes, planned both ways
def test_a_steady_fleet_gets_at_most_a_command_per_device_per_minute() -> None:
    from xpuctl.controller.lab import powerbench  # noqa: PLC0415 - the simulator only here

    ref = powerbench.simulate("uncapped", nodes=8, seconds=300, seed=3, budget_w=None)
    budget = 0.7 * ref.mean_power_w
    run = powerbench.simulate("xpuctl", nodes=8, seconds=300, seed=3, budget_w=budget)  # the default: the mean
    per_device_minute = run.commands / 64 / 5
    assert per_device_minute <= 1.0, per_device_minute
    # issue 17.2: above the budget by more than 2% for no more than 2 periods in a row; such
    # seconds are rare (bursts that line up, cut the next period)
    assert powerbench._longest(run.series_w, budget * 1.02) <= 2
    assert run.seconds_above_budget_2pct <= 0.05 * 300, run.seconds_above_budget_2pct
    # planned on the peak, for a budget that must hold nearly every second
    peak = powerbench.simulate("xpuctl", nodes=8, seconds=300, seed=3, budget_w=budget, power=config.Power(plan="peak"))
    assert peak.commands / 64 / 5 <= 1.0
    assert peak.seconds_above_budget_2pct <= 2 and powerbench._longest(peak.series_w, budget * 1.02) <= 2


@pytest.mark.slow  # a simulated node for 11 simulated minutes
def test_a_simulated_thermal_runaway_settles_under_the_slowdown_temperature() -> None:
    from xpuctl.agent.drivers.sim import faults  # noqa: PLC0415 - the simulator only here

    fault = faults.parse("thermal_runaway:dev=0:at=20:for=600")
    sim = SimCluster(["nvidia"], workloads=["training"], node_faults={0: [fault]}, cfg=config.Config(), seed=1)
    caps, temps = [], []
    pending: list[ledger.Entry] = []
    for _ in range(700):
        sim.apply(pending)
        out = sim.step(1.0)
        pending = out.send + sim.tick().send
        caps.append(float(sim.nodes[0].cap_w[0]))
        temps.append(float(sim.nodes[0].temp_c[0]))
    moves = np.sign(np.diff(caps))
    moves = moves[moves != 0]
    reversals = int(np.sum(moves[1:] != moves[:-1]))
    slowdown = sim.nodes[0].profiles[0].temp_slowdown_c
    assert reversals <= 3, caps[::10]  # down while hot, up once the fault is over: no saw-tooth
    assert max(temps) < slowdown and min(caps[30:600]) > sim.nodes[0].limit_min_w[0]  # never dived to the floor
    assert caps[-1] == pytest.approx(sim.nodes[0].limit_max_w[0], rel=0.01)  # back up after the fault


def test_a_period_with_commands_says_so_in_one_line_and_each_command_is_debug() -> None:
    from xpuctl.controller.lab import powerbench  # noqa: PLC0415 - the simulator only here

    cfg = config.Config(power=config.Power(budget_w=0.6 * 8 * 8 * 500.0))
    sim = SimCluster(powerbench.vendors_for(8), workloads=["training"] * 8, seed=2, cfg=cfg)
    periods, routine = 0, 0
    pending: list[ledger.Entry] = []
    for _ in range(40):
        sim.apply(pending)
        out = sim.step(1.0)
        tick = sim.tick()
        pending = out.send + tick.send
        lines = [e for e in tick.events if e.kind == "power.period"]
        commands = [e for e in tick.events if e.kind == "action.issued"]
        assert len(lines) == (1 if commands else 0)
        if lines:
            periods += 1
            assert lines[0].value == len(commands) and lines[0].message.startswith(
                f"power loop: {len(commands)} cap(s)"
            )
            assert "budget 19.2 kW, draw " in lines[0].message  # 0.6 x 64 x 500 W
        routine += sum(1 for e in commands if e.severity == "debug")
        assert all(e.severity == ("info" if "emergency" in e.message else "debug") for e in commands)
    assert periods and routine


@pytest.mark.slow  # a dozen short simulations
def test_capacity_under_a_fixed_feed_is_the_most_nodes_within_the_loss() -> None:
    from xpuctl.controller.lab import powerbench  # noqa: PLC0415 - the simulator only here

    cap = powerbench.capacity(4, 120, 0)
    assert cap.tdp_devices == 32 and cap.feed_w > 0
    for policy, devices in (("static", cap.static_devices), ("xpuctl", cap.xpuctl_devices)):
        nodes = devices // 8
        tried = cap.loss_at[policy]
        assert nodes == 0 or tried[nodes] <= cap.max_loss  # it fits ...
        assert tried[nodes + 1] > cap.max_loss  # ... and one more node does not
    assert cap.xpuctl_devices >= cap.static_devices


def test_the_slack_feedback_steps_once_per_reclaim_periods_and_gives_back_at_once() -> None:
    cfg = config.Power(budget_w=8 * 400.0, reclaim_max_frac=0.1, reclaim_gain=0.5, reclaim_periods=10)
    ctl = power.PowerController(cfg)
    inp = inputs(8, power_w=300.0, limit_w=400.0)
    inp.measured_w = 2400.0  # the budget is 3200 W, aimed at 3136 W: 736 W of slack
    seen = []
    for _ in range(20):
        ctl.decide(inp)
        seen.append(ctl.reclaim_w)
    assert seen[:9] == [0.0] * 9  # nothing until a step's periods are in
    assert seen[9] == pytest.approx(320.0)  # half the mean slack, capped at 10% of the budget
    assert seen[10:19] == [seen[9]] * 9 and seen[19] == pytest.approx(320.0)
    inp.measured_w = 3300.0  # over the budget: taken back at once, twice the excess over the aim
    ctl.decide(inp)
    assert ctl.reclaim_w == 0.0


def test_a_sample_that_raises_both_hot_kinds_cuts_its_device_once() -> None:
    # One hot sample is one observation: `thermal` and `thermal_rise` both raising on it gave two
    # emergency commands, the second cutting a step below the first (issue 13.3 found it).
    cluster = SimCluster(["nvidia"], seed=1, workloads=["training"])
    for _ in range(5):
        cluster.apply(cluster.step().send + cluster.tick().send)
    node = cluster.nodes[0]
    slowdown = float(node.profiles[0].temp_slowdown_c or 90.0)
    node.temp_c[0] = slowdown + 5.0  # a jump: above the limit and rising fast
    out = cluster.step(0.001)  # sampled at once: the simulator's cooling has no time to act
    raised = {e.detector for e in out.events if e.kind == "anomaly.raised" and e.device_uuid.endswith("-0")}
    assert raised == {"thermal", "thermal_rise"}
    cuts = [e for e in out.send if e.device_uuid.endswith("-0")]
    assert len(cuts) == 1 and cuts[0].urgent
    low, high = node.profiles[0].power_limit_min_w, node.profiles[0].power_limit_max_w
    assert low is not None and high is not None and low <= cuts[0].cap_w < high
