"""History beyond the ring (issue 15.6): 10 s aggregates to a real VictoriaMetrics, and a dead one
that costs ingest nothing.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import cast

import grpc
import grpc.aio
import pytest

from tests.helpers import (
    EtcdCluster,
    Processes,
    RunningService,
    free_port,
    http_get,
    start_server,
    stop_server,
    wait_until,
    xpuctl,
)
from xpuctl.controller import config, hub, service
from xpuctl.controller.adapters import codec, history
from xpuctl.controller.core import ingest, model
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb
from xpuctl.protos.xpu.v1 import cluster_pb2_grpc as cgrpc
from xpuctl.protos.xpu.v1 import telemetry_pb2 as pb

S = 1_000_000_000
T0 = 1_800_000_000 * S


def fed(powers: list[float], t0: int = T0) -> hub.Hub:
    """A hub with one node of one device that sent one batch a second from `t0` with these powers."""
    h = hub.Hub()
    stream = ingest.StreamState()
    info = model.DeviceInfo(uuid="gpu-0", index=0, vendor="nvidia", model="H100")
    facts = ingest.HelloFacts(
        node_id="n1", boot_id="b", agent_version="t", devices=[info], labels={}, interval_s=1.0, acked_seq=0
    )
    h.hello(stream, facts, t0)
    for k, p in enumerate(powers):
        ts = t0 + (k + 1) * S
        b = pb.Batch(seq=k + 1, device=[0], timestamp_ns=[ts], health=cast("list[pb.Health]", [1]))
        b.columns.add(metric=pb.METRIC_POWER_W, values=[p])
        b.columns.add(metric=pb.METRIC_ENERGY_J, values=[1000.0 * (k + 1)])
        h.batch(stream, codec.batch_columns(b, h.ingest.limits), ts)
    return h


def test_a_period_is_its_mean_max_and_last_and_a_counter_its_last() -> None:
    h = fed([100.0, 400.0, 500.0, 600.0])
    text = history.render(h, T0 + 1 * S, T0 + 4 * S).decode()  # the period holds the last three samples
    labels = 'hw_id="gpu-0",hw_vendor="nvidia",hw_model="H100",xpu_node="n1"'
    stamp = (T0 + 4 * S) // 1_000_000
    assert f'hw_power_watts{{{labels},agg="mean"}} 500.0 {stamp}' in text
    assert f'hw_power_watts{{{labels},agg="max"}} 600.0 {stamp}' in text
    assert f'hw_power_watts{{{labels},agg="last"}} 600.0 {stamp}' in text
    assert f'hw_energy_joules_total{{{labels},agg="last"}} 4000.0 {stamp}' in text
    assert "hw_energy_joules_total{" + labels + ',agg="mean"}' not in text
    assert history.render(h, T0 + 4 * S, T0 + 14 * S) == b""  # nothing came in that period


@pytest.mark.parametrize("bad", ["", "ftp://x:1", "localhost:8428", "http://"])
def test_a_bad_history_url_is_refused_naming_it(bad: str) -> None:
    with pytest.raises(ValueError, match="history-url"):
        history.check_url(bad)
    assert history.check_url("http://vm:8428") == "http://vm:8428/api/v1/import/prometheus"


class VictoriaMetrics:
    """A real single-node VictoriaMetrics on a free loopback port."""

    def __init__(self, tmp: pathlib.Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={tmp / 'vm'}",
            "-memory.allowedBytes=256MB",
            "-retentionPeriod=1d",
            "-search.latencyOffset=0s",  # answer queries with what just came, not 30 s behind
            "-loggerLevel=ERROR",
        ]
        self.proc = start_server("victoria-metrics", args, f"{self.url}/health", tmp)

    def series(self, match: str) -> list[dict[str, object]]:
        query = urllib.parse.urlencode({"match[]": match, "start": "0"})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{query}", timeout=5) as r:  # noqa: S310
            return [json.loads(line) for line in r.read().decode().splitlines() if line]

    def stop(self) -> None:
        stop_server(self.proc)


@pytest.fixture
def vm(tmp_path: pathlib.Path) -> Iterator[VictoriaMetrics]:
    v = VictoriaMetrics(tmp_path)
    yield v
    v.stop()


@pytest.mark.slow
async def test_aggregates_reach_victoria_metrics_with_the_right_values(vm: VictoriaMetrics) -> None:
    exporter = history.Exporter(vm.url)
    sender = asyncio.create_task(exporter.run())
    t0 = time.time_ns() - 60 * S  # the database keeps a day back from now: a recent minute
    try:
        periods: list[history.Period] = []
        for _ in history.aggregate_steps(fed([100.0, 400.0, 500.0, 600.0], t0), t0 + 1 * S, t0 + 4 * S, periods):
            pass
        exporter.offer(periods[0])
        await wait_until(lambda: exporter.stats.exported == 1, timeout_s=10, what="the period to be posted")
        found: list[dict[str, object]] = []

        def arrived() -> bool:
            found[:] = vm.series('hw_power_watts{xpu_node="n1"}')
            return len(found) == 3

        await wait_until(arrived, timeout_s=20, what="the three aggregates to be queryable")
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    by_agg = {cast("dict[str, str]", s["metric"])["agg"]: s for s in found}
    assert by_agg["mean"]["values"] == [500] and by_agg["max"]["values"] == [600] and by_agg["last"]["values"] == [600]
    assert by_agg["max"]["timestamps"] == [(t0 + 4 * S) // 1_000_000]
    assert cast("dict[str, str]", by_agg["max"]["metric"])["hw_id"] == "gpu-0"


@pytest.mark.slow
async def test_a_dead_database_drops_old_periods_counts_them_and_ingest_goes_on() -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = config.Config(history=config.History(url=dead, period_s=0.1, max_queued=3))
    running = await RunningService(service.Service(cfg, listen=f"127.0.0.1:{free_port()}")).start()
    try:
        st = running.svc.state
        stream = ingest.StreamState()
        info = model.DeviceInfo(uuid="gpu-0", index=0, vendor="nvidia", model="H100")
        now = time.time_ns()
        facts = ingest.HelloFacts(
            node_id="n1", boot_id="b", agent_version="t", devices=[info], labels={}, interval_s=0.1, acked_seq=0
        )
        st.hello(stream, facts, now)
        seq = 0

        def feed() -> None:
            nonlocal seq
            seq += 1
            ts = time.time_ns()
            b = pb.Batch(seq=seq, device=[0], timestamp_ns=[ts], health=cast("list[pb.Health]", [1]))
            b.columns.add(metric=pb.METRIC_POWER_W, values=[300.0])
            st.batch(stream, codec.batch_columns(b, st.ingest.limits), ts)

        async def feeding() -> None:
            while True:
                feed()
                await asyncio.sleep(0.05)

        feeder = asyncio.create_task(feeding())
        try:
            exporter = running.svc.history
            assert exporter is not None
            await wait_until(lambda: exporter.stats.dropped >= 3, timeout_s=20, what="periods to be dropped")
            assert len(exporter.queue) <= 3 and exporter.stats.exported == 0 and exporter.stats.last_error
            stored_before = st.ingest.counters.batches_total
            await wait_until(
                lambda: st.ingest.counters.batches_total >= stored_before + 10, timeout_s=5, what="ingest to go on"
            )
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
        rc, out, err = await xpuctl(running.target, "summary", "--json")
        assert rc == 0, err
        shown = json.loads(out)["history"]
        assert shown["url"] == dead and shown["dropped"] >= 3 and shown["exported"] == 0 and shown["last_error"]
    finally:
        await running.stop()


@pytest.mark.slow
async def test_the_gateway_answers_history_beyond_the_ring_from_victoria_metrics(
    vm: VictoriaMetrics, etcd: EtcdCluster, processes: Processes, tmp_path: pathlib.Path
) -> None:
    port, gw_port = free_port(), free_port()
    conf = tmp_path / "shard.toml"
    conf.write_text("[history]\nperiod_s = 1.0\n")
    processes.start(
        "xpuctl.controller.cli", "--log-format", "text", "serve", "--config", str(conf), "--window", "5",
        "--listen", f"127.0.0.1:{port}", "--shard", "s1", "--etcd", etcd.urls, "--advertise", f"127.0.0.1:{port}",
        "--state-dir", "none", "--history-url", vm.url,
    )  # fmt: skip
    processes.agent(f"127.0.0.1:{port}", "n1", "amd")
    processes.start(
        "xpuctl.controller.cli", "--log-format", "text", "gateway", "--etcd", etcd.urls,
        "--listen", f"127.0.0.1:{gw_port}", "--history-url", vm.url,
    )  # fmt: skip
    await wait_until(lambda: bool(vm.series('hw_power_watts{xpu_node="n1",agg="mean"}')), timeout_s=30, what="exports")
    uuid = cast("dict[str, str]", vm.series('hw_power_watts{xpu_node="n1",agg="mean"}')[0]["metric"])["hw_id"]

    def enough() -> bool:  # a dozen periods exported: more than the 5 samples the ring keeps
        return len(cast("list[int]", vm.series(f'hw_power_watts{{hw_id="{uuid}",agg="mean"}}')[0]["values"])) >= 12

    await wait_until(enough, timeout_s=40, what="a dozen exported periods")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gw_port}") as channel:
        stub = cgrpc.ClusterStub(channel)
        deep = await stub.GetDevice(cpb.GetDeviceRequest(uuid=uuid, metric=pb.METRIC_POWER_W, limit=12), timeout=10)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        ring = await cgrpc.ClusterStub(channel).GetDevice(cpb.GetDeviceRequest(uuid=uuid, limit=12), timeout=10)
    assert len(ring.history) <= 5  # the owner alone has its ring
    times = [p.timestamp_ns for p in deep.history]
    assert len(deep.history) == 12 and times == sorted(times) and len(set(times)) == 12
    assert times[0] < ring.history[0].timestamp_ns  # older than anything the ring still holds
    assert all(p.value > 0 for p in deep.history)


def test_remote_write_is_a_snappy_block_of_a_prompb_write_request() -> None:
    framed = history.snappy_literals(b"x" * 70_000)
    assert framed[:3] == bytes([0xF0, 0xA2, 0x04])  # 70,000 as a varint
    assert framed[3] == 0xF4 and framed[4:6] == (65535).to_bytes(2, "little")  # a literal of 65,536 bytes
    assert len(framed) == 3 + (3 + 65536) + (3 + 4464)
    assert history.remote_write(history.check_url("http://prom:9090/api/v1/write"))
    assert not history.remote_write(history.check_url("http://vm:8428"))


@pytest.fixture
def prometheus(tmp_path: pathlib.Path) -> Iterator[str]:
    """A real Prometheus taking remote writes on a free loopback port: its base URL."""
    port = free_port()
    (tmp_path / "prometheus.yml").write_text("global: {}\n")
    args = [
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-remote-write-receiver",
        "--log.level=error",
    ]
    base = f"http://127.0.0.1:{port}"
    proc = start_server("prometheus", args, f"{base}/-/ready", tmp_path)
    yield base
    stop_server(proc)


@pytest.mark.slow
async def test_remote_write_reaches_a_real_prometheus(prometheus: str) -> None:
    exporter = history.Exporter(f"{prometheus}/api/v1/write")
    sender = asyncio.create_task(exporter.run())
    t0 = time.time_ns() - 60 * S
    try:
        periods: list[history.Period] = []
        for _ in history.aggregate_steps(fed([100.0, 400.0, 500.0, 600.0], t0), t0 + 1 * S, t0 + 4 * S, periods):
            pass
        exporter.offer(periods[0])
        await wait_until(lambda: exporter.stats.exported == 1, timeout_s=10, what="the remote write to be taken")
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    query = urllib.parse.urlencode({"query": 'hw_power_watts{xpu_node="n1"}', "time": f"{(t0 + 4 * S) / 1e9:.3f}"})
    answer = json.loads(http_get(f"{prometheus}/api/v1/query?{query}") or b"{}")
    got = {r["metric"]["agg"]: float(r["value"][1]) for r in answer["data"]["result"]}
    assert got == {"mean": 500.0, "max": 600.0, "last": 600.0}
    one = answer["data"]["result"][0]["metric"]
    assert one["hw_id"] == "gpu-0" and one["hw_vendor"] == "nvidia" and one["hw_model"] == "H100"
