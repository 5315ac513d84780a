"""Ingest's bounds on what one message may cost (issue 18): pure, through the codec, no server."""

from __future__ import annotations

import math
from typing import cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpuctl.controller.adapters import codec
from xpuctl.controller.core import ingest, model, registry, ring
from xpuctl.controller.errors import ProtocolViolation
from xpuctl.protos.xpu.v1 import telemetry_pb2 as pb

NOW_NS = 1_800_000_000_000_000_000


def ingest_with_node(devices: int = 2) -> tuple[ingest.Ingest, ingest.StreamState]:
    reg = registry.Registry()
    ing = ingest.Ingest(reg, ring.RingStore(n_metrics=model.N_STORED, window=8))
    stream = ingest.StreamState()
    infos = [model.DeviceInfo(uuid=f"d{i}", index=i, vendor="nvidia", model="H100") for i in range(devices)]
    facts = ingest.HelloFacts(
        node_id="n", boot_id="b", agent_version="t", devices=infos, labels={}, interval_s=1.0, acked_seq=0
    )
    ing.hello(stream, facts, NOW_NS)
    return ing, stream


def error_batch(seq: int, events_per_row: list[int]) -> pb.Batch:
    rows = len(events_per_row)
    b = pb.Batch(
        seq=seq,
        device=list(range(rows)),
        timestamp_ns=[NOW_NS] * rows,
        health=cast("list[pb.Health]", [1] * rows),
    )
    b.columns.add(metric=pb.METRIC_POWER_W, values=[300.0] * rows)
    for row, n in enumerate(events_per_row):
        for k in range(n):
            b.errors.add(row=row, code="79", text=f"fell off the bus {k}" + "x" * 1000)
    return b


def test_error_events_are_bounded_per_batch_and_per_device() -> None:
    # Issue 18.10: one Batch with 400,000 error events held the event loop for 0.33 s.
    ing, stream = ingest_with_node()
    limits = ing.limits
    cols = codec.batch_columns(error_batch(1, [5_000, 3]), limits)
    assert len(cols.errors) == limits.max_error_events_per_batch
    assert cols.errors_dropped == 5_003 - limits.max_error_events_per_batch
    assert all(len(text) <= limits.max_error_text_chars for _, _, text in cols.errors)
    stored = ing.batch(stream, cols, NOW_NS)
    assert stored.answer.rejected == 0  # the samples are fine: both stored
    # row 0 keeps its first 8; row 1's three were past the per-batch bound (row 0 filled it)
    assert [e[2] for e in stored.errors] == [0] * limits.max_error_events_per_device
    assert ing.counters.error_events_total == limits.max_error_events_per_device
    assert ing.counters.rejected_by_reason["error_events_over_limit"] == 5_003 - limits.max_error_events_per_device


def test_a_few_error_events_all_arrive() -> None:
    ing, stream = ingest_with_node()
    stored = ing.batch(stream, codec.batch_columns(error_batch(1, [2, 3]), ing.limits), NOW_NS)
    assert sorted(e[2] for e in stored.errors) == [0, 0, 1, 1, 1]
    assert "error_events_over_limit" not in ing.counters.rejected_by_reason


def sample_batch(seq: int, *, power_w: list[float], temp_c: float = 50.0, ts_ns: int = NOW_NS) -> pb.Batch:
    rows = len(power_w)
    b = pb.Batch(
        seq=seq, device=list(range(rows)), timestamp_ns=[ts_ns] * rows, health=cast("list[pb.Health]", [1] * rows)
    )
    b.columns.add(metric=pb.METRIC_POWER_W, values=power_w)
    b.columns.add(metric=pb.METRIC_TEMPERATURE_C, values=[temp_c] * rows)
    return b


