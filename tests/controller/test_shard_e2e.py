"""A shard with two candidate controllers, a real etcd, a real Mosquitto and a real agent (issue 14).

Each test starts owner A, an agent given both candidates, then standby B, and watches every
command on the broker. The agent is told the shard, so it follows the shard's lease and keeps
the highest epoch it has seen. The lease TTL is the default 5 s.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import cast

import aiomqtt
import grpc
import grpc.aio
import msgspec
import pytest

from tests.helpers import (
    EtcdCluster,
    Mosquitto,
    Processes,
    RawStream,
    Watcher,
    agent_argv,
    free_port,
    listening,
    wait_until,
)
from xpuctl.protos.xpu.v1 import bus
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb
from xpuctl.protos.xpu.v1 import cluster_pb2_grpc as cgrpc
from xpuctl.protos.xpu.v1 import telemetry_pb2 as pb

pytestmark = pytest.mark.slow

TTL_S = 5.0
REQ, RES = "xpu/v1/cmd/n1/req", "xpu/v1/cmd/n1/res"


@dataclass
class Shard:
    etcd: EtcdCluster
    mosquitto: Mosquitto
    processes: Processes
    ports: list[int] = field(default_factory=lambda: [free_port(), free_port()])
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    watcher: Watcher | None = None

    def address(self, k: int) -> str:
        return f"127.0.0.1:{self.ports[k]}"

    def start_controller(self, k: int) -> None:
        self.procs.append(
            self.processes.start(
                "xpuctl.controller.cli",
                "--log-format",
                "text",
                "serve",
                "--listen",
                self.address(k),
                "--mqtt",
                self.mosquitto.url,
                "--shard",
                "s1",
                "--etcd",
                self.etcd.urls,
                "--advertise",
                self.address(k),
                "--state-dir",
                "none",
                "--budget-w",
                "2400",  # 8 simulated devices draw more: the loop caps them, so commands flow
            )
        )

    def commands(self) -> list[tuple[float, bus.SetPowerCap | bus.RestoreDefault]]:
        assert self.watcher is not None
        out = []
        for t, payload in self.watcher.on(REQ):
            cmd = msgspec.json.decode(payload, type=bus.Command)
            if cmd.id.startswith("inject"):
                continue
            out.append((t, cmd))
        return out

    def answers(self) -> dict[str, bus.Result]:
        assert self.watcher is not None
        return {r.id: r for r in (msgspec.json.decode(p, type=bus.Result) for _, p in self.watcher.on(RES))}


async def nodes(address: str) -> dict[str, cpb.Node]:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await cgrpc.ClusterStub(channel).ListNodes(cpb.ListNodesRequest(), timeout=2)
        except grpc.aio.AioRpcError:
            return {}
    return {n.node_id: n for n in reply.nodes}


async def set_budget(address: str, watts: float) -> None:
    """A new budget on `address`: its loop re-caps the devices, so that commands flow."""
    async with grpc.aio.insecure_channel(address) as channel:
        await cgrpc.ClusterStub(channel).SetPowerBudget(cpb.SetPowerBudgetRequest(budget_w=watts), timeout=5)


async def streaming_to(address: str) -> bool:
    n1 = (await nodes(address)).get("n1")
    return n1 is not None and n1.connected


async def wait_async(check: object, *, timeout_s: float, what: str) -> float:
    """Poll an async predicate; the seconds it took."""
    started = time.monotonic()
    while not await check():  # type: ignore[operator]
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"timed out after {timeout_s:g}s waiting for {what}")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


@pytest.fixture
async def shard(etcd: EtcdCluster, mosquitto: Mosquitto, processes: Processes) -> AsyncIterator[Shard]:
    s = Shard(etcd, mosquitto, processes)
    s.watcher = Watcher(mosquitto.url, "xpu/v1/#")
    await s.watcher.start()
    s.start_controller(0)
    controllers = f"{s.address(0)},{s.address(1)}"
    processes.start(
        *agent_argv(controllers, "n1", "nvidia", "--mqtt", mosquitto.url, "--shard", "s1", "--failsafe-after-s", "8")
    )
    await wait_async(lambda: streaming_to(s.address(0)), timeout_s=30, what="the agent to stream to owner A")
    s.start_controller(1)
    await wait_until(lambda: listening(s.ports[1]), timeout_s=20, what="standby B to listen")
    await wait_until(lambda: bool(s.commands()), timeout_s=20, what="owner A's first command")
    try:
        yield s
    finally:
        for p in s.procs:  # a stopped process cannot take SIGTERM: wake it first
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
        await s.watcher.stop()


async def test_a_standby_refuses_streams_naming_the_owner(shard: Shard) -> None:
    hello = pb.AgentMessage(hello=pb.Hello(node_id="n9", boot_id="b", agent_version="t")).SerializeToString()
    deadline = time.monotonic() + 15
    async with grpc.aio.insecure_channel(shard.address(1)) as channel:
        while True:  # B answers as a standby once its elector has read the key
            error = await RawStream(channel).fails(hello)
            pairs = cast("list[tuple[str, str]]", list(error.trailing_metadata() or ()))
            owner = dict(pairs).get("xpu-owner")
            if owner or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"the owner is at {shard.address(0)}" in (error.details() or "")
    assert owner == shard.address(0)


async def test_owner_killed_standby_owns_and_the_agent_follows_within_ttl_plus_5s(shard: Shard) -> None:
    epoch_a = shard.commands()[-1][1].epoch
    assert all(c.shard == "s1" and c.epoch == epoch_a for _, c in shard.commands())
    await set_budget(shard.address(0), 2300)  # an operator's decision, kept in etcd by the owner
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # the standby takes no decision
        await set_budget(shard.address(1), 1900)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"the owner is at {shard.address(0)}" in (refused.value.details() or "")
    shard.procs[0].kill()
    killed = time.monotonic()
    took = await wait_async(
        lambda: streaming_to(shard.address(1)), timeout_s=TTL_S + 5, what="the agent to stream to B"
    )
    assert took <= TTL_S + 5
    async with grpc.aio.insecure_channel(shard.address(1)) as channel:  # B took the decision over from etcd
        budget = await cgrpc.ClusterStub(channel).GetPowerBudget(cpb.GetPowerBudgetRequest(), timeout=5)
    assert budget.budget_w == 2300
    await set_budget(shard.address(1), 2000)
    await wait_until(
        lambda: any(c.epoch > epoch_a for _, c in shard.commands()), timeout_s=20, what="B's first command"
    )
    first_b = min(t for t, c in shard.commands() if c.epoch > epoch_a)
    assert first_b - killed > 0
    n1 = (await nodes(shard.address(1)))["n1"]
    assert n1.duplicate_batches == 0  # at-least-once resends are deduplicated by the new owner too
    assert n1.gap_batches <= n1.dropped_total  # every batch it lacks is one the agent counted as dropped


async def test_a_frozen_owner_fences_itself_and_its_epoch_is_refused(shard: Shard) -> None:
    epoch_a = shard.commands()[-1][1].epoch
    device = shard.commands()[-1][1].device_uuid
    assert shard.watcher is not None
    leases = shard.watcher.on("xpu/v1/status/controller/s1")
    boot_a = msgspec.json.decode(leases[-1][1], type=bus.Status).boot_id  # only A has held the lease so far
    a = shard.procs[0]
    os.kill(a.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    # B takes over; its lease names it, and the agent leaves the frozen A for it (A never answers)
    took = await wait_async(
        lambda: streaming_to(shard.address(1)), timeout_s=TTL_S + 5, what="the agent to leave frozen A for B"
    )
    await wait_until(lambda: time.monotonic() - stopped > TTL_S + 2, timeout_s=TTL_S + 3, what="TTL + 2 s")
    os.kill(a.pid, signal.SIGCONT)
    woke = time.monotonic()  # A finds itself fenced before it sends anything
    await set_budget(shard.address(1), 2000)
    await wait_until(
        lambda: any(c.epoch > epoch_a for _, c in shard.commands()), timeout_s=20, what="B's first command"
    )
    epoch_b = max(c.epoch for _, c in shard.commands())
    b_ids = [c.id for _, c in shard.commands() if c.epoch == epoch_b]
    await wait_until(lambda: any(i in shard.answers() for i in b_ids), timeout_s=10, what="the agent to answer B")
    late = [c for t, c in shard.commands() if t > woke and c.epoch == epoch_a]
    assert not late, f"the fenced owner sent {len(late)} command(s) after it woke: {late[:2]}"
    lease_after = [
        st
        for t, p in shard.watcher.on("xpu/v1/status/controller/s1")
        if t > woke and (st := msgspec.json.decode(p, type=bus.Status)).boot_id == boot_a and st.state == bus.ONLINE
    ]
    assert not lease_after, "the fenced owner renewed the shard's lease on the bus after it woke"
    assert took >= 0
    # a command with A's old epoch, put on the broker by hand, is refused by the agent
    now = time.time_ns()
    injected = bus.SetPowerCap(
        id="inject-1",
        device_uuid=device,
        power_cap_w=300.0,
        issued_at_ns=now,
        expires_at_ns=now + 10 * 1_000_000_000,
        shard="s1",
        epoch=epoch_a,
    )
    host, port = shard.mosquitto.url.removeprefix("mqtt://").rsplit(":", 1)
    async with aiomqtt.Client(host, int(port), identifier="test-inject") as client:
        await client.publish(REQ, msgspec.json.encode(injected), qos=1)
    await wait_until(lambda: "inject-1" in shard.answers(), timeout_s=10, what="the agent's answer to the injection")
    answer = shard.answers()["inject-1"]
    assert not answer.ok and f"stale epoch {epoch_a} for shard s1" in answer.error


async def test_quorum_lost_fences_the_owner_the_agent_fails_safe_and_an_owner_returns(shard: Shard) -> None:
    assert shard.watcher is not None
    watcher = shard.watcher
    await wait_until(lambda: bool(watcher.on("xpu/v1/safe/n1")), timeout_s=15, what="the owner's site-safe caps")
    safe = msgspec.json.decode(watcher.on("xpu/v1/safe/n1")[-1][1], type=bus.SafeCaps)
    assert safe.shard == "s1" and len(safe.caps) == 8 and sum(safe.caps.values()) <= 2400 + 1
    shard.etcd.kill(1)
    shard.etcd.kill(2)
    lost = time.monotonic()
    # the owner fences within the TTL: it refuses the stream (and the standby has nobody to name)
    took = await wait_async(
        lambda: _not(streaming_to(shard.address(0))), timeout_s=TTL_S + 2, what="the owner to drop the stream"
    )
    assert took <= TTL_S + 2
    fenced = time.monotonic()

    def fail_safe_states() -> list[float]:
        return [
            t
            for t, p in shard.watcher.on("xpu/v1/state/n1")  # type: ignore[union-attr]
            if t > lost and p and msgspec.json.decode(p, type=bus.NodeState).fail_safe
        ]

    # no lease any more: the agent keeps its caps for --failsafe-after-s (8 s), then goes to the
    # site-safe caps its owner pushed (within the shard's budget), not to its defaults
    await wait_until(lambda: bool(fail_safe_states()), timeout_s=30, what="the agent to fail safe")
    assert fail_safe_states()[0] - fenced >= 8 - TTL_S  # not before its own deadline (lease silent >= 8 s)

    def enforced() -> dict[str, float | None]:
        state = msgspec.json.decode(watcher.on("xpu/v1/state/n1")[-1][1], type=bus.NodeState)
        return {d.uuid: d.power_limit_w for d in state.devices}

    await wait_until(lambda: enforced() == safe.caps, timeout_s=10, what="the site-safe caps enforced")
    shard.etcd.start(1)
    shard.etcd.start(2)
    await asyncio.to_thread(shard.etcd.wait_healthy)
    back = time.monotonic()
    took = await wait_async(
        lambda: _any_streaming(shard), timeout_s=TTL_S + 10, what="an owner again, and the agent streaming to it"
    )
    assert time.monotonic() - back <= TTL_S + 10


async def _not(check: Awaitable[bool]) -> bool:
    return not await check


async def _any_streaming(shard: Shard) -> bool:
    return await streaming_to(shard.address(0)) or await streaming_to(shard.address(1))
