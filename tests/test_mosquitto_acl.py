"""The shipped Mosquitto ACL (deploy/mosquitto/xpuctl.acl) on a real broker.

Users are node ids and `controller` (in production the certificate CN via
use_identity_as_username; here a password file made by mosquitto_passwd). A denied publish is
dropped by the broker, so each "cannot" is checked against a fence: a message the observer must
receive, published after the denied one was acknowledged (Mosquitto handles messages in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import aiomqtt
import msgspec
import pytest

from tests.helpers import ROOT, Mosquitto, Processes, RunningService, agent_argv, make_service, wait_until
from xpuctl.controller.adapters import metrics
from xpuctl.protos.xpu.v1 import bus

ACL = ROOT / "deploy" / "mosquitto" / "xpuctl.acl"
USERS = ("node-a", "node-b", "controller")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd is not installed (package mosquitto)"
    ),
]


@pytest.fixture
def broker(tmp_path: pathlib.Path) -> Iterator[Mosquitto]:
    passwords = tmp_path / "passwd"
    passwords.write_text("")
    for user in USERS:
        subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, f"pw-{user}"], check=True)
    m = Mosquitto(tmp_path)
    text = m.conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
    # run as root, Mosquitto drops to the `mosquitto` user, which cannot read pytest's private tmp
    run_as = "user root\n" if os.geteuid() == 0 else ""
    # the shipped config's client-id rule, read from it (the TLS lines need files the test does not have)
    shipped = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text().splitlines()
    rules = "".join(f"{line}\n" for line in shipped if line.startswith("use_username_as_clientid"))
    m.conf.write_text(text + f"{run_as}password_file {passwords}\nacl_file {ACL}\n{rules}")
    m.start()
    yield m
    m.stop()


@contextlib.asynccontextmanager
async def client(
    m: Mosquitto, user: str, *subscriptions: str
) -> AsyncIterator[tuple[aiomqtt.Client, asyncio.Queue[tuple[str, bytes]]]]:
    inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    async with aiomqtt.Client(
        "127.0.0.1",
        m.port,
        username=user,
        password=f"pw-{user}",
        identifier=f"t-{user}",
        protocol=aiomqtt.ProtocolVersion.V311,
    ) as c:
        for s in subscriptions:
            await c.subscribe(s, qos=1)

        async def pump() -> None:
            async for msg in c.messages:
                await inbox.put(
                    (msg.topic.value, bytes(msg.payload) if isinstance(msg.payload, bytes | bytearray) else b"")
                )

        task = asyncio.create_task(pump(), name=f"test.acl[{user}]")
        try:
            yield c, inbox
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def received_until_fence(inbox: asyncio.Queue[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Everything delivered before the b"fence" payload."""
    got: list[tuple[str, bytes]] = []
    while True:
        topic, payload = await asyncio.wait_for(inbox.get(), 10)
        if payload == b"fence":
            return got
        got.append((topic, payload))


async def test_nodes_are_confined_to_their_own_topics(broker: Mosquitto) -> None:
    async with (
        client(broker, "controller", "xpu/v1/state/+", "xpu/v1/cmd/+/res") as (ctl, ctl_in),
        client(broker, "node-b", "xpu/v1/cmd/node-b/req") as (b, b_in),
        client(broker, "node-a", "xpu/v1/cmd/node-b/req", "#") as (a, a_in),
    ):
        # the controller may command B; B gets it, A (subscribed to B's topic and to #) does not
        await ctl.publish("xpu/v1/cmd/node-b/req", b"cap", qos=1)
        assert await asyncio.wait_for(b_in.get(), 10) == ("xpu/v1/cmd/node-b/req", b"cap")
        # A may not publish commands: B never sees A's, only the controller's fence after it
        await a.publish("xpu/v1/cmd/node-b/req", b"forged", qos=1)
        await ctl.publish("xpu/v1/cmd/node-b/req", b"fence", qos=1)
        assert await received_until_fence(b_in) == []
        # A may not write B's state or answers; A's own state reaches the controller
        await a.publish("xpu/v1/state/node-b", b"forged", qos=1)
        await a.publish("xpu/v1/cmd/node-b/res", b"forged", qos=1)
        await a.publish("xpu/v1/state/node-a", b"fence", qos=1)
        assert await received_until_fence(ctl_in) == []
        # B's answer reaches the controller
        await b.publish("xpu/v1/cmd/node-b/res", b"ok", qos=1)
        assert await asyncio.wait_for(ctl_in.get(), 10) == ("xpu/v1/cmd/node-b/res", b"ok")
        # A's `#` and B-topic subscriptions delivered nothing of B's traffic: only what A may read
        await ctl.publish("xpu/v1/cmd/node-a/req", b"fence", qos=1)
        leaked = [(t, p) for t, p in await received_until_fence(a_in) if not t.startswith("xpu/v1/cmd/node-a/")]
        assert leaked == []


async def test_a_node_reads_its_shard_owners_lease_and_cannot_forge_it(broker: Mosquitto) -> None:
    lease = "xpu/v1/status/controller/hall1"  # a shard owner's lease (DESIGN 11)
    async with (
        client(broker, "controller") as (ctl, _),
        client(broker, "node-a", lease) as (a, a_in),
        client(broker, "node-b", lease) as (_b, b_in),
    ):
        await a.publish(lease, b"forged", qos=1)  # refused by the ACL: B sees only the owner's fence
        await ctl.publish(lease, b"fence", qos=1)
        assert await received_until_fence(b_in) == []
        assert await asyncio.wait_for(a_in.get(), 10) == (lease, b"fence")


