"""The cluster power allocator and the power loop's rules (DESIGN 8).

Theory of operation. Every control period `PowerController.decide` gets, per device, whether its
cap can be set now (`settable`: the vendor has a setter, the node is online, the device is
healthy), its range, its weight, its recent power and its enforced limit. It then

1. counts every other device as a fixed load at its highest recent power, and keeps
   `reserve_frac` of the budget free; what is left is the budget of the settable devices;
   the budget bounds power, not the sum of caps: a device draws at most min(cap, demand), so an
   idle device under a high floor costs only what it draws (`allocate`). When such a device
   starts work, the cluster can overshoot for one period, until the next decision;
   and since estimates are recent peaks, measured power runs below them: the measured slack is
   handed out as well (`_reclaim`, an integrator bounded to `reclaim_max_frac` of the budget),
   and taken back twice as fast when the measured power exceeds the budget;
2. estimates each settable device's demand: its highest recent power plus a margin, or, for a
   device drawing its whole cap (its real demand is hidden by the cap), its cap plus the margin;
3. water-fills (`allocate`): every device gets its floor; the rest goes by weight up to each
   device's demand; what is still left goes by weight up to each device's ceiling. The ceiling
   is the device's maximum, lowered after a thermal event;
4. moves caps towards the targets with as few commands as keep the budget (`_moves`): a change
   inside the deadband waits; a rise is slewed (at most `slew_frac` of the range per period) and
   goes only into what the plan leaves free, so it never forces a cut elsewhere; a cut the budget
   needs goes at once, the largest first and a deadband at the least. "Each cap" is the cap
   telemetry says is enforced, once the device's last command is answered and
   `reconcile_periods` have passed (`_current`): a fail-safe, a restarted agent or a lost command
   is corrected, not believed away.

A thermal anomaly does not wait for the period: `emergency` cuts the device's ceiling to
(1 - emergency_step_frac) of its power at once; while the anomaly stays open it is cut again every
`thermal_settle_periods` (the temperature needs that long to answer); once it clears the ceiling
recovers by `recovery_frac` of the range per period, but for `thermal_memory_periods` only up to
just under the power it last ran hot at, and a device hot again there is cut by a small step
(`REPEAT_STEP_FRAC`): it settles near its sustainable power instead of swinging.
With no budget set, only the thermal rules act. Pure: no clocks, no I/O.

Planned on the mean (`[power] plan = "mean"`, the default; issues 17.2 and 17.3): the sum of
every device's recent peak leaves 6-9% of the budget unused, so the plan takes each device's mean
power over the window instead, plus `burst_z` / sqrt(n) of its swing (its peak less its mean; n
the devices the loop caps: the bursts of n independent devices add up to about sqrt(n) swings, so
a small fleet is planned nearer its peaks, `_planned_w`), loads without a setter at that level
too, and a device held at its cap (by its mean, or for its last HELD_SAMPLES samples) asks for
its whole range: its demand is hidden, and the budget counts it at its cap. Caps then move in
few, large steps (`_steps`): a cut as soon as the plan exceeds the budget, a raise only once the
room exceeds ROOM_HYSTERESIS_FRAC of it (and fits what the devices draw now as well); the devices
furthest from their targets move first, as fractions of their ranges so that no vendor is
favoured, each by `step_frac` of its range at the least. Bursts that line up beyond that are not
planned for: when the measured power exceeds the budget by more than OVERDRAW_FRAC, caps are cut
at once, the bursting devices' first (`_overdraw_cuts`), so the cluster is back under it the next
period (and, over it twice in a row, OVERDRAW_FRAC under it). `plan = "peak"` plans each device on
its recent peak plus a margin: the budget holds nearly every second, with a draw 6-9% under it.
"""

from __future__ import annotations

import math

import msgspec
import numpy as np
import numpy.typing as npt

from xpuctl.controller import config
from xpuctl.controller.errors import InfeasibleBudget

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]
REPEAT_STEP_FRAC = 0.05  # a thermal cut, and the margin kept under the power it last ran hot at
HELD_SAMPLES = 5  # plan "mean": a device at its cap this many samples in a row is held by it
ROOM_HYSTERESIS_FRAC = 0.005  # plan "mean": room in the plan that raises no cap (part of the budget)
OVERDRAW_FRAC = 0.02  # plan "mean": measured power this far above the budget is cut at once (issue 17.2)
BURST_FRAC = 1.1  # plan "mean": a device drawing this much more than its mean is bursting (cut first)


