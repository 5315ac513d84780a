"""Physics of simulated devices: workload phases, power under a cap, throughput, heat, faults.

Theory of operation. A simulated node holds n devices, vectorised in numpy arrays. Every device
of a node runs the node's job (one job spans the node, as on real clusters) in phases drawn from a
seeded generator: idle, training (steady, near full power) and inference (bursty). Each step of dt
seconds:

* activity a (0..1) follows the phase; demand = idle + (tdp * intensity - idle) * a;
* power = min(demand, cap) with 1% noise, never above the cap (unless a power_spike fault);
* throughput = ((power - idle) / (demand - idle)) ** alpha: concave, so cutting power by 20% costs
  far less than 20% of work (`throughput_fraction`; alpha from published measurements, see
  profiles.py);
* temperature follows a first-order model towards ambient + R * power with time constant tau;
* energy and work are integrated.

Faults (faults.py) change these dynamics; the driver_hang fault is carried out by the driver.
Pure: no clocks (time is the dt argument), no I/O; the same seed and the same dt sequence give the
same series.
"""

from __future__ import annotations

import zlib
from typing import Final

import numpy as np
import numpy.typing as npt

from xpuctl.agent.drivers.sim import faults as faults_mod
from xpuctl.agent.drivers.sim import profiles as profiles_mod

F64 = npt.NDArray[np.float64]

IDLE: Final = 0
TRAINING: Final = 1
INFERENCE: Final = 2
PHASE_NAMES: Final = ("idle", "training", "inference")
WORKLOADS: Final = ("mixed", *PHASE_NAMES)


def throughput_fraction(power_w: F64, demand_w: F64, idle_w: F64, alpha: F64) -> F64:
    """Fraction of full speed a device keeps when it draws `power_w` of the `demand_w` it wants.

    1 when uncapped; concave in the power above idle; 0 at idle power.
    """
    span = demand_w - idle_w
    ratio = np.divide(power_w - idle_w, span, out=np.ones_like(span), where=span > 1.0)
    out: F64 = np.power(np.clip(ratio, 0.0, 1.0), alpha)
    return out


def node_rng(seed: int, node_id: str) -> np.random.Generator:
    """The deterministic generator of one simulated node (stable across processes)."""
    return np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(node_id.encode())])


