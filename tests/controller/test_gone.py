"""Devices that vanish and nodes that go silent (issues 18.4 and 18.7): out of the listings and
the power loop at once, and out of memory after the retention time.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import feed_node
from xpuctl.controller import errors, hub
from xpuctl.controller.adapters import metrics
from xpuctl.controller.core import ingest, model, registry

NOW_NS = 1_800_000_000_000_000_000
S = 10**9
FORGET_S = 600.0


def make_hub(**limits: int) -> hub.Hub:
    return hub.Hub(
        liveness=registry.Liveness(stale_after_s=5, offline_after_s=30, forget_after_s=FORGET_S),
        limits=ingest.Limits(**limits),
    )


def boot(
    h: hub.Hub, node: str, uuids: list[str], now_ns: int, *, boot_id: str = "b1", power_w: float = 500.0
) -> ingest.StreamState:
    """A node's agent starts with these devices and sends one batch (tests/helpers.feed_node)."""
    return feed_node(h, node, uuids, now_ns, boot_id=boot_id, power_w=power_w)


def listed(h: hub.Hub, now_ns: int) -> list[str]:
    return [v.info.uuid for v in h.views.devices(now_ns)]


def kinds(h: hub.Hub, kind: str) -> list[str]:
    return [e.device_uuid or e.node_id for e in h.recent_events if e.kind == kind]


def test_devices_missing_from_a_new_boot_are_gone_at_once() -> None:
    # Issue 18.4: an agent restarted with 6 of its 8 devices left the other 2 listed `ok` for good,
    # with their share of the budget.
    h = make_hub()
    eight = [f"gpu-{i}" for i in range(8)]
    first = boot(h, "n1", eight, NOW_NS)
    h.ingest.stream_closed(first)
    boot(h, "n1", eight[:6], NOW_NS + S, boot_id="b2", power_w=300.0)
    h.tick(NOW_NS + S)

    assert listed(h, NOW_NS + S) == eight[:6]
    assert sorted(kinds(h, "device.gone")) == ["gpu-6", "gpu-7"]
    assert h.views.summary(NOW_NS + S).devices == 6
    assert h.views.summary(NOW_NS + S).power_w == 6 * 300.0
    text = metrics.render(h, NOW_NS + S)
    assert 'hw_id="gpu-6"' not in text and 'hw_id="gpu-5"' in text
    inputs = h.control.inputs(NOW_NS + S)
    gone = [h.registry.slot_of_uuid[u] for u in ("gpu-6", "gpu-7")]
    assert not inputs.settable[gone].any()
    assert np.isnan(inputs.power_w[gone]).all() and np.isnan(inputs.recent_max_w[gone]).all()
    assert inputs.measured_w == 6 * 300.0


def test_a_gone_device_closes_its_anomalies() -> None:
    h = make_hub()
    first = boot(h, "n1", ["gpu-0", "gpu-1"], NOW_NS)
    slot = h.registry.slot_of_uuid["gpu-1"]
    h.control.detectors.grow(2)
    h.control.detectors.open["thermal"][slot] = True  # fault injection: an anomaly is open
    h.ingest.stream_closed(first)
    boot(h, "n1", ["gpu-0"], NOW_NS + S, boot_id="b2")
    h.tick(NOW_NS + S)
    cleared = [e for e in h.recent_events if e.kind == "anomaly.cleared"]
    assert [(e.device_uuid, e.detector) for e in cleared] == [("gpu-1", "thermal")]
    assert "the device is gone" in cleared[0].message
    assert h.control.anomalies_open() == 0


def test_a_device_that_comes_back_before_the_retention_keeps_its_slot() -> None:
    h = make_hub()
    s1 = boot(h, "n1", ["gpu-0", "gpu-1"], NOW_NS)
    slot = h.registry.slot_of_uuid["gpu-1"]
    h.ingest.stream_closed(s1)
    s2 = boot(h, "n1", ["gpu-0"], NOW_NS + S, boot_id="b2")
    h.ingest.stream_closed(s2)
    boot(h, "n1", ["gpu-0", "gpu-1"], NOW_NS + 2 * S, boot_id="b3")
    h.tick(NOW_NS + int(FORGET_S * S) + 10 * S)
    assert h.registry.slot_of_uuid["gpu-1"] == slot
    assert listed(h, NOW_NS + 2 * S) == ["gpu-0", "gpu-1"]
    assert not h.registry.free


