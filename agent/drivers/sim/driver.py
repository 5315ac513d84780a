"""The simulated driver itself: `SimDriver` (see the package docstring)."""

from __future__ import annotations

import threading

import numpy as np

from xpuctl.agent.core import model
from xpuctl.agent.drivers import base
from xpuctl.agent.drivers.sim import engine, faults, profiles

__all__ = ["SimDriver"]

# A driver_hang fault blocks one sample() call this long at most, then the call returns readings
# again; the agent's per-call timeout is what must catch it (DESIGN 7: real drivers hang 45 s+).
HANG_BLOCK_S = 60.0
# Wall-clock gaps longer than this are simulated as this long (e.g. a suspended process).
MAX_STEP_S = 10.0


class SimDriver:
    """n simulated devices of one vendor on one node, deterministic from `seed`."""

    def __init__(
        self,
        *,
        vendor: str,
        node_id: str,
        devices: int = 8,
        seed: int = 0,
        fault_specs: list[faults.Fault] | None = None,
        first_index: int = 0,
        workload: str = "mixed",
    ) -> None:
        """Build the devices from the vendor's profile.

        Raises:
            KeyError: unknown vendor (the message lists the known ones).
        """
        self.vendor = vendor
        self.profile = profiles.profile_for(vendor)
        self.node_id = node_id
        self.first_index = first_index
        self.node = engine.SimNode(
            [self.profile] * devices, node_id=node_id, seed=seed, faults=fault_specs, workload=workload
        )
        self._last_ns: int | None = None
        self._closed = threading.Event()
        self._lock = threading.Lock()  # sample() runs in worker threads, set_power_cap too

    def _info(self, i: int) -> model.DeviceInfo:
        p = self.profile
        index = self.first_index + i
        return model.DeviceInfo(
            uuid=f"{self.vendor}-{self.node_id}-{index}",
            index=index,
            vendor=self.vendor,
            model=p.model,
            bus_id=f"0000:{0x10 + index:02x}:00.0",
            driver_version="sim-1.0",
            memory_total_bytes=p.memory_total_bytes,
            power_limit_min_w=p.power_limit_min_w,
            power_limit_max_w=p.power_limit_max_w,
            power_limit_default_w=p.power_limit_default_w,
            power_cap_settable=p.power_cap_settable,
            temp_slowdown_c=p.temp_slowdown_c,
            temp_shutdown_c=p.temp_shutdown_c,
            simulated=True,
        )

    def discover(self) -> list[model.DeviceInfo]:
        """All simulated devices."""
        return [self._info(i) for i in range(self.node.n)]

    def capabilities(self, index: int) -> model.DeviceInfo:
        """The capabilities of one device (fixed for a simulated device)."""
        return self._info(index - self.first_index)

    def sample(self, timestamp_ns: int) -> list[model.DeviceSample]:
        """Advance the simulation to `timestamp_ns` and read every device.

        Blocks for a while when a driver_hang fault is active, as a hung vendor driver would.
        """
        with self._lock:
            if self._last_ns is not None:
                dt_s = min(max((timestamp_ns - self._last_ns) / 1e9, 0.0), MAX_STEP_S)
                self.node.step(dt_s)
            self._last_ns = timestamp_ns
            hanging = self.node.hanging()
            readings = self.node.read()
            events = self.node.take_events()
            health = self.node.health()
        if hanging:
            self._closed.wait(HANG_BLOCK_S)
        by_device: dict[int, list[model.ErrorEvent]] = {}
        for i, code, text in events:
            by_device.setdefault(i, []).append(model.ErrorEvent(code=code, text=text))
        out = []
        for i in range(self.node.n):
            values = {name: (None if np.isnan(v := float(readings[name][i])) else v) for name in model.METRICS}
            health_code, reason = health[i]
            out.append(
                model.DeviceSample(
                    index=self.first_index + i,
                    timestamp_ns=timestamp_ns,
                    health=model.Health(health_code),
                    health_reason=reason,
                    error_events=tuple(by_device.get(i, ())),
                    **values,
                )
            )
        return out

    def set_power_cap(self, index: int, power_w: float) -> float:
        """Cap one device (clamped to its range) and return the enforced cap.

        Raises:
            DriverError: the vendor has no public power-cap setter.
        """
        if not self.profile.power_cap_settable:
            msg = (
                f"{self.vendor} {self.profile.model} has no public power-cap setter "
                "(DESIGN 7); the controller treats it as a fixed load"
            )
            raise base.DriverError(msg)
        with self._lock:
            return self.node.set_cap(index - self.first_index, power_w)

    def close(self) -> None:
        """Wake a sample() call blocked by a driver_hang fault."""
        self._closed.set()