def fill(base: F64, top: F64, weight: F64, amount: float) -> F64:
    """Raise `base` towards `top` by weight, spending `amount` W in total (or all there is room for).

    Every device gets min(top, base + weight x L) for the one level L that spends `amount`.
    Exact: the level is found from the sorted points where devices reach their top.
    """
    room = np.maximum(top - base, 0.0)
    if amount <= 0 or base.size == 0:
        return base.copy()
    if amount >= room.sum():
        return base + room
    w = np.maximum(weight, 1e-12)
    reach = room / w  # level at which each device is full
    order = np.argsort(reach)
    reach_sorted, w_sorted, room_sorted = reach[order], w[order], room[order]
    # spent(L) at L = reach_sorted[j]: the full devices before j give their room, the rest w x L
    full_spent = np.concatenate([[0.0], np.cumsum(room_sorted)[:-1]])
    w_rest = np.cumsum(w_sorted[::-1])[::-1]
    spent_at = full_spent + w_rest * reach_sorted
    j = int(np.searchsorted(spent_at, amount))
    level = (amount - full_spent[j]) / w_rest[j]
    out: F64 = base + np.minimum(room, w * level)
    return out


def allocate(budget_w: float, floor_w: F64, ceiling_w: F64, demand_w: F64, weight: F64) -> F64:
    """Caps by weighted water-filling of the power each device is expected to draw.

    A device draws at most min(cap, demand), so that is what the budget is spent on: every device
    first gets min(floor, demand) (a device whose demand is under its floor costs only its
    demand, though its cap cannot go below the floor), then the rest goes by weight up to each
    device's demand, then what is still left raises caps by weight up to the ceilings.

    Returns caps with floor <= cap <= ceiling and sum(min(cap, demand)) <= budget_w (to rounding).

    Raises:
        InfeasibleBudget: the devices' minimum draw, sum(min(floor, demand)), exceeds `budget_w`.
    """
    ceiling = np.maximum(ceiling_w, floor_w)
    want = np.clip(demand_w, 0.0, ceiling)
    low = np.minimum(floor_w, want)
    need = minimum_draw_w(floor_w, ceiling_w, demand_w)
    if need > budget_w + 1e-9:
        raise InfeasibleBudget(need, budget_w)
    drawn = fill(low, want, weight, budget_w - need)
    caps = np.maximum(drawn, floor_w)
    left = budget_w - float(drawn.sum())
    if left > 0:
        caps = fill(caps, ceiling, weight, left)
    return caps


def minimum_draw_w(floor_w: F64, ceiling_w: F64, demand_w: F64) -> float:
    """The least the devices draw under any allocation: each min(floor, demand) (a budget below
    this is infeasible).
    """
    want = np.clip(demand_w, 0.0, np.maximum(ceiling_w, floor_w))
    return float(np.minimum(floor_w, want).sum())


def expected_w(caps_w: F64, demand_w: F64) -> F64:
    """What devices capped at `caps_w` are expected to draw: min(cap, demand), never below 0."""
    return np.minimum(caps_w, np.maximum(demand_w, 0.0))


class Levels(msgspec.Struct, frozen=True, kw_only=True):
    """Each device's power over the demand window (NaN: no sample in it)."""

    peak: F64
    mean: F64
    held: F64  # the least of its last HELD_SAMPLES samples

    @staticmethod
    def of(window: F64) -> Levels:
        """From a (devices, samples) window of power, oldest first, NaN where no sample."""
        if window.size == 0:
            empty = np.full(window.shape[0], np.nan)
            return Levels(peak=empty, mean=empty.copy(), held=empty.copy())
        seen = np.isfinite(window)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(seen, window, 0.0).sum(axis=1) / seen.sum(axis=1)
        return Levels(
            peak=np.fmax.reduce(window, axis=1),
            mean=mean,
            held=np.fmin.reduce(window[:, -HELD_SAMPLES:], axis=1),
        )

    @staticmethod
    def concat(parts: list[Levels]) -> Levels:
        """Levels of devices computed in parts, in order."""
        return Levels(
            peak=np.concatenate([p.peak for p in parts]),
            mean=np.concatenate([p.mean for p in parts]),
            held=np.concatenate([p.held for p in parts]),
        )


class Inputs(msgspec.Struct, kw_only=True):
    """Per device (index = slot), what one decision needs. NaN where unknown."""

    settable: Mask
    min_w: F64
    max_w: F64
    default_w: F64
    weight: F64
    power_w: F64
    recent_max_w: F64
    limit_w: F64
    hot: Mask
    rising: Mask | None = None  # temperature climbing fast (thermal_rise open); None: as hot
    measured_w: float = math.nan  # the cluster's power now (all devices), for the slack feedback
    pending: Mask | None = None  # a command for the device is open (issued, not answered)
    mean_w: F64 | None = None  # mean power over the demand window; None: plan on the peak
    held_w: F64 | None = None  # the least power of its last HELD_SAMPLES samples