def test_a_gone_slot_is_released_after_the_retention_and_reused_clean() -> None:
    h = make_hub()
    s1 = boot(h, "n1", ["gpu-0", "gpu-1"], NOW_NS)
    old = h.registry.slot_of_uuid["gpu-1"]
    h.ingest.stream_closed(s1)
    s2 = boot(h, "n1", ["gpu-0"], NOW_NS + S, boot_id="b2")
    h.tick(NOW_NS + 2 * S)
    assert h.registry.free == []  # not before the retention time
    later = NOW_NS + int(FORGET_S * S) + 2 * S
    h.tick(later)
    assert h.registry.free == [old]
    assert "gpu-1" not in h.registry.slot_of_uuid
    h.ingest.stream_closed(s2)
    boot(h, "n1", ["gpu-0", "gpu-9"], later + S, boot_id="b3")
    assert h.registry.slot_of_uuid["gpu-9"] == old  # no new slot: memory follows the devices that exist
    assert len(h.registry) == 2
    ts, _ = h.store.history(old, model.M["power_w"])
    assert ts.tolist() == [later + S]  # none of gpu-1's samples


def test_a_silent_node_is_forgotten_after_the_retention() -> None:
    # Issue 18.7: 2,000 abandoned Hello streams left 2,000 nodes for good.
    h = make_hub()
    for i in range(50):
        stream = ingest.StreamState()
        facts = ingest.HelloFacts(
            node_id=f"ghost-{i}",
            boot_id="b",
            agent_version="t",
            devices=[model.DeviceInfo(uuid=f"ghost-{i}-gpu", index=0, vendor="nvidia", model="H100")],
            labels={},
            interval_s=1.0,
            acked_seq=0,
        )
        h.hello(stream, facts, NOW_NS)
        h.ingest.stream_closed(stream)  # abandoned without a batch
    live = boot(h, "alive", ["gpu-a"], NOW_NS)
    assert len(h.registry.nodes) == 51
    h.tick(NOW_NS + int(FORGET_S * S) - S)
    assert len(h.registry.nodes) == 51  # not before the retention time
    keep = NOW_NS + int(FORGET_S * S) + S
    boot(h, "alive", ["gpu-a"], keep, boot_id="b2")  # the live node keeps talking
    h.ingest.stream_closed(live)
    h.tick(keep)
    assert sorted(h.registry.nodes) == ["alive"]
    assert len(kinds(h, "node.forgotten")) == 50
    assert len(h.registry.free) == 50 and h.registry.in_use() == 1


def test_released_ids_make_room_under_the_device_limit() -> None:
    # A node that cycled through many ids (a broken agent, or a hostile one) fills the device
    # limit; once those ids are gone past the retention, real devices register again.
    h = make_hub(max_devices=16)
    s = boot(h, "churn", [f"x-{i}" for i in range(16)], NOW_NS)
    h.ingest.stream_closed(s)
    with pytest.raises(errors.ProtocolViolation, match="the limit is 16"):
        boot(h, "real", ["gpu-0"], NOW_NS + S)
    s = boot(h, "churn", ["x-0"], NOW_NS + 2 * S, boot_id="b2")  # 15 ids gone
    h.tick(NOW_NS + int(FORGET_S * S) + 3 * S)
    boot(h, "real", ["gpu-0"], NOW_NS + int(FORGET_S * S) + 4 * S)
    assert h.registry.in_use() == 2 and len(h.registry) == 16


def test_a_node_churning_ids_spends_only_its_own_share() -> None:
    # Issue 18.7: 12 Hellos of 1,024 new ids took the controller from 69 to 1,058 MiB. A node's
    # gone ids past its per-node share are released by the next period, and their slots reused.
    h = make_hub(max_devices_per_node=4)
    t = NOW_NS
    for round_ in range(10):
        s = boot(h, "churn", [f"r{round_}-{i}" for i in range(4)], t, boot_id=f"b{round_}")
        h.ingest.stream_closed(s)
        h.tick(t)
        t += S
    assert len(h.registry) <= 4 * 3  # present + kept gone + one Hello's worth, however long it churns
    assert sorted(listed(h, t)) == [f"r9-{i}" for i in range(4)]


def test_a_device_belongs_to_the_node_that_registered_it() -> None:
    # Issue 19.1 without TLS: a plain conflict, refused the same way.
    h = make_hub()
    first = boot(h, "n1", ["gpu-0", "gpu-1"], NOW_NS)
    with pytest.raises(errors.ProtocolViolation) as refused:
        boot(h, "n2", ["gpu-9", "gpu-1"], NOW_NS + S)
    assert (refused.value.code, refused.value.reason) == ("PERMISSION_DENIED", "device_owned")
    assert "device 'gpu-1' belongs to node 'n1'" in refused.value.message
    assert h.registry.node_of_slot[h.registry.slot_of_uuid["gpu-1"]] == "n1"
    # gone from n1 past the retention, it is free for another node
    h.ingest.stream_closed(first)
    s = boot(h, "n1", ["gpu-0"], NOW_NS + 2 * S, boot_id="b2")
    h.ingest.stream_closed(s)
    h.tick(NOW_NS + int(FORGET_S * S) + 3 * S)
    boot(h, "n2", ["gpu-9", "gpu-1"], NOW_NS + int(FORGET_S * S) + 4 * S)
    assert h.registry.node_of_slot[h.registry.slot_of_uuid["gpu-1"]] == "n2"
