"""`xpu-controller bench --scenario detect`: false alarms, detection delay, and the cost of a pass.

1. False alarms: a healthy mixed fleet of every vendor (idle, training and bursty inference
   phases) runs in simulated time; every anomaly raised is a false alarm. Reported per detector
   and per device-hour.
2. Detection: each simulated fault kind on one device of a training node; the delay from the
   fault's start to the first anomaly on that device, and which detector raised it.
3. Cost: one full detector pass over `--devices` devices with a filled ring store (wall time of
   the pass alone, median of 20), against the goal of 2 ms at 10,000 devices (DESIGN 10).
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import numpy as np

from xpuctl.agent.drivers.sim import faults
from xpuctl.controller.core import detect, ingest, model, registry, ring
from xpuctl.controller.lab.simcluster import SimCluster
from xpuctl.protos import names

VENDORS = list(names.VENDORS)
FAULT_AT_S = 40


def false_alarms(nodes: int, seconds: int, seed: int) -> dict[str, object]:
    """Raised anomalies on a healthy fleet."""
    cluster = SimCluster([VENDORS[k % len(VENDORS)] for k in range(nodes)], seed=seed)
    by_detector: dict[str, int] = {}
    for _ in range(seconds):
        out = cluster.step()
        tick = cluster.tick()
        cluster.apply(out.send + tick.send)
        for e in out.events + tick.events:
            if e.kind == "anomaly.raised":
                by_detector[e.detector] = by_detector.get(e.detector, 0) + 1
    device_hours = nodes * 8 * seconds / 3600
    total = sum(by_detector.values())
    return {
        "devices": nodes * 8,
        "simulated_s": seconds,
        "device_hours": round(device_hours, 1),
        "false_alarms": total,
        "per_device_hour": round(total / device_hours, 4),
        "by_detector": by_detector,
    }


def detection(seed: int) -> dict[str, dict[str, object]]:
    """Per fault kind: the first detector to raise on the faulty device, and how late."""
    out: dict[str, dict[str, object]] = {}
    for kind in faults.FAULT_KINDS:
        fault = faults.parse(f"{kind}:dev=2:at={FAULT_AT_S}:for=60")
        cluster = SimCluster(
            ["nvidia", "nvidia", "amd"], seed=seed, workloads=["training"] * 3, node_faults={0: [fault]}
        )
        first: tuple[int, str] | None = None
        for s in range(FAULT_AT_S + 60):
            o = cluster.step()
            t = cluster.tick()
            cluster.apply(o.send + t.send)
            for e in o.events + t.events:
                if first is None and e.kind == "anomaly.raised" and e.device_uuid == "nvidia-sim-0000-2":
                    first = (s + 1 - FAULT_AT_S, e.detector)  # simulated time is s + 1 after step s
        out[kind] = {"delay_s": first[0] if first else None, "detector": first[1] if first else None}
    return out


def pass_cost(devices: int, window: int = 120) -> dict[str, object]:
    """Wall time of one full detector pass over `devices` devices."""
    reg = registry.Registry()
    store = ring.RingStore(n_metrics=model.N_STORED, window=window, counters=model.COUNTERS)
    ing = ingest.Ingest(reg, store)
    per_node = 8
    infos_of: list[list[model.DeviceInfo]] = []
    for k in range(devices // per_node):
        node = reg.node(f"n{k}")
        infos = [
            model.DeviceInfo(
                uuid=f"n{k}-{i}",
                index=i,
                vendor="nvidia",
                model="sim",
                power_limit_min_w=200.0,
                power_limit_max_w=700.0,
                power_limit_default_w=700.0,
                power_cap_settable=True,
                temp_slowdown_c=87.0,
            )
            for i in range(per_node)
        ]
        reg.register(node, infos)
        infos_of.append(infos)
    store.ensure_capacity(len(reg))
    rng = np.random.default_rng(0)
    slots = np.arange(len(reg), dtype=np.int64)
    t0 = 1_800_000_000 * 1_000_000_000

    def sample(k: int) -> None:  # one healthy sample of every device at second k
        values = rng.uniform(0.1, 0.9, size=(slots.size, model.N_STORED))
        # counters count up as on a healthy device: energy and work grow, no ECC error ever (random
        # totals made half the fleet raise ecc_uncorrected in the first passes, and timed that)
        values[:, model.M["energy_j"]] = 400.0 * k
        values[:, model.M["work_done"]] = float(k)
        values[:, model.M["ecc_corrected_total"]] = 0.0
        values[:, model.M["ecc_uncorrected_total"]] = 0.0
        values[:, model.M["power_w"]] = rng.normal(400, 5, slots.size)
        values[:, model.M["power_limit_w"]] = 700.0
        values[:, model.M["temperature_c"]] = rng.normal(60, 0.5, slots.size)
        values[:, model.HEALTH] = 1
        store.append(slots, np.full(slots.size, t0 + k * 1_000_000_000, dtype=np.int64), values)

    for k in range(window):
        sample(k)
    del ing
    dets = detect.Detectors()
    times = []
    for k in range(window, window + 21):
        sample(k)  # as in the service: a new sample each second (else every device goes stale)
        start = time.perf_counter()
        dets.run(reg, store, t0 + k * 1_000_000_000 + 500_000_000)
        times.append(time.perf_counter() - start)
    times = times[1:]  # the first pass builds the per-registry layout (once per Hello in the service)
    return {
        "devices": len(reg),
        "pass_ms_median": round(1e3 * statistics.median(times), 2),
        "pass_ms_max": round(1e3 * max(times), 2),
    }


def run(nodes: int, seconds: int, devices: int, seed: int, *, as_json: bool) -> int:
    """All three parts; print a report (or JSON)."""
    print(f"bench detect: healthy fleet, {nodes} nodes x {seconds} simulated s ...", file=sys.stderr)
    fa = false_alarms(nodes, seconds, seed)
    print("bench detect: one run per fault kind ...", file=sys.stderr)
    det = detection(seed)
    print(f"bench detect: cost of a pass over {devices} devices ...", file=sys.stderr)
    cost = pass_cost(devices)
    result = {"scenario": "detect", "healthy": fa, "faults": det, "pass": cost}
    if as_json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
        return 0
    print(
        f"healthy fleet: {fa['devices']} devices x {fa['simulated_s']} s = {fa['device_hours']} device-hours: "
        f"{fa['false_alarms']} false alarms ({fa['per_device_hour']} per device-hour) {fa['by_detector']}"
    )
    print(f"{'fault':<18}{'first detector':<18}{'delay s':>8}")
    for kind, d in det.items():
        print(f"{kind:<18}{d['detector'] or '-':<18}{d['delay_s'] if d['delay_s'] is not None else 'missed':>8}")
    print(
        f"detector pass over {cost['devices']} devices: {cost['pass_ms_median']} ms median, {cost['pass_ms_max']} ms max"
    )
    return 0
