"""The controller's goodbye on a real Mosquitto: once it said `offline`, no lease may follow.

The lease (`status/controller`, retained, `online`) is republished every heartbeat through the
session's publisher task; `say_offline` publishes directly. A lease queued or due at that moment
must not overwrite the goodbye, or agents would read a live controller that is gone (CI saw it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

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


async def test_a_superseded_command_is_dropped_not_sent_after_its_successor(mosquitto: Mosquitto) -> None:
    # Issue 13.3: emergencies jump the queue (their own publisher), so a queued command whose device has a newer
    # one by the time it would go out is dropped (sent after its successor, it would undo it).
    watcher = Watcher(mosquitto.url, f"{TOPICS.root}/cmd/+/req")
    await watcher.start()
    ctl_bus = mqtt.ControllerBus(
        url=bus.parse_url(mosquitto.url),
        boot_id="boot-superseded",
        on_result=lambda *_: None,
        on_state=lambda *_: None,
        on_status=lambda *_: None,
    )
    ctl_bus.current = lambda e: e.id != "old"
    task = asyncio.create_task(ctl_bus.run(), name="test.controller-bus")
    try:
        await asyncio.wait_for(ctl_bus.connected.wait(), 10)

        now = time.time_ns()

        def entry(id_: str, *, urgent: bool) -> ledger.Entry:
            return ledger.Entry(
                id=id_,
                kind="set_power_cap",
                slot=0,
                node_id="n1",
                device_uuid="gpu-0",
                cap_w=300.0,
                reason="test",
                issued_at_ns=now,
                expires_at_ns=now + 10 * 10**9,
                urgent=urgent,
            )

        assert ctl_bus.send_command(entry("old", urgent=False), now)
        assert ctl_bus.send_command(entry("hot", urgent=True), now)
        assert ctl_bus.send_command(entry("new", urgent=False), now)
        await wait_until(lambda: len(watcher.messages) >= 2, timeout_s=10, what="two commands on the bus")
        await asyncio.sleep(0)  # anything else queued would have gone out with them
        ids = [msgspec.json.decode(p, type=bus.SetPowerCap).id for _, _, p in watcher.messages]
        assert sorted(ids) == ["hot", "new"] and ctl_bus.counters.superseded_unsent == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await watcher.stop()
