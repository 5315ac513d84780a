"""`xpu-controller bench --scenario power`: xpuctl's loop against the uniform static cap.

A simulated mixed fleet runs in simulated time (controller/lab/simcluster.py) three times with the
same seed: uncapped (to measure its demand), under the uniform static cap operators use today
(budget / devices, clamped to each device's range, set once; devices without a cap setter run
free), and under xpuctl's loop (detectors + allocator every 1 s period; a command takes effect one
period later, as over the bus). The budget is a fraction of the uncapped run's mean power. Each
run reports the simulated work done (device-seconds at full speed), energy, seconds above the
budget and the worst overshoot. The throughput model is `agent/drivers/sim/engine.py`
(`throughput_fraction`), with exponents from published power-capping measurements named in
`agent/drivers/sim/profiles.py`.
"""

from __future__ import annotations

import json
import sys
import time

import msgspec
import numpy as np

from xpuctl.agent.drivers.sim import engine
from xpuctl.controller import config
from xpuctl.controller.core import ledger, site
from xpuctl.controller.lab import oracle
from xpuctl.controller.lab.simcluster import SimCluster

# A site that is mostly NVIDIA with AMD, Hygon, Cambricon and Iluvatar beside it (cappable), and
# a fifth of its nodes on vendors with no public cap setter (fixed loads), per 64 nodes.
MIX: tuple[tuple[str, int], ...] = (
    ("nvidia", 26),
    ("amd", 10),
    ("hygon", 6),
    ("cambricon", 6),
    ("iluvatar", 3),
    ("ascend", 5),
    ("metax", 2),
    ("moorethreads", 2),
    ("enflame", 1),
    ("kunlunxin", 1),
    ("biren", 1),
    ("thead", 1),
)


# Every policy starts from the same uncapped state; the first seconds (the loop's first decisions
# and the static caps taking hold) are not scored, for any policy.
WARMUP_S = 10


class Run(msgspec.Struct, frozen=True, kw_only=True):
    """One policy's score."""

    policy: str
    work_tdp_s: float
    work_device_s: float
    energy_kwh: float
    mean_power_w: float
    seconds_above_budget: int
    seconds_above_budget_2pct: int
    worst_overshoot_pct: float
    commands: int
    grant_changes_per_shard_hour: float = 0.0  # with shards: grants the root changed (renewals not counted)
    series_w: list[float] = msgspec.field(default_factory=list)  # power each scored second (not printed)


def vendors_for(nodes: int) -> list[str]:
    """The MIX scaled to `nodes` nodes, interleaved so that any prefix is mixed too."""
    pool = [v for v, n in MIX for _ in range(n)]
    order = np.argsort([(i * 0.6180339887) % 1 for i in range(len(pool))], kind="stable")
    cycle = [pool[i] for i in order]
    return [cycle[k % len(cycle)] for k in range(nodes)]


class Tally:
    """A run's score, second by second: the warm-up is the baseline, the rest is scored."""

    def __init__(self, budget_w: float | None) -> None:
        """Nothing counted yet."""
        self.budget_w = budget_w
        self.work0 = self.work_tdp0 = self.energy0 = self.total_power = self.worst = 0.0
        self.above = self.above2 = self.seconds = 0
        self.series: list[float] = []  # the cluster's power each scored second

    def second(self, second: int, nodes: list[engine.SimNode], power_w: float) -> None:
        """The state after simulated second `second`."""
        if second < WARMUP_S:
            self.work0, self.work_tdp0, self.energy0 = _totals(nodes)
            return
        self.seconds += 1
        self.total_power += power_w
        self.series.append(power_w)
        if self.budget_w is not None:
            self.above += power_w > self.budget_w
            self.above2 += power_w > self.budget_w * 1.02
            self.worst = max(self.worst, power_w / self.budget_w - 1)

    def run(self, policy: str, nodes: list[engine.SimNode], commands: int, **extra: float) -> Run:
        """The score of the seconds counted."""
        work, work_tdp, energy = _totals(nodes)
        return Run(
            policy=policy,
            work_tdp_s=round(work_tdp - self.work_tdp0, 1),
            work_device_s=round(work - self.work0, 1),
            energy_kwh=round((energy - self.energy0) / 3.6e6, 3),
            mean_power_w=round(self.total_power / max(1, self.seconds), 1),
            seconds_above_budget=int(self.above),
            seconds_above_budget_2pct=int(self.above2),
            worst_overshoot_pct=round(100 * self.worst, 2),
            commands=commands,
            series_w=self.series,
            **extra,
        )


