"""Bad input on the telemetry stream, through a real gRPC client on 127.0.0.1.

Bad values are a partial success (the stream stays up and the next good batch is stored);
protocol violations end that one stream with a status code and a message naming the value;
a healthy agent streaming beside them is never disturbed.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import cast

import grpc
import grpc.aio
import pytest

from tests.helpers import Controller, Processes, RawStream, free_port, wait_until
from xpuctl.agent.adapters import link
from xpuctl.controller.core import ingest, registry
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb
from xpuctl.protos.xpu.v1 import cluster_pb2_grpc
from xpuctl.protos.xpu.v1 import telemetry_pb2 as pb

pytestmark = pytest.mark.slow  # end-to-end: real processes, brokers or servers

Healthy = Callable[[], Awaitable[None]]

POWER, UTIL = 3, 1  # xpu.v1.Metric numbers


def _device(i: int, vendor: str = "nvidia") -> pb.DeviceInfo:
    return pb.DeviceInfo(uuid=f"test-{uuid.uuid4().hex[:8]}-{i}", index=i, vendor=vendor, model="m")


def hello(node: str, devices: int = 2, vendor: str = "nvidia") -> bytes:
    return pb.AgentMessage(
        hello=pb.Hello(node_id=node, boot_id=str(uuid.uuid4()), devices=[_device(i, vendor) for i in range(devices)])
    ).SerializeToString()


def batch(
    seq: int,
    power: list[float],
    util: list[float] | None = None,
    device: list[int] | None = None,
    ts: int | None = None,
) -> bytes:
    rows = len(power)
    b = pb.Batch(
        seq=seq,
        device=device if device is not None else list(range(rows)),
        timestamp_ns=[time.time_ns() if ts is None else ts] * rows,
        health=cast("list[pb.Health]", [1] * rows),
    )
    b.columns.add(metric=POWER, values=power)
    if util is not None:
        b.columns.add(metric=UTIL, values=util)
    return pb.AgentMessage(batch=b).SerializeToString()


@pytest.fixture
async def controller() -> AsyncIterator[Controller]:
    """The suite's controller, but answering every batch: these tests read the Ack of each one."""
    c = Controller(
        free_port(),
        liveness=registry.Liveness(stale_after_s=2.0, offline_after_s=10.0),
        limits=ingest.Limits(max_message_bytes=64 * 1024, max_rows_per_batch=64, ack_every_batches=1),
    )
    await c.start()
    yield c
    await c.stop()


@pytest.fixture
async def healthy(controller: Controller, processes: Processes) -> Healthy:
    """A real agent streaming beside the bad input; yields a function that says it is still fine."""
    processes.agent(controller.target, "healthy", "iluvatar", "--interval-s", "0.1")
    st = controller.state
    assert st is not None
    await wait_until(
        lambda: "healthy" in st.registry.nodes and st.registry.nodes["healthy"].acked_seq > 2,
        timeout_s=20,
        what="the healthy agent",
    )

    async def still_fine() -> None:
        node = st.registry.nodes["healthy"]
        before = node.acked_seq
        await wait_until(
            lambda: node.acked_seq >= before + 3 and node.streams == 1,
            timeout_s=10,
            what="the healthy agent to keep streaming",
        )
        assert node.gap_batches == 0

    return still_fine


BAD_VALUES = [
    ("nan", batch(1, [100.0, math.nan]), "not_finite", "power_w=nan is not finite"),
    ("inf", batch(1, [100.0, math.inf]), "not_finite", "power_w=inf is not finite"),
    ("negative", batch(1, [100.0, -5.0]), "negative", "power_w=-5.0 is negative"),
    ("util>1", batch(1, [100.0, 100.0], util=[0.5, 1.7]), "out_of_range", "utilization=1.7 is above 1"),
    ("unknown device", batch(1, [100.0, 100.0], device=[0, 9]), "unknown_device", "unknown device 9"),
    ("repeated device", batch(1, [100.0, 100.0], device=[0, 0]), "duplicate_device", "appears twice"),
    ("bad timestamp", batch(1, [100.0, 100.0], ts=-1), "bad_timestamp", "timestamp_ns=-1"),
    ("implausible power", batch(1, [700_000.0, 100.0]), "implausible_power", "power_w=700000.0 is not plausible"),
    ("a day ahead", batch(1, [100.0, 100.0], ts=time.time_ns() + 86_400 * 10**9), "timestamp_out_of_range", "future"),
]


