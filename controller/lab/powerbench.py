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

    def second(self, second: int, nodes: list[engine.SimNode], power_w: float) -> None:
        """The state after simulated second `second`."""
        if second < WARMUP_S:
            self.work0, self.work_tdp0, self.energy0 = _totals(nodes)
            return
        self.seconds += 1
        self.total_power += power_w
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
    for second in range(WARMUP_S + seconds):
        cluster.apply(pending)  # commands decided last period take effect now
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


def run(nodes: int, seconds: int, budget_frac: float, seed: int, *, as_json: bool, shards: int = 1) -> int:
    """Three runs; print a table (or JSON); exit 0 when xpuctl did more work than the static cap."""
    t0 = time.process_time()
    print(f"bench power: {nodes} nodes, {seconds} simulated s; run 1/3 uncapped ...", file=sys.stderr)
    ref = simulate("uncapped", nodes=nodes, seconds=seconds, seed=seed, budget_w=None)
    budget = budget_frac * ref.mean_power_w
    print("bench power: run 2/3 static cap ...", file=sys.stderr)
    static = simulate("static", nodes=nodes, seconds=seconds, seed=seed, budget_w=budget)
    print("bench power: run 3/3 xpuctl loop ...", file=sys.stderr)
    loop = simulate("xpuctl", nodes=nodes, seconds=seconds, seed=seed, budget_w=budget)
    runs = [ref, static, loop]
    sharded = None
    if shards > 1:
        print(f"bench power: run 4/4 xpuctl loop in {shards} shards under the root allocator ...", file=sys.stderr)
        sharded = simulate_sharded(nodes=nodes, seconds=seconds, seed=seed, budget_w=budget, shards=shards)
        runs.append(sharded)
    gain = 100 * (loop.work_tdp_s / static.work_tdp_s - 1)
    gain_unweighted = 100 * (loop.work_device_s / static.work_device_s - 1)
    result = {
        "scenario": "power",
        "nodes": nodes,
        "devices": nodes * 8,
        "simulated_s": seconds,
        "seed": seed,
        "demand_w": ref.mean_power_w,
        "budget_w": round(budget, 1),
        "budget_frac": budget_frac,
        "runs": [msgspec.to_builtins(r) for r in runs],
        "work_gain_vs_static_pct": round(gain, 2),
        "work_gain_vs_static_unweighted_pct": round(gain_unweighted, 2),
        "cpu_s": round(time.process_time() - t0, 1),
    }
    if sharded is not None:
        result["shards"] = shards
        result["sharded_work_vs_single_pct"] = round(100 * (sharded.work_tdp_s / loop.work_tdp_s - 1), 2)
    if as_json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(f"power scenario: {nodes} nodes x 8 devices, {seconds} simulated s, seed {seed}")
        print(f"demand (uncapped mean) {ref.mean_power_w:,.0f} W; budget {budget:,.0f} W ({budget_frac:.0%})")
        head = f"{'policy':<10}{'work (TDP-s)':>16}{'work (dev-s)':>14}{'energy kWh':>12}{'mean W':>11}{'s > budget':>12}{'s > +2%':>9}{'worst %':>9}"
        print(head)
        for r in runs:
            print(
                f"{r.policy:<10}{r.work_tdp_s:>16,.0f}{r.work_device_s:>14,.0f}{r.energy_kwh:>12.2f}{r.mean_power_w:>11,.0f}"
                f"{r.seconds_above_budget:>12}{r.seconds_above_budget_2pct:>9}{r.worst_overshoot_pct:>9.2f}"
            )
        print(
            f"xpuctl vs static: {gain:+.1f}% work (TDP-weighted), {gain_unweighted:+.1f}% in plain "
            "device-seconds, under the same budget"
        )
        if sharded is not None:
            print(
                f"xpuctl in {shards} shards vs one allocator: {result['sharded_work_vs_single_pct']:+.2f}% work; "
                f"{sharded.grant_changes_per_shard_hour:.0f} grant changes per shard-hour"
            )
    return 0 if gain > 0 else 1
