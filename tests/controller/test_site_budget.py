"""The site budget over shards (issue 15.1-15.2, 15.4): the root's plan and the shards' leases, with
the invariant checked after every step of a Hypothesis model of lost, delayed and reordered
messages, partitions, and the root's and shards' deaths. Pure: the store (etcd) is a dict here.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from xpuctl.controller.core import site
from xpuctl.controller.errors import InfeasibleBudget

BUDGET_W = 100_000.0
TTL_S = 15.0
FLOORS = {"s1": 12_000.0, "s2": 20_000.0, "s3": 8_000.0}


def test_static_shares_are_floor_proportional_and_leave_a_pool() -> None:
    shares = site.static_shares(BUDGET_W, FLOORS, 0.5)
    headroom = BUDGET_W - sum(FLOORS.values())
    assert shares["s2"] == pytest.approx(20_000 + 0.5 * headroom * 0.5)
    assert sum(shares.values()) == pytest.approx(BUDGET_W - 0.5 * headroom)
    with pytest.raises(InfeasibleBudget):
        site.static_shares(30_000.0, FLOORS, 0.5)


def test_a_lease_lapses_to_its_static_share_and_ignores_older_grants() -> None:
    lease = site.Lease(floor_w=1000.0)
    assert lease.budget_w(0.0) == 1000.0  # no grant: the floor
    g1 = site.Grant(root_epoch=1, seq=1, grant_w=5000.0, static_w=2000.0, ttl_s=15.0)
    g2 = site.Grant(root_epoch=1, seq=2, grant_w=4000.0, static_w=2000.0, ttl_s=15.0)
    assert lease.on_read(g2, sent_at=10.0)
    assert not lease.on_read(g1, sent_at=11.0)  # a late reply with an older grant
    assert lease.budget_w(24.9) == 4000.0 and lease.budget_w(25.0) == 2000.0  # from the read's send time


def test_a_cut_is_counted_at_its_old_value_until_acknowledged_and_the_room_then_goes_elsewhere() -> None:
    root = site.Root(BUDGET_W, epoch=1, now=0.0, ttl_s=TTL_S)
    hungry = {s: site.Report(floor_w=f, demand_w=60_000.0) for s, f in FLOORS.items()}
    first = dict(
        root.plan({"s1": hungry["s1"], "s2": hungry["s2"], "s3": site.Report(floor_w=8_000.0, demand_w=80_000.0)}, 0.0)
    )
    assert sum(g.grant_w for g in first.values()) <= BUDGET_W + 1e-6
    for s, g in first.items():
        root.on_ack(s, g)
    # s3 goes idle: it is cut at once, but s1 gets the watts only once s3 acknowledges (or 15 s pass)
    idle = {**hungry, "s3": site.Report(floor_w=8_000.0, demand_w=8_000.0)}
    second = dict(root.plan(idle, 1.0))
    assert second["s3"].grant_w < first["s3"].grant_w
    assert all(g.grant_w <= first[s].grant_w + 1e-6 for s, g in second.items() if s != "s3")
    assert root.bound_w(1.0) <= BUDGET_W + 1e-6
    root.on_ack("s3", second["s3"])
    third = dict(root.plan(idle, 2.0))
    assert third["s1"].grant_w > first["s1"].grant_w or third["s2"].grant_w > first["s2"].grant_w


class SiteModel(RuleBasedStateMachine):
    """A root, three shards, a store, and every message between them in flight."""

    @initialize(frac=st.sampled_from([0.0, 0.3, 0.5, 0.9]))
    def start(self, frac: float) -> None:
        self.now = 0.0
        self.frac = frac
        self.store: dict[str, site.Grant] = {}
        self.acks: dict[str, site.Grant] = {}
        self.epoch = 1
        self.root: site.Root | None = site.Root(BUDGET_W, epoch=1, now=0.0, ttl_s=TTL_S, static_frac=frac)
        self.leases = {s: site.Lease(floor_w=f) for s, f in FLOORS.items()}
        self.demand = dict.fromkeys(FLOORS, 30_000.0)
        self.requests: list[tuple[str, float]] = []  # reads sent, not served yet: (shard, sent_at)
        self.replies: list[tuple[str, site.Grant | None, float]] = []  # served, not delivered yet
        self.ack_msgs: list[tuple[str, site.Grant]] = []  # acknowledgements on their way to the store

    @rule(dt=st.one_of(st.sampled_from([0.5, 2.0, 5.0, TTL_S - 1, TTL_S, TTL_S + 1]), st.floats(0.0, 20.0)))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @rule(shard=st.sampled_from(sorted(FLOORS)), demand=st.floats(0.0, 120_000.0))
    def demand_changes(self, shard: str, demand: float) -> None:
        self.demand[shard] = demand

    @precondition(lambda self: self.root is not None)
    @rule(demands=st.lists(st.sampled_from([0.0, 10_000.0, 30_000.0, 60_000.0, 120_000.0]), min_size=3, max_size=3))
    def root_plans(self, demands: list[float]) -> None:
        assert self.root is not None
        self.demand = dict(zip(sorted(FLOORS), demands, strict=True))
        for s, g in self.acks.items():
            self.root.on_ack(s, g)
        reports = {s: site.Report(floor_w=f, demand_w=self.demand[s]) for s, f in FLOORS.items()}
        for s, g in self.root.plan(reports, self.now):
            assert g.static_w <= g.grant_w + 1e-6
            self.store[s] = g  # an etcd write: atomic, and done when the root hears it is

    @precondition(lambda self: self.root is not None)
    @rule()
    def root_dies(self) -> None:
        self.root = None

    @precondition(lambda self: self.root is None)
    @rule()
    def a_new_root_is_elected(self) -> None:
        self.epoch += 1
        self.root = site.Root(
            BUDGET_W,
            epoch=self.epoch,
            now=self.now,
            ttl_s=TTL_S,
            static_frac=self.frac,
            store=self.store,
            acked=self.acks,
        )

    @rule(shard=st.sampled_from(sorted(FLOORS)), acks=st.booleans())
    def shard_reads_at_once(self, shard: str, acks: bool) -> None:
        lease = self.leases[shard]
        lease.on_read(self.store.get(shard), self.now)
        if lease.grant is not None and acks:
            self.ack_msgs.append((shard, lease.grant))

    @rule(shard=st.sampled_from(sorted(FLOORS)))
    def shard_sends_a_read(self, shard: str) -> None:
        self.requests.append((shard, self.now))

    @precondition(lambda self: self.requests)
    @rule(k=st.integers(0, 50))
    def etcd_serves_a_read(self, k: int) -> None:  # in any order, at any time after it was sent
        shard, sent_at = self.requests.pop(k % len(self.requests))
        self.replies.append((shard, self.store.get(shard), sent_at))

    @precondition(lambda self: self.replies)
    @rule(k=st.integers(0, 50))
    def a_reply_arrives(self, k: int) -> None:
        shard, grant, sent_at = self.replies.pop(k % len(self.replies))
        lease = self.leases[shard]
        lease.on_read(grant, sent_at)
        if lease.grant is not None:
            self.ack_msgs.append((shard, lease.grant))  # caps enforced and read back: acknowledge

    @precondition(lambda self: self.ack_msgs)
    @rule(k=st.integers(0, 50))
    def an_ack_reaches_the_store(self, k: int) -> None:
        shard, grant = self.ack_msgs.pop(k % len(self.ack_msgs))
        if shard not in self.acks or grant.order > self.acks[shard].order:
            self.acks[shard] = grant

    @precondition(lambda self: self.requests or self.replies or self.ack_msgs)
    @rule(which=st.sampled_from(["requests", "replies", "ack_msgs"]), k=st.integers(0, 50))
    def a_message_is_lost(self, which: str, k: int) -> None:
        queue = getattr(self, which)
        if queue:
            queue.pop(k % len(queue))

    @rule(shard=st.sampled_from(sorted(FLOORS)))
    def a_shard_owner_dies_and_a_standby_starts_cold(self, shard: str) -> None:
        self.leases[shard] = site.Lease(floor_w=FLOORS[shard])  # it knows no grant: it runs at its floor

    @invariant()
    def the_site_stays_within_its_budget(self) -> None:
        if not hasattr(self, "leases"):
            return
        total = sum(lease.bound_w(self.now) for lease in self.leases.values())
        assert total <= BUDGET_W * (1 + 1e-9), f"sum of max(valid grant, static share) {total:.0f} W > {BUDGET_W:.0f} W"
        if self.root is not None:
            assert self.root.bound_w(self.now) <= BUDGET_W * (1 + 1e-9)  # the root's own count agrees

    @invariant()
    def no_budget_is_negative_or_nan(self) -> None:
        if hasattr(self, "leases"):
            for lease in self.leases.values():
                b = lease.budget_w(self.now)
                assert math.isfinite(b) and b >= 0


SiteModel.TestCase.settings = settings(max_examples=400, stateful_step_count=80, deadline=None)
test_the_site_invariant_holds_under_loss_delay_reordering_and_deaths = pytest.mark.slow(SiteModel.TestCase)


@pytest.mark.slow
def test_the_power_scenario_in_shards_keeps_the_budget_and_the_work_of_one_allocator() -> None:
    from xpuctl.controller.lab import powerbench  # noqa: PLC0415 - the simulator only here

    ref = powerbench.simulate("uncapped", nodes=16, seconds=300, seed=1, budget_w=None)
    budget = 0.7 * ref.mean_power_w
    one = powerbench.simulate("xpuctl", nodes=16, seconds=300, seed=1, budget_w=budget)
    four = powerbench.simulate_sharded(nodes=16, seconds=300, seed=1, budget_w=budget, shards=4)
    # above the budget by more than 2% for no more than 2 periods in a row, and rarely (issue 17.2)
    assert powerbench._longest(four.series_w, budget * 1.02) <= 2, four
    assert four.seconds_above_budget_2pct <= 0.05 * 300, four
    assert abs(four.work_tdp_s / one.work_tdp_s - 1) <= 0.02, (four, one)
    assert four.mean_power_w >= 0.9 * budget  # the budget is used, not left idle by the split
