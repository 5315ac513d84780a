"""The ingest batcher (issue 13): batches of many streams are stored together, in steps; a hot one
is not held back, a Hello stores what waits before it, and a defect ends only its step's streams.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from xpuctl.controller import hub
from xpuctl.controller.adapters.grpc_api import telemetry
from xpuctl.controller.core import ingest
from xpuctl.controller.errors import ProtocolViolation
from xpuctl.controller.lab import loadgen


class Fleet:
    def __init__(self, nodes: int, *, streams_open: int) -> None:
        self.hub = hub.Hub()
        self.service = telemetry.TelemetryService(self.hub)
        self.nodes = [loadgen.Node(i, f"n{i}", "nvidia", 4, seed=i) for i in range(nodes)]
        self.streams = [ingest.StreamState() for _ in self.nodes]
        for node, stream in zip(self.nodes, self.streams, strict=True):
            self.handle(stream, node.hello)
        self.hub.streams_open = streams_open  # as if that many streams were open

    def handle(self, stream: ingest.StreamState, raw: bytes) -> ingest.Answer | asyncio.Future[ingest.Answer]:
        return self.service._handle(stream, raw, time.time_ns(), frozenset())

    def stored(self, i: int) -> int:
        """Samples stored of node i's devices."""
        slots = self.hub.registry.slots_of(f"n{i}")
        return int(self.hub.store.count[slots].sum())


async def test_a_batch_waits_for_its_step_and_a_hot_one_does_not() -> None:
    fleet = Fleet(2, streams_open=3)
    waiting = fleet.handle(fleet.streams[0], fleet.nodes[0].next(time.time_ns()))
    assert isinstance(waiting, asyncio.Future)
    assert not waiting.done()
    assert fleet.stored(0) == 0
    hot = fleet.nodes[1].next_hot(time.time_ns())
    assert hot is not None
    raw, uuid = hot
    at_once = fleet.handle(fleet.streams[1], raw)
    assert isinstance(at_once, asyncio.Future)
    assert at_once.done()  # stored in the handler's own turn, and the critical path ran on it
    assert fleet.stored(1) == 4
    assert any(e.kind == "anomaly.raised" and e.device_uuid == uuid for e in fleet.hub.recent_events)
    assert not waiting.done()  # the cool batch still waits for its step
    answer = await asyncio.wait_for(waiting, timeout=1.0)
    assert answer.acked_seq == 1
    assert fleet.stored(0) == 4


async def test_when_every_open_stream_waits_the_step_runs_at_once() -> None:
    fleet = Fleet(3, streams_open=3)
    now = time.time_ns()
    futures = [fleet.handle(stream, node.next(now)) for node, stream in zip(fleet.nodes, fleet.streams, strict=True)]
    assert all(isinstance(f, asyncio.Future) and f.done() for f in futures)
    assert [fleet.stored(i) for i in range(3)] == [4, 4, 4]
    assert fleet.hub.ingest.counters.samples_total == 12


async def test_a_hello_stores_what_waits_before_it() -> None:
    fleet = Fleet(2, streams_open=3)
    waiting = fleet.handle(fleet.streams[0], fleet.nodes[0].next(time.time_ns()))
    assert isinstance(waiting, asyncio.Future)
    # the agent reconnects: its new stream's Hello supersedes the old stream
    again = fleet.handle(ingest.StreamState(), fleet.nodes[0].hello)
    assert isinstance(again, ingest.Answer)
    assert waiting.done()
    assert waiting.result().acked_seq == 1
    assert again.acked_seq == 1  # the Hello's answer counts the batch stored before it
    assert fleet.stored(0) == 4


async def test_a_defect_while_storing_ends_the_streams_of_that_step_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = Fleet(2, streams_open=3)
    real = fleet.hub.batches

    def broken(*args: object, **kwargs: object) -> list[ingest.Answer]:
        monkeypatch.setattr(fleet.hub, "batches", real)  # once
        msg = "injected"
        raise RuntimeError(msg)

    monkeypatch.setattr(fleet.hub, "batches", broken)
    failing = fleet.handle(fleet.streams[0], fleet.nodes[0].next(time.time_ns()))
    assert isinstance(failing, asyncio.Future)
    with pytest.raises(ProtocolViolation) as ended:
        await asyncio.wait_for(failing, timeout=1.0)
    assert ended.value.code == "INTERNAL"
    assert "storing 1 batches failed" in caplog.text
    fine = fleet.handle(fleet.streams[1], fleet.nodes[1].next(time.time_ns()))
    assert isinstance(fine, asyncio.Future)
    assert (await asyncio.wait_for(fine, timeout=1.0)).acked_seq == 1
    assert fleet.stored(1) == 4


async def test_a_backlog_replayed_after_a_reconnect_does_not_wait_a_step_per_batch() -> None:
    # An agent back from an outage sends what it buffered back to back; one batch per 20 ms step
    # drained 1,000 buffered batches in 20 s, and the agent dropped the oldest meanwhile.
    fleet = Fleet(1, streams_open=3)
    then = time.time_ns() - 10 * 10**9
    futures = [fleet.handle(fleet.streams[0], fleet.nodes[0].next(then + k * 10**9)) for k in range(3)]
    assert all(isinstance(f, asyncio.Future) and f.done() for f in futures)
    assert fleet.stored(0) == 3 * 4
    # and each is acknowledged at once: the agent's buffer frees as fast as it drains (a full
    # buffer drops its oldest batch, even one already sent)
    ing, stream = fleet.hub.ingest, fleet.streams[0]
    assert all(ing.answer_now(stream, f.result(), time.time_ns()) for f in futures if isinstance(f, asyncio.Future))
    fresh = fleet.handle(stream, fleet.nodes[0].next(time.time_ns()))
    assert isinstance(fresh, asyncio.Future)
    assert not fresh.done()
    assert not ing.answer_now(stream, await asyncio.wait_for(fresh, timeout=1.0), time.time_ns())