class SimNode:
    """The devices of one simulated node. `set_cap` and `step` mutate; `read` reports."""

    def __init__(
        self,
        profiles: list[profiles_mod.Profile],
        *,
        node_id: str,
        seed: int = 0,
        faults: list[faults_mod.Fault] | None = None,
        workload: str = "mixed",
    ) -> None:
        """Create n devices, one per profile, at rest at ambient temperature.

        `workload` is one of WORKLOADS: `mixed` draws phases at random; the others hold one phase.
        """
        if workload not in WORKLOADS:
            msg = f"unknown workload {workload!r}; use one of {', '.join(WORKLOADS)}"
            raise ValueError(msg)
        self.workload = workload
        self.profiles = profiles
        self.node_id = node_id
        self.faults = list(faults or [])
        self.rng = node_rng(seed, node_id)
        n = len(profiles)
        self.n = n
        arr = np.array
        self.tdp_w = arr([p.tdp_w for p in profiles])
        self.idle_w = arr([p.idle_w for p in profiles])
        self.limit_min_w = arr([p.power_limit_min_w for p in profiles])
        self.limit_max_w = arr([p.power_limit_max_w for p in profiles])
        self.cap_w = arr([p.power_limit_default_w for p in profiles])
        self.mem_total = arr([float(p.memory_total_bytes) for p in profiles])
        self.r_c_per_w = arr([p.thermal_c_per_w for p in profiles])
        self.tau_s = arr([p.thermal_tau_s for p in profiles])
        self.ambient_c = arr([p.ambient_c for p in profiles])
        self.clock_max_hz = arr([p.core_clock_max_hz for p in profiles])
        self.mem_clock_hz = arr([p.memory_clock_hz for p in profiles])
        self.shutdown_c = arr([p.temp_shutdown_c for p in profiles])
        self.t_s = 0.0
        self.temp_c = self.ambient_c + self.r_c_per_w * self.idle_w
        self.energy_j = np.zeros(n)
        self.work = np.zeros(n)
        self.ecc_corrected = np.zeros(n)
        self.ecc_uncorrected = np.zeros(n)
        self.jitter = self.rng.uniform(0.97, 1.03, n)  # silicon lottery: per-device efficiency
        self.phase = IDLE
        self.phase_end_s = 0.0
        self.intensity = 0.0
        self.burst_period_s = 10.0
        self._next_phase()
        if workload != "mixed":  # a node that has been running its one job for a while is warm
            typical = {IDLE: 0.02, TRAINING: 0.96, INFERENCE: 0.6}[self.phase]
            busy_w = self.idle_w + np.maximum(self.tdp_w * self.intensity - self.idle_w, 0) * typical
            self.temp_c = self.ambient_c + self.r_c_per_w * np.minimum(busy_w, self.cap_w)
        # outputs of the last step
        self.activity = np.zeros(n)
        self.power_w = self.idle_w.copy()
        self.demand_w = self.idle_w.copy()
        self.throughput = np.ones(n)
        self._frozen: dict[int, tuple[float, float]] = {}  # stuck devices: (activity, power)
        self._events: list[tuple[int, str, str]] = []
        self._reported_fall: set[int] = set()

    # -- workload -------------------------------------------------------------------------------

    def _next_phase(self) -> None:
        r = self.rng.random()
        if self.workload != "mixed":  # one phase throughout, re-drawn in its parameters
            r = {"idle": 0.1, "training": 0.5, "inference": 0.9}[self.workload]
        if r < 0.2:
            self.phase, self.intensity = IDLE, 0.0
            duration = self.rng.uniform(20, 90)
        elif r < 0.7:
            self.phase, self.intensity = TRAINING, self.rng.uniform(0.88, 1.0)
            duration = self.rng.uniform(120, 600)
        else:
            self.phase, self.intensity = INFERENCE, self.rng.uniform(0.6, 0.85)
            self.burst_period_s = self.rng.uniform(6, 20)
            duration = self.rng.uniform(60, 300)
        self.phase_end_s = self.t_s + duration

    @property
    def alpha(self) -> float:
        """Throughput exponent of the current phase (profiles.py explains the values)."""
        if self.phase == INFERENCE:
            return profiles_mod.ALPHA_INFERENCE
        return profiles_mod.ALPHA_TRAINING

    def _activity(self) -> F64:
        n = self.n
        if self.phase == IDLE:
            return np.clip(0.02 + self.rng.normal(0, 0.01, n), 0, 1)
        if self.phase == TRAINING:
            return np.clip(0.96 + self.rng.normal(0, 0.015, n), 0, 1)
        burst_on = (self.t_s % self.burst_period_s) < 0.45 * self.burst_period_s
        base = 0.9 if burst_on else 0.35
        return np.clip(base + self.rng.normal(0, 0.04, n), 0, 1)

    # -- control ---------------------------------------------------------------------------------

    def set_cap(self, device: int, cap_w: float) -> float:
        """Set one device's power cap, clamped to its range; returns the enforced cap."""
        lo, hi = float(self.limit_min_w[device]), float(self.limit_max_w[device])
        enforced = min(max(cap_w, lo), hi)
        self.cap_w[device] = enforced
        return enforced

    def active(self, kind: str, device: int) -> bool:
        """Whether a fault of `kind` acts on `device` now."""
        return any(f.kind == kind and f.active(self.t_s, device) for f in self.faults)

    def _mask(self, kind: str) -> npt.NDArray[np.bool_]:
        return np.array([self.active(kind, i) for i in range(self.n)], dtype=bool)

    def hanging(self) -> bool:
        """Whether a driver_hang fault is active on any device (the driver blocks as a whole)."""
        return any(self.active("driver_hang", i) for i in range(self.n))

    # -- dynamics --------------------------------------------------------------------------------

    def step(self, dt_s: float) -> None:
        """Advance the simulation by dt_s seconds."""
        if dt_s <= 0:
            return
        self.t_s += dt_s
        while self.t_s >= self.phase_end_s:
            self._next_phase()
        activity = self._activity()
        straggler = self._mask("straggler")
        activity = np.where(straggler, activity * 0.35, activity)
        demand = self.idle_w + np.maximum(self.tdp_w * self.intensity - self.idle_w, 0) * activity
        demand = np.maximum(demand * self.jitter, self.idle_w)
        power = np.minimum(demand * (1 + self.rng.normal(0, 0.01, self.n)), self.cap_w)
        power = np.maximum(power, np.minimum(self.idle_w, self.cap_w))
        spike = self._mask("power_spike")
        power = np.where(spike, self.cap_w * 1.25, power)
        stuck = self._mask("stuck")
        for i in range(self.n):
            if stuck[i]:
                a, p = self._frozen.setdefault(i, (float(activity[i]), float(power[i])))
                activity[i], power[i] = a, p
            else:
                self._frozen.pop(i, None)
        gone = self._mask("fall_off_bus")
        power = np.where(gone, 0.0, power)
        activity = np.where(gone, 0.0, activity)

        alpha = np.full(self.n, self.alpha)
        self.throughput = throughput_fraction(np.minimum(power, demand), demand, self.idle_w, alpha)
        self.activity, self.power_w, self.demand_w = activity, power, demand
        self.work += activity * self.throughput * dt_s
        self.energy_j += power * dt_s

        runaway = self._mask("thermal_runaway")
        r = np.where(runaway, self.r_c_per_w * 3.0, self.r_c_per_w)
        steady = self.ambient_c + r * power
        self.temp_c += (steady - self.temp_c) * (1 - np.exp(-dt_s / self.tau_s))
        self.temp_c = np.minimum(self.temp_c, self.shutdown_c + 5)

        storm = self._mask("ecc_storm")
        self.ecc_corrected += np.where(storm, self.rng.poisson(300 * dt_s, self.n), 0)
        self.ecc_uncorrected += np.where(storm, self.rng.poisson(0.05 * dt_s, self.n), 0)

        for i in np.flatnonzero(self._mask("xid")).tolist():
            if self.rng.random() < min(1.0, 0.5 * dt_s):
                self._events.append((i, "13", "Graphics Engine Exception (simulated)"))
        for i in np.flatnonzero(gone).tolist():
            if i not in self._reported_fall:
                self._reported_fall.add(int(i))
                self._events.append((int(i), "79", "GPU has fallen off the bus (simulated)"))

    def read(self) -> dict[str, F64]:
        """The current readings of every device, in base units (NaN where a device reports none)."""
        mem_frac = {IDLE: 0.04, TRAINING: 0.86, INFERENCE: 0.6}[self.phase]
        gone = self._mask("fall_off_bus")
        out = {
            "utilization": self.activity.copy(),
            "memory_used_bytes": np.round(self.mem_total * mem_frac * (0.98 + 0.02 * self.jitter)),
            "power_w": self.power_w.copy(),
            "energy_j": self.energy_j.copy(),
            "power_limit_w": self.cap_w.copy(),
            "temperature_c": self.temp_c.copy(),
            "memory_temperature_c": self.temp_c + 3.0,
            "core_clock_hz": self.clock_max_hz * (0.5 + 0.5 * self.activity) * self.throughput,
            "memory_clock_hz": self.mem_clock_hz.copy(),
            "ecc_corrected_total": self.ecc_corrected.copy(),
            "ecc_uncorrected_total": self.ecc_uncorrected.copy(),
            "pcie_rx_bytes_per_s": self.activity * 4e9 * self.jitter,
            "pcie_tx_bytes_per_s": self.activity * 1.5e9 * self.jitter,
            "work_done": self.work.copy(),
        }
        for values in out.values():
            values[gone] = np.nan
        return out

    def take_events(self) -> list[tuple[int, str, str]]:
        """Error events since the last call: (device, code, text)."""
        events, self._events = self._events, []
        return events

    def health(self) -> list[tuple[int, str]]:
        """Per device: (xpu.v1.Health number, reason) for devices that are not ok."""
        out = []
        for i in range(self.n):
            if self.active("fall_off_bus", i):
                out.append((3, "fell off the bus (simulated fault)"))
            elif self.active("xid", i):
                out.append((2, "critical error events (simulated fault)"))
            elif self.active("ecc_storm", i):
                out.append((2, "corrected-ECC storm (simulated fault)"))
            else:
                out.append((1, ""))
        return out
