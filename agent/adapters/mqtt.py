"""The agent's side of the action bus (DESIGN 5): commands in, results and state out, the lease.

Moves bytes between aiomqtt and the actuator rules (agent/core/actuator.py); decides nothing.
aiomqtt 2.x does not reconnect by itself, so `run` is the reconnect loop (with jittered
backoff), and the incoming queue is bounded. MQTT 5 is tried first; a broker that only speaks
3.1.1 (the embedded amqtt) is then spoken to in 3.1.1, where every meaning is in the payload.
Driver calls run off the loop through `apply_cap` (the runtime gives it the sampler's pool).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import aiomqtt
import msgspec
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from xpuctl.agent.core import actuator
from xpuctl.agent.drivers import base
from xpuctl.common import mqtt_session
from xpuctl.protos.xpu.v1 import bus

log = logging.getLogger("xpu.agent.mqtt")

ApplyCap = Callable[[str, int, float], Awaitable[float]]
LEASE_CHECK_S = 0.2
MAX_QUEUED_INCOMING = 1000


class AgentBus:
    """One node's MQTT session, kept up for as long as `run` runs."""

    def __init__(
        self,
        *,
        url: bus.BusUrl,
        node_id: str,
        boot_id: str,
        act: actuator.Actuator,
        apply_cap: ApplyCap,
        topics: bus.Topics | None = None,
        reconnect_max_s: float = 5.0,
        shard: str = "",
    ) -> None:
        """Nothing connects until `run`; the lease followed is `shard`'s owner's (DESIGN 11) or the one controller's."""
        self.url = url
        self.connect_kwargs = mqtt_session.connect_kwargs(url)  # raises tls.TlsError on a bad file, at once
        self.node_id = node_id
        self.boot_id = boot_id
        self.act = act
        self.apply_cap = apply_cap
        self.topics = topics or bus.Topics()
        self.lease_topic = self.topics.lease(shard)
        self.on_owner: Callable[[str], None] | None = None  # a shard owner's lease named its address
        self.reconnect_max_s = reconnect_max_s
        self.client: aiomqtt.Client | None = None
        self.sessions: mqtt_session.Sessions | None = None
        self.connects = 0
        self.controller_garbage = 0
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Keep the session up and check the lease, until cancelled."""
        async with asyncio.TaskGroup() as tg:
            sessions = mqtt_session.Sessions(
                self.url,
                make_client=self._client,
                session=self._session,
                lost=self._lost,
                reconnect_max_s=self.reconnect_max_s,
            )
            self.sessions = sessions
            tg.create_task(sessions.run(), name=f"mqtt[{self.node_id}].session")
            tg.create_task(self._lease_loop(), name=f"mqtt[{self.node_id}].lease")

    def _client(self, protocol: aiomqtt.ProtocolVersion) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.url.host,
            self.url.port,
            identifier=f"xpu-agent-{self.node_id}",
            protocol=protocol,
            will=mqtt_session.will(self.topics.status(self.node_id), self.boot_id),
            keepalive=10,
            max_queued_incoming_messages=MAX_QUEUED_INCOMING,
            **self.connect_kwargs,
            timeout=5,
        )

    def _lost(self, why: str) -> None:
        if self.client is not None or self.connects == 0:
            log.warning("MQTT broker %s:%d: %s; reconnecting", self.url.host, self.url.port, why)
        self.client = None
        self.connected.clear()
        self.act.on_bus_lost()

    async def _session(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.connects += 1
        online = bus.Status(state=bus.ONLINE, boot_id=self.boot_id, at_ns=time.time_ns())
        await client.publish(self.topics.status(self.node_id), msgspec.json.encode(online), qos=1, retain=True)
        await self._publish_state()
        await client.subscribe(self.topics.cmd_req(self.node_id), qos=1)
        await client.subscribe(self.lease_topic, qos=1)
        if self.lease_topic != self.topics.controller_status:  # a shard's node: its site-safe caps too
            await client.subscribe(self.topics.safe(self.node_id), qos=1)
        self.connected.set()
        log.info("MQTT session up (%s:%d, protocol %s)", self.url.host, self.url.port, client._client.protocol)  # noqa: SLF001
        async for message in client.messages:
            await self._on_message(message)
            mqtt_session.check_cancelled()  # its publishes may have swallowed a cancel (py3.11)

    async def _on_message(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
        now_ns = time.time_ns()
        if topic == self.topics.safe(self.node_id):
            why = self.act.on_safe_caps(bytes(payload))
            if why:
                log.warning("%s", why, extra={"node_id": self.node_id})
            return
        if topic == self.lease_topic:
            try:
                status = msgspec.json.decode(payload, type=bus.Status)
            except msgspec.DecodeError:
                self.controller_garbage += 1
                log.warning("unreadable controller status on %s: %r", topic, bytes(payload[:80]))
                return
            if status.state == bus.ONLINE and status.address and self.on_owner is not None:
                self.on_owner(status.address)
            if self.act.on_controller_status(status.state, now_ns):
                log.info("controller lease back: fail-safe ended", extra={"node_id": self.node_id})
                await self._publish_state()
            return
        decision = self.act.on_command(self.topics.node_of(topic), bytes(payload), now_ns)
        correlation = getattr(message.properties, "CorrelationData", None) if message.properties else None
        match decision:
            case actuator.Ignore(why=why):
                log.info("command ignored: %s", why)
            case actuator.Answer(result=result):
                if not result.ok:
                    log.warning("command %s refused: %s", result.id or "?", result.error)
                await self._answer(result, correlation)
            case actuator.Apply() as apply:
                result = await self._apply(apply)
                await self._answer(result, correlation)
                await self._publish_state()

    async def _apply(self, apply: actuator.Apply) -> bus.Result:
        try:
            enforced = await self.apply_cap(apply.uuid, apply.index, apply.cap_w)
        except TimeoutError:
            return self.act.failed(apply, f"driver did not answer the cap write for {apply.uuid} in time")
        except base.DriverError as exc:
            return self.act.failed(apply, f"driver refused the cap for {apply.uuid}: {exc}")
        log.info(
            "%s: cap %.0f W applied, %.0f W enforced (%s)",
            apply.uuid,
            apply.cap_w,
            enforced,
            apply.id or "fail-safe",
            extra={"node_id": self.node_id, "hw.id": apply.uuid},
        )
        return self.act.applied(apply, enforced)

    async def _answer(self, result: bus.Result, correlation: bytes | None) -> None:
        client = self.client
        if client is None:
            return
        props = None
        if correlation and self.sessions and self.sessions.protocol == aiomqtt.ProtocolVersion.V5:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho is untyped
            props.CorrelationData = correlation
        # always our own res topic, whatever a response-topic property says: the ACL allows no other
        await client.publish(self.topics.cmd_res(self.node_id), msgspec.json.encode(result), qos=1, properties=props)

    async def _publish_state(self) -> None:
        client = self.client
        if client is None:
            return
        state = self.act.state(time.time_ns())
        await client.publish(self.topics.state(self.node_id), msgspec.json.encode(state), qos=1, retain=True)

    async def _lease_loop(self) -> None:
        while True:
            restores = self.act.check_lease(time.time_ns())
            if restores:
                safe = sum(not a.restore for a in restores)
                log.warning(
                    "controller lease lost: fail-safe on %d device(s): %d to their site-safe cap, %d to their default",
                    len(restores),
                    safe,
                    len(restores) - safe,
                )
                for apply in restores:
                    await self._apply(apply)
                try:
                    await self._publish_state()
                except aiomqtt.MqttError as exc:
                    log.warning("could not report fail-safe state: %s", exc)
                mqtt_session.check_cancelled()
            await asyncio.sleep(LEASE_CHECK_S)

    async def say_offline(self) -> None:
        """A graceful goodbye: the retained status says `offline` (the will only covers crashes)."""
        await mqtt_session.say_offline(self.client, self.topics.status(self.node_id), self.boot_id)
