"""`--mqtt embedded`: an in-process MQTT broker (amqtt), so a demo needs no setup.

amqtt speaks MQTT 3.1.1 only; the bus is built to work on it (DESIGN 5). For production use
Mosquitto (deploy/mosquitto/). Loopback by default: the embedded broker has no authentication.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

from amqtt.broker import Broker

log = logging.getLogger("xpu.controller.broker")
# amqtt and its state machine library log every connection at INFO; keep their warnings only
for _name in ("amqtt", "transitions"):
    logging.getLogger(_name).setLevel(logging.WARNING)
# what amqtt says when it writes to a client that has just gone (an agent stopped or was killed)
_GONE = ("handler is closed", "Connection lost", "Broken pipe", "Connection reset")


class _ClientGone(logging.Filter):
    """amqtt logs a traceback at ERROR when a message meets a client that has just disconnected:
    that is a client leaving, not a fault of the broker. Those records go to DEBUG (one line, no
    traceback); every other warning and error of amqtt passes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        text = record.getMessage() + ("" if exc is None else f" {exc}")
        if isinstance(exc, ConnectionError) or any(gone in text for gone in _GONE):
            log.debug("a client left while amqtt wrote to it: %s", text[:200])
            return False
        return True


for _name in ("amqtt.broker", "amqtt.mqtt.protocol.handler", "amqtt.mqtt.protocol.broker_handler"):
    logging.getLogger(_name).addFilter(_ClientGone())


class _Snapshots(dict[str, Any]):
    """A dict whose iteration walks a copy of its keys (or items).

    amqtt (0.12) walks its subscription table with awaits inside the loop (on every client's
    connect, to send retained messages): another client subscribing meanwhile ended that connect
    with "dictionary changed size during iteration" and a traceback, seen when the demo's agents
    all connected at once. Walking a copy makes that loop see the table as it was when it began.
    """

    def __iter__(self) -> Iterator[str]:
        return iter(list(super().keys()))

    def items(self) -> Any:  # noqa: ANN401 - dict's own view type; a list of pairs here
        return list(super().items())


@contextlib.asynccontextmanager
async def embedded(host: str = "127.0.0.1", port: int = 1883) -> AsyncIterator[str]:
    """Run a broker on host:port for the duration; yields its mqtt:// URL.

    Raises:
        OSError: the port cannot be bound.
    """
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )
    broker._subscriptions = _Snapshots(broker._subscriptions)  # noqa: SLF001 - see _Snapshots
    await broker.start()
    url = f"mqtt://{host}:{port}?protocol=3.1.1"
    log.info("embedded MQTT broker (amqtt, MQTT 3.1.1) on %s:%d", host, port)
    try:
        yield url
    finally:
        # amqtt logs tracebacks for clients that left before it did; at our own shutdown they are noise
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        await broker.shutdown()