def test_implausible_values_are_rejected_and_counted_by_reason() -> None:
    # Issue 18.3: one 700,000 W reading (a mW value read as W) floored the whole cluster.
    reg = registry.Registry()
    ing = ingest.Ingest(reg, ring.RingStore(n_metrics=model.N_STORED, window=8))
    stream = ingest.StreamState()
    infos = [
        model.DeviceInfo(uuid="h100", index=0, vendor="nvidia", model="H100", power_limit_max_w=700.0),
        model.DeviceInfo(uuid="npu", index=1, vendor="ascend", model="910B"),  # declares no limit
    ]
    facts = ingest.HelloFacts(
        node_id="n", boot_id="b", agent_version="t", devices=infos, labels={}, interval_s=1.0, acked_seq=0
    )
    ing.hello(stream, facts, NOW_NS)

    def send(seq: int, **kw: object) -> ingest.Answer:
        return ing.batch(stream, codec.batch_columns(sample_batch(seq, **kw), ing.limits), NOW_NS).answer  # type: ignore[arg-type]

    assert send(1, power_w=[690.0, 400.0]).rejected == 0  # plausible: stored
    a = send(2, power_w=[700_000.0, 400.0])
    assert a.rejected == 1 and "power_w=700000.0 is not plausible" in a.rejection and "mW" in a.rejection
    assert send(3, power_w=[600.0, 700_000.0]).rejected == 1  # no declared limit: the absolute bound
    assert send(4, power_w=[600.0, 400.0], temp_c=900.0).rejected == 2
    a = send(5, power_w=[600.0, 400.0], ts_ns=NOW_NS + 3_600 * 10**9)
    assert a.rejected == 2 and "in the future" in a.rejection and "NTP" in a.rejection
    assert send(6, power_w=[600.0, 400.0], ts_ns=NOW_NS - 8 * 86_400 * 10**9).rejected == 2
    assert ing.counters.rejected_by_reason == {
        "implausible_power": 2,
        "implausible_temperature": 2,
        "timestamp_out_of_range": 4,
    }


def hello_facts(node_id: str, uuids: list[str]) -> ingest.HelloFacts:
    infos = [model.DeviceInfo(uuid=u, index=i, vendor="nvidia", model="H100") for i, u in enumerate(uuids)]
    return ingest.HelloFacts(
        node_id=node_id, boot_id="b", agent_version="t", devices=infos, labels={}, interval_s=1.0, acked_seq=0
    )


def refusal(ing: ingest.Ingest, facts: ingest.HelloFacts, now_ns: int = NOW_NS) -> str:
    """The counter reason of a refused Hello, or "" when it is accepted."""
    try:
        ing.hello(ingest.StreamState(), facts, now_ns)
    except ProtocolViolation as v:
        return f"{v.code}:{v.reason}"
    return ""


def test_nodes_device_ids_and_hellos_are_bounded() -> None:
    # Issue 18.7: 12 Hellos of 1,024 new device ids took the controller from 69 to 1,058 MiB.
    limits = ingest.Limits(max_nodes=2, max_devices=5, max_hellos_per_node_per_min=3)
    ing = ingest.Ingest(registry.Registry(), ring.RingStore(n_metrics=model.N_STORED, window=8), limits=limits)
    assert refusal(ing, hello_facts("a", ["a0", "a1"])) == ""
    assert refusal(ing, hello_facts("b", ["b0", "b1"])) == ""
    assert refusal(ing, hello_facts("c", ["c0"])) == "RESOURCE_EXHAUSTED:too_many_nodes"
    assert (
        refusal(ing, hello_facts("b", ["b0", "b1", "b2", "b3"])) == "RESOURCE_EXHAUSTED:too_many_devices"
    )  # 2 new ids on 4
    assert refusal(ing, hello_facts("b", ["b0", "b1", "b2"])) == ""  # one more id fits
    assert refusal(ing, hello_facts("a", ["a0", "a1"])) == ""  # a's second Hello this minute
    assert refusal(ing, hello_facts("a", ["a0", "a1"])) == ""  # its third
    assert refusal(ing, hello_facts("a", ["a0", "a1"])) == "RESOURCE_EXHAUSTED:hello_rate"
    assert refusal(ing, hello_facts("a", ["a0", "a1"]), now_ns=NOW_NS + 61 * 10**9) == ""  # a minute later


