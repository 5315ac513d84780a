"""Runs driver calls off the event loop, each with a timeout, and never lets one hang the agent.

A driver call that does not return in time makes that driver's devices `unknown` (with the
reason); while the call stays blocked, no second call is started on the same driver (it would only
pile up threads), and its devices stay unknown until it returns.

A driver whose discovery failed or hung has no devices to mark: it is remembered as missing, and
`discover_missing` tries it again (the agent does, every `rediscover_s`): a vendor driver that
loads after the agent started, or a tool that was broken at boot, is picked up without a restart.
What a later try finds is held back until `adopt_found`: until then the samples keep the rows of
the device list the controller was told about.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from xpuctl.agent.core import model
from xpuctl.agent.drivers import base

log = logging.getLogger("xpu.agent.sampler")
T = TypeVar("T")


class Sampler:
    """Discovers and samples the devices of several drivers side by side."""

    def __init__(
        self,
        drivers: list[base.Driver],
        *,
        timeout_s: float,
        executor: concurrent.futures.Executor | None = None,
        inline: bool = False,
    ) -> None:
        """Drivers are called in `executor` (a private pool by default).

        `inline` calls drivers on the loop itself: only for simulated fleets known not to block.
        """
        self.drivers = drivers
        self.timeout_s = timeout_s
        self.inline = inline
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=max(2, len(drivers) + 1), thread_name_prefix="xpu-driver"
        )
        self._inflight: dict[int, tuple[asyncio.Future[list[model.DeviceSample]], float]] = {}
        self.devices: list[list[model.DeviceInfo]] = [[] for _ in drivers]
        self.failures_total = 0
        self._failing: set[int] = set()
        self.missing: set[int] = set()  # drivers whose discovery failed or hung: tried again
        self.why_missing: dict[int, str] = {}  # driver -> why its last discovery found nothing
        self._found: dict[int, list[model.DeviceInfo]] = {}  # found by a later try, not adopted yet
        self._discovering: dict[int, asyncio.Future[list[model.DeviceInfo]]] = {}

    async def discover(self) -> list[model.DeviceInfo]:
        """Every device of every driver; a driver that fails or hangs contributes none (yet)."""
        for i in range(len(self.drivers)):
            self.devices[i] = await self._discover_driver(i) or []
        return self.all_devices()

    def all_devices(self) -> list[model.DeviceInfo]:
        """The devices in use, driver by driver: the rows of the agent's Hello."""
        return [d for devices in self.devices for d in devices]

    async def discover_missing(self) -> bool:
        """Try the drivers whose discovery failed again; True when one of them found devices.

        What they found is not sampled before `adopt_found`.
        """
        for i in sorted(self.missing):
            found = await self._discover_driver(i)
            if found:
                log.info("%s driver: %d device(s) found on a later try", self.drivers[i].vendor, len(found))
                self._found[i] = found
        return bool(self._found)

    def adopt_found(self) -> list[model.DeviceInfo]:
        """Sample what later tries found from now on; returns the new device list (new rows)."""
        for i, found in self._found.items():
            self.devices[i] = found
        self._found.clear()
        return self.all_devices()

    async def _discover_driver(self, i: int) -> list[model.DeviceInfo] | None:
        """One driver's devices, or None when it failed or hung (it is then `missing`)."""
        driver = self.drivers[i]
        pending = self._discovering.get(i)
        if pending is not None and not pending.done():
            return None  # the last try is still blocked in its thread: do not pile up another
        future = asyncio.get_running_loop().run_in_executor(self._executor, driver.discover)
        future.add_done_callback(_retrieve)  # a try abandoned on timeout may still fail later
        self._discovering[i] = future
        try:
            async with asyncio.timeout(self.timeout_s):
                devices = await asyncio.shield(future)
        except TimeoutError:
            self.why_missing[i] = f"{driver.vendor}: discovery did not answer within {self.timeout_s:.1f}s"
            if i not in self.missing:
                log.error(
                    "%s driver: discover did not answer within %.1fs; trying again later", driver.vendor, self.timeout_s
                )
        except base.DriverError as exc:
            self.why_missing[i] = f"{driver.vendor}: {exc}"
            if i not in self.missing:
                log.error("%s driver: discover failed: %s; trying again later", driver.vendor, exc)
        else:
            self.missing.discard(i)
            self.why_missing.pop(i, None)
            return devices
        self.missing.add(i)
        return None

    async def sample(self, timestamp_ns: int) -> tuple[list[model.DeviceSample], list[int]]:
        """One sample per discovered device, unknown where a driver failed.

        Returns:
            The samples and, parallel to them, each device's row: its position in the list
            `discover` returned (the Hello's device list).
        """
        results = await asyncio.gather(*(self._sample_driver(i, timestamp_ns) for i in range(len(self.drivers))))
        samples: list[model.DeviceSample] = []
        rows: list[int] = []
        offset = 0
        for i, driver_samples in enumerate(results):
            position = {d.index: offset + k for k, d in enumerate(self.devices[i])}
            for s in driver_samples:
                row = position.get(s.index)
                if row is None:
                    log.warning("%s driver: sample for undiscovered device %d", self.drivers[i].vendor, s.index)
                    continue
                samples.append(s)
                rows.append(row)
            offset += len(self.devices[i])
        return samples, rows

    def _unknown(self, i: int, timestamp_ns: int, reason: str) -> list[model.DeviceSample]:
        if i not in self._failing:
            self._failing.add(i)
            log.warning("%s driver: devices unknown: %s", self.drivers[i].vendor, reason)
        self.failures_total += 1
        return [model.unknown_sample(d.index, timestamp_ns, reason) for d in self.devices[i]]

    async def _sample_driver(self, i: int, timestamp_ns: int) -> list[model.DeviceSample]:
        driver = self.drivers[i]
        if not self.devices[i]:
            return []
        if self.inline:
            samples = driver.sample(timestamp_ns)
        else:
            pending = self._inflight.get(i)
            if pending is not None and not pending[0].done():
                blocked_s = time.monotonic() - pending[1]
                return self._unknown(i, timestamp_ns, f"{driver.vendor} driver still blocked after {blocked_s:.0f}s")
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self._executor, driver.sample, timestamp_ns)
            self._inflight[i] = (future, time.monotonic())
            try:
                async with asyncio.timeout(self.timeout_s):
                    samples = await asyncio.shield(future)
            except TimeoutError:
                return self._unknown(
                    i,
                    timestamp_ns,
                    f"{driver.vendor} driver did not answer within {self.timeout_s:g}s",
                )
            except base.DriverError as exc:
                return self._unknown(i, timestamp_ns, f"{driver.vendor} driver failed: {exc}")
        if i in self._failing:
            self._failing.discard(i)
            log.info("%s driver: answering again", driver.vendor)
        return samples

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run one blocking driver call (a cap write) in the pool, with the sampling timeout.

        Raises:
            TimeoutError: it did not return in time (it may still complete in its thread).
            DriverError: the driver refused or failed.
        """
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.timeout_s):
            return await loop.run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        """Close every driver (waking blocked calls) and the private pool without waiting."""
        for driver in self.drivers:
            driver.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _retrieve(future: asyncio.Future[list[model.DeviceInfo]]) -> None:
    """Mark a late outcome as seen (the timeout already reported it), so asyncio does not log it."""
    if not future.cancelled():
        future.exception()
