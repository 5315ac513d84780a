"""End to end over real gRPC on 127.0.0.1: agent processes -> controller -> Cluster API."""

from __future__ import annotations

import asyncio
import math

import grpc.aio
import pytest

from tests.faultproxy import FaultProxy
from tests.helpers import Controller, Processes, free_port, wait_until
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb
from xpuctl.protos.xpu.v1 import cluster_pb2_grpc

pytestmark = pytest.mark.slow

RANGES = {  # field -> (low, high), all devices, any vendor
    "utilization": (0.0, 1.0),
    "power_w": (0.0, 800.0),
    "temperature_c": (10.0, 120.0),
    "memory_used_bytes": (0.0, 200e9),
    "energy_j": (0.0, 1e9),
}


async def test_three_vendors_list_devices(controller: Controller, processes: Processes) -> None:
    vendors = {
        "n-nvidia": ("nvidia", "NVIDIA H100 80GB HBM3"),
        "n-ascend": ("ascend", "Ascend 910B"),
        "n-cambricon": ("cambricon", "MLU370-X4"),
    }
    for node, (vendor, _) in vendors.items():
        processes.agent(controller.target, node, vendor, "--interval-s", "0.2")
    st = controller.state
    assert st is not None
    await wait_until(
        lambda: len(st.registry) == 24 and all(n.batches_stored >= 2 for n in st.registry.nodes.values()),
        timeout_s=30,
        what="24 devices",
    )
    async with grpc.aio.insecure_channel(controller.target) as ch:
        reply = await cluster_pb2_grpc.ClusterStub(ch).ListDevices(cpb.ListDevicesRequest(), timeout=5)
    assert len(reply.devices) == 24
    for d in reply.devices:
        vendor, model = vendors[d.node_id]
        assert (d.info.vendor, d.info.model) == (vendor, model)
        assert d.health == 1  # HEALTH_OK
        for field, (lo, hi) in RANGES.items():
            assert d.HasField(field), (d.info.uuid, field)
            value = getattr(d, field)
            assert math.isfinite(value) and lo <= value <= hi, (d.info.uuid, field, value)
        assert d.power_w <= d.power_limit_w + 1e-9


async def test_controller_outage_loses_nothing_but_counted_drops(controller: Controller, processes: Processes) -> None:
    """Stop the controller for 10 s: every batch arrives, or the gap equals the agent's drops."""
    processes.agent(controller.target, "keeps-all", "metax", "--interval-s", "0.2", "--buffer-batches", "1000")
    processes.agent(controller.target, "drops", "hygon", "--interval-s", "0.2", "--buffer-batches", "20")
    st = controller.state
    assert st is not None
    await wait_until(
        lambda: all(st.registry.nodes.get(n) and st.registry.nodes[n].acked_seq >= 5 for n in ("keeps-all", "drops")),
        timeout_s=30,
        what="agents streaming",
    )
    await controller.stop()
    acked_before = {n: st.registry.nodes[n].acked_seq for n in ("keeps-all", "drops")}
    # drops before the outage (a loaded CI machine can lag 4 s) were gaps of the old controller
    dropped_before = st.registry.nodes["drops"].dropped_total
    await asyncio.sleep(10)  # the outage itself, not a synchronisation
    new = await controller.start()
    # 15 s of batches: past the outage's (50 at 0.2 s) and past the backlog the agent held, so the
    # newest batch stored was encoded after the reconnect and carries the agent's final drop count
    target = {n: a + 75 for n, a in acked_before.items()}
    await wait_until(
        lambda: all(new.registry.nodes.get(n) and new.registry.nodes[n].acked_seq >= t for n, t in target.items()),
        timeout_s=30,
        what="agents catching up",
    )
    keep = new.registry.nodes["keeps-all"]
    assert keep.dropped_total == 0
    assert keep.gap_batches == 0
    assert keep.first_seq <= acked_before["keeps-all"] + 1, "batches of the outage are missing"
    assert keep.batches_stored == keep.acked_seq - keep.first_seq + 1
    drop = new.registry.nodes["drops"]
    assert drop.dropped_total > 0
    # the backlog arrives oldest first, each batch carrying the drop count of its own moment: the
    # count settles once the newest pre-reconnect batch is in (a wrong count never settles)
    await wait_until(
        lambda: drop.gap_batches == drop.dropped_total - dropped_before,
        timeout_s=30,
        what=f"gap {drop.gap_batches} == dropped {drop.dropped_total} - {dropped_before}",
    )
    # what the agent had acked when it reconnected is at most what the old controller stored
    assert drop.first_seq - 1 - drop.gap_batches <= acked_before["drops"]
    assert drop.batches_stored == drop.acked_seq - drop.first_seq + 1  # contiguous after the gap