def _totals(nodes: list[engine.SimNode]) -> tuple[float, float, float]:
    """Work (device-s), TDP-weighted work and energy (J) so far."""
    return (
        float(sum(n.work.sum() for n in nodes)),
        float(sum((n.work * n.tdp_w).sum() for n in nodes)),
        float(sum(n.energy_j.sum() for n in nodes)),
    )


def simulate(
    policy: str, *, nodes: int, seconds: int, seed: int, budget_w: float | None, power: config.Power | None = None
) -> Run:
    """Run one policy; `budget_w` None for the uncapped reference; `power` the loop's settings."""
    base = power or config.Power()
    budget = budget_w if policy == "xpuctl" else None
    cfg = config.Config(power=msgspec.structs.replace(base, budget_w=budget))
    cluster = SimCluster(vendors_for(nodes), seed=seed, cfg=cfg)
    if policy == "static" and budget_w is not None:
        per_device = budget_w / sum(n.n for n in cluster.nodes)
        for node in cluster.nodes:
            for i in range(node.n):
                if node.profiles[i].power_cap_settable:
                    node.set_cap(i, per_device)
    pending: list[ledger.Entry] = []
    tally, commands = Tally(budget_w), 0
    settable = [np.array([p.power_cap_settable for p in n.profiles]) for n in cluster.nodes]
    for second in range(WARMUP_S + seconds):
        cluster.apply(pending)  # commands decided last period take effect now
        if policy == "oracle" and budget_w is not None:
            # for this very second, in hindsight; a hair under the budget, so that rounding is not an overshoot
            oracle.set_caps(cluster.nodes, budget_w * (1 - 1e-4), settable)
        out = cluster.step(1.0)
        if policy == "xpuctl":
            tick = cluster.tick()
            pending = out.send + tick.send
            commands += len(pending)
        tally.second(second, cluster.nodes, cluster.power_w())
    return tally.run(policy, cluster.nodes, commands)


ROOT_PERIOD_S = 5  # the root allocator's period (grants last 3 periods)


def simulate_sharded(
    *, nodes: int, seconds: int, seed: int, budget_w: float, shards: int, power: config.Power | None = None
) -> Run:
    """Xpuctl's loop in `shards` shards of the same nodes under a root allocator (core/site.py):
    every ROOT_PERIOD_S the shards report, the root plans, each shard reads its grant, runs inside
    it and acknowledges it once its caps fit. The store is perfect here (no loss, no delay).
    """
    vendors = vendors_for(nodes)
    bounds = [round(j * nodes / shards) for j in range(shards + 1)]
    cfg = config.Config(power=msgspec.structs.replace(power or config.Power(), budget_w=budget_w / shards))
    clusters = [
        SimCluster(vendors[bounds[j] : bounds[j + 1]], seed=seed, cfg=cfg, first_node=bounds[j]) for j in range(shards)
    ]
    names = [f"s{j + 1}" for j in range(shards)]
    root = site.Root(budget_w, epoch=1, now=0.0, ttl_s=3 * ROOT_PERIOD_S)
    leases = {s: site.Lease(floor_w=0.0) for s in names}
    pending: list[list[ledger.Entry]] = [[] for _ in clusters]
    tally, commands, changes = Tally(budget_w), 0, 0
    nodes_all = [n for c in clusters for n in c.nodes]
    last_grant: dict[str, float] = {}
    for second in range(WARMUP_S + seconds):
        for j, cluster in enumerate(clusters):
            cluster.apply(pending[j])
            out = cluster.step(1.0)
            tick = cluster.tick()
            pending[j] = out.send + tick.send
            commands += len(pending[j])
        if second % ROOT_PERIOD_S == 0:
            reports = {}
            for s, cluster in zip(names, clusters, strict=True):
                d = cluster.control.last_decision
                if d is not None:
                    reports[s] = site.Report(floor_w=d.floors_w + d.fixed_w, demand_w=d.demand_w)
            for s, grant in root.plan(reports, float(second)):
                leases[s].on_read(grant, float(second))
                if abs(grant.grant_w - last_grant.get(s, -1.0)) > 0.5:
                    changes += second >= WARMUP_S
                    last_grant[s] = grant.grant_w
        for s, cluster in zip(names, clusters, strict=True):
            lease, d = leases[s], cluster.control.last_decision
            if lease.grant is not None:
                cluster.control.power.budget_w = lease.budget_w(float(second))
                if d is not None and d.caps_w <= lease.grant.grant_w * 1.001 + 1.0:
                    root.on_ack(s, lease.grant)
        tally.second(second, nodes_all, sum(c.power_w() for c in clusters))
    return tally.run(
        f"xpuctl/{shards}",
        nodes_all,
        commands,
        grant_changes_per_shard_hour=round(changes / shards / (seconds / 3600), 1),
    )


