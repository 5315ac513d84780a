"""Jobs: which devices a scheduler's job got, and the energy they used while it ran (issue 16.3).

A scheduler's prolog says that a job started on a node with some of its devices, its epilog that
it ended there (`xpuctl slurm prolog` / `epilog`). A job on several nodes is one job with the
devices of each. Energy per device comes from the device's energy counter where it reports one
(the counter at the end minus the counter at the start: exact, whatever the sampling), else from
its power integrated over the samples in between (trapezoids, one per pair of successive samples
the control tick sees); each device says which (`method`), and so does the job (`counter`,
`integrated`, or `counter+integrated` when its devices differ). A counter that went backwards
during the job (a driver reload) falls back to the integral. Pure: time and readings come in.

The integral runs for every device with a job, vectorised over slots, once per control tick.
"""

from __future__ import annotations

import collections
import math

import msgspec
import numpy as np
import numpy.typing as npt

from xpuctl.controller.core import model, ring

MAX_ENDED = 1000  # ended jobs kept for `xpuctl jobs` (and saved across restarts)
COUNTER, INTEGRATED = "counter", "integrated"


class JobDevice(msgspec.Struct, kw_only=True):
    """One device of a job: when it joined and left, and its energy so far."""

    uuid: str
    node_id: str
    index: int
    start_ns: int
    end_ns: int = 0  # 0: still running
    counter_start_j: float | None = None
    counter_end_j: float | None = None
    integrated_j: float = 0.0

    def energy(self, counter_now_j: float | None) -> tuple[float, str]:
        """(joules, method): from the counter when it has both ends and did not go back."""
        end = self.counter_end_j if self.end_ns else counter_now_j
        start = self.counter_start_j
        if start is not None and end is not None and end >= start:
            return end - start, COUNTER
        return self.integrated_j, INTEGRATED


class Job(msgspec.Struct, kw_only=True):
    """A job and its devices (on every node it ran on)."""

    job_id: str
    user: str = ""
    started_ns: int
    ended_ns: int = 0  # 0: running on at least one node
    devices: list[JobDevice] = msgspec.field(default_factory=list)