@pytest.mark.parametrize(("case", "raw", "reason", "text"), BAD_VALUES, ids=[c[0] for c in BAD_VALUES])
async def test_bad_values_are_a_partial_success(
    controller: Controller,
    healthy: Healthy,
    case: str,
    raw: bytes,
    reason: str,
    text: str,
) -> None:
    st = controller.state
    assert st is not None
    async with grpc.aio.insecure_channel(controller.target) as ch:
        s = RawStream(ch)
        await s.send(hello("bad-values"))
        ack = await s.send(raw)
        good_rows = 0 if reason in ("bad_timestamp", "timestamp_out_of_range") else 1  # whole-batch stamps
        assert ack.acked_seq == 1 and ack.batch_seq == 1
        assert ack.rejected_samples == 2 - good_rows
        assert text in ack.rejection, ack.rejection
        assert st.ingest.counters.rejected_by_reason[reason] == 2 - good_rows
        ack2 = await s.send(batch(2, [120.0, 130.0]))  # the same stream goes on
        assert (ack2.acked_seq, ack2.rejected_samples) == (2, 0)
        s.call.cancel()
    slots = st.registry.slots_of("bad-values")
    assert st.store.latest(slots)[:, 2].tolist() == [120.0, 130.0]
    await healthy()


async def test_unknown_vendor_device_is_rejected_rest_served(controller: Controller, healthy: Healthy) -> None:
    st = controller.state
    assert st is not None
    msg = pb.AgentMessage(
        hello=pb.Hello(node_id="mixed", boot_id="b1", devices=[_device(0), _device(1, vendor="voodoo")])
    )
    async with grpc.aio.insecure_channel(controller.target) as ch:
        s = RawStream(ch)
        ack = await s.send(msg.SerializeToString())
        assert ack.rejected_samples == 1 and "unknown vendor 'voodoo'" in ack.rejection
        ack = await s.send(batch(1, [100.0, 100.0]))
        assert ack.rejected_samples == 1 and "unknown vendor 'voodoo'" in ack.rejection
        s.call.cancel()
    assert len(st.registry.slots_of("mixed")) == 1
    await healthy()


def _oversize() -> bytes:
    return batch(1, [1.0] * 100)  # the test controller allows 64 rows


