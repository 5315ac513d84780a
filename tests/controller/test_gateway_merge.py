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


def test_a_job_on_two_shards_is_one_job() -> None:
    def part(shard: str, start_s: int, end_s: int, joules: float, method: str) -> cpb.Job:
        d = cpb.JobDevice(uuid=f"{shard}-0", node_id=shard, energy_j=joules, method=method)
        return cpb.Job(
            job_id="9", started_ns=start_s * 10**9, ended_ns=end_s * 10**9, devices=[d], energy_j=joules, method=method
        )

    other = cpb.Job(job_id="10", started_ns=1, ended_ns=2, energy_j=5.0)
    (alone, job) = gateway.merge_jobs(
        [part("a", 100, 160, 6000.0, "counter"), other, part("b", 90, 150, 3000.0, "integrated")]
    )
    assert alone.job_id == "10" and job.job_id == "9" and [d.uuid for d in job.devices] == ["a-0", "b-0"]
    assert (job.started_ns, job.ended_ns, job.energy_j) == (90 * 10**9, 160 * 10**9, 9000.0)
    assert job.duration_s == 70.0 and job.mean_power_w == 9000.0 / 70.0 and job.method == "counter+integrated"
    running = gateway.merge_jobs([part("a", 100, 0, 1.0, "counter"), part("b", 90, 150, 1.0, "counter")])[0]
    assert running.ended_ns == 0  # a part still runs
