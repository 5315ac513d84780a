"""The MQTT session loop that the agent and the controller both run (DESIGN 5).

aiomqtt 2.x does not reconnect by itself: `keep_session` is the loop. It tries MQTT 5 first and,
until a first connection succeeds, rotates to 3.1.1 (the embedded amqtt broker refuses MQTT 5),
waits with full-jitter backoff between attempts, turns Nagle off on every new socket (paho leaves
it on, DESIGN 10), and calls `session(client)` for each connection and `lost(why)` when one ends.
Transport plumbing only; the callers decide what a session does. Lives beside the payloads
because both sides need it and neither may import the other.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt
import msgspec

from xpuctl.common import backoff, tls
from xpuctl.protos.xpu.v1 import bus

log = logging.getLogger("xpu.mqtt")
RECONNECT_BASE_S = 0.2  # the first retry waits up to this; each further one up to twice as long


def protocols(url: bus.BusUrl) -> list[aiomqtt.ProtocolVersion]:
    """The protocol versions to try, in order."""
    if url.protocol == "5":
        return [aiomqtt.ProtocolVersion.V5]
    if url.protocol == "3.1.1":
        return [aiomqtt.ProtocolVersion.V311]
    return [aiomqtt.ProtocolVersion.V5, aiomqtt.ProtocolVersion.V311]


def connect_kwargs(url: bus.BusUrl) -> dict[str, Any]:
    """`tls_context`, `username` and `password` for aiomqtt.Client, from the URL and its files.

    Call it once at start-up too, so that a bad file stops the program instead of every reconnect.

    Raises:
        tls.TlsError: a CA, certificate, key or password file cannot be used.
    """
    out: dict[str, Any] = {}
    if url.tls:
        out["tls_context"] = tls.ssl_context(url.ca_file, url.cert_file, url.key_file)
    if url.username:
        out["username"] = url.username
    if url.password_file:
        out["password"] = tls.read_secret("MQTT password file", url.password_file)
    return out


def set_nodelay(client: aiomqtt.Client) -> None:
    """TCP_NODELAY on the client's socket."""
    sock = client._client.socket()  # noqa: SLF001 - paho's socket is only reachable here
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def will(topic: str, boot_id: str) -> aiomqtt.Will:
    """The last will on a retained status topic: `lost`, sent by the broker if we vanish."""
    return aiomqtt.Will(topic, msgspec.json.encode(bus.Status(state=bus.LOST, boot_id=boot_id)), qos=1, retain=True)


async def say_offline(client: aiomqtt.Client | None, topic: str, boot_id: str) -> None:
    """A graceful goodbye: the retained status says `offline` (the will only covers crashes).

    Best effort within 1 s: a broker that is gone must not hold a shutdown.
    """
    if client is None:
        return
    offline = msgspec.json.encode(bus.Status(state=bus.OFFLINE, boot_id=boot_id, at_ns=time.time_ns()))
    try:
        async with asyncio.timeout(1.0):
            await client.publish(topic, offline, qos=1, retain=True)
    except (TimeoutError, aiomqtt.MqttError) as exc:
        log.info("could not say offline on %s: %s", topic, exc)


class Sessions:
    """Keeps one MQTT session up, forever: `await Sessions(...).run()`."""

    def __init__(
        self,
        url: bus.BusUrl,
        *,
        make_client: Callable[[aiomqtt.ProtocolVersion], aiomqtt.Client],
        session: Callable[[aiomqtt.Client], Awaitable[None]],
        lost: Callable[[str], None],
        reconnect_max_s: float = 5.0,
    ) -> None:
        """`make_client` builds a client for a protocol; `session` runs one connection."""
        self.url = url
        self.make_client, self.session, self.lost = make_client, session, lost
        self.reconnect_max_s = reconnect_max_s
        self.protocol: aiomqtt.ProtocolVersion | None = None  # the one that worked

    async def run(self) -> None:
        """Connect, run the session, reconnect; until cancelled."""
        rng = random.Random()  # noqa: S311 - jitter, not a secret
        attempt = 0
        candidates = protocols(self.url)
        while True:
            protocol = self.protocol or candidates[0]
            try:
                async with self.make_client(protocol) as client:
                    self.protocol = protocol
                    attempt = 0
                    set_nodelay(client)
                    await self.session(client)
            except aiomqtt.MqttError as exc:
                _reraise_a_cancel(exc)
                if self.protocol is None and len(candidates) > 1:
                    # never connected yet: the broker may not speak this version; try the next
                    # one at once, and keep rotating (with backoff per round) until one works
                    candidates = [*candidates[1:], candidates[0]]
                    log.info(
                        "broker %s:%d: %s with %s; trying %s",
                        self.url.host,
                        self.url.port,
                        exc,
                        protocol.name,
                        candidates[0].name,
                    )
                    if candidates[0] != protocols(self.url)[0]:
                        continue
                self.lost(str(exc))
            except Exception as exc:  # a bug while handling one message must not end the bus for good
                _reraise_a_cancel(exc)
                log.exception("MQTT session to %s:%d failed; reconnecting", self.url.host, self.url.port)
                self.lost("internal error (logged above)")
            delay = backoff.delay_s(
                attempt, base_s=RECONNECT_BASE_S, cap_s=self.reconnect_max_s, uniform01=rng.random()
            )
            attempt += 1
            await asyncio.sleep(delay)


def _reraise_a_cancel(exc: BaseException) -> None:
    """Cancel the loop when it is being cancelled, whatever error replaced the CancelledError.

    aiomqtt's `__aexit__` waits for the broker to acknowledge the disconnect; when that times out it
    raises MqttError, which replaces the CancelledError that was unwinding the session. Swallowed,
    the loop would reconnect and the bus task would outlive its service.

    Raises:
        asyncio.CancelledError: the current task has a pending cancellation.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


def check_cancelled() -> None:
    """Raise CancelledError when the current task has been asked to stop.

    Call it after each publish in a loop. aiomqtt's publish awaits `asyncio.wait_for`, which on
    Python 3.11 can swallow a cancellation that arrives just as the broker's acknowledgement does;
    the loop would then go on, and the task (with the TaskGroup waiting for it) outlive its service
    (seen under load as a leaked `mqtt[controller].tx` task after a broker restart).

    Raises:
        asyncio.CancelledError: a cancellation is pending on this task.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
