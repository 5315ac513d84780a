"""Every detector catches its simulated fault, and none fires on a healthy fleet.

The simulated nodes feed the real ingest rules and detectors in simulated time (controller/
simcluster.py), one sample per second, so each case is exact and fast.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from xpuctl.agent.drivers.sim import faults
from xpuctl.controller.core import detect
from xpuctl.controller.core import events as events_mod
from xpuctl.controller.lab.simcluster import SimCluster
from xpuctl.protos import names

VENDORS = list(names.VENDORS)

# fault kind -> detectors that must raise on the faulty device (and within how many seconds)
EXPECTED = {
    "thermal_runaway": ({"thermal_rise"}, 3),
    "power_spike": ({"spike", "power_over_cap"}, 4),
    "ecc_storm": ({"ecc_storm"}, 4),
    "xid": ({"error_event"}, 10),
    "stuck": ({"stuck"}, 32),
    "straggler": ({"straggler"}, 5),
    "fall_off_bus": ({"error_event"}, 2),
    "driver_hang": ({"stale"}, 5),
}


def run(cluster: SimCluster, seconds: int) -> list[tuple[int, events_mod.Event]]:
    events: list[tuple[int, events_mod.Event]] = []
    for s in range(seconds):
        out = cluster.step()
        tick = cluster.tick()
        cluster.apply(out.send + tick.send)
        events.extend((s, e) for e in out.events + tick.events)
    return events


@pytest.mark.parametrize("kind", list(EXPECTED))
@pytest.mark.parametrize("vendor", ["nvidia", "ascend"])
def test_each_fault_is_caught_on_the_faulty_device_only(kind: str, vendor: str) -> None:
    must, within_s = EXPECTED[kind]
    fault = faults.parse(f"{kind}:dev=2:at=40:for=40")
    c = SimCluster([vendor, vendor, "amd"], seed=7, workloads=["training"] * 3, node_faults={0: [fault]})
    events = run(c, 100)
    uuid = f"{vendor}-sim-0000-2"
    raised: dict[str, int] = {}
    for s, e in events:
        if e.kind == "anomaly.raised" and e.device_uuid == uuid:
            raised.setdefault(e.detector, s)
    for det in must:
        assert det in raised, f"{kind}: {det} did not raise on {uuid}; raised: {raised}"
        assert 39 <= raised[det] <= 40 + within_s, f"{kind}: {det} raised at {raised[det]} s, fault at 40 s"
    # every other node stays quiet; on the faulty node only stale (a hung driver is per node)
    # and spike (a peer's sudden change) may touch the others
    noisy = [e for _, e in events if e.kind == "anomaly.raised" and not e.device_uuid.startswith(f"{vendor}-sim-0000-")]
    assert not noisy, [e.message for e in noisy[:3]]
    cleared = {
        e.detector
        for s, e in events
        if e.kind == "anomaly.cleared" and e.device_uuid == uuid and s > raised[e.detector]
    }
    if kind not in ("xid", "fall_off_bus", "ecc_storm"):  # those clear after a quiet spell, past the run
        assert must <= cleared, f"{kind}: {must - cleared} did not clear"


@pytest.mark.slow  # 15 simulated minutes of 208 devices
def test_a_healthy_mixed_fleet_raises_nothing() -> None:
    c = SimCluster(VENDORS * 2, seed=11)  # 26 nodes, 208 devices, mixed idle/training/inference
    events = run(c, 900)
    raised = [e for _, e in events if e.kind == "anomaly.raised"]
    assert not raised, [e.message for e in raised[:5]]


def test_group_median_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=200)
    values[::17] = np.nan
    group = rng.integers(0, 9, size=200)
    got = detect.base.group_median(values, group)
    layout = detect.base.Layout(group)
    for g in range(9):
        sel = group == g
        assert np.allclose(got[sel], np.nanmedian(values[sel]))
    assert np.allclose(layout.median(values), got)
    assert np.array_equal(layout.size(values), detect.base.group_size(values, group))
    assert not layout.dense


@pytest.mark.parametrize("group", [np.repeat(np.arange(25), 8), np.repeat(np.arange(50), 4)])
def test_a_fleet_of_equal_nodes_in_order_takes_the_dense_layout_with_the_same_answers(group: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(size=group.size)
    values[::7] = np.nan
    values[8:16] = np.nan  # a node with no finite value: NaN, size 0
    layout = detect.base.Layout(group)
    assert layout.dense
    assert np.allclose(layout.median(values), detect.base.group_median(values, group), equal_nan=True)
    assert np.array_equal(layout.size(values), detect.base.group_size(values, group))
    assert not detect.base.Layout(group[::-1].copy()).dense  # nodes out of slot order: the general path


@pytest.mark.parametrize("kind", sorted(detect.KINDS))
def test_every_anomaly_says_what_it_measured_with_units(kind: str) -> None:
    # Issue 20.15: `thermal_rise ...: temperature rising 1.51 C/s >= 1.00 C/s`, not `value 1.51, threshold 1`
    dets = detect.Detectors()
    for value, raised in ((1.51, True), (0.2, False), (math.inf, True), (math.nan, False)):
        finding = detect.Finding(slot=0, kind=kind, severity="warning", raised=raised, value=value, threshold=1.0)
        text = dets.says(finding)
        assert text and "{" not in text, (kind, text)
    says = dets.says(
        detect.Finding(slot=0, kind="thermal_rise", severity="warning", raised=True, value=1.51, threshold=1)
    )
    assert says == "temperature rising 1.51 C/s >= 1.00 C/s"
    cleared = dets.says(
        detect.Finding(slot=0, kind="thermal", severity="warning", raised=False, value=80, threshold=90)
    )
    assert cleared == "temperature 80.0 C < 90.0 C"