# Issue 13: the quick all-good test must agree with the row-by-row checks on every batch: good
# batches with at most one defect, each near a bound (a random batch is nearly always bad).
_EDGES = [0.0, 0.5, 1.0, 1.0000001, -1e-9, -273.15, -274.0, 199.0, 201.0, 1600.0, 1601.0, 5001.0, 7e5, 3.4e38, 3.5e38]
_BAD = st.one_of(st.sampled_from(_EDGES), st.just(math.nan), st.just(math.inf), st.just(-math.inf), st.floats())
_STAMPS = [1, 0, -5, NOW_NS + 299 * 10**9, NOW_NS + 301 * 10**9, NOW_NS - 7 * 86_400 * 10**9 - 1]


@st.composite
def raw_batches(draw: st.DrawFn) -> pb.Batch:
    devices = draw(st.lists(st.sampled_from([0, 1, 3]), unique=True, max_size=3))
    rows = len(devices)
    stamps, health = [NOW_NS] * rows, [1] * rows
    metrics = sorted(draw(st.sets(st.integers(1, model.N_METRICS), max_size=6)))
    values = {m: [0.5] * rows for m in metrics}
    defect = draw(st.sampled_from(["none", "device", "stamp", "health", "value", "absent"]))
    if rows and defect != "none":
        r = draw(st.integers(0, rows - 1))
        if defect == "device":
            devices[r] = draw(st.sampled_from([0, 1, 2, 3, 4, 9]))  # a repeat, refused or unknown
        elif defect == "stamp":
            stamps[r] = draw(st.sampled_from(_STAMPS))
        elif defect == "health":
            health[r] = draw(st.integers(0, 5))
        elif metrics:
            values[draw(st.sampled_from(metrics))][r] = draw(_BAD)
    b = pb.Batch(seq=1, device=devices, timestamp_ns=stamps, health=cast("list[pb.Health]", health))
    for m in metrics:
        col = b.columns.add(metric=m, values=values[m])
        if defect == "absent":  # the bad value sits in a cell marked absent: not a defect
            col.present.extend([False] * rows)
    return b


def _node_for_the_quick_test(
    ing: ingest.Ingest | None = None, node_id: str = "n"
) -> tuple[ingest.Ingest, ingest.StreamState]:
    ing = ing or ingest.Ingest(registry.Registry(), ring.RingStore(n_metrics=model.N_STORED, window=8))
    stream = ingest.StreamState()
    infos = [
        model.DeviceInfo(uuid=f"{node_id}-d0", index=0, vendor="nvidia", model="H100", power_limit_max_w=700.0),
        model.DeviceInfo(uuid=f"{node_id}-d1", index=1, vendor="nvidia", model="H100"),  # no declared maximum
        model.DeviceInfo(uuid=f"{node_id}-d2", index=2, vendor="acme", model="?"),  # refused at Hello
        model.DeviceInfo(uuid=f"{node_id}-d3", index=3, vendor="amd", model="MI300X", power_limit_default_w=750.0),
    ]
    facts = ingest.HelloFacts(
        node_id=node_id, boot_id="b", agent_version="t", devices=infos, labels={}, interval_s=1.0, acked_seq=0
    )
    ing.hello(stream, facts, NOW_NS)
    return ing, stream


def _agree(ing: ingest.Ingest, stream: ingest.StreamState, b: pb.Batch) -> None:
    """The quick check of every row at once never passes a row the row checks reject, and passes
    every row of a batch they find wholly good.
    """
    node = stream.node
    assert node is not None
    cols = codec.batch_columns(b, ing.limits)
    checked, rejected, _ = ing._check_rows(node, cols, NOW_NS)
    _, quick = ing._good_rows([node], ingest.Frame.of([cols]), NOW_NS)
    assert not (quick & ~checked).any(), b
    assert quick.all() == (rejected == 0), b


@pytest.mark.timeout(30)  # 400 generated batches: 1.2 s, near 2 s with both cores busy
@settings(max_examples=400, deadline=None)
@given(b=raw_batches())
def test_the_quick_all_good_test_agrees_with_the_row_checks(b: pb.Batch) -> None:
    ing, stream = _node_for_the_quick_test()
    _agree(ing, stream, b)


