"""The control tick in steps (issue 13.3): what runs between its steps cannot break or undo it."""

from __future__ import annotations

from typing import cast

from tests.helpers import settable
from xpuctl.controller import hub, service
from xpuctl.controller.adapters import codec
from xpuctl.controller.core import ingest
from xpuctl.protos.xpu.v1 import telemetry_pb2 as pb

T0 = 1_700_000_000 * 10**9
SLOWDOWN_C = 85.0


def hello(h: hub.Hub, node: str, devices: int, now_ns: int) -> ingest.StreamState:
    stream = ingest.StreamState()
    infos = settable([f"{node}-{i}" for i in range(devices)], slowdown_c=SLOWDOWN_C)
    facts = ingest.HelloFacts(
        node_id=node, boot_id="b", agent_version="t", devices=infos, labels={}, interval_s=1.0, acked_seq=0
    )
    h.hello(stream, facts, now_ns)
    return stream


def batch(h: hub.Hub, stream: ingest.StreamState, seq: int, now_ns: int, temps: list[float]) -> None:
    n = len(temps)
    b = pb.Batch(seq=seq, device=list(range(n)), timestamp_ns=[now_ns] * n, health=cast("list[pb.Health]", [1] * n))
    b.columns.add(metric=pb.METRIC_POWER_W, values=[400.0] * n)
    b.columns.add(metric=pb.METRIC_POWER_LIMIT_W, values=[700.0] * n)
    b.columns.add(metric=pb.METRIC_TEMPERATURE_C, values=temps)
    h.batch(stream, codec.batch_columns(b, h.ingest.limits), now_ns)


def started(devices: int = 4) -> tuple[hub.Hub, ingest.StreamState]:
    h = hub.Hub()
    s = hello(h, "n1", devices, T0)
    for k in range(3):
        batch(h, s, k + 1, T0 + k * 10**9, [60.0] * devices)
        h.tick(T0 + k * 10**9)
    return h, s


def steps_of_a_tick() -> int:
    h, _ = started()
    return sum(1 for _ in h.tick_steps(T0 + 3 * 10**9))


def test_a_hello_between_any_two_steps_joins_at_the_next_tick() -> None:
    # A node said Hello between the detectors' pass and the power step: the tick ended in a
    # ValueError (arrays of the old and the new device count) and took the service down.
    for at in range(steps_of_a_tick() + 1):
        h, _ = started()
        ticking = h.tick_steps(T0 + 3 * 10**9)
        for _ in range(at):
            next(ticking)
        late = hello(h, "late", 4, T0 + 3 * 10**9)  # its first batch comes after the tick
        for _ in ticking:
            pass
        batch(h, late, 1, T0 + 4 * 10**9, [60.0] * 4)
        h.tick(T0 + 4 * 10**9)
        assert len(h.registry) == 8, at
        assert h.control.last_decision is not None and h.control.power.target_w.size >= 8, at


def test_the_critical_path_between_the_steps_is_not_undone_by_the_older_frame() -> None:
    h, s = started()
    ticking = h.tick_steps(T0 + 3 * 10**9)
    next(ticking)  # the gone devices
    next(ticking)  # the detectors' frame is built: every device at 60 C
    batch(h, s, 4, T0 + 3 * 10**9 + 1, [SLOWDOWN_C + 5] + [60.0] * 3)  # the critical path raises thermal
    slot = h.registry.slot_of_uuid["n1-0"]
    assert h.control.detectors.is_open("thermal")[slot]
    for _ in ticking:
        pass
    # the tick's pass saw 60 C for this device: it must not clear what the newer sample raised
    assert h.control.detectors.is_open("thermal")[slot]
    cleared = [e for e in h.recent_events if e.kind == "anomaly.cleared" and e.device_uuid == "n1-0"]
    assert cleared == []


def test_the_gc_policy_freezes_after_each_tick_and_collects_everything_now_and_then() -> None:
    import gc  # noqa: PLC0415 - this test only
    import weakref  # noqa: PLC0415

    class Linked:
        me: object = None

    policy = service.GcPolicy(full_every_s=300.0)
    start = policy.last_full
    try:
        gc.unfreeze()
        kept = Linked()
        kept.me = kept  # a cycle: only the cyclic collector frees it
        alive = weakref.ref(kept)
        policy.after_tick(start + 1.0)  # frozen while still in use
        del kept
        gc.collect()
        assert alive() is not None and policy.full_collections == 0  # out of the collector's sight
        policy.after_tick(start + 301.0)  # every 5 min: unfrozen and collected once
        assert alive() is None and policy.full_collections == 1
        assert gc.get_freeze_count() > 0  # the survivors are frozen again
    finally:
        gc.unfreeze()
