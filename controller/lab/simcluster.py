"""A simulated cluster inside the controller process, in simulated time: for the power benchmark
and for tests of the detectors and the loop, sample by sample, without sockets or clocks.

The simulated nodes (agent/drivers/sim) feed the real ingest rules through the same columns the
gRPC codec produces, so what the detectors and the power loop see is what they would see from
agents. This module and the demo are the only places where the controller imports agent code
(the simulator): they stand in for a fleet.
"""

from __future__ import annotations

import numpy as np

from xpuctl.agent.drivers.sim import SimDriver, engine, faults
from xpuctl.controller import config
from xpuctl.controller.core import control, ingest, ledger, model, registry, ring

SEC = 1_000_000_000
T0_NS = 1_800_000_000 * SEC  # simulated wall clock starts here (a fixed date keeps runs equal)


class SimCluster:
    """Nodes of simulated devices, the controller's core state, and a simulated clock."""

    def __init__(
        self,
        vendors: list[str],
        *,
        devices_per_node: int = 8,
        seed: int = 0,
        workloads: list[str] | None = None,
        node_faults: dict[int, list[faults.Fault]] | None = None,
        cfg: config.Config | None = None,
        window: int = 120,
        first_node: int = 0,
    ) -> None:
        """One node per entry of `vendors` (vendors may repeat); node i runs workloads[i] and is
        named `sim-<first_node + i>` (a shard of a larger simulated site simulates the same nodes
        as the whole site does).
        """
        self.cfg = cfg or config.Config()
        self.registry = registry.Registry()
        self.store = ring.RingStore(n_metrics=model.N_STORED, window=window, counters=model.COUNTERS)
        self.ingest = ingest.Ingest(self.registry, self.store)
        self.liveness = registry.Liveness()
        self.control = control.Control(self.registry, self.store, self.liveness, self.cfg, prefix="sim")
        self.now_ns = T0_NS
        self.nodes: list[engine.SimNode] = []
        self.node_ids: list[str] = []
        self.streams: list[ingest.StreamState] = []
        self.seq: list[int] = []
        self.offline: set[int] = set()
        workloads = workloads or ["mixed"] * len(vendors)
        node_faults = node_faults or {}
        for k, vendor in enumerate(vendors):
            node_id = f"sim-{first_node + k:04d}"
            # the simulated driver describes its devices as an agent would; its node is stepped here
            driver = SimDriver(
                vendor=vendor,
                node_id=node_id,
                devices=devices_per_node,
                seed=seed,
                fault_specs=node_faults.get(k, []),
                workload=workloads[k],
            )
            self.nodes.append(driver.node)
            self.node_ids.append(node_id)
            stream = ingest.StreamState()
            infos = driver.discover()  # the agent's DeviceInfo is the controller's (protos/devices.py)
            facts = ingest.HelloFacts(
                node_id=node_id, boot_id="b", agent_version="sim", devices=infos, labels={}, interval_s=1.0, acked_seq=0
            )
            self.ingest.hello(stream, facts, self.now_ns)
            self.streams.append(stream)
            self.seq.append(0)

    def step(self, dt_s: float = 1.0) -> control.Output:
        """Advance every node by dt_s and ingest one batch per online node, all in one frame (as the
        service's batcher stores them); returns the critical path's output.
        """
        self.now_ns += int(dt_s * SEC)
        nodes: list[registry.NodeState] = []
        batches: list[ingest.BatchColumns] = []
        for k, node in enumerate(self.nodes):
            node.step(dt_s)
            if k in self.offline:
                continue
            self.seq[k] += 1
            cols = _columns(node, self.seq[k], self.now_ns)
            admitted = self.ingest.admit(self.streams[k], cols.seq, cols.device.size, cols.dropped_total, self.now_ns)
            if isinstance(admitted, registry.NodeState):  # else a duplicate: never, seqs only rise here
                nodes.append(admitted)
                batches.append(cols)
        if not nodes:
            return control.Output()
        stored = self.ingest.store_frame(nodes, ingest.Frame.of(batches), self.now_ns)
        return self.control.on_batch(stored, self.now_ns)

    def tick(self) -> control.Output:
        """One control period of the controller at the current simulated time."""
        return self.control.tick(self.now_ns)

    def apply(self, send: list[ledger.Entry]) -> None:
        """Deliver commands as an agent would: clamp, set, answer with the enforced cap."""
        for e in send:
            k = self.node_ids.index(e.node_id)
            index = int(e.device_uuid.rsplit("-", 1)[1])
            self.control.ledger.sent(e, self.now_ns)
            enforced = self.nodes[k].set_cap(index, e.cap_w)
            self.control.on_result(self.now_ns, node_id=e.node_id, id=e.id, ok=True, applied_cap_w=enforced, error="")

    def power_w(self) -> float:
        """The cluster's power right now (the simulator's truth)."""
        return float(sum(n.power_w.sum() for n in self.nodes))

    def slot(self, node: int, device: int) -> int:
        """The controller's slot of a simulated device."""
        return self.registry.slot_of_uuid[f"{self.nodes[node].profiles[0].vendor}-{self.node_ids[node]}-{device}"]


def _columns(node: engine.SimNode, seq: int, now_ns: int) -> ingest.BatchColumns:
    readings = node.read()
    values = np.stack([readings[name] for name in model.METRICS], axis=1)
    health = node.health()
    if node.hanging():  # what the agent's sampler reports for a driver that does not answer
        values[:] = np.nan
        health = [(model.HEALTH_UNKNOWN, "driver call timed out (simulated hang)")] * node.n
    errors = [(i, code, text) for i, code, text in node.take_events()]
    return ingest.BatchColumns(
        seq=seq,
        dropped_total=0,
        device=np.arange(node.n, dtype=np.int64),
        timestamp_ns=np.full(node.n, now_ns, dtype=np.int64),
        health=np.array([h for h, _ in health], dtype=np.int64),
        values=values,
        present=np.isfinite(values),
        health_reason=[r for _, r in health],
        errors=errors,
    )
