"""The gateway over 2 shards of 2 candidates each, a real etcd, Mosquitto and agents (issue 14.5).

Shard s1 takes nodes `a-*`, s2 nodes `b-*`; each has an agent given both of its candidates.
`xpuctl` talks to the gateway exactly as it talks to one controller.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import subprocess
import time
from dataclasses import dataclass, field

import grpc
import grpc.aio
import pytest

from tests.helpers import EtcdCluster, Mosquitto, Processes, agent_argv, free_port, listening, wait_until, xpuctl
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb
from xpuctl.protos.xpu.v1 import cluster_pb2_grpc as cgrpc

pytestmark = pytest.mark.slow

SHARDS = {"s1": "a", "s2": "b"}  # shard -> its nodes' prefix


@dataclass
class Site:
    etcd: EtcdCluster
    mosquitto: Mosquitto
    processes: Processes
    tmp: pathlib.Path
    ports: dict[str, list[int]] = field(default_factory=dict)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    gateway_port: int = 0

    def candidate(self, shard: str, port: int) -> None:
        conf = self.tmp / f"{shard}-{port}.toml"
        conf.write_text(f'[shard]\nnodes = ["{SHARDS[shard]}-*"]\n')
        self.procs[port] = self.processes.start(
            "xpuctl.controller.cli",
            "--log-format",
            "text",
            "serve",
            "--config",
            str(conf),
            "--listen",
            f"127.0.0.1:{port}",
            "--mqtt",
            self.mosquitto.url,
            "--shard",
            shard,
            "--etcd",
            self.etcd.urls,
            "--advertise",
            f"127.0.0.1:{port}",
            "--state-dir",
            "none",
        )

    @property
    def gateway(self) -> str:
        return f"127.0.0.1:{self.gateway_port}"


async def owner_of(site: Site, shard: str) -> int:
    """The port of the candidate that streams the shard's node now (0: none yet)."""
    for port in site.ports[shard]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                reply = await cgrpc.ClusterStub(channel).ListNodes(cpb.ListNodesRequest(), timeout=2)
            except grpc.aio.AioRpcError:
                continue
        if any(n.connected for n in reply.nodes):
            return port
    return 0


async def both_streaming(site: Site) -> bool:
    return all([await owner_of(site, s) for s in SHARDS])


@pytest.fixture
async def site(etcd: EtcdCluster, mosquitto: Mosquitto, processes: Processes, tmp_path: pathlib.Path) -> Site:
    s = Site(etcd, mosquitto, processes, tmp_path)
    for shard, prefix in SHARDS.items():
        s.ports[shard] = [free_port(), free_port()]
        for port in s.ports[shard]:
            s.candidate(shard, port)
        candidates = ",".join(f"127.0.0.1:{p}" for p in s.ports[shard])
        processes.start(*agent_argv(candidates, f"{prefix}-1", "nvidia", "--mqtt", mosquitto.url, "--shard", shard))
    s.gateway_port = free_port()
    processes.start(
        "xpuctl.controller.cli", "--log-format", "text", "gateway", "--etcd", etcd.urls, "--listen", s.gateway
    )
    await wait_until(lambda: listening(s.gateway_port), timeout_s=20, what="the gateway to listen")
    deadline = time.monotonic() + 40
    while not await both_streaming(s):
        assert time.monotonic() < deadline, "the agents did not stream to their shards' owners"
        await asyncio.sleep(0.2)
    return s


async def test_listings_are_complete_and_a_cordon_reaches_the_right_shard(site: Site) -> None:
    rc, out, err = await xpuctl(site.gateway, "nodes", "--json")
    assert rc == 0, err
    assert sorted(n["node_id"] for n in json.loads(out)) == ["a-1", "b-1"]
    rc, out, err = await xpuctl(site.gateway, "devices", "--json")
    assert rc == 0, err
    devices = json.loads(out)
    assert len(devices) == 16 and {d["node_id"] for d in devices} == {"a-1", "b-1"}
    async with grpc.aio.insecure_channel(site.gateway) as channel:  # pages of 5 across both shards
        stub, token, seen = cgrpc.ClusterStub(channel), "", []
        while True:
            page = await stub.ListDevices(cpb.ListDevicesRequest(page_size=5, page_token=token), timeout=10)
            assert len(page.devices) <= 5
            seen += [d.info.uuid for d in page.devices]
            token = page.next_page_token
            if not token:
                break
        summary = await stub.GetSummary(cpb.GetSummaryRequest(), timeout=10)
    assert seen == sorted(seen) and len(set(seen)) == 16
    assert summary.nodes == 2 and summary.devices == 16
    rc, _, err = await xpuctl(site.gateway, "cordon", "--node", "b-1", "--reason", "fan swap")
    assert rc == 0, err
    s2, s1 = await owner_of(site, "s2"), await owner_of(site, "s1")
    rc, out, _ = await xpuctl(f"127.0.0.1:{s2}", "devices", "--json")
    assert all(d["cordoned"] for d in json.loads(out))
    rc, out, _ = await xpuctl(f"127.0.0.1:{s1}", "devices", "--json")
    assert not any(d["cordoned"] for d in json.loads(out))
    rc, _, err = await xpuctl(site.gateway, "cordon", "--node", "c-9", "--reason", "x")
    assert rc != 0 and "c-9" in err  # a node no shard has: NOT_FOUND, named


async def test_watch_events_carries_both_shards_and_survives_an_owner_failover(site: Site) -> None:
    got: list[cpb.Event] = []
    async with grpc.aio.insecure_channel(site.gateway) as channel:
        stream = cgrpc.ClusterStub(channel).WatchEvents(cpb.WatchEventsRequest(since_ns=1))

        async def read() -> None:
            async for e in stream:
                got.append(e)  # noqa: PERF401 - read while the test looks at `got`

        reader = asyncio.create_task(read())
        try:
            await wait_until(lambda: {e.shard for e in got} >= {"s1", "s2"}, timeout_s=20, what="events of both shards")
            old = await owner_of(site, "s1")
            site.procs[old].kill()
            killed_ns = time.time_ns()
            # until a standby owns s1, a listing is an error naming it, never a silently partial answer
            with pytest.raises(grpc.aio.AioRpcError) as partial:
                await cgrpc.ClusterStub(channel).ListNodes(cpb.ListNodesRequest(), timeout=10)
            assert partial.value.code() == grpc.StatusCode.UNAVAILABLE and "shard s1" in (partial.value.details() or "")
            await wait_until(
                lambda: any(e.shard == "s1" and e.kind == "shard.acquired" and e.timestamp_ns > killed_ns for e in got),
                timeout_s=20,
                what="the new owner's takeover event on the same watch",
            )
            await wait_until(
                lambda: any(e.shard == "s1" and e.kind == "node.online" and e.timestamp_ns > killed_ns for e in got),
                timeout_s=20,
                what="s1's node online again, on the same watch",
            )
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