VIOLATIONS = [
    (
        "batch before hello",
        None,
        batch(1, [1.0]),
        grpc.StatusCode.FAILED_PRECONDITION,
        "Batch seq 1 before Hello",
        "batch_before_hello",
    ),
    ("second hello", hello("v"), hello("v"), grpc.StatusCode.FAILED_PRECONDITION, "second Hello", "second_hello"),
    (
        "seq backwards",
        hello("v"),
        "backwards",
        grpc.StatusCode.INVALID_ARGUMENT,
        "seq went backwards within boot",
        "seq_backwards",
    ),
    (
        "malformed protobuf",
        None,
        b"\xff\xff\xff\xff",
        grpc.StatusCode.INVALID_ARGUMENT,
        "malformed AgentMessage",
        "malformed",
    ),
    (
        "ragged columns",
        hello("v"),
        pb.AgentMessage(
            batch=pb.Batch(seq=1, device=[0, 1], timestamp_ns=[1], health=cast("list[pb.Health]", [1, 1]))
        ).SerializeToString(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "timestamp_ns has 1 entries for 2 rows",
        "bad_batch",
    ),
    (
        "too many rows",
        hello("v"),
        _oversize(),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "has 100 rows; the limit is 64",
        "oversize",
    ),
    (
        "oversize message",
        hello("v"),
        b"\x12" + b"\xff\xff\x05" + b"\x00" * 90_000,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "exceeds the limit of 65536 bytes",
        "oversize",
    ),
    ("bad node id", None, hello("no/slashes"), grpc.StatusCode.INVALID_ARGUMENT, "node_id 'no/slashes'", "bad_node_id"),
    # issue 18.6: two of these overflowed the uint64 gap total and broke GetSummary until restart
    ("seq jump", hello("v"), batch(2**64 - 1, [1.0]), grpc.StatusCode.INVALID_ARGUMENT, "jumps", "seq_jump"),
]


@pytest.mark.parametrize(("case", "first", "raw", "code", "text", "reason"), VIOLATIONS, ids=[c[0] for c in VIOLATIONS])
async def test_protocol_violations_end_the_stream(
    controller: Controller,
    healthy: Healthy,
    case: str,
    first: bytes | None,
    raw: bytes | str,
    code: grpc.StatusCode,
    text: str,
    reason: str,
) -> None:
    st = controller.state
    assert st is not None
    async with grpc.aio.insecure_channel(controller.target) as ch:
        s = RawStream(ch)
        if first is not None:
            await s.send(first)
        if raw == "backwards":
            await s.send(batch(5, [1.0]))
            raw = batch(4, [1.0])
        assert isinstance(raw, bytes)
        err = await s.fails(raw)
    assert err.code() == code
    assert text in (err.details() or ""), err.details()
    assert st.ingest.counters.rejected_by_reason[reason] == 1
    async with grpc.aio.insecure_channel(controller.target) as ch:  # the API still answers
        summary = await cluster_pb2_grpc.ClusterStub(ch).GetSummary(cpb.GetSummaryRequest())
    assert summary.ingest.rejected_by_reason[reason] == 1
    await healthy()


async def test_a_second_machine_with_a_live_node_id_is_refused(controller: Controller) -> None:
    # Issue 18.8: two machines with one node id superseded each other every 2 s and their samples
    # interleaved in one history.
    st = controller.state
    assert st is not None
    async with grpc.aio.insecure_channel(controller.target) as a, grpc.aio.insecure_channel(controller.target) as b:
        first = RawStream(a)
        await first.send(hello("twin"))
        assert (await first.send(batch(1, [100.0, 100.0]))).rejected_samples == 0
        second = RawStream(b)
        err = await second.fails(hello("twin"))  # another boot of the same id, while the first streams
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "node_id 'twin' is streaming from" in (err.details() or "") and "--node-id" in (err.details() or "")
        assert (await first.send(batch(2, [100.0, 100.0]))).acked_seq == 2  # the first goes on
        first.call.cancel()
    assert st.ingest.counters.rejected_by_reason["duplicate_node"] == 1
    assert [e.node_id for e in st.recent_events if e.kind == "node.duplicate"] == ["twin"]


async def test_a_new_boot_takes_over_once_the_old_one_is_silent(controller: Controller) -> None:
    st = controller.state
    assert st is not None
    async with grpc.aio.insecure_channel(controller.target) as a, grpc.aio.insecure_channel(controller.target) as b:
        old = RawStream(a)
        await old.send(hello("phoenix"))
        await old.send(batch(1, [100.0, 100.0]))
        st.registry.nodes["phoenix"].last_seen_ns -= int(st.ingest.limits.takeover_after_s * 1e9) + 1  # silent since
        new = RawStream(b)
        ack = await new.send(hello("phoenix"))  # a restarted machine: accepted, a new boot
        assert ack.acked_seq == 0
        old.call.cancel()
        new.call.cancel()
    assert "duplicate_node" not in st.ingest.counters.rejected_by_reason


async def test_acks_are_cumulative_one_per_16_batches_news_at_once_and_the_last_at_the_end() -> None:
    # Issue 13: an Ack costs the controller about what a batch does; acked_seq answers every batch
    # before it, so a stream is answered once per 16 batches, at once when there is news, and
    # when it ends. (The interval rule is tested on Ingest itself, without a clock to wait on.)
    c = Controller(free_port(), limits=ingest.Limits(ack_interval_s=3600.0))
    await c.start()
    try:
        async with grpc.aio.insecure_channel(c.target) as ch:
            s = RawStream(ch)
            assert (await s.send(hello("quiet"))).acked_seq == 0  # the Hello: always
            for seq in range(1, 16):
                await s.call.write(batch(seq, [100.0, 100.0]))
            ack = await s.send(batch(16, [100.0, 100.0]))  # the first answer written since the Hello
            assert (ack.acked_seq, ack.batch_seq) == (16, 16)
            ack = await s.send(batch(17, [100.0, math.nan]))  # news: a rejection is told at once
            assert (ack.acked_seq, ack.rejected_samples) == (17, 1)
            for seq in (18, 19):
                await s.call.write(batch(seq, [100.0, 100.0]))
            await s.call.done_writing()  # the agent stops: what it sent is acknowledged, then the end
            last = await asyncio.wait_for(s.call.read(), 10)
            assert isinstance(last, pb.ControllerMessage) and last.ack.acked_seq == 19
            assert await asyncio.wait_for(s.call.read(), 10) is link.EOF
    finally:
        await c.stop()


def test_an_ack_is_due_on_news_after_16_batches_or_after_the_interval() -> None:
    rules = ingest.Ingest(registry.Registry(), None, limits=ingest.Limits(ack_every_batches=4, ack_interval_s=5.0))  # type: ignore[arg-type]
    stream = ingest.StreamState()
    t = 1_000 * 10**9

    def due(at_s: float, **answer: object) -> bool:
        fields = {"boot_id": "b", "acked_seq": 1, "batch_seq": 1, **answer}
        return rules.answer_now(stream, ingest.Answer(**fields), t + int(at_s * 1e9))  # type: ignore[arg-type]

    assert due(0, batch_seq=0)  # the Hello
    assert [due(0.1 * k) for k in range(1, 9)] == [False, False, False, True] * 2  # every 4th
    assert due(1.0, rejected=1) and due(1.1, duplicate=True)  # news
    assert not due(6.0) and due(6.2)  # 5 s after the last one written