def test_the_quick_all_good_test_agrees_at_every_bound_of_every_metric() -> None:
    ing, stream = _node_for_the_quick_test()
    for device in (0, 1, 3):
        for metric in range(1, model.N_METRICS + 1):
            for value in [*_EDGES, math.nan, math.inf, -math.inf]:
                b = pb.Batch(seq=1, device=[device], timestamp_ns=[NOW_NS], health=cast("list[pb.Health]", [1]))
                b.columns.add(metric=metric, values=[value])
                _agree(ing, stream, b)


@st.composite
def frames(draw: st.DrawFn) -> list[list[tuple[int, pb.Batch]]]:
    """Up to four frames of up to three batches, each from another node of three, with health
    reasons and error events.
    """
    out = []
    for _ in range(draw(st.integers(1, 4))):
        frame = []
        for node in draw(st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True)):
            b = draw(raw_batches())
            rows = len(b.device)
            if rows and draw(st.booleans()):
                b.health_reason.extend([draw(st.sampled_from(["", "ecc", "hot"])) for _ in range(rows)])
            for _ in range(draw(st.integers(0, 2)) if rows else 0):
                b.errors.add(row=draw(st.integers(0, rows - 1)), code="79", text="fell off the bus")
            frame.append((node, b))
        out.append(frame)
    return out


@pytest.mark.timeout(60)  # 200 generated runs, each stored twice: about 2 s
@settings(max_examples=200, deadline=None)
@given(frames=frames())
def test_frames_of_batches_are_stored_as_the_batches_one_by_one(frames: list[list[tuple[int, pb.Batch]]]) -> None:
    # Issue 13: the batcher stores many streams' batches in one frame; nothing may differ from
    # storing each on its own, in order: answers, rejections and their reasons, the store, the
    # health reasons, the error events, the counters, each node's sequence bookkeeping.
    def fleet() -> tuple[ingest.Ingest, list[ingest.StreamState]]:
        ing = ingest.Ingest(registry.Registry(), ring.RingStore(n_metrics=model.N_STORED, window=4))
        return ing, [_node_for_the_quick_test(ing, f"n{j}")[1] for j in range(3)]

    seqs = [0, 0, 0]
    for frame in frames:
        for node, b in frame:
            seqs[node] += 1 + (b.seq % 2)  # now and then a gap
            b.seq = seqs[node]
    one, one_streams = fleet()
    many, many_streams = fleet()
    for frame in frames:
        alone = [one.batch(one_streams[n], codec.batch_columns(b, one.limits), NOW_NS) for n, b in frame]
        nodes: list[registry.NodeState] = []
        for n, b in frame:
            admitted = many.admit(many_streams[n], b.seq, len(b.device), 0, NOW_NS)
            assert isinstance(admitted, registry.NodeState)
            nodes.append(admitted)
        together = many.store_frame(nodes, codec.frame([codec.stage(b, many.limits) for _, b in frame]), NOW_NS)
        assert together.answers == [s.answer for s in alone]
        assert sorted(together.slots.tolist()) == sorted(s for a in alone for s in a.slots.tolist())
        assert sorted(together.errors) == sorted(e for a in alone for e in a.errors)
    for attr in ("values", "timestamps", "head", "count", "newest", "newest_ts", "base"):
        assert np.array_equal(getattr(one.store, attr), getattr(many.store, attr), equal_nan=True), attr
    assert one.registry.health_reason == many.registry.health_reason
    assert vars(one.counters) == vars(many.counters)
    assert one.recent_errors == many.recent_errors
    bookkeeping = ("first_seq", "acked_seq", "batches_stored", "gap_batches", "duplicate_batches")
    for x, y in zip(one.registry.nodes.values(), many.registry.nodes.values(), strict=True):
        assert [getattr(x, k) for k in bookkeeping] == [getattr(y, k) for k in bookkeeping]
