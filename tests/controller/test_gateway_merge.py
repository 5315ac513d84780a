"""The gateway's merges of the shards' answers (pure)."""

from __future__ import annotations

from xpuctl.controller import gateway
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb
from xpuctl.protos.xpu.v1 import telemetry_pb2 as pb


def page(*uuids: str, more: bool = False) -> cpb.ListDevicesResponse:
    devs = [cpb.Device(info=pb.DeviceInfo(uuid=u)) for u in uuids]
    return cpb.ListDevicesResponse(devices=devs, next_page_token=uuids[-1] if more and uuids else "")


def uuids(r: cpb.ListDevicesResponse) -> list[str]:
    return [d.info.uuid for d in r.devices]


def test_pages_merge_in_uuid_order_and_say_when_there_is_more() -> None:
    merged = gateway.merge_device_pages([page("a", "c", "e", more=True), page("b", "d")], 3)
    assert uuids(merged) == ["a", "b", "c"] and merged.next_page_token == "c"
    last = gateway.merge_device_pages([page("f"), page()], 3)
    assert uuids(last) == ["f"] and last.next_page_token == ""
    # one shard still has more although the merged page is not full: the token says so
    assert gateway.merge_device_pages([page("x", more=True), page()], 3).next_page_token == "x"
    assert uuids(gateway.merge_device_pages([page("b"), page("a")], 0)) == ["a", "b"]


def test_summaries_add_up_and_a_budget_needs_every_shard() -> None:
    one = cpb.Summary(nodes=2, devices=16, power_w=1000.0, budget_w=2000.0)
    one.devices_by_vendor["nvidia"] = 16
    one.ingest.ingest_p99_ms = 3.0
    two = cpb.Summary(nodes=1, devices=8, power_w=500.0)
    two.devices_by_vendor["nvidia"] = 8
    two.ingest.ingest_p99_ms = 7.0
    merged = gateway.merge_summaries([one, two])
    assert (merged.nodes, merged.devices, merged.power_w) == (3, 24, 1500.0)
    assert merged.devices_by_vendor["nvidia"] == 24 and merged.ingest.ingest_p99_ms == 7.0
    assert not merged.HasField("budget_w")
    two.budget_w = 1000.0
    assert gateway.merge_summaries([one, two]).budget_w == 3000.0