async def test_cut_streams_store_each_batch_once(controller: Controller, processes: Processes) -> None:
    proxy = FaultProxy(controller.port)
    await proxy.start()
    try:
        processes.agent(f"127.0.0.1:{proxy.port}", "flaky-a", "enflame", "--interval-s", "0.1")
        processes.agent(f"127.0.0.1:{proxy.port}", "flaky-b", "kunlunxin", "--interval-s", "0.1")
        st = controller.state
        assert st is not None
        for _ in range(5):
            await wait_until(
                lambda: len(st.registry.nodes) == 2 and all(n.streams == 1 for n in st.registry.nodes.values()),
                timeout_s=20,
                what="streams up",
            )
            seen = {k: n.acked_seq for k, n in st.registry.nodes.items()}

            def flowing(seen: dict[str, int] = seen) -> bool:
                return all(n.acked_seq >= seen[k] + 5 for k, n in st.registry.nodes.items())

            await wait_until(
                flowing,
                timeout_s=20,
                what="batches flowing",
            )
            proxy.cut()
        await wait_until(
            lambda: all(n.streams == 1 for n in st.registry.nodes.values()), timeout_s=20, what="streams back"
        )
        assert proxy.cuts == 5
        for node in st.registry.nodes.values():
            assert node.first_seq == 1
            assert node.gap_batches == 0 and node.dropped_total == 0
            assert node.batches_stored == node.acked_seq  # each seq 1..acked stored exactly once
            slots = st.registry.slots_of(node.node_id)
            assert st.store.count[slots].tolist() == [min(node.batches_stored, st.store.window)] * 8
    finally:
        await proxy.stop()


async def test_health_and_reflection_are_served(controller: Controller) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc  # noqa: PLC0415

    assert controller.server is not None
    await controller.server.set_serving(serving=True)
    async with grpc.aio.insecure_channel(controller.target) as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="xpu.v1.Telemetry"), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        call = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        answer = await call.read()
        call.cancel()
    names = {s.name for s in answer.list_services_response.service}
    assert {"xpu.v1.Telemetry", "xpu.v1.Cluster", "grpc.health.v1.Health"} <= names


async def test_power_budget_api(controller: Controller) -> None:
    async with grpc.aio.insecure_channel(controller.target) as ch:
        stub = cluster_pb2_grpc.ClusterStub(ch)
        got = await stub.GetPowerBudget(cpb.GetPowerBudgetRequest(), timeout=5)
        assert not got.HasField("budget_w") and got.feasible
        got = await stub.SetPowerBudget(cpb.SetPowerBudgetRequest(budget_w=5000), timeout=5)
        assert got.budget_w == 5000
        assert (await stub.GetPowerBudget(cpb.GetPowerBudgetRequest(), timeout=5)).budget_w == 5000
        for bad in (-1.0, float("nan"), float("inf")):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.SetPowerBudget(cpb.SetPowerBudgetRequest(budget_w=bad), timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert repr(bad) in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SetPriority(cpb.SetPriorityRequest(device_uuid="nope", weight=2), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SetPriority(cpb.SetPriorityRequest(node_id="n", weight=0), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "weight 0.0" in (err.value.details() or "")
        assert not (await stub.SetPowerBudget(cpb.SetPowerBudgetRequest(budget_w=0), timeout=5)).HasField("budget_w")


async def test_watch_events_streams_what_happens(controller: Controller) -> None:
    async with grpc.aio.insecure_channel(controller.target) as ch:
        stub = cluster_pb2_grpc.ClusterStub(ch)
        call = stub.WatchEvents(cpb.WatchEventsRequest(kinds=["budget."]), timeout=10)
        assert controller.state is not None
        await wait_until(lambda: bool(controller.state and controller.state.watchers), timeout_s=5, what="the watcher")
        await stub.SetPowerBudget(cpb.SetPowerBudgetRequest(budget_w=1234), timeout=5)
        event = await call.read()
        assert event.kind == "budget.changed" and "1234 W" in event.message
        call.cancel()


def test_free_port_is_loopback() -> None:
    assert 0 < free_port() < 65536
