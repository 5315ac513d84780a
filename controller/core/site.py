"""One power budget over the shards of a site (issue 15, DESIGN 11): the root's plan and a shard's lease.

Theory of operation. The root allocator splits the site budget B over shards; each shard
water-fills its own devices inside what it holds. Messages can be lost, delayed or reordered, the
root can die and a shard can be cut off, and at every instant this must hold:

    sum over shards of max(the grant it holds and may still use, its static share) <= B

- **Grants** go through a store that both ends reach (etcd: a key per shard, written by the
  root, read by the shard with a linearizable read). A grant carries the shard's budget and its
  static share, the budget it falls back to when the grant lapses. It is valid for `ttl_s` from
  when the shard *sent* the read that returned it, on the shard's own monotonic clock (a late
  reply cannot stretch it). The root writes every shard's grant again each period (a new seq):
  that is the renewal, so grants lapse when the root is gone. A shard takes only a grant newer
  (root epoch, seq) than its own, and acknowledges the newest it enforces (its caps read back).
- **Static shares** are floor-proportional and sum to less than B: a shard's floor (the least its
  devices draw at their lowest caps, with the loads the loop cannot cap) plus `static_frac` of the
  headroom B - sum(floors), split by floor (`static_shares`). The rest is the pool the root moves.
  Before its first grant a shard runs at its floor.
- **The root counts what a shard may still use** (`committed_w`): the grant in the store, every
  earlier one until the shard acknowledged a newer one or `ttl_s` has passed since the root
  overwrote it (a read that returned it was sent before the overwrite, so it lapses within `ttl_s`
  of it), and the static share of the acknowledged grant and of the one in the store. A static
  share changes only in a grant written after the shard acknowledged the one before, so those two
  are the only static shares it can fall back to.
- **Decrease before increase**: cuts are written at once and counted at their old value until
  acknowledged or lapsed; raises go only into the room left by what is counted. A new root (the
  old one died) reads the store (grants and acknowledgements) but not what the old root had
  overwritten: it raises nothing for its first `ttl_s`.

Pure: time (monotonic seconds) comes in as an argument; the store and the messages belong to the
adapter (or to the test's model).
"""

from __future__ import annotations

import math

import msgspec
import numpy as np

from xpuctl.controller.core import power
from xpuctl.controller.errors import InfeasibleBudget

EPS_W = 1e-6


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """What a shard owner tells the root each period."""

    floor_w: float  # the least its devices draw: floors of cappable ones, the fixed loads of the others
    demand_w: float  # what it would draw without a cap (the shard loop's demand estimate)
    draw_w: float = 0.0  # what it draws now
    weight: float = 1.0


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    """A shard's budget lease as the root writes it into the store (static_w <= grant_w)."""

    root_epoch: int
    seq: int
    grant_w: float
    static_w: float  # what the shard falls back to when the grant lapses
    ttl_s: float

    @property
    def order(self) -> tuple[int, int]:
        """Newer grants compare higher."""
        return (self.root_epoch, self.seq)


def static_shares(budget_w: float, floors_w: dict[str, float], static_frac: float) -> dict[str, float]:
    """Each shard's static share: its floor plus `static_frac` of the headroom over all floors,
    split in proportion to the floors (equally when every floor is 0). They sum to at most the budget.

    Raises:
        InfeasibleBudget: the floors alone need more than the budget.
    """
    total = sum(floors_w.values())
    if total > budget_w + EPS_W:
        raise InfeasibleBudget(total, budget_w)
    headroom = max(0.0, budget_w - total) * static_frac
    n = len(floors_w)
    return {s: f + headroom * (f / total if total > 0 else 1.0 / n) for s, f in floors_w.items()}


class Lease:
    """A shard's side: the newest grant it read, and until when it may use it."""

    def __init__(self, floor_w: float) -> None:
        """No grant yet: the shard runs at its floor."""
        self.floor_w = floor_w
        self.grant: Grant | None = None
        self.valid_until = -math.inf

    def on_read(self, grant: Grant | None, sent_at: float) -> bool:
        """A read sent at `sent_at` returned `grant`; True when it is newer than the one held."""
        if grant is None:
            return False
        if self.grant is not None and grant.order <= self.grant.order:
            return False  # the same grant read again does not renew it: only the root renews (a new seq)
        self.grant = grant
        self.valid_until = sent_at + grant.ttl_s
        return True

    @property
    def static_w(self) -> float:
        """What the shard falls back to."""
        return self.grant.static_w if self.grant is not None else self.floor_w

    def budget_w(self, now: float) -> float:
        """What the shard may draw now: its grant while valid, else its static share."""
        if self.grant is not None and now < self.valid_until:
            return self.grant.grant_w
        return self.static_w

    def bound_w(self, now: float) -> float:
        """max(valid grant, static share): this shard's term of the site invariant."""
        return max(self.budget_w(now), self.static_w)


