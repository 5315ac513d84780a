"""The MQTT session loop ends when cancelled, even when aiomqtt's disconnect fails meanwhile."""

from __future__ import annotations

import asyncio
import types
from typing import Self

import aiomqtt

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