class Command(msgspec.Struct, frozen=True, kw_only=True):
    """Set one device's cap."""

    slot: int
    cap_w: float
    reason: str
    emergency: bool = False


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """What one period decided, and the numbers behind it."""

    commands: list[Command]
    feasible: bool
    fixed_w: float
    settable_budget_w: float
    floors_w: float
    problem: str = ""
    demand_w: float = 0.0  # what every device would draw uncapped (demand estimates, fixed loads included)
    caps_w: float = 0.0  # the caps in force as the loop believes them, plus fixed loads: the most it can draw


class PowerController:
    """Holds the caps it has asked for and the thermal ceilings; decides each period."""

    def __init__(self, cfg: config.Power | None = None) -> None:
        """No device known yet; budget from config."""
        self.cfg = cfg or config.Power()
        self._budget_w: float | None = self.cfg.budget_w
        self.target_w = np.zeros(0)  # last cap asked for, NaN = unknown (use the enforced limit)
        self.age = np.zeros(0, dtype=np.int64)  # periods since the target was asked for or applied
        self.thermal_ceiling_w = np.zeros(0)  # inf = none
        self.cut_now = np.zeros(0, dtype=bool)  # cut by `emergency` since the last period
        self.hot_at_w = np.zeros(0)  # the lowest power it ran hot at, within the memory; inf = none
        self.since_cut = np.zeros(0, dtype=np.int64)  # periods since its last thermal cut
        self.since_hot = np.zeros(0, dtype=np.int64)  # periods since it was last hot
        self.reclaim_w = 0.0  # budget handed out beyond the estimates, learnt from measured power
        self._slack: list[float] = []  # measured slack of the periods since the last reclaim step
        # set each period by the caller: a new shard owner without enough history lowers caps (the
        # budget, thermal emergencies) but raises none, and sets no unknown cap outright
        self.hold_raises = False
        self._overdrawn = 0  # periods in a row the measured power was over the budget by OVERDRAW_FRAC

    @property
    def budget_w(self) -> float | None:
        """The budget the loop keeps the devices under (W); None: none."""
        return self._budget_w

    @budget_w.setter
    def budget_w(self, budget_w: float | None) -> None:
        if budget_w is None:  # no budget, no overdraw: a budget set later starts a run of its own
            self._overdrawn = 0
        self._budget_w = budget_w

    def grow(self, n: int) -> None:
        """Make room for n devices."""
        if n > self.target_w.size:
            k = n - self.target_w.size
            self.target_w = np.concatenate([self.target_w, np.full(k, np.nan)])
            self.age = np.concatenate([self.age, np.full(k, self.cfg.reconcile_periods, dtype=np.int64)])
            self.thermal_ceiling_w = np.concatenate([self.thermal_ceiling_w, np.full(k, np.inf)])
            self.cut_now = np.concatenate([self.cut_now, np.zeros(k, dtype=bool)])
            self.hot_at_w = np.concatenate([self.hot_at_w, np.full(k, np.inf)])
            far = np.full(k, 1 << 30, dtype=np.int64)
            self.since_cut = np.concatenate([self.since_cut, far])
            self.since_hot = np.concatenate([self.since_hot, far.copy()])

    def forget(self, slot: int) -> None:
        """The cap of `slot` is unknown again (its command failed or expired)."""
        self.grow(slot + 1)
        self.target_w[slot] = np.nan

    def reset(self, slot: int) -> None:
        """Forget `slot` altogether (its device is gone; the slot may be reused)."""
        if slot < self.target_w.size:
            self.target_w[slot] = np.nan
            self.age[slot] = self.cfg.reconcile_periods
            self.thermal_ceiling_w[slot] = np.inf
            self.cut_now[slot] = False
            self.hot_at_w[slot] = np.inf
            self.since_cut[slot] = self.since_hot[slot] = 1 << 30

    def applied(self, slot: int, cap_w: float) -> None:
        """The agent enforces `cap_w` on `slot` now (its answer); telemetry shows it shortly."""
        self.grow(slot + 1)
        self._ask(slot, cap_w)

    def asked(self, slot: int, cap_w: float) -> None:
        """A command for `cap_w` on `slot` is open (one a previous start issued, restored)."""
        self.grow(slot + 1)
        self._ask(slot, cap_w)

    def _ask(self, slot: int, cap_w: float) -> None:
        self.target_w[slot] = cap_w
        self.age[slot] = 0

    # -- the emergency path ----------------------------------------------------------------------

    def emergency(
        self, slot: int, *, min_w: float, max_w: float, power_w: float, limit_w: float, why: str
    ) -> Command | None:
        """Cut a hot (settable) device's cap at once; None when it is already at or below the cut."""
        self.grow(slot + 1)
        target = float(self.target_w[slot])
        settled = self.age[slot] >= self.cfg.reconcile_periods and math.isfinite(limit_w)
        current = limit_w if settled or not math.isfinite(target) else target
        now = min((v for v in (power_w, current) if math.isfinite(v)), default=max_w)
        step = self._step(slot)
        ceiling = max(min_w, (1.0 - step) * now)
        self.thermal_ceiling_w[slot] = min(float(self.thermal_ceiling_w[slot]), ceiling)
        self.cut_now[slot] = True
        self.hot_at_w[slot] = min(float(self.hot_at_w[slot]), now)
        self.since_cut[slot] = self.since_hot[slot] = 0
        if math.isfinite(current) and current <= ceiling + 0.5:
            return None
        self._ask(slot, ceiling)
        return Command(slot=slot, cap_w=ceiling, reason=f"emergency: {why}", emergency=True)

    # -- the period ------------------------------------------------------------------------------

    def _current(self, inputs: Inputs) -> F64:
        """Each device's cap as the loop believes it: its own target while a command is open or
        was just answered; after that, what telemetry says is enforced (the truth: a fail-safe,
        a restarted agent or an operator's tool may have changed it), and the target again only
        where telemetry does not report the limit.
        """
        asked = np.where(np.isfinite(self.target_w), self.target_w, inputs.limit_w)
        settled = self.age >= self.cfg.reconcile_periods
        if inputs.pending is not None:
            settled &= ~inputs.pending
        return np.where(settled & np.isfinite(inputs.limit_w), inputs.limit_w, asked)

    @property
    def _small_step(self) -> float:
        """The thermal cut of a device that is near its sustainable power already."""
        return min(self.cfg.emergency_step_frac, REPEAT_STEP_FRAC)

    def _step(self, slot: int) -> float:
        """The fraction a thermal cut takes: the full step the first time, a small one where the
        device ran hot lately.
        """
        return self._small_step if math.isfinite(float(self.hot_at_w[slot])) else self.cfg.emergency_step_frac

    def _thermal_step(self, inputs: Inputs) -> None:
        """Cut the ceilings of devices still hot; let the others recover (issue 17.3: a device held
        near its limit settles under it instead of swinging between its floor and its maximum).

        A device whose temperature still climbs fast is cut by the full step each period; one that
        is hot but no longer climbing is cut by a small step, once its temperature had
        `thermal_settle_periods` to answer the last cut. A cooled device's ceiling recovers, but
        for `thermal_memory_periods` only up to just under the power it last ran hot at.
        """
        cfg = self.cfg
        span = inputs.max_w - inputs.min_w
        capped = np.isfinite(self.thermal_ceiling_w)
        self.since_cut += 1
        self.since_hot += 1
        hot = inputs.hot & inputs.settable
        rising = hot & (inputs.rising if inputs.rising is not None else inputs.hot)
        self.since_hot[hot] = 0
        self.hot_at_w[self.since_hot > cfg.thermal_memory_periods] = np.inf
        fast = rising & ~self.cut_now
        slow = hot & ~rising & ~self.cut_now & (self.since_cut >= cfg.thermal_settle_periods)
        start = np.fmin(inputs.power_w, self._current(inputs))
        start = np.where(np.isfinite(start), start, inputs.max_w)
        base = np.where(capped, np.fmin(self.thermal_ceiling_w, start), start)
        step = np.where(fast, cfg.emergency_step_frac, self._small_step)
        due = fast | slow
        cut = np.maximum(inputs.min_w, (1.0 - step) * base)
        self.hot_at_w = np.where(due, np.fmin(self.hot_at_w, start), self.hot_at_w)
        self.since_cut[due] = 0
        recovering = ~hot & capped
        bound = np.where(np.isfinite(self.hot_at_w), (1.0 - REPEAT_STEP_FRAC) * self.hot_at_w, np.inf)
        grown = np.minimum(self.thermal_ceiling_w + cfg.recovery_frac * span, np.maximum(bound, self.thermal_ceiling_w))
        ceiling = np.where(
            due, np.fmin(self.thermal_ceiling_w, cut), np.where(recovering, grown, self.thermal_ceiling_w)
        )
        ceiling[recovering & (grown >= inputs.max_w)] = np.inf
        self.thermal_ceiling_w = ceiling
        self.cut_now[:] = False

    def safe_caps(self, inputs: Inputs, total_w: float) -> F64:
        """Caps (NaN where the loop cannot cap) under which the devices stay within `total_w` even
        if every one drew its cap, the loads the loop cannot cap included: the site-safe caps that
        agents fall back to without their owner (issue 15.3). Shared by weight of range; every
        device at its floor when even that does not fit.
        """
        s = self._cappable(inputs)
        out = np.full(inputs.settable.size, np.nan)
        if not s.any():
            return out
        weight = self._share_weight(inputs)
        try:
            out[s] = allocate(
                total_w - self._fixed_w(inputs, s), inputs.min_w[s], inputs.max_w[s], inputs.max_w[s], weight[s]
            )
        except InfeasibleBudget:
            out[s] = inputs.min_w[s]
        return out

    def decide(self, inputs: Inputs) -> Decision:
        """One control period: the commands that move caps towards the allocation."""
        n = inputs.settable.size
        self.grow(n)
        self.age += 1
        with np.errstate(invalid="ignore"):
            self._thermal_step(inputs)
        s = self._cappable(inputs)
        ceiling = np.minimum(inputs.max_w, self.thermal_ceiling_w)
        current = self._current(inputs)
        fixed_w = self._fixed_w(inputs, s)
        feasible, problem = True, ""
        floors_w = float(inputs.min_w[s].sum())
        if self.budget_w is None:
            target = np.where(s, np.minimum(ceiling, inputs.default_w), np.nan)
            settable_budget = math.inf
            demand = inputs.max_w
        else:
            settable_budget = self._settable_budget_w(fixed_w, self._reclaim(inputs))
            demand = self._demand(inputs, current)
            weight = self._share_weight(inputs)
            try:
                caps = allocate(settable_budget, inputs.min_w[s], ceiling[s], demand[s], weight[s])
            except InfeasibleBudget as exc:
                caps = inputs.min_w[s].copy()
                feasible, problem = False, str(exc)
            target = np.full(n, np.nan)
            target[s] = caps
        if self._on_mean(inputs) and self.budget_w is not None:
            commands = self._steps(inputs, s, current, target, settable_budget, demand, ceiling)
            commands += self._overdraw_cuts(inputs, s, current, target, commands)
        else:
            commands = self._moves(inputs, s, current, target, settable_budget, demand)
        wanted = demand if self.budget_w is not None else self._demand(inputs, current)
        with np.errstate(invalid="ignore"):
            demand_w = float(np.nansum(np.where(s, np.minimum(wanted, inputs.max_w), 0.0))) + fixed_w
            caps_w = float(np.nansum(np.where(s, np.where(np.isfinite(current), current, inputs.max_w), 0.0))) + fixed_w
        return Decision(
            commands=commands,
            feasible=feasible,
            fixed_w=fixed_w,
            settable_budget_w=settable_budget,
            floors_w=floors_w,
            problem=problem,
            demand_w=demand_w,
            caps_w=caps_w,
        )

    def assess(self, inputs: Inputs) -> tuple[bool, str]:
        """Whether the budget covers the cappable devices' minimum draw now, and the problem if not:
        the test `decide` makes, without deciding (for an answer about a budget just set).
        """
        if self.budget_w is None or inputs.settable.size == 0:
            return True, ""
        self.grow(inputs.settable.size)
        s = self._cappable(inputs)
        budget_w = self._settable_budget_w(self._fixed_w(inputs, s), self.reclaim_w)
        demand = self._demand(inputs, self._current(inputs))
        ceiling = np.minimum(inputs.max_w, self.thermal_ceiling_w)
        need_w = minimum_draw_w(inputs.min_w[s], ceiling[s], demand[s])
        if need_w > budget_w + 1e-9:
            return False, str(InfeasibleBudget(need_w, budget_w))
        return True, ""

    @staticmethod
    def _share_weight(inputs: Inputs) -> F64:
        """Each device's weight in the water-filling: equal priority is an equal share of each
        device's range, so a 150 W and a 700 W card give up the same fraction of their speed (their
        speed loss depends on that fraction); times the operator's weight.
        """
        span = inputs.max_w - inputs.min_w
        return inputs.weight * np.where(span > 0, span, 1.0)

    def _step_w(self, inputs: Inputs) -> F64:
        """Planned on the mean: the least a cap moves, `step_frac` of the device's range (the
        deadband in W at the least).
        """
        return np.maximum(self.cfg.deadband_w, self.cfg.step_frac * (inputs.max_w - inputs.min_w))

    @staticmethod
    def _cappable(inputs: Inputs) -> Mask:
        return inputs.settable & np.isfinite(inputs.min_w) & np.isfinite(inputs.max_w)

    def _on_mean(self, inputs: Inputs) -> bool:
        return self.cfg.plan == "mean" and inputs.mean_w is not None

    def _fixed_w(self, inputs: Inputs, cappable: Mask) -> float:
        """What the devices the loop cannot cap draw at most: their recent peaks; planned on the
        mean, their planned level (`_planned_w`; their power now where there is no mean): a burst
        beyond it is the overdraw cuts' business, not the plan's.
        """
        level = inputs.recent_max_w
        if self._on_mean(inputs):
            assert inputs.mean_w is not None  # noqa: S101 - narrows the type
            level = np.where(np.isfinite(inputs.mean_w), self._planned_w(inputs), inputs.power_w)
        return float(np.nansum(np.where(cappable, 0.0, level)))

    def _planned_w(self, inputs: Inputs) -> F64:
        """Planned on the mean: each device's mean plus `burst_z` / sqrt(n) of its swing (its peak
        over the window less its mean), n the devices the loop caps. The bursts of n independent
        devices add up to about sqrt(n) swings, not n: a large fleet is planned near its means, a
        small one, where one node's burst is a large part of the budget, nearer its peaks.
        """
        assert inputs.mean_w is not None  # noqa: S101 - planned on the mean; narrows the type
        n = max(1, int(np.count_nonzero(self._cappable(inputs))))
        k = min(1.0, self.cfg.burst_z / math.sqrt(n))
        swing = np.where(np.isfinite(inputs.recent_max_w), np.maximum(inputs.recent_max_w - inputs.mean_w, 0.0), 0.0)
        return inputs.mean_w + k * swing

    def _settable_budget_w(self, fixed_w: float, reclaim_w: float) -> float:
        assert self.budget_w is not None  # noqa: S101 - callers check; narrows the type
        return self.budget_w * (1 - self.cfg.reserve_frac) - fixed_w + reclaim_w

    def _reclaim(self, inputs: Inputs) -> float:
        """Slack feedback: estimates are peaks, so measured power runs below the budget; hand a
        share of the measured slack out too. Slowly and in steps (issue 17.2): the mean slack of
        `reclaim_periods` periods once per that many, so that the caps do not chase every period's
        noise; taken back at once, and twice over, when power exceeds the budget.
        """
        if self.budget_w is None or not math.isfinite(inputs.measured_w):
            return self.reclaim_w
        target = self.budget_w * (1 - self.cfg.reclaim_margin_frac)
        limit = self.cfg.reclaim_max_frac * self.budget_w
        if inputs.measured_w > self.budget_w:
            self.reclaim_w = max(0.0, self.reclaim_w - 2 * (inputs.measured_w - target))
            self._slack.clear()
        else:
            self._slack.append(target - inputs.measured_w)
            if len(self._slack) >= self.cfg.reclaim_periods:
                mean = sum(self._slack) / len(self._slack)
                self.reclaim_w = min(max(self.reclaim_w + self.cfg.reclaim_gain * mean, 0.0), limit)
                self._slack.clear()
        self.reclaim_w = min(self.reclaim_w, limit)
        return self.reclaim_w

    def _demand(self, inputs: Inputs, current: F64) -> F64:
        """Highest recent power plus a margin (planned on the mean: `_planned_w`); a device held
        at its enforced cap asks for more: the margin, or planned on the mean its whole range (so
        that every held device gets the same share of its range whatever its cap now; the budget
        counts it at its cap, min(cap, demand), which is what it draws).
        """
        margin = self.cfg.demand_margin_frac
        span = inputs.max_w - inputs.min_w
        enforced = np.where(np.isfinite(inputs.limit_w), inputs.limit_w, current)
        recent = np.where(np.isfinite(inputs.recent_max_w), inputs.recent_max_w, inputs.max_w)
        wanted = recent * (1 + margin)
        level = inputs.power_w
        if self._on_mean(inputs):
            assert inputs.mean_w is not None  # noqa: S101 - narrows the type
            wanted = np.where(np.isfinite(inputs.mean_w), self._planned_w(inputs), wanted)
            level = np.where(np.isfinite(inputs.mean_w), inputs.mean_w, inputs.power_w)
            if inputs.held_w is not None:  # at its cap for its last few samples: held now
                level = np.fmax(level, inputs.held_w)
        with np.errstate(invalid="ignore"):
            limited = level >= 0.97 * enforced
        more = np.fmax(current, enforced) + margin * span
        if self._on_mean(inputs):
            more = np.fmax(more, inputs.max_w)
        return np.where(limited, more, wanted)

    def _moves(self, inputs: Inputs, s: Mask, current: F64, target: F64, budget_w: float, demand: F64) -> list[Command]:
        """The fewest commands that keep the plan within the budget and move caps towards the
        allocation (issue 17.3): a cut or a raise smaller than the deadband waits; a raise is
        slewed and goes only into what the plan leaves free (so it never forces a cut elsewhere);
        cuts the budget needs beyond those are taken largest first, a deadband each at the least
        (a few meaningful commands, not many tiny ones). An unknown cap is set outright.
        """
        span = inputs.max_w - inputs.min_w
        slew = self.cfg.slew_frac * span
        deadband = np.maximum(self.cfg.deadband_w, self.cfg.deadband_frac * span)
        known = np.isfinite(current)
        base = np.where(known, current, inputs.max_w)
        new = np.where(target > base, np.minimum(target, base + slew), target)
        new = np.where(known | ~np.isfinite(target), new, target)  # unknown cap: set it outright
        with np.errstate(invalid="ignore"):
            wanted = s & np.isfinite(new)
            big = np.abs(new - base) >= deadband
            cuts = big & (new < base)
            move = wanted & (~known | cuts)
            raises = wanted & known & big & (new > base)
            if self.hold_raises:
                move &= known
                raises[:] = False
        if not math.isfinite(budget_w):
            return self._commands(inputs, move | raises, new)
        kept = np.where(move, new, base)

        def drawn(caps: F64) -> float:
            return float(np.nansum(np.where(s, expected_w(caps, demand), 0.0)))

        def one(i: int, cap: float) -> float:  # what device i is expected to draw under `cap`
            return min(cap, max(float(demand[i]), 0.0))

        over = drawn(kept) - budget_w
        if over > 0:  # cuts that waited are needed after all: the largest first
            small = np.flatnonzero(wanted & known & ~move & (new < base))
            for i in small[np.argsort(new[small] - base[small])].tolist():
                cut = max(float(inputs.min_w[i]), min(float(new[i]), float(base[i] - deadband[i])))
                over -= one(i, float(base[i])) - one(i, cut)
                new[i], kept[i], move[i] = cut, cut, True
                if over <= 0:
                    break
        room = budget_w - drawn(kept)
        up = np.flatnonzero(raises)
        for i in up[np.argsort(base[up] - new[up])].tolist():  # the largest raise first
            extra = one(i, float(new[i])) - one(i, float(base[i]))
            if extra <= room:
                room -= extra
                move[i] = True
        return self._commands(inputs, move, new)

    def _steps(
        self, inputs: Inputs, s: Mask, current: F64, target: F64, budget_w: float, demand: F64, ceiling: F64
    ) -> list[Command]:
        """Planned on the mean: few, large moves towards the allocation (issue 17.3).

        The plan's room is `budget_w` less what the devices are expected to draw under their caps,
        min(cap, demand). Below 0, the devices furthest above their targets, as fractions of their
        ranges, are cut first, each by `step_frac` of its range at the least (to its target where
        that is lower), until the room is back; a raise waits for room over ROOM_HYSTERESIS_FRAC
        of the budget (a bursty device's mean wanders; the caps need not follow it), and then the
        devices furthest below their targets rise first, by a step at the least, while they fit. A
        raise must also fit what the devices draw now (each its power now or its mean, the larger)
        under the budget, and it waits rather than let a smaller raise behind it take the room. An
        unknown cap is set outright (not while raises are held).
        """
        span = inputs.max_w - inputs.min_w
        frac = np.where(span > 0, span, 1.0)
        step = self._step_w(inputs)
        known = np.isfinite(current)
        base = np.where(known, current, inputs.max_w)
        new = base.copy()
        move = s & ~known & np.isfinite(target) & (not self.hold_raises)
        new[move] = target[move]
        d = np.maximum(np.where(np.isfinite(demand), demand, 0.0), 0.0)
        room = budget_w - float(np.sum(np.where(s, np.minimum(new, d), 0.0)))
        free = s & known & np.isfinite(target)
        hysteresis = ROOM_HYSTERESIS_FRAC * (self.budget_w or 0.0)
        if room < 0:
            excess = np.where(free, (base - target) / frac, -np.inf)
            for i in np.argsort(-excess, kind="stable").tolist():
                if room >= 0 or not free[i]:
                    break
                cut = max(float(inputs.min_w[i]), min(float(target[i]), float(base[i] - step[i])))
                saving = min(float(base[i]), d[i]) - min(cut, d[i])
                if saving > 0:
                    new[i], move[i] = cut, True
                    room += saving
        elif room > hysteresis and not self.hold_raises:
            assert inputs.mean_w is not None  # noqa: S101 - planned on the mean; narrows the type
            now = np.fmax(self._now(inputs, demand), inputs.mean_w)  # a bursty device off its burst: its mean
            room_now = (self.budget_w or 0.0) - float(np.sum(np.where(s, np.minimum(new, now), 0.0)))
            room_now -= float(np.nansum(np.where(s, 0.0, inputs.power_w)))
            deficit = np.where(free, (target - base) / frac, -np.inf)
            for i in np.argsort(-deficit, kind="stable").tolist():
                if deficit[i] <= 0 or room <= 0:
                    break
                up = min(float(ceiling[i]), max(float(target[i]), float(base[i] + step[i])))
                extra = min(up, d[i]) - min(float(base[i]), d[i])
                extra_now = min(up, float(now[i])) - min(float(base[i]), float(now[i]))
                if extra <= 0:
                    continue  # it would not draw more: no command
                if extra > room or extra_now > room_now:
                    break  # it waits for room; none smaller behind it takes it
                new[i], move[i] = up, True
                room -= extra
                room_now -= extra_now
        return self._commands(inputs, move, new)

    @staticmethod
    def _now(inputs: Inputs, demand: F64) -> F64:
        """What each device is taken to draw next period: its power now (its demand where unknown)."""
        return np.where(np.isfinite(inputs.power_w), inputs.power_w, np.where(np.isfinite(demand), demand, 0.0))

    def _overdraw_cuts(self, inputs: Inputs, s: Mask, current: F64, target: F64, done: list[Command]) -> list[Command]:
        """Planned on the mean: the plan does not count bursts that line up, nor a job that starts
        on a load without a setter until its mean shows it. When the measured power exceeds the
        budget by more than OVERDRAW_FRAC, cut at once, the devices bursting now (over BURST_FRAC
        of their mean) first, then the caps that free the most now (each by a step, to its target
        where lower; deeper, to what their draw now fitted to the budget gives them, where a step
        each is not enough), until what the devices draw now fits the budget: the cluster is back
        under it the next period.
        """
        assert self.budget_w is not None  # noqa: S101 - the caller checks; narrows the type
        if not math.isfinite(inputs.measured_w) or inputs.measured_w <= self.budget_w * (1 + OVERDRAW_FRAC):
            self._overdrawn = 0
            return []
        self._overdrawn += 1
        # over twice in a row: the draw is still rising (bursts that start one after another), so
        # the second cut leaves OVERDRAW_FRAC of room under the budget, not none
        aim = self.budget_w * (1 - OVERDRAW_FRAC) if self._overdrawn > 1 else self.budget_w
        over = inputs.measured_w - aim
        caps = np.where(np.isfinite(current), current, inputs.max_w)
        free = s.copy()
        for c in done:
            caps[c.slot] = c.cap_w
            free[c.slot] = False
        step = self._step_w(inputs)
        now = np.where(np.isfinite(inputs.power_w), inputs.power_w, 0.0)
        goal = np.where(np.isfinite(target), target, caps)
        cut = np.maximum(inputs.min_w, np.minimum(goal, caps - step))
        saving = np.where(free, np.minimum(caps, now) - np.minimum(cut, now), 0.0)
        if float(saving.sum()) < over:  # a step each is not enough: what they draw now, fitted to the budget
            weight = self._share_weight(inputs)
            fixed_now = float(np.sum(np.where(free, 0.0, np.where(s, np.minimum(caps, now), now))))
            try:
                fit = allocate(aim - fixed_now, inputs.min_w[free], caps[free], now[free], weight[free])
            except InfeasibleBudget:
                fit = inputs.min_w[free]
            cut[free] = np.minimum(cut[free], fit)
            saving = np.where(free, np.minimum(caps, now) - np.minimum(cut, now), 0.0)
        # a device bursting now is cut first: its burst broke the budget, and cut under its burst it
        # still gets its mean (its plan), so no raise takes the cut back when the burst ends
        assert inputs.mean_w is not None  # noqa: S101 - planned on the mean; narrows the type
        with np.errstate(invalid="ignore"):
            bursting = (now > BURST_FRAC * inputs.mean_w) & (saving > 0)
        order = np.lexsort((-saving, ~bursting))  # bursting first, then the most freed first
        out = []
        for i in order.tolist():
            if over <= 0 or saving[i] <= 0:
                break
            over -= float(saving[i])
            self._ask(i, float(cut[i]))
            out.append(Command(slot=i, cap_w=float(cut[i]), reason="budget"))
        return out

    def _commands(self, inputs: Inputs, move: Mask, new: F64) -> list[Command]:
        out = []
        for i in np.flatnonzero(move).tolist():
            cap = float(np.clip(new[i], inputs.min_w[i], inputs.max_w[i]))
            self._ask(i, cap)
            reason = "budget" if self.budget_w is not None else "restore after thermal"
            out.append(Command(slot=i, cap_w=cap, reason=reason))
        return out
