"""Shard ownership (issue 14.2): the pure rules, then electors against a real 3-member etcd.

The electors run in this process with the controller's default TTL, 5 s (1 s margin).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.helpers import EtcdCluster, wait_until
from xpuctl.controller.adapters import etcd as etcd_adapter
from xpuctl.controller.core import ownership

TTL_S = 5.0


# -- the rules, with time as an argument ------------------------------------------------------------


def test_an_owner_acts_until_ttl_minus_margin_after_the_last_confirmed_renewal() -> None:
    own = ownership.Ownership("s1", "a:1", ttl_s=5.0, margin_s=1.0)
    assert not own.acting(0.0)
    own.acquired(epoch=7, sent_at=100.0)
    assert own.acting(103.9) and not own.acting(104.0)
    own.renewed(sent_at=102.0, ttl_s=5.0)
    assert own.acting(105.9) and not own.acting(106.0)
    own.renewed(sent_at=101.0, ttl_s=5.0)  # a late answer to an older renewal moves nothing back
    assert own.acting(105.9)
    assert not own.check(105.9) and own.check(106.0)
    assert own.role == "fenced" and not own.acting(106.0) and own.fences == 1
    own.renewed(sent_at=106.0, ttl_s=5.0)  # once fenced, only a new campaign makes it act again
    assert not own.acting(106.1)


def test_a_standby_names_the_owner_and_a_fenced_owner_says_so() -> None:
    own = ownership.Ownership("s1", "b:2")
    own.observed("a:1", 7)
    assert own.epoch == 7 and "the owner is at a:1" in own.refusal()
    own.acquired(epoch=9, sent_at=0.0)
    own.check(10.0)
    assert "no longer owns shard s1" in own.refusal()


@pytest.mark.parametrize("bad", ["", "a/b", "x" * 64, "-lead", "s 1"])
def test_a_bad_shard_id_is_refused_naming_it(bad: str) -> None:
    with pytest.raises(ValueError, match="shard id"):
        ownership.Ownership(bad, "a:1")


def test_membership_by_patterns() -> None:
    assert ownership.member("hall1-r3-n07", ("hall1-*",))
    assert not ownership.member("hall2-r3-n07", ("hall1-*", "hall3-*"))
    assert ownership.member("anything", ())


def test_endpoints_become_one_multi_address_target() -> None:
    assert etcd_adapter.target("http://127.0.0.1:1,http://127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert etcd_adapter.target("localhost:3").endswith(":3")
    for bad in ("", "https://127.0.0.1:1", "http://127.0.0.1", "http://no-such-host.invalid:1"):
        with pytest.raises(etcd_adapter.EndpointError):
            etcd_adapter.target(bad)


# -- electors on a real etcd -------------------------------------------------------------------------


class Candidate:
    """An elector and its ownership, run as a task of this test."""

    def __init__(self, urls: str, address: str, shard: str = "s1") -> None:
        self.own = ownership.Ownership(shard, address, ttl_s=TTL_S, margin_s=1.0)
        self.etcd = etcd_adapter.Etcd(urls, timeout_s=0.5)
        self.changes: list[tuple[float, str]] = []
        self.elector = etcd_adapter.Elector(
            self.etcd,
            self.own,
            boot_id=address,
            on_change=lambda what, _m: self.changes.append((time.monotonic(), what)),
        )
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.elector.run())

    async def crash(self) -> None:
        """Stop without revoking anything: the lease is left to expire, as after a SIGKILL."""
        self.elector.lease_id = 0  # fault injection: the clean handover in `run`'s finally is skipped
        await self.stop()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        await self.etcd.close()

    def acting(self) -> bool:
        return self.own.acting(time.monotonic())


@pytest.fixture
async def pair(etcd: EtcdCluster) -> AsyncIterator[tuple[Candidate, Candidate]]:
    a, b = Candidate(etcd.urls, "a:1"), Candidate(etcd.urls, "b:2")
    a.start()
    await wait_until(a.acting, timeout_s=10, what="the first candidate to own the shard")
    b.start()
    await wait_until(lambda: b.own.owner_address == "a:1", timeout_s=5, what="the standby to see the owner")
    yield a, b
    await a.stop()
    await b.stop()


@pytest.mark.slow
async def test_one_owner_and_a_standby_that_takes_over_within_ttl_plus_2s(pair: tuple[Candidate, Candidate]) -> None:
    a, b = pair
    assert not b.acting() and b.own.epoch == a.own.epoch > 0
    killed = time.monotonic()
    await a.crash()
    await wait_until(b.acting, timeout_s=TTL_S + 2, what="the standby to own the shard")
    took = time.monotonic() - killed
    assert b.own.epoch > a.own.epoch  # a new key, a higher epoch
    assert took <= TTL_S + 2, took


@pytest.mark.slow
async def test_a_clean_stop_hands_over_at_once(pair: tuple[Candidate, Candidate]) -> None:
    a, b = pair
    await a.stop()  # revokes its lease: the key goes with it
    await wait_until(b.acting, timeout_s=2, what="the standby to own the shard after a clean stop")


@pytest.mark.slow
async def test_one_etcd_member_killed_changes_no_owner(etcd: EtcdCluster, pair: tuple[Candidate, Candidate]) -> None:
    a, b = pair
    epoch = a.own.epoch
    etcd.kill(0)  # the first address of both candidates' targets
    until = time.monotonic() + 2 * TTL_S
    while time.monotonic() < until:
        assert a.acting(), "the owner stopped acting when one of three members died"
        assert not b.acting()
        await asyncio.sleep(0.1)
    assert a.own.epoch == epoch and a.own.fences == 0


@pytest.mark.slow
async def test_quorum_lost_fences_the_owner_within_ttl_and_an_owner_returns_with_quorum(
    etcd: EtcdCluster, pair: tuple[Candidate, Candidate]
) -> None:
    a, b = pair
    etcd.kill(1)
    etcd.kill(2)
    lost = time.monotonic()
    await wait_until(lambda: not a.acting(), timeout_s=TTL_S, what="the owner to fence itself")
    assert time.monotonic() - lost <= TTL_S
    until = time.monotonic() + TTL_S
    while time.monotonic() < until:  # nobody acts while there is no quorum
        assert not a.acting() and not b.acting()
        await asyncio.sleep(0.1)
    etcd.start(1)
    etcd.start(2)
    await asyncio.to_thread(etcd.wait_healthy)
    back = time.monotonic()
    await wait_until(lambda: a.acting() or b.acting(), timeout_s=TTL_S + 2, what="an owner once quorum is back")
    assert time.monotonic() - back <= TTL_S + 2
    assert not (a.acting() and b.acting())


def test_a_shard_under_the_site_root_refuses_its_own_budget_naming_the_gateway() -> None:
    from xpuctl.controller import errors, hub  # noqa: PLC0415

    h = hub.Hub()
    h.ownership = own = ownership.Ownership("hall1", "a:1")
    own.acquired(epoch=3, sent_at=time.monotonic())
    h.site_managed = True
    with pytest.raises(errors.SiteManaged, match="through the gateway"):
        h.set_budget(5000.0, 0)
    h.site_managed = False
    h.set_budget(5000.0, 0)
    assert h.budget_w == 5000.0
