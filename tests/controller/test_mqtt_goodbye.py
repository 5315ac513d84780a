"""The controller's goodbye on a real Mosquitto: once it said `offline`, no lease may follow.

The lease (`status/controller`, retained, `online`) is republished every heartbeat through the
session's publisher task; `say_offline` publishes directly. A lease queued or due at that moment
must not overwrite the goodbye, or agents would read a live controller that is gone (CI saw it).
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import time
from collections.abc import AsyncIterator

import aiomqtt
import msgspec
import pytest

from tests.helpers import Mosquitto, Watcher, wait_until
from xpuctl.controller.adapters import mqtt
from xpuctl.controller.core import ledger
from xpuctl.protos.xpu.v1 import bus

pytestmark = pytest.mark.slow  # end-to-end: real processes, brokers or servers

TOPICS = bus.Topics()


async def retained_status(port: int) -> bus.Status:
    """What a newcomer reads on `status/controller`: the retained message."""
    async with aiomqtt.Client("127.0.0.1", port, identifier="test-goodbye-reader") as client:
        await client.subscribe(TOPICS.controller_status, qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                return msgspec.json.decode(message.payload, type=bus.Status)
    raise AssertionError("unreachable")


async def test_no_lease_after_the_goodbye(mosquitto: Mosquitto) -> None:
    # a heartbeat of 1 ms keeps the publisher busy with leases, so one is always in flight or queued
    for attempt in range(10):
        ctl_bus = mqtt.ControllerBus(
            url=bus.parse_url(mosquitto.url + "?protocol=5"),
            boot_id=f"boot-{attempt}",
            on_result=lambda *_: None,
            on_state=lambda *_: None,
            on_status=lambda *_: None,
            heartbeat_s=0.001,
        )
        task = asyncio.create_task(ctl_bus.run(), name="test.controller-bus")
        try:
            await asyncio.wait_for(ctl_bus.connected.wait(), 10)
            before = ctl_bus.counters.connects
            await wait_until(
                lambda: ctl_bus.outgoing.qsize() > 0,  # noqa: B023 - awaited within this iteration
                timeout_s=5,
                what="a lease in the queue",
            )
            await ctl_bus.say_offline()
            assert ctl_bus.counters.connects == before
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        status = await retained_status(mosquitto.port)
        assert (status.state, status.boot_id) == (bus.OFFLINE, f"boot-{attempt}"), f"attempt {attempt}"


def entry(id_: str, *, urgent: bool, now: int) -> ledger.Entry:
    """A cap command for one device of node n1."""
    return ledger.Entry(
        id=id_,
        kind="set_power_cap",
        slot=0,
        node_id="n1",
        device_uuid="gpu-0",
        cap_w=300.0,
        reason="emergency: test" if urgent else "test",
        issued_at_ns=now,
        expires_at_ns=now + 10 * 10**9,
        urgent=urgent,
    )


@contextlib.asynccontextmanager
async def session(mosquitto: Mosquitto, boot_id: str) -> AsyncIterator[tuple[mqtt.ControllerBus, Watcher]]:
    """A controller's bus connected to `mosquitto`, and a watcher of the command topics."""
    watcher = Watcher(mosquitto.url, f"{TOPICS.root}/cmd/+/req")
    await watcher.start()
    ctl_bus = mqtt.ControllerBus(
        url=bus.parse_url(mosquitto.url),
        boot_id=boot_id,
        on_result=lambda *_: None,
        on_state=lambda *_: None,
        on_status=lambda *_: None,
        heartbeat_s=3600,
    )
    task = asyncio.create_task(ctl_bus.run(), name="test.controller-bus")
    try:
        await asyncio.wait_for(ctl_bus.connected.wait(), 10)
        yield ctl_bus, watcher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await watcher.stop()


async def test_a_superseded_command_is_dropped_not_sent_after_its_successor(mosquitto: Mosquitto) -> None:
    # Issue 13.3: emergencies jump the queue (their own publisher), so a queued command whose device has a newer
    # one by the time it would go out is dropped (sent after its successor, it would undo it).
    async with session(mosquitto, "boot-superseded") as (ctl_bus, watcher):
        ctl_bus.current = lambda e: e.id != "old"
        now = time.time_ns()
        assert ctl_bus.send_command(entry("old", urgent=False, now=now), now)
        assert ctl_bus.send_command(entry("hot", urgent=True, now=now), now)
        assert ctl_bus.send_command(entry("new", urgent=False, now=now), now)
        await wait_until(lambda: len(watcher.messages) >= 2, timeout_s=10, what="two commands on the bus")
        await asyncio.sleep(0)  # anything else queued would have gone out with them
        ids = [msgspec.json.decode(p, type=bus.SetPowerCap).id for _, _, p in watcher.messages]
        assert sorted(ids) == ["hot", "new"] and ctl_bus.counters.superseded_unsent == 1


def writer_waiting(fd: int) -> bool:
    """Whether the running (asyncio) loop watches `fd` for writing."""
    selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
    try:
        return bool(selector.get_key(fd).events & selectors.EVENT_WRITE)
    except KeyError:
        return False


async def test_an_emergency_is_written_in_the_callers_turn_and_leaves_no_writer_behind(mosquitto: Mosquitto) -> None:
    # Issue 13.3: an emergency no longer waits for a publisher task and a socket-writer callback
    # (two turns of the loop, 3-5 ms at 10,000 devices). aiomqtt adds its writer a turn late, so a
    # writer that paho believed gone stayed and fired on every turn: a core at 100% (seen in the bench).
    async with session(mosquitto, "boot-urgent") as (ctl_bus, watcher):
        assert ctl_bus.client is not None
        paho = ctl_bus.client._client
        sock = paho.socket()
        assert sock is not None
        fd = sock.fileno()
        await wait_until(lambda: not writer_waiting(fd), timeout_s=5, what="the session's writes done")
        for k in range(3):
            now = time.time_ns()
            assert ctl_bus.send_command(entry(f"hot-{k}", urgent=True, now=now), now)
            assert not paho.want_write()  # on the socket already, before this coroutine yields
            assert ctl_bus.urgent.empty()
            await wait_until(
                lambda: len(watcher.messages) == k + 1,  # noqa: B023 - awaited within this iteration
                timeout_s=10,
                what=f"emergency {k} on the bus",
            )
            await wait_until(lambda: not writer_waiting(fd), timeout_s=5, what="no writer left behind")
            assert not paho._registered_write