class Case(msgspec.Struct, frozen=True, kw_only=True):
    """One seed at one budget fraction: the policies' scores and how xpuctl compares."""

    seed: int
    budget_frac: float
    budget_w: float
    demand_w: float
    runs: list[Run]
    xpuctl_gain_pct: float  # TDP-weighted work over the static cap's
    oracle_gain_pct: float
    share_of_oracle_gain: float | None  # None where the oracle gains under 0.5% (nothing to share)
    draw_frac: float  # xpuctl's mean power / budget over the seconds uncapped demand exceeds it
    longest_above_2pct_s: int  # xpuctl's longest run of seconds above the budget + 2%
    commands_per_device_hour: float
    static_worst_overshoot_pct: float  # the static cap breaks the budget where floors exceed it


def _longest(series: list[float], limit: float) -> int:
    best = cur = 0
    for w in series:
        cur = cur + 1 if w > limit else 0
        best = max(best, cur)
    return best


def case(ref: Run, nodes: int, seconds: int, frac: float, seed: int, power: config.Power | None = None) -> Case:
    """Static, xpuctl and the oracle at `frac` of the uncapped run `ref`'s demand."""
    budget = frac * ref.mean_power_w
    static = simulate("static", nodes=nodes, seconds=seconds, seed=seed, budget_w=budget)
    loop = simulate("xpuctl", nodes=nodes, seconds=seconds, seed=seed, budget_w=budget, power=power)
    best = simulate("oracle", nodes=nodes, seconds=seconds, seed=seed, budget_w=budget)
    over = [k for k, w in enumerate(ref.series_w) if w > budget]
    draw = sum(loop.series_w[k] for k in over) / len(over) / budget if over else 1.0
    gain, best_gain = loop.work_tdp_s - static.work_tdp_s, best.work_tdp_s - static.work_tdp_s
    return Case(
        seed=seed,
        budget_frac=frac,
        budget_w=round(budget, 1),
        demand_w=ref.mean_power_w,
        runs=[ref, static, loop, best],
        xpuctl_gain_pct=round(100 * gain / static.work_tdp_s, 2),
        oracle_gain_pct=round(100 * best_gain / static.work_tdp_s, 2),
        share_of_oracle_gain=round(gain / best_gain, 3) if best_gain > 0.005 * static.work_tdp_s else None,
        draw_frac=round(draw, 4),
        longest_above_2pct_s=_longest(loop.series_w, budget * 1.02),
        commands_per_device_hour=round(loop.commands / (nodes * 8) / (seconds / 3600), 1),
        static_worst_overshoot_pct=static.worst_overshoot_pct,
    )


class Capacity(msgspec.Struct, frozen=True, kw_only=True):
    """How many devices of the mix a fixed feed carries, by policy (issue 17.4)."""

    feed_w: float  # the facility's budget: the TDP of `tdp_nodes` nodes
    max_loss: float  # the most work a policy may lose against the same fleet uncapped
    tdp_devices: int  # provisioned by TDP: every device at its TDP fits the feed
    static_devices: int
    xpuctl_devices: int
    loss_at: dict[str, dict[int, float]]  # policy -> nodes -> work lost (fraction), as searched


