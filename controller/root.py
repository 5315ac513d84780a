"""`xpu-controller root`: the root allocator of a site (issue 15, DESIGN 11).

Plumbing around `core/site.py`: it campaigns for the site's root key in etcd with the shard
owners' code (`adapters/etcd.Elector`, key `<prefix>/root/shards/site/owner`), and while it acts,
every `period_s` it reads what the shard owners reported and acknowledged, plans, and writes the
grants. Keys under `<prefix>` (JSON values):

- `site/budget`: `{"budget_w": W}`, the site budget (the gateway's SetPowerBudget writes it; the
  `--budget-w` of the first root writes it when it is absent);
- `shards/<id>/report`: a `site.Report`, written by the shard's owner with its own lease (it goes
  when the owner goes);
- `shards/<id>/grant`: a `site.Grant`, written by the root only while it holds the root key
  (a transaction on its epoch);
- `shards/<id>/ack`: the newest grant the shard enforces, written by its owner.

A write the root cannot make (etcd gone, or it was deposed) discards its bookkeeping: it starts
over from the store as a new root would, raising nothing for a lease's length.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
import grpc.aio
import msgspec

from xpuctl.controller.adapters import etcd
from xpuctl.controller.core import ownership, site
from xpuctl.controller.errors import InfeasibleBudget

log = logging.getLogger("xpu.root")


def read_shards(
    keys: etcd.SiteKeys, entries: dict[bytes, bytes]
) -> tuple[dict[str, site.Report], dict[str, site.Grant], dict[str, site.Grant]]:
    """(reports, grants, acknowledgements) by shard, from the values under `shards/` (unreadable ones skipped)."""
    reports: dict[str, site.Report] = {}
    grants: dict[str, site.Grant] = {}
    acks: dict[str, site.Grant] = {}
    for key, value in entries.items():
        shard, what = keys.split(key)
        try:
            if what == "report":
                reports[shard] = msgspec.json.decode(value, type=site.Report)
            elif what == "grant":
                grants[shard] = msgspec.json.decode(value, type=site.Grant)
            elif what == "ack":
                acks[shard] = msgspec.json.decode(value, type=site.Grant)
        except msgspec.DecodeError:
            log.warning("unreadable %s of shard %s in etcd: skipped", what, shard)
    return reports, grants, acks


class RootService:
    """One candidate root allocator."""

    def __init__(
        self,
        client: etcd.Etcd,
        own: ownership.Ownership,
        *,
        boot_id: str,
        prefix: str = "/xpu/v1",
        budget_w: float | None = None,
        period_s: float = 5.0,
        static_frac: float = 0.5,
    ) -> None:
        """Nothing runs until `run`; grants last 3 periods (the issue's lease)."""
        self.client = client
        self.own = own
        self.keys = etcd.SiteKeys(prefix)
        self.elector = etcd.Elector(client, own, boot_id=boot_id, prefix=self.keys.root_prefix, on_change=self._said)
        self.initial_budget_w = budget_w
        self.period_s = period_s
        self.ttl_s = 3 * period_s
        self.static_frac = static_frac
        self.root: site.Root | None = None
        self.periods = 0
        self.writes = 0
        self.last_problem = ""

    def _said(self, what: str, message: str) -> None:
        log.log(logging.WARNING if what in ("fenced", "lost") else logging.INFO, "root: %s", message)

    async def run(self) -> None:
        """Campaign and allocate until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.elector.run(), name="root.elector")
            while True:
                try:
                    await self.period()
                except grpc.aio.AioRpcError as exc:
                    log.warning("root: etcd %s: %s; starting over from the store", exc.code().name, exc.details())
                    self.root = None
                await asyncio.sleep(self.period_s)

    async def _budget(self) -> float | None:
        raw = await self.client.get(self.keys.budget)
        if raw is not None:
            try:
                return msgspec.json.decode(bytes(raw.value), type=etcd.SiteBudget).budget_w  # type: ignore[attr-defined]
            except msgspec.DecodeError:
                log.warning("root: unreadable site budget in etcd; keeping the last one")
                return self.root.budget_w if self.root is not None else None
        if self.initial_budget_w is not None:  # the first root of a site: the site budget from its flag
            await self.client.put_fenced(
                self.keys.budget,
                msgspec.json.encode(etcd.SiteBudget(self.initial_budget_w)),
                owner=etcd.owner_key(self.keys.root_prefix, self.own.shard),
                epoch=self.own.epoch,
            )
        return self.initial_budget_w

    async def period(self) -> list[tuple[str, site.Grant]]:
        """One period: read, plan, write (nothing unless this candidate acts); the writes made."""
        if not self.own.acting(time.monotonic()):
            self.root = None
            return []
        budget_w = await self._budget()
        if budget_w is None:
            return []
        reports, grants, acks = read_shards(self.keys, await self.client.under(self.keys.shards))
        now = time.monotonic()
        if self.root is None or self.root.epoch != self.own.epoch:
            self.root = site.Root(
                budget_w,
                epoch=self.own.epoch,
                now=now,
                ttl_s=self.ttl_s,
                static_frac=self.static_frac,
                store=grants,
                acked=acks,
            )
            log.info("root: allocating %.0f W over %d shard(s) (epoch %d)", budget_w, len(reports), self.own.epoch)
        self.root.budget_w = budget_w
        for shard, grant in acks.items():
            self.root.on_ack(shard, grant)
        try:
            writes = self.root.plan(reports, now)
        except InfeasibleBudget as exc:
            if str(exc) != self.last_problem:
                log.error("root: %s", exc)
            self.last_problem = str(exc)
            return []
        self.last_problem = ""
        owner = etcd.owner_key(self.keys.root_prefix, self.own.shard)
        for shard, grant in writes:
            if not self.own.acting(time.monotonic()) or not await self.client.put_fenced(
                self.keys.of(shard, "grant"), msgspec.json.encode(grant), owner=owner, epoch=self.own.epoch
            ):
                log.warning("root: no longer the site's root; stopped writing grants")
                self.root = None
                return []
            self.writes += 1
        self.periods += 1
        return writes