class Root:
    """The root allocator's bookkeeping and plan, for one root epoch."""

    def __init__(
        self,
        budget_w: float,
        *,
        epoch: int,
        now: float,
        ttl_s: float = 15.0,
        static_frac: float = 0.5,
        store: dict[str, Grant] | None = None,
        acked: dict[str, Grant] | None = None,
    ) -> None:
        """A root starting at `now` with what the store holds: the grants and the shards'
        acknowledgements (a new root after another died). With a non-empty store it raises
        nothing for `ttl_s`.
        """
        self.budget_w = budget_w
        self.epoch = epoch
        self.ttl_s = ttl_s
        self.static_frac = static_frac
        self.current: dict[str, Grant] = dict(store or {})
        self.acked: dict[str, Grant] = dict(acked or {})
        self.floor: dict[str, float] = {}  # the last reported floor (a shard's budget before any grant)
        # grant_w of overwritten grants a shard may still use: (order, grant_w, until)
        self.held: dict[str, list[tuple[tuple[int, int], float, float]]] = {}
        self.no_raise_until = now + ttl_s if store else now
        self.seq = 0

    # -- what the root learns ---------------------------------------------------------------------

    def on_ack(self, shard: str, grant: Grant) -> None:
        """The shard enforces `grant` (caps read back): it no longer uses anything older."""
        if shard not in self.acked or grant.order > self.acked[shard].order:
            self.acked[shard] = grant
            self.held[shard] = [h for h in self.held.get(shard, []) if h[0] >= grant.order]

    def committed_w(self, shard: str, now: float) -> float:
        """The most `shard` may be using now, or fall back to (see the module docstring)."""
        acked = self.acked.get(shard)
        out = acked.static_w if acked is not None else self.floor.get(shard, 0.0)
        current = self.current.get(shard)
        if current is not None:
            out = max(out, current.grant_w, current.static_w)
        for _, grant_w, until in self.held.get(shard, []):
            if now < until:
                out = max(out, grant_w)
        return out

    def bound_w(self, now: float) -> float:
        """The root's count of the invariant's left side."""
        return sum(
            self.committed_w(s, now) for s in sorted(set(self.current) | set(self.floor))
        )  # in order: runs repeat

    # -- the plan -----------------------------------------------------------------------------------

    def plan(self, reports: dict[str, Report], now: float) -> list[tuple[str, Grant]]:
        """This period's writes: cuts at once, raises into the room what is counted leaves.

        Raises:
            InfeasibleBudget: the shards' floors alone need more than the site budget.
        """
        for shard, floor in ((s, r.floor_w) for s, r in reports.items()):
            self.floor[shard] = floor
        for shard in self.held:
            self.held[shard] = [h for h in self.held[shard] if now < h[2]]
        shards = sorted(reports)
        if not shards:
            return []
        static = static_shares(self.budget_w, {s: reports[s].floor_w for s in shards}, self.static_frac)
        base = np.array([static[s] for s in shards])
        top = np.array([max(static[s], reports[s].demand_w) for s in shards])
        weight = np.array([max(reports[s].weight, 1e-9) for s in shards])
        target = dict(
            zip(shards, power.fill(base, top, weight, self.budget_w - float(base.sum())).tolist(), strict=True)
        )
        writes: list[tuple[str, Grant]] = []
        for s in shards:  # cuts first, at once: counted at their old value until acknowledged or lapsed
            current = self.current.get(s)
            if current is None:
                continue
            new_static = min(self._static_for(s, static[s]), current.static_w)
            new_grant = max(min(target[s], current.grant_w), new_static)
            if new_grant < current.grant_w - EPS_W or new_static < current.static_w - EPS_W:
                writes.append((s, self._write(s, new_grant, new_static, now)))
        if now >= self.no_raise_until:
            writes += self._raises(shards, target, static, now)
        written = {s for s, _ in writes}
        for s in shards:  # the others' leases renewed: a grant lapses unless its root is alive
            current = self.current.get(s)
            if s not in written and current is not None:
                writes.append((s, self._write(s, current.grant_w, current.static_w, now)))
        return writes

    def _raises(
        self, shards: list[str], target: dict[str, float], static: dict[str, float], now: float
    ) -> list[tuple[str, Grant]]:
        """Raises into the room left by everything counted, the shards furthest below target first."""
        writes: list[tuple[str, Grant]] = []
        for s in sorted(shards, key=lambda s: target[s] - self.committed_w(s, now), reverse=True):  # most short first
            current = self.current.get(s)
            room = max(0.0, self.budget_w - self.bound_w(now))
            grant = min(target[s], self.committed_w(s, now) + room)  # what counting it at that still fits
            have = current.grant_w if current is not None else -math.inf
            new_static = min(self._static_for(s, static[s]), grant)
            raised_static = current is not None and new_static > current.static_w + EPS_W
            if grant > have + EPS_W or (raised_static and grant >= have - EPS_W):
                writes.append((s, self._write(s, max(grant, have), new_static, now)))
        return writes

    def _static_for(self, shard: str, share: float) -> float:
        """The static share a new grant may carry: a change only once the grant in the store is
        acknowledged (so that at most two static shares can be fallen back to).
        """
        current = self.current.get(shard)
        if current is None:
            return share
        acked = self.acked.get(shard)
        if acked is None or acked.order < current.order:
            return current.static_w
        return share

    def _write(self, shard: str, grant_w: float, static_w: float, now: float) -> Grant:
        old = self.current.get(shard)
        if old is not None:  # a read before this overwrite may have returned it: usable until now + ttl
            self.held.setdefault(shard, []).append((old.order, old.grant_w, now + self.ttl_s))
        self.seq += 1
        grant = Grant(root_epoch=self.epoch, seq=self.seq, grant_w=grant_w, static_w=static_w, ttl_s=self.ttl_s)
        self.current[shard] = grant
        return grant