def _tdp_w(nodes: int) -> float:
    cluster = SimCluster(vendors_for(nodes), seed=0)
    return float(sum(n.tdp_w.sum() for n in cluster.nodes))


def capacity(
    tdp_nodes: int, seconds: int, seed: int, *, max_loss: float = 0.05, power: config.Power | None = None
) -> Capacity:
    """The facility budget is the TDP of `tdp_nodes` nodes (what provisioning by TDP fits); for the
    static cap and for xpuctl, the most nodes of the same mix that run under it losing at most
    `max_loss` of the work they would do uncapped (a search over the node count).
    """
    feed = _tdp_w(tdp_nodes)
    uncapped: dict[int, float] = {}
    loss_at: dict[str, dict[int, float]] = {"static": {}, "xpuctl": {}}

    def loss(policy: str, nodes: int) -> float:
        if nodes not in uncapped:
            uncapped[nodes] = simulate("uncapped", nodes=nodes, seconds=seconds, seed=seed, budget_w=None).work_tdp_s
        if nodes not in loss_at[policy]:
            run = simulate(policy, nodes=nodes, seconds=seconds, seed=seed, budget_w=feed, power=power)
            loss_at[policy][nodes] = round(1 - run.work_tdp_s / uncapped[nodes], 4)
            print(
                f"bench power: capacity: {policy} on {nodes} nodes loses {loss_at[policy][nodes]:.1%}", file=sys.stderr
            )
        return loss_at[policy][nodes]

    most = {}
    for policy in ("static", "xpuctl"):
        lo, hi = tdp_nodes, tdp_nodes * 2
        if loss(policy, lo) > max_loss:  # not even the TDP's count: search below it
            lo, hi = 0, tdp_nodes
        else:
            while loss(policy, hi) <= max_loss:  # grow until it loses too much
                lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if loss(policy, mid) <= max_loss:
                lo = mid
            else:
                hi = mid
        most[policy] = lo
    return Capacity(
        feed_w=round(feed, 1),
        max_loss=max_loss,
        tdp_devices=tdp_nodes * 8,
        static_devices=most["static"] * 8,
        xpuctl_devices=most["xpuctl"] * 8,
        loss_at=loss_at,
    )


# The training exponent's plausible range: McDonald et al. report training 5-15% slower at a 60%
# cap (profiles.py); on the H100 profile that is alpha 0.12-0.39 (0.25 in the simulator). The
# inference exponent moves with it, in proportion (0.15 at 0.25).
ALPHA_SWEEP = (0.12, 0.25, 0.39)


def alpha_sweep(
    nodes: int, seconds: int, seed: int, fracs: list[float], power: config.Power | None = None
) -> list[dict[str, float | None]]:
    """The cases at each training exponent of ALPHA_SWEEP (issue 17.6): how the result depends on
    the throughput curve's one free parameter.
    """
    from xpuctl.agent.drivers.sim import profiles  # noqa: PLC0415 - only the sweep changes it

    saved = profiles.ALPHA_TRAINING, profiles.ALPHA_INFERENCE
    out: list[dict[str, float | None]] = []
    try:
        for alpha in ALPHA_SWEEP:
            profiles.ALPHA_TRAINING, profiles.ALPHA_INFERENCE = alpha, saved[1] * alpha / saved[0]
            print(f"bench power: throughput exponent {alpha} ...", file=sys.stderr)
            ref = simulate("uncapped", nodes=nodes, seconds=seconds, seed=seed, budget_w=None)
            for frac in fracs:
                c = case(ref, nodes, seconds, frac, seed, power=power)
                out.append(
                    {
                        "alpha_training": alpha,
                        "budget_frac": frac,
                        "xpuctl_gain_pct": c.xpuctl_gain_pct,
                        "oracle_gain_pct": c.oracle_gain_pct,
                        "share_of_oracle_gain": c.share_of_oracle_gain,
                        "uncapped_gain_pct": round(100 * (c.runs[0].work_tdp_s / c.runs[1].work_tdp_s - 1), 2),
                    }
                )
    finally:
        profiles.ALPHA_TRAINING, profiles.ALPHA_INFERENCE = saved
    return out


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": round(sum(values) / len(values), 3), "min": min(values), "max": max(values)}


