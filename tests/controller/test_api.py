"""The Cluster API through real clients: every RPC and its errors, and xpuctl on top of it."""

from __future__ import annotations

import asyncio
import json
from typing import cast

import grpc
import grpc.aio
import pytest

from tests.helpers import Processes, RunningService, make_service, wait_until, xpuctl
from xpuctl.client import AsyncClient
from xpuctl.controller.core import dashboard
from xpuctl.controller.ctl import top
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb
from xpuctl.protos.xpu.v1 import cluster_pb2_grpc
from xpuctl.protos.xpu.v1 import telemetry_pb2 as pb

pytestmark = pytest.mark.slow


async def test_cluster_api_end_to_end(processes: Processes) -> None:
    ctl = await RunningService(make_service(None)).start()
    st = ctl.svc.state
    async with grpc.aio.insecure_channel(ctl.target) as ch:
        stub = cluster_pb2_grpc.ClusterStub(ch)
        watch = stub.WatchEvents(cpb.WatchEventsRequest(kinds=["anomaly."]))
        await wait_until(lambda: bool(st.watchers), timeout_s=5, what="the watcher")
        processes.start(
            "xpuctl.agent.cli",
            "run",
            "--node-id",
            "api",
            "--controller",
            ctl.target,
            "--sim-vendor",
            "nvidia",
            "--sim-workload",
            "training",
            "--sim-fault",
            "thermal_runaway:dev=2:at=4:for=60",
            "--reconnect-max-s",
            "0.5",
        )
        # WatchEvents delivers the fault's anomaly
        event = await asyncio.wait_for(watch.read(), 30)
        assert event.kind == "anomaly.raised" and event.device_uuid == "nvidia-api-2"
        assert event.detector in ("thermal", "thermal_rise") and event.severity == "critical"
        watch.cancel()

        # ListDevices: headroom, anomalies
        devices = {d.info.uuid: d for d in (await stub.ListDevices(cpb.ListDevicesRequest(node_id="api"))).devices}
        assert len(devices) == 8
        hot = devices["nvidia-api-2"]
        assert "thermal_rise" in hot.anomalies or "thermal" in hot.anomalies
        for d in devices.values():
            assert d.headroom_cap_w == pytest.approx(max(d.power_limit_w - d.power_w, 0.0))
            assert d.headroom_ceiling_w == pytest.approx(max(d.info.power_limit_max_w - d.power_limit_w, 0.0))

        # GetDevice with history, and its errors
        r = await stub.GetDevice(cpb.GetDeviceRequest(uuid="nvidia-api-2", metric=pb.METRIC_TEMPERATURE_C, limit=5))
        assert r.device.info.uuid == "nvidia-api-2" and 1 <= len(r.history) <= 5
        stamps = [p.timestamp_ns for p in r.history]
        assert stamps == sorted(stamps) and all(20 < p.value < 120 for p in r.history)
        for bad, code in (
            (cpb.GetDeviceRequest(uuid="nope"), grpc.StatusCode.NOT_FOUND),
            (cpb.GetDeviceRequest(uuid="nvidia-api-2", metric=cast("pb.Metric", 99)), grpc.StatusCode.INVALID_ARGUMENT),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetDevice(bad)
            assert err.value.code() == code and err.value.details()

        # Cordon / Uncordon
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Cordon(cpb.CordonRequest(device_uuid="nvidia-api-1"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "reason" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Cordon(cpb.CordonRequest(node_id="ghost", reason="x"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert (await stub.Cordon(cpb.CordonRequest(device_uuid="nvidia-api-1", reason="ECC storm"))).devices == 1
        cordoned = (await stub.ListDevices(cpb.ListDevicesRequest(cordoned=True))).devices
        assert [d.info.uuid for d in cordoned] == ["nvidia-api-1"]
        assert cordoned[0].cordon_reason == "ECC storm" and cordoned[0].headroom_cap_w == 0
        assert (await stub.Cordon(cpb.CordonRequest(node_id="api", reason="maintenance"))).devices == 8
        assert (await stub.Uncordon(cpb.CordonRequest(node_id="api"))).devices == 8
        assert not (await stub.ListDevices(cpb.ListDevicesRequest(cordoned=True))).devices

        # SetPriority reaches the allocator
        await stub.SetPriority(cpb.SetPriorityRequest(node_id="api", weight=3))
        assert st.control.node_weight == {"api": 3.0}

    # xpuctl on top of the same API: exit codes and --json
    rc, out, _ = await xpuctl(ctl.target, "budget", "20000", "--json")
    assert rc == 0 and json.loads(out)["budget_w"] == 20000
    rc, out, _ = await xpuctl(ctl.target, "budget", "--json")
    assert rc == 0 and json.loads(out)["budget_w"] == 20000
    rc, _, stderr = await xpuctl(ctl.target, "budget", "-5")
    assert rc == 4 and "INVALID_ARGUMENT" in stderr and "-5.0" in stderr
    rc, out, _ = await xpuctl(
        ctl.target, "device", "nvidia-api-2", "--metric", "temperature_c", "--limit", "3", "--json"
    )
    body = json.loads(out)
    assert rc == 0 and body["device"]["uuid"] == "nvidia-api-2" and len(body["history"]) <= 3
    rc, _, stderr = await xpuctl(ctl.target, "device", "nope")
    assert rc == 4 and "NOT_FOUND" in stderr
    rc, out, _ = await xpuctl(ctl.target, "cordon", "--device", "nvidia-api-3", "--reason", "flaky", "--json")
    assert rc == 0 and json.loads(out) == {"devices": 1}
    rc, _, stderr = await xpuctl(ctl.target, "cordon", "--device", "nvidia-api-3")
    assert rc == 4 and "reason" in stderr
    rc, out, _ = await xpuctl(ctl.target, "devices", "--json")
    rows = {d["uuid"]: d for d in json.loads(out)}
    assert rows["nvidia-api-3"]["cordoned"] and rows["nvidia-api-3"]["cordon_reason"] == "flaky"
    rc, out, _ = await xpuctl(ctl.target, "uncordon", "--device", "nvidia-api-3")
    assert rc == 0 and "uncordoned 1" in out
    rc, out, _ = await xpuctl(ctl.target, "priority", "--device", "nvidia-api-0", "2")
    assert rc == 0
    rc, out, _ = await xpuctl(ctl.target, "summary", "--json")
    assert rc == 0 and {"nodes", "devices", "power_w", "budget_w", "anomalies_open"} <= set(json.loads(out))
    # events: a budget change while listening
    listen = asyncio.create_task(xpuctl(ctl.target, "events", "--seconds", "4", "--json", "--kind", "budget."))
    await wait_until(lambda: bool(st.watchers), timeout_s=10, what="xpuctl events to subscribe")
    st.set_budget(21000.0, 0)
    rc, out, _ = await listen
    lines = [json.loads(x) for x in out.splitlines()]
    assert rc == 0 and any(e["kind"] == "budget.changed" for e in lines)
    rc, out, _ = await xpuctl(ctl.target, "top", "--once")
    assert rc == 0 and "nvidia" in out and "budget" in out
    await ctl.stop()
    rc, _, stderr = await xpuctl(ctl.target, "summary")
    assert rc == 3 and "cannot reach" in stderr


async def test_a_slow_watcher_never_slows_ingest() -> None:
    from xpuctl.controller import hub  # noqa: PLC0415
    from xpuctl.controller.core import events  # noqa: PLC0415

    st = hub.Hub()
    stuck: asyncio.Queue[events.Event] = asyncio.Queue(maxsize=10)  # a watcher that never reads
    st.watchers.add(stuck)
    evs = [events.Event(timestamp_ns=i, kind="anomaly.raised") for i in range(1000)]
    st.publish(evs)  # returns at once: the queue is full after 10, the rest are counted
    assert stuck.qsize() == 10 and st.events_dropped == 990
    assert st.event_counts["anomaly.raised"] == 1000


async def test_top_reconnects_by_itself() -> None:
    from tests.helpers import free_port  # noqa: PLC0415

    port = free_port()
    app = top.Top(f"127.0.0.1:{port}")
    async with AsyncClient(app.target) as stub:
        await app.poll(stub)
        assert snapshot(app) is None and "UNAVAILABLE" in app.problem
        svc = make_service(None)
        svc.listen = app.target
        ctl = await RunningService(svc).start()
        try:
            for _ in range(150):  # top polls once a second; here as fast as the channel reconnects
                await app.poll(stub)
                if snapshot(app) is not None:
                    break
                await asyncio.sleep(0.1)
            now = snapshot(app)
            assert app.problem == "" and now is not None and now.connected
        finally:
            await ctl.stop()
        await app.poll(stub)
        now = snapshot(app)
        assert now is not None and not now.connected and app.problem


def snapshot(app: top.Top) -> dashboard.Snapshot | None:
    """What `app` shows now (a call, so that the type checker does not keep an earlier narrowing)."""
    return app.snapshot


async def test_a_huge_request_string_is_not_echoed_whole() -> None:
    # Issue 19: a 1 MiB device id came back whole in the NOT_FOUND message, and the answer grew past
    # the client's limit (RESOURCE_EXHAUSTED instead of the refusal).
    ctl = await RunningService(make_service(None)).start()
    try:
        async with grpc.aio.insecure_channel(ctl.target) as ch:
            stub = cluster_pb2_grpc.ClusterStub(ch)
            for call in (
                stub.GetDevice(cpb.GetDeviceRequest(uuid="x" * (1 << 20)), timeout=10),
                stub.Cordon(cpb.CordonRequest(device_uuid="y" * (1 << 20), reason="r"), timeout=10),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
                details = err.value.details() or ""
                assert len(details) < 1200 and "more characters cut" in details
    finally:
        await ctl.stop()


async def test_list_devices_in_pages(processes: Processes) -> None:
    # Issue 13.6: pages in uuid order; together they are the whole list, each device once
    ctl = await RunningService(make_service(None)).start()
    st = ctl.svc.state
    try:
        processes.start(
            "xpuctl.agent.cli", "fleet", "--controller", ctl.target, "--nodes", "3", "--vendors", "amd,nvidia"
        )
        await wait_until(lambda: len(st.registry) == 24, timeout_s=30, what="24 devices")
        async with grpc.aio.insecure_channel(ctl.target) as ch:
            stub = cluster_pb2_grpc.ClusterStub(ch)
            whole = [d.info.uuid for d in (await stub.ListDevices(cpb.ListDevicesRequest())).devices]
            pages: list[list[str]] = []
            req = cpb.ListDevicesRequest(page_size=5)
            while True:
                page = await stub.ListDevices(req)
                pages.append([d.info.uuid for d in page.devices])
                if not page.next_page_token:
                    break
                req.page_token = page.next_page_token
            assert [len(p) for p in pages] == [5, 5, 5, 5, 4]
            assert [u for p in pages for u in p] == sorted(whole)
            amd = await stub.ListDevices(cpb.ListDevicesRequest(vendor="amd", page_size=100))
            assert len(amd.devices) == 16 and amd.next_page_token == ""  # filters and pages together (nodes 0, 2)
        rc, out, _ = await xpuctl(ctl.target, "devices")  # xpuctl follows the pages
        assert rc == 0 and all(u in out for u in whole)
    finally:
        await ctl.stop()
