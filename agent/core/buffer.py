"""The agent's bounded buffer of encoded batches awaiting an Ack.

Invariant: the buffer holds at most `capacity` batches with strictly increasing seqs, exactly the
batches produced and not yet acknowledged, minus those dropped when it was full (`dropped_total`
counts those). A full buffer drops the oldest batch not yet written on the live stream, and the
oldest of all only when every one was: a batch in flight is most likely stored already, and
dropping it would count a drop that the controller never sees as a gap (it made the outage test
flaky). Pure: no asyncio, no clock.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator


class BatchBuffer:
    """Drop-oldest FIFO of (seq, payload) with at-least-once resend from the last Ack."""

    def __init__(self, capacity: int) -> None:
        """Hold at most `capacity` batches (>= 1)."""
        if capacity < 1:
            msg = f"buffer capacity must be >= 1, got {capacity}"
            raise ValueError(msg)
        self.capacity = capacity
        self._items: collections.deque[tuple[int, bytes]] = collections.deque()
        self.dropped_total = 0
        self.acked_seq = 0
        self.sent_seq = 0  # the newest seq written on the live stream (0: none, or no stream)

    def __len__(self) -> int:
        """Batches held (sent or not), not yet acknowledged."""
        return len(self._items)

    def make_room(self) -> None:
        """Drop a batch (and count it) if the buffer is full: the oldest not yet sent on the live
        stream, else the oldest.

        Call before encoding a new batch, so that the batch carries a `dropped_total` that
        already counts the drop its own arrival causes.
        """
        if len(self._items) < self.capacity:
            return
        sent = sum(1 for seq, _ in self._items if seq <= self.sent_seq)  # sent ones come first
        if sent < len(self._items):
            del self._items[sent]
        else:
            self._items.popleft()
        self.dropped_total += 1

    def mark_sent(self, seq: int) -> None:
        """Batches up to `seq` are written on the live stream; 0 when there is no stream (the
        next one resends from the last Ack).
        """
        self.sent_seq = seq

    def append(self, seq: int, payload: bytes) -> None:
        """Add a batch, making room first (see `make_room`) if still full."""
        if self._items and seq <= self._items[-1][0]:
            msg = f"seq must increase: got {seq} after {self._items[-1][0]}"
            raise ValueError(msg)
        self.make_room()
        self._items.append((seq, payload))

    def ack(self, acked_seq: int) -> None:
        """Forget every batch up to and including `acked_seq`."""
        self.acked_seq = max(self.acked_seq, acked_seq)
        while self._items and self._items[0][0] <= acked_seq:
            self._items.popleft()

    def after(self, seq: int) -> Iterator[tuple[int, bytes]]:
        """The buffered batches with a seq greater than `seq`, oldest first."""
        return ((s, p) for s, p in self._items if s > seq)

    def oldest_seq(self) -> int | None:
        """The seq of the oldest buffered batch, if any."""
        return self._items[0][0] if self._items else None