async def test_a_node_reads_only_its_own_site_safe_caps(broker: Mosquitto) -> None:
    async with (
        client(broker, "controller") as (ctl, _),
        client(broker, "node-a", "xpu/v1/safe/+") as (_a, a_in),
    ):
        await ctl.publish("xpu/v1/safe/node-b", b"b's caps", qos=1)  # not A's to read
        await ctl.publish("xpu/v1/safe/node-a", b"fence", qos=1)
        assert await received_until_fence(a_in) == []


async def test_bus_urls_with_a_user_and_a_password_file(broker: Mosquitto, tmp_path: pathlib.Path) -> None:
    """`mqtt://USER@HOST:PORT?password_file=F`, as the programs read it: the right password gets in
    (and the ACL applies to that user), a wrong one is refused.
    """
    from xpuctl.common import mqtt_session  # noqa: PLC0415
    from xpuctl.protos.xpu.v1 import bus  # noqa: PLC0415

    def url_client(user: str, password: str) -> aiomqtt.Client:
        secret = tmp_path / f"{user}.{password}"
        secret.write_text(password + "\n")
        u = bus.parse_url(f"mqtt://{user}@127.0.0.1:{broker.port}?password_file={secret}&protocol=3.1.1")
        return aiomqtt.Client(
            u.host,
            u.port,
            identifier=f"u-{user}",
            protocol=aiomqtt.ProtocolVersion.V311,
            timeout=5,
            **mqtt_session.connect_kwargs(u),
        )

    async with url_client("node-a", "pw-node-a") as a, client(broker, "controller") as (ctl, _):
        await a.subscribe("xpu/v1/cmd/node-a/req", qos=1)
        await ctl.publish("xpu/v1/cmd/node-a/req", b"for a", qos=1)
        async with asyncio.timeout(10):
            async for msg in a.messages:
                assert (msg.topic.value, msg.payload) == ("xpu/v1/cmd/node-a/req", b"for a")
                break
    with pytest.raises(aiomqtt.MqttError):
        async with url_client("node-a", "not-the-password"):
            pass


async def test_a_node_cannot_knock_another_off_with_its_client_id(broker: Mosquitto) -> None:
    # Issue 19.3: node-a connected as client id `xpu-agent-node-b` 14 times in 15 s and node-b was
    # disconnected each time. With the client id bound to the username, node-a only ever is node-a.

    def as_node_b(user: str) -> aiomqtt.Client:
        """A session of `user` that asks for node-b's client id."""
        return aiomqtt.Client(
            "127.0.0.1",
            broker.port,
            username=user,
            password=f"pw-{user}",
            identifier="xpu-agent-node-b",
            protocol=aiomqtt.ProtocolVersion.V311,
            timeout=5,
        )

    async with as_node_b("node-b") as b:
        for _ in range(3):
            async with as_node_b("node-a") as a:
                await a.publish("xpu/v1/state/node-a", b"{}", qos=1)
        await b.subscribe("xpu/v1/cmd/node-b/req", qos=1)  # still connected: a QoS 1 round trip works
        await b.publish("xpu/v1/state/node-b", b"{}", qos=1)


async def test_a_node_cannot_settle_another_nodes_commands(
    broker: Mosquitto, processes: Processes, tmp_path: pathlib.Path
) -> None:
    # Issue 19.2: node-a published Results on its own `cmd/node-a/res` with node-b's command ids and
    # the ledger recorded them applied while node-b's agent had not answered.
    secret = tmp_path / "controller.pw"
    secret.write_text("pw-controller\n")
    svc = make_service(f"mqtt://controller@127.0.0.1:{broker.port}?password_file={secret}", budget_w=1500.0)
    ctl = await RunningService(svc).start()
    try:
        wrong = tmp_path / "node-b.pw"
        wrong.write_text("not-the-password\n")  # node-b streams telemetry but never hears a command
        processes.start(
            *agent_argv(
                ctl.target, "node-b", "nvidia", "--mqtt", f"mqtt://node-b@127.0.0.1:{broker.port}?password_file={wrong}"
            )
        )
        ledger = svc.state.control.ledger
        await wait_until(lambda: len(ledger.open) >= 4, timeout_s=30, what="commands for node-b")
        forged = [e.id for e in ledger.open.values() if e.node_id == "node-b"]
        async with client(broker, "node-a") as (a, _):
            for command_id in forged:
                result = bus.Result(id=command_id, ok=True, applied_cap_w=123.0)
                await a.publish("xpu/v1/cmd/node-a/res", msgspec.json.encode(result), qos=1)
        await wait_until(
            lambda: ledger.foreign_results >= len(forged), timeout_s=10, what="the forged answers to be counted"
        )
        assert ledger.totals.get("applied", 0) == 0
        assert all(e.state != "applied" for e in ledger.finished)
        assert "xpu_bus_foreign_results_total" in metrics.render(svc.state, time.time_ns())
    finally:
        await ctl.stop()
