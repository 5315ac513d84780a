"""The root allocator on a real etcd (issue 15.1-15.2): grants written, decrease before increase,
a killed root replaced without raising anyone for a lease's length, a new site budget followed.

The shards are played by the test: it writes their reports and acknowledgements as their owners
would. The root runs with a 0.5 s period (grants last 1.5 s) so that each step takes seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import msgspec
import pytest

from tests.helpers import EtcdCluster, wait_until
from xpuctl.controller import root
from xpuctl.controller.adapters import etcd
from xpuctl.controller.core import ownership, site

pytestmark = pytest.mark.slow

BUDGET_W = 100_000.0
FLOORS = {"s1": 12_000.0, "s2": 20_000.0, "s3": 8_000.0}
PERIOD_S = 0.5


class Site:
    """The store as the shards see it, and candidate roots."""

    def __init__(self, urls: str) -> None:
        self.urls = urls
        self.client = etcd.Etcd(urls)
        self.keys = etcd.SiteKeys("/xpu/v1")
        self.grants: dict[str, site.Grant] = {}
        self.roots: list[tuple[root.RootService, asyncio.Task[None]]] = []

    def start_root(self, name: str) -> root.RootService:
        r = root.RootService(
            etcd.Etcd(self.urls),
            ownership.Ownership("site", name),
            boot_id=name,
            budget_w=BUDGET_W,
            period_s=PERIOD_S,
        )
        self.roots.append((r, asyncio.create_task(r.run())))
        return r

    async def report(self, demands: dict[str, float]) -> None:
        for s, demand in demands.items():
            await self.client.put(
                self.keys.of(s, "report"), msgspec.json.encode(site.Report(floor_w=FLOORS[s], demand_w=demand))
            )

    async def read(self) -> dict[str, site.Grant]:
        _, grants, _ = root.read_shards(self.keys, await self.client.under(self.keys.shards))
        self.grants = grants
        return grants

    async def ack(self, shard: str) -> None:
        await self.client.put(self.keys.of(shard, "ack"), msgspec.json.encode(self.grants[shard]))

    def bound(self) -> float:
        return sum(max(g.grant_w, g.static_w) for g in self.grants.values())


@pytest.fixture
async def world(etcd: EtcdCluster) -> AsyncIterator[Site]:
    w = Site(etcd.urls)
    yield w
    for r, task in w.roots:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await r.client.close()
    await w.client.close()


async def grants_for(w: Site, shards: set[str], timeout_s: float = 15) -> dict[str, site.Grant]:
    deadline = time.monotonic() + timeout_s
    while set(await w.read()) < shards:
        assert time.monotonic() < deadline, f"no grants for {shards - set(w.grants)}"
        await asyncio.sleep(0.1)
    return w.grants


async def test_the_root_grants_within_the_budget_and_moves_watts_only_after_the_donor_acknowledges(world: Site) -> None:
    await world.report({"s1": 60_000.0, "s2": 60_000.0, "s3": 60_000.0})
    world.start_root("r1")
    first = await grants_for(world, set(FLOORS))
    assert world.bound() <= BUDGET_W + 1e-6
    for s in FLOORS:
        await world.ack(s)
    # s3 goes idle: cut at once; s1 and s2 are raised only once s3 acknowledges the cut
    await world.report({"s1": 60_000.0, "s2": 60_000.0, "s3": 8_000.0})
    deadline = time.monotonic() + 10
    while (await world.read())["s3"].grant_w >= first["s3"].grant_w - 1:
        assert time.monotonic() < deadline, "s3 was not cut"
        await asyncio.sleep(0.1)
    cut = world.grants["s3"]
    assert world.grants["s1"].grant_w <= first["s1"].grant_w + 1e-6  # nothing raised while s3 may hold its old grant
    assert world.grants["s2"].grant_w <= first["s2"].grant_w + 1e-6
    await world.ack("s3")
    deadline = time.monotonic() + 10
    while (await world.read())["s1"].grant_w <= first["s1"].grant_w + 1:
        assert time.monotonic() < deadline, "the watts s3 gave up did not move"
        await asyncio.sleep(0.1)
    assert world.grants["s3"].order >= cut.order and world.bound() <= BUDGET_W + 1e-6


async def test_a_killed_root_is_replaced_and_a_new_site_budget_is_followed(world: Site) -> None:
    await world.report({"s1": 60_000.0, "s2": 60_000.0, "s3": 60_000.0})
    first_root = world.start_root("r1")
    await grants_for(world, set(FLOORS))
    second_root = world.start_root("r2")
    await wait_until(lambda: second_root.own.owner_address == "r1", timeout_s=10, what="r2 to see r1 as the root")
    before = dict(await world.read())
    first_root.elector.lease_id = 0  # fault injection: killed, its lease left to expire
    task = next(t for r, t in world.roots if r is first_root)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await wait_until(lambda: second_root.own.acting(time.monotonic()), timeout_s=10, what="r2 to be the root")
    # the site budget goes up: the new root follows it, but raises nobody during its first 1.5 s
    await world.client.put(world.keys.budget, msgspec.json.encode({"budget_w": 130_000.0}))
    took_over = time.monotonic()
    deadline = time.monotonic() + 15
    raised_at = None
    while raised_at is None:
        grants = await world.read()
        assert world.bound() <= 130_000.0 + 1e-6
        if any(grants[s].grant_w > before[s].grant_w + 1 for s in FLOORS):
            raised_at = time.monotonic()
        assert time.monotonic() < deadline, "the new root never used the larger budget"
        await asyncio.sleep(0.05)
    assert raised_at - took_over >= second_root.ttl_s - 0.5  # not before a lease's length
    assert all(
        g.root_epoch == second_root.own.epoch for s, g in world.grants.items() if g.grant_w > before[s].grant_w + 1
    )
