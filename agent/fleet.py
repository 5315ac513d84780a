"""`xpu-agent fleet`: many simulated agents in one process, the load generator of demos and benchmarks.

Each node is a full `Agent` (its own gRPC stream, buffer, sequence numbers and, with a bus, its
own MQTT session) over one simulated driver; the drivers are sampled on the loop itself (they do
not block) unless a `driver_hang` fault asks for the thread pool's timeouts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging

import msgspec

from xpuctl.agent.adapters.sampler import Sampler
from xpuctl.agent.drivers.sim import SimDriver, faults
from xpuctl.agent.runtime import Agent
from xpuctl.protos.xpu.v1 import bus

log = logging.getLogger("xpu.agent")

WORKLOADS = ("mixed", "idle", "training", "inference")


class FleetSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What to simulate and where to send it."""

    controller: str
    nodes: int
    devices_per_node: int = 8
    vendors: list[str]
    workloads: list[str] = msgspec.field(default_factory=lambda: ["mixed"])
    interval_s: float = 1.0
    mqtt: bus.BusUrl | None = None
    failsafe_after_s: float = 15.0
    ramp_s: float = 0.0
    seed: int = 0
    node_prefix: str = "sim"
    buffer_batches: int = 600
    faults: list[faults.Fault] = msgspec.field(default_factory=list)  # applied to the first node
    shard: str = ""  # the shard whose owner's lease the nodes follow (DESIGN 11)


async def run(spec: FleetSpec) -> None:
    """Run every node until cancelled, starting them over `spec.ramp_s`."""
    hang = any(f.kind == "driver_hang" for f in spec.faults)
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="xpu-driver")
    agents = []
    for k in range(spec.nodes):
        node_id = f"{spec.node_prefix}-{k:05d}"
        driver = SimDriver(
            vendor=spec.vendors[k % len(spec.vendors)],
            node_id=node_id,
            devices=spec.devices_per_node,
            seed=spec.seed,
            fault_specs=spec.faults if k == 0 else [],
            workload=spec.workloads[k % len(spec.workloads)],
        )
        sampler = Sampler([driver], timeout_s=5.0, executor=executor, inline=not hang)
        agents.append(
            Agent(
                node_id=node_id,
                controller=spec.controller,
                sampler=sampler,
                interval_s=spec.interval_s,
                buffer_batches=spec.buffer_batches,
                labels={"fleet": spec.node_prefix},
                bus_url=spec.mqtt,
                failsafe_after_s=spec.failsafe_after_s,
                shard=spec.shard,
            )
        )
    log.info(
        "fleet: %d node(s) x %d device(s) of %s -> %s every %gs",
        spec.nodes,
        spec.devices_per_node,
        ",".join(spec.vendors),
        spec.controller,
        spec.interval_s,
    )
    step_s = spec.ramp_s / spec.nodes if spec.ramp_s > 0 else 0.0
    try:
        async with asyncio.TaskGroup() as tg:
            for a in agents:
                tg.create_task(a.run(), name=f"fleet[{a.node_id}]")
                if step_s:
                    await asyncio.sleep(step_s)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