def run(
    nodes: int,
    seconds: int,
    fracs: list[float],
    seeds: list[int],
    *,
    as_json: bool,
    shards: int = 1,
    with_capacity: bool = False,
    with_sweep: bool = False,
    plan: str = "mean",
) -> int:
    """Every seed at every budget fraction; print a table (or JSON); exit 0 when xpuctl did more
    work than the static cap wherever the static cap kept the budget.
    """
    t0 = time.process_time()
    # the loop's settings: the defaults but the plan (a bad value is msgspec's error naming the field)
    power = msgspec.convert({"plan": plan}, config.Power)
    cases: list[Case] = []
    total = len(seeds) * (1 + 3 * len(fracs))
    done = 0
    for seed in seeds:
        print(f"bench power: seed {seed}: uncapped ({done + 1}/{total}) ...", file=sys.stderr)
        ref = simulate("uncapped", nodes=nodes, seconds=seconds, seed=seed, budget_w=None)
        done += 1
        for frac in fracs:
            print(
                f"bench power: seed {seed}, budget {frac:.0%}: static, xpuctl, oracle ({done + 1}-{done + 3}/{total}) ...",
                file=sys.stderr,
            )
            cases.append(case(ref, nodes, seconds, frac, seed, power=power))
            done += 3
    sharded = None
    if shards > 1:
        first = cases[0]
        print(f"bench power: xpuctl in {shards} shards under the root allocator ...", file=sys.stderr)
        sharded = simulate_sharded(
            nodes=nodes, seconds=seconds, seed=first.seed, budget_w=first.budget_w, shards=shards, power=power
        )
    summary = {
        f"{frac:g}": {
            "xpuctl_gain_pct": _spread([c.xpuctl_gain_pct for c in cases if c.budget_frac == frac]),
            "oracle_gain_pct": _spread([c.oracle_gain_pct for c in cases if c.budget_frac == frac]),
            "share_of_oracle_gain": _spread(
                [c.share_of_oracle_gain for c in cases if c.budget_frac == frac and c.share_of_oracle_gain is not None]
                or [float("nan")]
            ),
            "draw_frac": _spread([c.draw_frac for c in cases if c.budget_frac == frac]),
            "commands_per_device_hour": _spread([c.commands_per_device_hour for c in cases if c.budget_frac == frac]),
            "longest_above_2pct_s": max(c.longest_above_2pct_s for c in cases if c.budget_frac == frac),
        }
        for frac in fracs
    }
    result: dict[str, object] = {
        "scenario": "power",
        "plan": plan,
        "nodes": nodes,
        "devices": nodes * 8,
        "simulated_s": seconds,
        "seeds": seeds,
        "budget_fracs": fracs,
        "cases": [_case_json(c) for c in cases],
        "summary": summary,
        "cpu_s": round(time.process_time() - t0, 1),
    }
    sweep = alpha_sweep(nodes, seconds, seeds[0], fracs, power) if with_sweep else None
    if sweep is not None:
        result["alpha_sweep"] = sweep
    cap = None
    if with_capacity:
        print("bench power: capacity under a fixed feed ...", file=sys.stderr)
        cap = capacity(nodes, seconds, seeds[0], power=power)
        result["capacity"] = msgspec.to_builtins(cap)
    if sharded is not None:
        result["shards"] = shards
        result["sharded"] = _run_json(sharded)
        result["sharded_work_vs_single_pct"] = round(100 * (sharded.work_tdp_s / cases[0].runs[2].work_tdp_s - 1), 2)
    if as_json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    else:
        _print(nodes, seconds, cases, summary, sharded, result)
        if sweep is not None:
            print(f"across the throughput curve's plausible range (training exponent; seed {seeds[0]}):")
            for row in sweep:
                share = row["share_of_oracle_gain"]
                print(
                    f"  alpha {row['alpha_training']:.2f}, budget {row['budget_frac']:.0%}: uncapped "
                    f"{row['uncapped_gain_pct']:+.1f}%, oracle {row['oracle_gain_pct']:+.2f}%, xpuctl "
                    f"{row['xpuctl_gain_pct']:+.2f}%, share {'n/a' if share is None else f'{share:.2f}'}"
                )
        if cap is not None:
            print(
                f"capacity under a feed of {cap.feed_w / 1e3:,.1f} kW (the TDP of {nodes} nodes), losing at most "
                f"{cap.max_loss:.0%} of the work: by TDP {cap.tdp_devices} devices, static cap {cap.static_devices}, "
                f"xpuctl {cap.xpuctl_devices} ({100 * (cap.xpuctl_devices / cap.tdp_devices - 1):+.0f}% over TDP)"
            )
    kept = [c for c in cases if c.static_worst_overshoot_pct <= 2.0]
    return 0 if all(c.xpuctl_gain_pct > 0 for c in kept) else 1