class Jobs:
    """Running and recently ended jobs, and the per-slot power integral of their devices."""

    def __init__(self) -> None:
        """No job yet."""
        self.running: dict[str, Job] = {}
        self.ended: collections.deque[Job] = collections.deque(maxlen=MAX_ENDED)
        self.job_of_uuid: dict[str, str] = {}
        self.slot_of_uuid: dict[str, int] = {}
        self.unplaced: set[str] = set()  # devices of restored running jobs not seen since
        self._acc = np.zeros(0)  # joules integrated per slot since its job began
        self._last_ts = np.zeros(0, dtype=np.int64)
        self._last_w = np.zeros(0)
        self._active = np.zeros(0, dtype=bool)

    def _grow(self, n: int) -> None:
        if n > self._acc.size:
            k = n - self._acc.size
            self._acc = np.concatenate([self._acc, np.zeros(k)])
            self._last_ts = np.concatenate([self._last_ts, np.zeros(k, dtype=np.int64)])
            self._last_w = np.concatenate([self._last_w, np.full(k, np.nan)])
            self._active = np.concatenate([self._active, np.zeros(k, dtype=bool)])

    def start(
        self,
        job_id: str,
        node_id: str,
        devices: list[tuple[str, int, int]],
        store: ring.RingStore,
        *,
        user: str,
        now_ns: int,
    ) -> tuple[Job, list[str]]:
        """`job_id` began on `node_id` with `devices` (uuid, index, slot). Again for the same job and
        device changes nothing (a prolog run twice). Returns the job and the job ids whose end on
        one of these devices was never told (their devices end here).
        """
        job = self.running.get(job_id)
        if job is None:
            job = Job(job_id=job_id, user=user, started_ns=now_ns)
            self.running[job_id] = job
        had = {d.uuid for d in job.devices}
        orphaned: list[str] = []
        self._grow(max((slot for _, _, slot in devices), default=-1) + 1)
        for uuid, index, slot in devices:
            if uuid in had:
                continue
            other = self.job_of_uuid.get(uuid)
            if other is not None and other != job_id:
                self._end_device(other, uuid, store, now_ns)
                orphaned.append(other)
            counter = _finite(store.newest[slot, model.M["energy_j"]])
            job.devices.append(
                JobDevice(uuid=uuid, node_id=node_id, index=index, start_ns=now_ns, counter_start_j=counter)
            )
            self.job_of_uuid[uuid], self.slot_of_uuid[uuid] = job_id, slot
            self._acc[slot], self._active[slot] = 0.0, True
            self._last_ts[slot] = store.newest_ts[slot]
            self._last_w[slot] = store.newest[slot, model.M["power_w"]]
        return job, orphaned

    def end(self, job_id: str, node_id: str, store: ring.RingStore, now_ns: int) -> Job | None:
        """`job_id` ended on `node_id` (its devices there stop counting); None if it is not running."""
        job = self.running.get(job_id)
        if job is None:
            return None
        for d in job.devices:
            if d.node_id == node_id and not d.end_ns:
                self._end_device(job_id, d.uuid, store, now_ns)
        return job

    def _end_device(self, job_id: str, uuid: str, store: ring.RingStore, now_ns: int) -> None:
        job = self.running[job_id]
        slot = self.slot_of_uuid.pop(uuid, None)
        self.job_of_uuid.pop(uuid, None)
        for d in job.devices:
            if d.uuid == uuid and not d.end_ns:
                d.end_ns = now_ns
                if slot is not None:
                    d.counter_end_j = _finite(store.newest[slot, model.M["energy_j"]])
                    d.integrated_j = float(self._acc[slot])
                    self._active[slot] = False
        if all(d.end_ns for d in job.devices):
            job.ended_ns = now_ns
            del self.running[job_id]
            self.ended.append(job)

    def integrate(self, store: ring.RingStore) -> None:
        """Add the power of every device with a job since the last call (one tick)."""
        idx = np.flatnonzero(self._active[: store.newest_ts.size])
        if idx.size == 0:
            return
        ts = store.newest_ts[idx]
        w = store.newest[idx, model.M["power_w"]]
        new = ts > self._last_ts[idx]
        last_w = self._last_w[idx]
        ok = new & (self._last_ts[idx] > 0) & np.isfinite(w) & np.isfinite(last_w)
        dt_s = (ts - self._last_ts[idx]) / 1e9
        self._acc[idx[ok]] += (0.5 * (w + last_w) * dt_s)[ok]
        self._last_ts[idx[new]] = ts[new]
        self._last_w[idx[new]] = w[new]

    # -- reading -----------------------------------------------------------------------------------

    def device_energy(self, d: JobDevice, store: ring.RingStore) -> tuple[float, str]:
        """A device's energy in its job so far (J) and how it was measured."""
        if d.end_ns:
            return d.energy(None)
        slot = self.slot_of_uuid.get(d.uuid)
        if slot is None:
            return d.energy(None)
        d.integrated_j = float(self._acc[slot])
        return d.energy(_finite(store.newest[slot, model.M["energy_j"]]))

    def all(self) -> list[Job]:
        """Ended jobs (oldest first), then running ones."""
        return [*self.ended, *self.running.values()]

    def restore(self, saved: list[Job]) -> None:
        """Take back saved jobs. A running one counts again from the next Hello of its devices'
        slots (`adopt`); energy integrated between the save and the restart is not counted.
        """
        for job in saved:
            if job.ended_ns:
                self.ended.append(job)
            else:
                self.running[job.job_id] = job
                for d in job.devices:
                    if not d.end_ns:
                        self.job_of_uuid[d.uuid] = job.job_id
                        self.unplaced.add(d.uuid)

    def adopt(self, uuid: str, slot: int, store: ring.RingStore) -> None:
        """A restored running job's device is back (its Hello): its integral goes on from its saved value."""
        job_id = self.job_of_uuid.get(uuid)
        self.unplaced.discard(uuid)
        if job_id is None or uuid in self.slot_of_uuid:
            return
        self._grow(slot + 1)
        d = next(d for d in self.running[job_id].devices if d.uuid == uuid)
        self.slot_of_uuid[uuid] = slot
        self._acc[slot], self._active[slot] = d.integrated_j, True
        self._last_ts[slot], self._last_w[slot] = store.newest_ts[slot], store.newest[slot, model.M["power_w"]]

    def saved(self, store: ring.RingStore) -> list[Job]:
        """Every job as it should be saved (running devices with their integral so far)."""
        for job in self.running.values():
            for d in job.devices:
                if not d.end_ns:
                    self.device_energy(d, store)
        return self.all()


def _finite(x: float | npt.NDArray[np.float64]) -> float | None:
    v = float(x)
    return None if math.isnan(v) or math.isinf(v) else v
