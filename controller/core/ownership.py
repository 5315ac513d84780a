"""Who acts for a shard (DESIGN 11, issue 14): one candidate's view of the shard's ownership.

Theory of operation. The owner of a shard holds one etcd key under a lease (adapters/etcd.py
does the talking). The lease is only as good as the last renewal etcd confirmed: etcd may let it
lapse `ttl_s` after the renewal was *sent* (our clock and etcd's run at the same rate, but the
request may have waited anywhere on the way). So the owner acts only until
`sent_at + ttl_s - margin_s` on its own monotonic clock, and decides that again at every act
(`acting(now)`), not on a timer: a process that was frozen (SIGSTOP, a long pause) and wakes up
after its lease is gone finds itself fenced before it sends anything, whatever etcd says later.
The key's create revision is the shard's epoch; every command carries it, and agents refuse an
epoch lower than the highest they have seen, so even a message already in flight from a fenced
owner cannot win over its successor's.

Pure: time (monotonic seconds) comes in as an argument.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Literal

Role = Literal["standby", "owner", "fenced"]

# a shard id is a topic level and an etcd key part: letters, digits, '.', '_', '-'
SHARD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class Ownership:
    """One candidate's knowledge of its shard's owner."""

    def __init__(self, shard: str, address: str, *, ttl_s: float = 5.0, margin_s: float = 1.0) -> None:
        """Candidate at `address` (what agents dial) for `shard`; it acts for at most `ttl_s - margin_s`
        after each renewal was sent.

        Raises:
            ValueError: a bad shard id, or a margin that leaves nothing of the TTL.
        """
        if not SHARD_ID.match(shard):
            msg = f"shard id {shard!r}: use 1-63 letters, digits, '.', '_' or '-' (it is a topic level and a key)"
            raise ValueError(msg)
        if not 0 < margin_s < ttl_s:
            msg = f"lease margin {margin_s}s must be above 0 and below the TTL {ttl_s}s"
            raise ValueError(msg)
        self.shard = shard
        self.address = address
        self.ttl_s = ttl_s
        self.margin_s = margin_s
        self.role: Role = "standby"
        self.epoch = 0  # ours while we own; the owner's we last saw otherwise
        self.owner_address = ""  # the owner's advertised address ('' when none is known)
        self.fence_at = 0.0  # monotonic: we act until then
        self.takeovers = 0  # times this candidate became the owner
        self.fences = 0  # times it stopped acting because its lease could have lapsed

    # -- what the elector learns -----------------------------------------------------------------

    def acquired(self, epoch: int, sent_at: float) -> None:
        """Our transaction created the key at revision `epoch`; it was sent at `sent_at`."""
        self.role = "owner"
        self.epoch = epoch
        self.owner_address = self.address
        self.fence_at = sent_at + self.ttl_s - self.margin_s
        self.takeovers += 1

    def renewed(self, sent_at: float, ttl_s: float) -> None:
        """Etcd confirmed the lease with `ttl_s` left, for a renewal sent at `sent_at`."""
        if self.role == "owner":
            self.fence_at = max(self.fence_at, sent_at + min(ttl_s, self.ttl_s) - self.margin_s)

    def lost(self) -> None:
        """The lease or the key is gone (etcd said so): we are a candidate again."""
        if self.role == "owner":
            self.fences += 1
        self.role = "standby"
        self.owner_address = ""
        self.fence_at = 0.0

    def observed(self, owner_address: str, epoch: int) -> None:
        """Another candidate owns the shard (or nobody: `owner_address` '')."""
        if self.role != "owner":
            self.owner_address = owner_address
            self.epoch = epoch

    # -- what the rest of the controller asks ----------------------------------------------------

    def acting(self, now: float) -> bool:
        """Whether this process may act for the shard now (send commands, take streams)."""
        return self.role == "owner" and now < self.fence_at

    def check(self, now: float) -> bool:
        """`acting(now)`, turning a lapsed owner into `fenced`; True when it just fenced."""
        if self.role == "owner" and now >= self.fence_at:
            self.role = "fenced"
            self.fences += 1
            return True
        return False

    def refusal(self) -> str:
        """Why this candidate does not take a stream, for the agent (names the owner when known)."""
        if self.owner_address and self.owner_address != self.address:
            return f"this controller is a standby of shard {self.shard}; the owner is at {self.owner_address}"
        if self.role == "fenced":
            return f"this controller no longer owns shard {self.shard} (its lease could have lapsed); try another"
        return f"shard {self.shard} has no owner yet; try another controller"


def member(node_id: str, patterns: tuple[str, ...]) -> bool:
    """Whether a node belongs to a shard given by shell-style patterns (none: every node)."""
    return not patterns or any(fnmatch.fnmatchcase(node_id, p) for p in patterns)