def _run_json(r: Run) -> dict[str, object]:
    out = msgspec.to_builtins(r)
    del out["series_w"]
    return dict(out)


def _case_json(c: Case) -> dict[str, object]:
    out = msgspec.to_builtins(c)
    out["runs"] = [_run_json(r) for r in c.runs]
    return dict(out)


def _print(
    nodes: int,
    seconds: int,
    cases: list[Case],
    summary: dict[str, dict[str, object]],
    sharded: Run | None,
    result: dict[str, object],
) -> None:
    print(
        f"power scenario: {nodes} nodes x 8 devices, {seconds} simulated s per run; the loop plans on the {result['plan']}"
    )
    if len(cases) == 1:
        c = cases[0]
        print(
            f"demand (uncapped mean) {c.demand_w:,.0f} W; budget {c.budget_w:,.0f} W ({c.budget_frac:.0%}); seed {c.seed}"
        )
        head = f"{'policy':<10}{'work (TDP-s)':>16}{'work (dev-s)':>14}{'energy kWh':>12}{'mean W':>11}{'s > budget':>12}{'s > +2%':>9}{'worst %':>9}{'commands':>10}"
        print(head)
        for r in c.runs + ([sharded] if sharded is not None else []):
            print(
                f"{r.policy:<10}{r.work_tdp_s:>16,.0f}{r.work_device_s:>14,.0f}{r.energy_kwh:>12.2f}{r.mean_power_w:>11,.0f}"
                f"{r.seconds_above_budget:>12}{r.seconds_above_budget_2pct:>9}{r.worst_overshoot_pct:>9.2f}{r.commands:>10}"
            )
    head = f"{'budget':>7}{'seed':>6}{'xpuctl gain':>13}{'oracle gain':>13}{'share':>8}{'draw':>8}{'>+2% run':>10}{'cmd/dev-h':>11}{'static worst':>14}"
    print(head)
    for c in cases:
        share = "n/a" if c.share_of_oracle_gain is None else f"{c.share_of_oracle_gain:.2f}"
        print(
            f"{c.budget_frac:>7.0%}{c.seed:>6}{c.xpuctl_gain_pct:>12.2f}%{c.oracle_gain_pct:>12.2f}%{share:>8}"
            f"{c.draw_frac:>8.3f}{c.longest_above_2pct_s:>9}s{c.commands_per_device_hour:>11.0f}{c.static_worst_overshoot_pct:>13.1f}%"
        )
    for frac, row in summary.items():
        sh = row["share_of_oracle_gain"]
        assert isinstance(sh, dict)  # noqa: S101 - built above
        print(
            f"budget {float(frac):.0%}: share of the oracle's gain {sh['mean']:.2f} ({sh['min']:.2f}-{sh['max']:.2f})"
        )
    if sharded is not None:
        print(
            f"xpuctl in {result['shards']} shards vs one allocator: {result['sharded_work_vs_single_pct']:+.2f}% work"
        )
    print(
        "gain: TDP-weighted work over the static cap's; share: xpuctl's gain / the oracle's; draw: xpuctl's mean power /"
    )
    print("budget while uncapped demand exceeds it; >+2% run: longest run above budget + 2%; static worst: the static")
    print("cap's worst overshoot (it breaks the budget where the devices' floors exceed budget / devices)")
