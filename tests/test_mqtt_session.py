"""The MQTT session loop ends when cancelled, even when aiomqtt's disconnect fails meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import types
from typing import Self

import aiomqtt
import pytest

from xpuctl.common import mqtt_session
from xpuctl.protos.xpu.v1 import bus


class DisconnectTimesOut:
    """A client whose disconnect is never acknowledged (fault injection): aiomqtt's `__aexit__`
    then raises MqttError, which replaces the CancelledError that was unwinding the session.
    """

    def __init__(self) -> None:
        self._client = types.SimpleNamespace(socket=lambda: None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        raise aiomqtt.MqttError("Operation timed out")


async def test_cancelling_the_loop_ends_it_when_the_disconnect_fails() -> None:
    in_session = asyncio.Event()

    async def session(client: object) -> None:
        in_session.set()
        await asyncio.Event().wait()  # a session that runs until cancelled

    loop = mqtt_session.Sessions(
        bus.parse_url("mqtt://127.0.0.1:1"),
        make_client=lambda _protocol: DisconnectTimesOut(),  # type: ignore[arg-type,return-value]
        session=session,
        lost=lambda _why: None,
        reconnect_max_s=0.01,
    )
    task = asyncio.create_task(loop.run(), name="test.sessions")
    await asyncio.wait_for(in_session.wait(), 1.0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=1.0)
    assert task in done and task.cancelled()  # on the previous main it reconnected, forever


async def test_a_cancel_swallowed_by_a_publish_still_ends_the_loop() -> None:
    # Python 3.11's asyncio.wait_for (under aiomqtt's publish) can swallow a cancel that arrives with
    # the acknowledgement: the publisher loop went on and outlived its service, under load.
    waiting, published = asyncio.Event(), asyncio.Event()

    async def swallowing_publish() -> None:
        waiting.set()
        # the bug: the ack wins the race and the cancel is lost (not uncancelled)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        published.set()

    async def publisher() -> None:
        while True:
            await swallowing_publish()
            mqtt_session.check_cancelled()

    task = asyncio.create_task(publisher())
    await asyncio.wait_for(waiting.wait(), 5)
    task.cancel()
    await asyncio.wait_for(published.wait(), 5)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
