"""A hung or failing driver makes its devices unknown; the agent keeps sampling the others."""

from __future__ import annotations

import threading
import time

import pytest

from xpuctl.agent.adapters.sampler import Sampler
from xpuctl.agent.core import model
from xpuctl.agent.drivers import base
from xpuctl.agent.drivers.sim import SimDriver


class HangingDriver:
    """A fake that blocks in sample() until released (fault injection, not a mock of behaviour)."""

    vendor = "ascend"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def discover(self) -> list[model.DeviceInfo]:
        return [model.DeviceInfo(uuid=f"hang-{i}", index=i, vendor="ascend", model="910B") for i in range(2)]

    def capabilities(self, index: int) -> model.DeviceInfo:
        return self.discover()[index]

    def sample(self, timestamp_ns: int) -> list[model.DeviceSample]:
        self.calls += 1
        self.release.wait()
        return [model.DeviceSample(index=i, timestamp_ns=timestamp_ns, power_w=70.0) for i in range(2)]

    def set_power_cap(self, index: int, power_w: float) -> float:
        raise base.DriverError("read-only")

    def close(self) -> None:
        self.release.set()


class FailingDriver(HangingDriver):
    vendor = "metax"

    def sample(self, timestamp_ns: int) -> list[model.DeviceSample]:
        raise base.DriverError("mx-smi exited with status 9")


@pytest.mark.slow  # waits out real driver timeouts
async def test_hung_driver_marks_its_devices_unknown_and_does_not_pile_up() -> None:
    hang = HangingDriver()
    sim = SimDriver(vendor="nvidia", node_id="n", devices=2)
    sampler = Sampler([hang, sim], timeout_s=1.0)  # generous: a loaded CI core must not time out the sim
    try:
        devices = await sampler.discover()
        assert [d.uuid for d in devices][:2] == ["hang-0", "hang-1"]
        for tick in range(3):
            samples, rows = await sampler.sample(tick + 1)
            assert rows == [0, 1, 2, 3]
            assert [s.health for s in samples[:2]] == [model.Health.UNKNOWN] * 2
            assert "ascend driver" in samples[0].health_reason
            assert [s.health for s in samples[2:]] == [model.Health.OK] * 2
            assert samples[2].power_w is not None
        assert hang.calls == 1  # still blocked: no second call was started
        assert "still blocked" in samples[0].health_reason
        hang.release.set()
        # The released call finishes in its worker thread whenever that thread is scheduled: under
        # load that can be after several ticks. Sample until the driver answers, with a deadline.
        deadline = time.monotonic() + 10.0
        tick = 10
        while [s.health for s in samples[:2]] != [model.Health.OK] * 2:
            assert time.monotonic() < deadline, samples[0].health_reason
            tick += 1
            samples, _ = await sampler.sample(tick)
    finally:
        sampler.close()


async def test_failing_driver_reports_the_reason() -> None:
    sampler = Sampler([FailingDriver()], timeout_s=1.0)
    try:
        await sampler.discover()
        samples, _ = await sampler.sample(1)
        assert all(s.health == model.Health.UNKNOWN for s in samples)
        assert "mx-smi exited with status 9" in samples[0].health_reason
        assert sampler.failures_total == 1
    finally:
        sampler.close()


class LateDriver(HangingDriver):
    """Its discovery fails until the vendor driver 'loads' (fault injection)."""

    vendor = "cambricon"

    def __init__(self) -> None:
        super().__init__()
        self.release.set()
        self.loaded = False

    def discover(self) -> list[model.DeviceInfo]:
        if not self.loaded:
            raise base.DriverError("cnmon exited with status 1: no device found")
        return [model.DeviceInfo(uuid=f"late-{i}", index=i, vendor="cambricon", model="MLU370") for i in range(2)]


async def test_a_driver_found_later_is_held_back_until_adopted() -> None:
    late = LateDriver()
    sim = SimDriver(vendor="nvidia", node_id="n", devices=2)
    sampler = Sampler([late, sim], timeout_s=1.0)
    try:
        assert [d.uuid for d in await sampler.discover()] == ["nvidia-n-0", "nvidia-n-1"]
        assert sampler.missing == {0}
        assert not await sampler.discover_missing()  # still failing
        late.loaded = True
        assert await sampler.discover_missing()
        assert sampler.missing == set()
        # not adopted yet: the rows are still those of the Hello the controller holds (sim at 0, 1)
        samples, rows = await sampler.sample(1)
        assert rows == [0, 1] and all(s.power_w is not None for s in samples)
        assert [d.uuid for d in sampler.adopt_found()] == ["late-0", "late-1", "nvidia-n-0", "nvidia-n-1"]
        samples, rows = await sampler.sample(2)
        assert rows == [0, 1, 2, 3] and [s.power_w for s in samples[:2]] == [70.0, 70.0]
        assert not await sampler.discover_missing()  # nothing left to find
    finally:
        sampler.close()
