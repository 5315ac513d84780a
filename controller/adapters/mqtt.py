"""The controller's side of the action bus (DESIGN 5): commands and events out, answers in.

Moves bytes between aiomqtt and the service; decides nothing. `run` is the reconnect loop
(aiomqtt 2.x has none) with jittered backoff. While connected, the controller's retained status
says `online` and is republished every heartbeat: that is the agents' lease; the will says `lost`.
Outgoing messages go through one bounded queue and one publisher task per session (no task per
message: CPython's cyclic GC made those cost most of a tick, DESIGN 10). MQTT 5 is tried first;
on a 3.1.1 broker the same JSON travels without properties.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

import aiomqtt
import msgspec
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from xpuctl.common import logs, mqtt_session
from xpuctl.controller.core import events, ledger
from xpuctl.protos.xpu.v1 import bus

log = logging.getLogger("xpu.controller.mqtt")

OnResult = Callable[[str, bus.Result, int], None]
OnState = Callable[[str, bus.NodeState], None]
OnStatus = Callable[[str, bus.Status], None]
OnLink = Callable[[str, str], None]  # ("up" or "down", why): the session came up or went down
_event_encoder = msgspec.json.Encoder()


class Counters(msgspec.Struct, kw_only=True):
    """What the bus has done."""

    commands_sent: int = 0
    events_sent: int = 0
    dropped_outgoing: int = 0
    garbage_in: int = 0
    results_in: int = 0
    connects: int = 0
    disconnects: int = 0
    superseded_unsent: int = 0  # commands dropped from the queue: their device has a newer one
    fenced_unsent: int = 0  # commands and leases not sent: this controller no longer acts for its shard


# Publishers on one session. A QoS 1 publish waits for the broker's PUBACK, one loop round trip:
# one publisher sent one message per round trip, and at 10,000 devices a command waited behind
# events for up to 0.5 s (issue 13.3). Several pipeline them; paho keeps the order of the calls.
# One more publisher takes only thermal emergencies, so that one never waits for a free one.
PUBLISHERS = 8
URGENT, COMMAND, OTHER = 0, 1, 2  # priorities: emergencies (their own queue), commands, the rest
# (priority, order, topic, payload, retain, properties, the command or None)
Outgoing = tuple[int, int, str, bytes, bool, Properties | None, ledger.Entry | None]


class ControllerBus:
    """The controller's MQTT session."""

    def __init__(
        self,
        *,
        url: bus.BusUrl,
        boot_id: str,
        on_result: OnResult,
        on_state: OnState,
        on_status: OnStatus,
        on_link: OnLink | None = None,
        topics: bus.Topics | None = None,
        heartbeat_s: float = 1.0,
        max_queued: int = 10_000,
        reconnect_max_s: float = 5.0,
        shard: str = "",
        address: str = "",
    ) -> None:
        """Nothing connects until `run`.

        With a `shard` (DESIGN 11) the lease is the shard's (`status/controller/<shard>`), there is
        no will (a standby that dies must not speak for the owner: agents see the heartbeats stop),
        and commands and leases go out only while `gate()` says this controller acts for the shard,
        checked just before each is handed to the socket.
        """
        self.url = url
        self.connect_kwargs = mqtt_session.connect_kwargs(url)  # raises tls.TlsError on a bad file, at once
        self.boot_id = boot_id
        self.on_result, self.on_state, self.on_status = on_result, on_state, on_status
        self.on_link = on_link
        self.throttle = logs.Throttle()
        self.topics = topics or bus.Topics()
        self.shard = shard
        self.address = address  # advertised in the shard's lease, so that agents come straight here
        self.lease_topic = self.topics.lease(shard)
        self.gate: Callable[[], bool] = lambda: True  # set by the service: whether we act for the shard
        self.epoch: Callable[[], int] = lambda: 0  # set by the service: the shard's fencing epoch
        self.heartbeat_s = heartbeat_s
        self.max_queued = max_queued
        self.reconnect_max_s = reconnect_max_s
        self.sessions: mqtt_session.Sessions | None = None
        self.client: aiomqtt.Client | None = None
        # commands before events and leases; emergencies apart (see URGENT, COMMAND, OTHER)
        self.outgoing: asyncio.PriorityQueue[Outgoing] = asyncio.PriorityQueue(max_queued)
        self.urgent: asyncio.Queue[Outgoing] = asyncio.Queue(max_queued)
        # set by the service: whether a queued command is still its device's (not superseded,
        # answered or expired); one that is not is dropped rather than sent after its successor
        self.current: Callable[[ledger.Entry], bool] = lambda _e: True
        self._order = 0
        self.counters = Counters()
        self.connected = asyncio.Event()
        self.leaving = False  # set by say_offline: from then on no `online` lease may follow it

    # -- outgoing --------------------------------------------------------------------------------

    def _offer(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        props: Properties | None = None,
        command: ledger.Entry | None = None,
    ) -> bool:
        self._order += 1
        priority = OTHER if command is None else URGENT if command.urgent else COMMAND
        if priority == URGENT and self.urgent.empty() and self._send_now(topic, payload, props):
            return True
        queue = self.urgent if priority == URGENT else self.outgoing
        try:
            queue.put_nowait((priority, self._order, topic, payload, retain, props, command))
        except asyncio.QueueFull:
            self.counters.dropped_outgoing += 1
            return False
        return True

    def _send_now(self, topic: str, payload: bytes, props: Properties | None) -> bool:
        """Hand an emergency to the socket now, from the caller's turn of the event loop (issue 13.3).

        Through a publisher task it waited two turns of the loop (the task's wake-up, then the
        socket's write callback), and a step of the control tick or a burst of telemetry could run
        in each: 3-5 ms at 10,000 devices. paho queues the packet and `loop_write` writes what the
        socket takes at once (the rest when it is writable, as for every publish); its PUBACK is
        matched by paho, and aiomqtt ignores a publish nobody awaits. False when there is no
        session, this controller is fenced (the publisher then counts it), or paho refuses: the
        queue takes it.
        """
        if self.client is None or not self.gate():
            return False
        paho = self.client._client  # noqa: SLF001 - aiomqtt's paho client: its publish and loop_write
        if paho.publish(topic, payload, qos=1, retain=False, properties=props).rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        paho.loop_write()
        if not paho.want_write():
            # aiomqtt adds its socket writer a turn late (call_soon_threadsafe), so the writer that
            # `publish` asked for arrives after `loop_write` has unregistered it, and with paho
            # believing none is there it would fire on every turn, forever (a core at 100%).
            # Asking again leaves both sides agreeing: the writer comes, finds nothing, goes.
            paho._call_socket_register_write()  # noqa: SLF001 - see above
        return True

    def send_command(self, e: ledger.Entry, now_ns: int) -> bool:
        """Queue a command; False when there is no session (the ledger will offer it again)."""
        if self.client is None:
            return False
        cmd: bus.Command
        if e.kind == "restore_default":
            cmd = bus.RestoreDefault(
                id=e.id,
                device_uuid=e.device_uuid,
                reason=e.reason[:1024],
                issued_at_ns=e.issued_at_ns,
                expires_at_ns=e.expires_at_ns,
                shard=self.shard,
                epoch=self.epoch(),
            )
        else:
            cmd = bus.SetPowerCap(
                id=e.id,
                device_uuid=e.device_uuid,
                power_cap_w=e.cap_w,
                reason=e.reason[:1024],
                issued_at_ns=e.issued_at_ns,
                expires_at_ns=e.expires_at_ns,
                shard=self.shard,
                epoch=self.epoch(),
            )
        props = None
        if self.sessions is not None and self.sessions.protocol == aiomqtt.ProtocolVersion.V5:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho is untyped
            props.MessageExpiryInterval = max(1, math.ceil((e.expires_at_ns - now_ns) / 1e9))
            props.ResponseTopic = self.topics.cmd_res(e.node_id)
            props.CorrelationData = e.id.encode()
        sent = self._offer(self.topics.cmd_req(e.node_id), msgspec.json.encode(cmd), props=props, command=e)
        if sent:
            self.counters.commands_sent += 1
        return sent

    def send_safe_caps(self, node_id: str, caps: dict[str, float], now_ns: int) -> bool:
        """Queue a node's site-safe caps (retained; sharded deployments only); False with no session."""
        if self.client is None or not self.shard:
            return False
        payload = bus.SafeCaps(shard=self.shard, epoch=self.epoch(), at_ns=now_ns, caps=caps)
        return self._offer(self.topics.safe(node_id), msgspec.json.encode(payload), retain=True)

    def send_event(self, event: events.Event) -> None:
        """Queue an event for `xpu/v1/events` (dropped, and counted, when there is no room)."""
        if self.client is not None and self._offer(self.topics.events, _event_encoder.encode(event)):
            self.counters.events_sent += 1

    # -- the session -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep the session up until cancelled (call `say_offline` first for a clean goodbye)."""
        self.sessions = mqtt_session.Sessions(
            self.url,
            make_client=self._client,
            session=self._session,
            lost=self._lost,
            reconnect_max_s=self.reconnect_max_s,
        )
        await self.sessions.run()

    def _client(self, protocol: aiomqtt.ProtocolVersion) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.url.host,
            self.url.port,
            identifier=f"xpu-controller-{self.boot_id[:8]}",
            protocol=protocol,
            will=None if self.shard else mqtt_session.will(self.lease_topic, self.boot_id),
            keepalive=10,
            max_queued_incoming_messages=self.max_queued,
            **self.connect_kwargs,
            timeout=5,
        )

    def _lost(self, why: str) -> None:
        was_up = self.client is not None
        if was_up or self.counters.connects == 0:
            log.warning("MQTT broker %s:%d: %s; reconnecting", self.url.host, self.url.port, why)
        if was_up:
            self.counters.disconnects += 1
            if self.on_link is not None:
                self.on_link("down", why)
        self.client = None
        self.connected.clear()
        for queue in (self.urgent, self.outgoing):
            while not queue.empty():  # stale by the next session; the ledger re-sends commands
                queue.get_nowait()

    async def _session(self, client: aiomqtt.Client) -> None:
        await client.subscribe(f"{self.topics.root}/cmd/+/res", qos=1)
        await client.subscribe(f"{self.topics.root}/state/+", qos=1)
        await client.subscribe(f"{self.topics.root}/status/+", qos=1)
        await self._heartbeat_once(client)
        self.client = client
        self.counters.connects += 1
        self.connected.set()
        log.info("MQTT session up (%s:%d, session %d)", self.url.host, self.url.port, self.counters.connects)
        if self.on_link is not None:
            self.on_link("up", f"session {self.counters.connects}")
        try:
            async with asyncio.TaskGroup() as tg:
                for k in range(PUBLISHERS):
                    tg.create_task(self._publisher(client, self.outgoing), name=f"mqtt[controller].tx{k}")
                tg.create_task(self._publisher(client, self.urgent), name="mqtt[controller].urgent")
                tg.create_task(self._heartbeat(), name="mqtt[controller].lease")
                async for message in client.messages:
                    self._on_message(message)
        except* aiomqtt.MqttError as group:  # the session is gone: one error is enough to say so
            raise group.exceptions[0] from None

    async def _heartbeat_once(self, client: aiomqtt.Client) -> None:
        if self.leaving or not self.gate():
            return
        status = bus.Status(
            state=bus.ONLINE, boot_id=self.boot_id, at_ns=time.time_ns(), lease_s=self.heartbeat_s, address=self.address
        )
        await client.publish(self.lease_topic, msgspec.json.encode(status), qos=1, retain=True)

    async def _heartbeat(self) -> None:
        """Queue the lease every heartbeat: the publishers do all publishing on a session."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if not self.gate():
                continue
            status = bus.Status(
                state=bus.ONLINE,
                boot_id=self.boot_id,
                at_ns=time.time_ns(),
                lease_s=self.heartbeat_s,
                address=self.address,
            )
            self._offer(self.lease_topic, msgspec.json.encode(status), retain=True)

    async def _publisher(self, client: aiomqtt.Client, queue: asyncio.Queue[Outgoing]) -> None:
        while True:
            _, _, topic, payload, retain, props, command = await queue.get()
            if command is not None and not self.current(command):
                self.counters.superseded_unsent += 1
                continue
            if self.leaving and topic == self.lease_topic:
                continue  # a lease queued before the goodbye must not overwrite it
            if (command is not None or retain) and not self.gate():  # commands, the lease, site-safe caps
                self.counters.fenced_unsent += 1  # fenced since it was queued (a pause, a lapsed lease)
                continue
            # no await between the check above and this call: paho queues the packet at once, so
            # a lease published here is on the wire before say_offline's `offline`
            await client.publish(topic, payload, qos=1, retain=retain, properties=props)
            mqtt_session.check_cancelled()

    def _on_message(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
        node = self.topics.node_of(topic)
        try:
            if topic.endswith("/res"):
                self.counters.results_in += 1
                self.on_result(node, msgspec.json.decode(payload, type=bus.Result), time.time_ns())
            elif "/state/" in topic:
                if payload:
                    self.on_state(node, msgspec.json.decode(payload, type=bus.NodeState))
            elif "/status/" in topic and node != "controller" and payload:
                self.on_status(node, msgspec.json.decode(payload, type=bus.Status))
        except msgspec.DecodeError as exc:
            self.counters.garbage_in += 1
            held = self.throttle.allow("garbage", time.monotonic())
            if held is not None:
                more = f" ({held} more held back)" if held else ""
                log.warning("unreadable message on %s: %s%s", topic, exc, more)

    async def say_offline(self) -> None:
        """Retained status `offline`: the controller is leaving on purpose.

        Leases still queued, or due, are not sent after it, so the retained status ends `offline`.
        """
        self.leaving = True
        if self.gate():  # a standby's goodbye is not the shard's: the owner still holds the lease
            await mqtt_session.say_offline(self.client, self.lease_topic, self.boot_id)
