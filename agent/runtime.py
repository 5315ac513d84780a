"""One agent: discover devices, sample them every tick, buffer the batches, stream them.

The tick loop never waits on the network: it encodes each tick's batch into the bounded buffer
and wakes the link, which sends when it can (agent/adapters/link.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid

import grpc.aio

from xpuctl import agent
from xpuctl.agent.adapters import codec, link, mqtt
from xpuctl.agent.adapters.sampler import Sampler
from xpuctl.agent.core import actuator, buffer, model
from xpuctl.agent.drivers.base import DriverError
from xpuctl.common import tls
from xpuctl.protos.xpu.v1 import bus

log = logging.getLogger("xpu.agent")


class _NewDevicesError(Exception):
    """A driver found devices on a later try: the running boot ends and a new one starts."""


class Agent:
    """A node agent: sampler + buffer + link."""

    def __init__(
        self,
        *,
        node_id: str,
        controller: str,
        sampler: Sampler,
        interval_s: float = 1.0,
        buffer_batches: int = 600,
        labels: dict[str, str] | None = None,
        channel: grpc.aio.Channel | None = None,
        rng: random.Random | None = None,
        backoff_cap_s: float = link.BACKOFF_CAP_S,
        bus_url: bus.BusUrl | None = None,
        failsafe_after_s: float = 15.0,
        max_command_lifetime_s: float = 300.0,
        tls_files: tls.ClientFiles | None = None,
        rediscover_s: float = 30.0,
        shard: str = "",
    ) -> None:
        """Create the agent; nothing runs until `run`. Without `bus_url` there is no actuator.

        `rediscover_s`: how often drivers whose discovery failed are tried again.
        """
        self.rediscover_s = rediscover_s
        self.shard = shard
        self.node_id = node_id
        self.boot_id = str(uuid.uuid4())
        self.sampler = sampler
        self.interval_s = interval_s
        self.labels = labels or {}
        self.devices: list[model.DeviceInfo] = []
        self.buffer = buffer.BatchBuffer(buffer_batches)
        self.seq = 0
        self.link = link.Link(
            target=controller,
            node_id=node_id,
            boot_id=self.boot_id,
            make_hello=self._hello,
            batches=self.buffer,
            channel=channel,
            rng=rng,
            backoff_cap_s=backoff_cap_s,
            tls_files=tls_files,
        )
        self.discovered = asyncio.Event()
        self.bus_url = bus_url
        self.failsafe_after_s = failsafe_after_s
        self.max_command_lifetime_s = max_command_lifetime_s
        self.bus: mqtt.AgentBus | None = None

    def _hello(self, acked_seq: int) -> bytes:
        return codec.hello(
            node_id=self.node_id,
            boot_id=self.boot_id,
            agent_version=agent.__version__,
            devices=self.devices,
            labels=self.labels,
            interval_s=self.interval_s,
            acked_seq=acked_seq,
        )

    async def run(self) -> None:
        """Discover, then sample and stream until cancelled.

        When a driver whose discovery failed finds devices later, the Hello's device list
        changes, so the agent starts a new boot (new boot_id, seq from 1) on the same stream and
        bus, after giving the old boot's unacknowledged batches a moment to go out.
        """
        self.devices = await self.sampler.discover()
        log.info("node %s: %d device(s) discovered", self.node_id, len(self.devices), extra={"node_id": self.node_id})
        self.discovered.set()
        try:
            while True:
                if self.bus_url is not None:
                    self.bus = self._make_bus(self.bus_url)
                try:
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self.link.run(), name=f"agent[{self.node_id}].link")
                        tg.create_task(self._tick_loop(), name=f"agent[{self.node_id}].ticks")
                        if self.bus is not None:
                            tg.create_task(self.bus.run(), name=f"agent[{self.node_id}].mqtt")
                        if self.sampler.missing:
                            tg.create_task(self._rediscover_loop(), name=f"agent[{self.node_id}].rediscover")
                except* _NewDevicesError:
                    self._new_boot()
        finally:
            self.sampler.close()

    async def _rediscover_loop(self) -> None:
        """Try the drivers that found nothing every `rediscover_s`; end this boot when one does."""
        while self.sampler.missing:
            await asyncio.sleep(self.rediscover_s)
            if await self.sampler.discover_missing():
                if self.link.connected:  # let the old boot's last batches reach the controller
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(2 * self.interval_s):
                            while len(self.buffer):  # noqa: ASYNC110 - the link drains it; bounded above
                                await asyncio.sleep(0.05)
                raise _NewDevicesError

    def _new_boot(self) -> None:
        """A fresh boot_id, seq and buffer for the new device list; the link and bus reconnect."""
        unsent = len(self.buffer)
        self.devices = self.sampler.adopt_found()
        self.boot_id = str(uuid.uuid4())
        self.seq = 0
        self.buffer = buffer.BatchBuffer(self.buffer.capacity)
        self.link.boot_id, self.link.batches = self.boot_id, self.buffer
        log.warning(
            "node %s: %d device(s) now; streaming them as a new boot %s%s",
            self.node_id,
            len(self.devices),
            self.boot_id,
            f" ({unsent} unacknowledged batch(es) of the old boot left behind)" if unsent else "",
            extra={"node_id": self.node_id},
        )

    async def leave(self) -> None:
        """Say `offline` on the bus and goodbye on the stream while the session is still up: call
        before cancelling `run`.

        A clean MQTT disconnect discards the will, so without this goodbye a stopped agent's
        retained status would stay `online`.
        """
        if self.bus is not None:
            await self.bus.say_offline()
        await self.link.goodbye()

    def _make_bus(self, url: bus.BusUrl) -> mqtt.AgentBus:
        ranges = [
            actuator.DeviceRange(
                uuid=d.uuid,
                index=d.index,
                min_w=d.power_limit_min_w,
                max_w=d.power_limit_max_w,
                default_w=d.power_limit_default_w,
                settable=d.power_cap_settable,
            )
            for d in self.devices
        ]
        act = actuator.Actuator(
            self.node_id,
            ranges,
            failsafe_after_s=self.failsafe_after_s,
            now_ns=time.time_ns(),
            max_lifetime_s=self.max_command_lifetime_s,
        )
        agent_bus = mqtt.AgentBus(
            url=url, node_id=self.node_id, boot_id=self.boot_id, act=act, apply_cap=self._apply_cap, shard=self.shard
        )
        agent_bus.on_owner = self.link.owner_is  # a new owner's lease: stream to it without waiting out a backoff
        return agent_bus

    async def _apply_cap(self, uuid: str, index: int, cap_w: float) -> float:
        """Write one device's cap through its driver, off the loop; returns the enforced limit."""
        for driver, devices in zip(self.sampler.drivers, self.sampler.devices, strict=True):
            if any(d.uuid == uuid for d in devices):
                return await self.sampler.call(driver.set_power_cap, index, cap_w)
        msg = f"no driver has device {uuid}"
        raise DriverError(msg)

    async def tick(self) -> None:
        """Sample every device once and queue the batch."""
        samples, rows = await self.sampler.sample(time.time_ns())
        self.seq += 1
        self.buffer.make_room()
        payload = codec.batch(seq=self.seq, dropped_total=self.buffer.dropped_total, samples=samples, rows=rows)
        self.buffer.append(self.seq, payload)
        self.link.wake()

    async def _tick_loop(self) -> None:
        next_at = time.monotonic()
        while True:
            await self.tick()
            next_at += self.interval_s
            now = time.monotonic()
            next_at = max(next_at, now)  # fell behind (suspended, overloaded): skip, do not burst
            await asyncio.sleep(next_at - now)
