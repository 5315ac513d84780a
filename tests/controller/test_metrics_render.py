"""/metrics from the hub's state, without a server (issue 18.4): dead nodes export no values."""

from __future__ import annotations

import time
from typing import cast

import numpy as np

from xpuctl.controller import hub
from xpuctl.controller.adapters import codec, metrics
from xpuctl.controller.core import ingest, model, ownership
from xpuctl.protos.xpu.v1 import telemetry_pb2 as pb

NOW_NS = 1_800_000_000_000_000_000
S = 10**9


def fed_hub() -> hub.Hub:
    h = hub.Hub()
    stream = ingest.StreamState()
    infos = [model.DeviceInfo(uuid=f"gpu-{i}", index=i, vendor="nvidia", model="H100") for i in range(2)]
    facts = ingest.HelloFacts(
        node_id="n1", boot_id="b", agent_version="t", devices=infos, labels={}, interval_s=1.0, acked_seq=0
    )
    h.hello(stream, facts, NOW_NS)
    b = pb.Batch(seq=1, device=[0, 1], timestamp_ns=[NOW_NS] * 2, health=cast("list[pb.Health]", [1, 1]))
    b.columns.add(metric=pb.METRIC_POWER_W, values=[500.0, 600.0])
    h.batch(stream, codec.batch_columns(b, h.ingest.limits), NOW_NS)
    return h


def status_of(text: str, uuid: str) -> str:
    (line,) = [x for x in text.splitlines() if x.startswith(f'hw_status{{hw_id="{uuid}"') and x.endswith(" 1")]
    return line.split('hw_state="')[1].split('"')[0]


def test_an_online_node_exports_its_values_and_ok() -> None:
    text = metrics.render(fed_hub(), NOW_NS + 1 * S)
    assert 'hw_power_watts{hw_id="gpu-0"' in text and "} 500.0" in text
    assert status_of(text, "gpu-0") == "ok"


def test_a_silent_node_exports_no_values_and_unknown() -> None:
    # Issue 18.4: a stopped node's last values stayed on /metrics with hw_state="ok" for good.
    h = fed_hub()
    text = metrics.render(h, NOW_NS + int((h.liveness.stale_after_s + 1) * S))
    assert "hw_power_watts{" not in text
    assert status_of(text, "gpu-0") == status_of(text, "gpu-1") == "unknown"


def test_an_open_anomaly_makes_the_device_degraded() -> None:
    h = fed_hub()
    h.control.detectors.grow(2)
    h.control.detectors.open["thermal"] = np.array([False, True])  # fault injection: a raised anomaly
    text = metrics.render(h, NOW_NS + 1 * S)
    assert (status_of(text, "gpu-0"), status_of(text, "gpu-1")) == ("ok", "degraded")


def test_a_shard_candidate_exports_whether_it_owns_and_its_epoch() -> None:
    h = fed_hub()
    h.ownership = own = ownership.Ownership("hall1", "a:1")
    assert 'xpu_shard_owner{shard="hall1"} 0' in metrics.render(h, NOW_NS)
    own.acquired(epoch=42, sent_at=time.monotonic())
    text = metrics.render(h, NOW_NS)
    assert 'xpu_shard_owner{shard="hall1"} 1' in text and 'xpu_shard_epoch{shard="hall1"} 42' in text
    assert 'xpu_shard_takeovers_total{shard="hall1"} 1' in text
