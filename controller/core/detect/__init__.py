"""Anomaly detectors over the ring store (DESIGN 8), and the runner that gives them hysteresis.

Theory of operation. Once per control tick the runner builds a Frame (the newest sample of every
device, plus static per-device facts from the registry) and hands it to every detector; on each
stored batch it runs the critical-path detectors (thermal, thermal rise, error events) on just
that batch's devices, so the power loop can act on them at once. Per detector kind the runner
keeps a boolean `open` per device: a device raises when the raise condition holds and it is not
open, and clears when the clear condition holds and the raise condition does not. Each change is
a Finding; the caller turns it into an event. Pure: time comes in as `now_ns`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from xpuctl.controller import config
from xpuctl.controller.core import registry, ring
from xpuctl.controller.core.detect import base, critical, ecc, overcap, spike, stale, straggler, stuck, thermal

__all__ = ["CRITICAL_KINDS", "KINDS", "Detectors", "Finding"]

Finding = base.Finding

_CLASSES: tuple[type[base.Detector], ...] = (
    thermal.Thermal,
    thermal.ThermalRise,
    overcap.OverCap,
    ecc.EccUncorrected,
    ecc.EccStorm,
    critical.CriticalErrors,
    stale.Stale,
    stuck.Stuck,
    straggler.Straggler,
    spike.Spike,
)
KINDS: tuple[str, ...] = tuple(c.kind for c in _CLASSES)
CRITICAL_KINDS = frozenset(c.kind for c in _CLASSES if c.severity == base.CRITICAL)


class Detectors:
    """Every detector, their open anomalies, and the per-device facts they share."""

    def __init__(self, cfg: config.Detect | None = None) -> None:
        """All detectors with thresholds from `cfg`."""
        self.cfg = cfg or config.Detect()
        self.detectors: list[base.Detector] = [cls(self.cfg) for cls in _CLASSES]
        self.open: dict[str, base.Mask] = {d.kind: np.zeros(0, dtype=bool) for d in self.detectors}
        self._says = {d.kind: d.says for d in self.detectors}
        self.prev_ts = np.zeros(0, dtype=np.int64)
        self.last_error_ns = np.zeros(0, dtype=np.int64)
        self.last_error_code: list[str] = []
        self._facts_version = -1
        self._slowdown = np.zeros(0)
        self._max_w = np.zeros(0)
        self._group = np.zeros(0, dtype=np.int64)
        self._layout: base.Layout | None = None

    # -- inputs --------------------------------------------------------------------------------

    def note_errors(self, errors: list[tuple[int, str, int, str, str]]) -> None:
        """Take error events (timestamp_ns, uuid, slot, code, text) from ingest."""
        for ts, _uuid, slot, code, _text in errors:
            self.grow(slot + 1)
            if ts >= self.last_error_ns[slot]:
                self.last_error_ns[slot] = ts
                self.last_error_code[slot] = code

    def grow(self, n: int) -> None:
        """Make room for n devices."""
        have = self.prev_ts.size
        if n <= have:
            return
        k = n - have
        self.prev_ts = np.concatenate([self.prev_ts, np.zeros(k, dtype=np.int64)])
        self.last_error_ns = np.concatenate([self.last_error_ns, np.zeros(k, dtype=np.int64)])
        self.last_error_code.extend([""] * k)
        for kind, mask in self.open.items():
            self.open[kind] = np.concatenate([mask, np.zeros(k, dtype=bool)])

    def reset(self, slot: int) -> None:
        """Forget everything about `slot`: its device is gone (its open anomalies close silently;
        the caller says why).
        """
        if slot >= self.prev_ts.size:
            return
        self.prev_ts[slot] = 0
        self.last_error_ns[slot] = 0
        self.last_error_code[slot] = ""
        for mask in self.open.values():
            mask[slot] = False
        for det in self.detectors:
            det.reset(slot)

    def _facts(self, reg: registry.Registry) -> None:
        if self._facts_version == reg.version and self._slowdown.size == len(reg):
            return
        infos = reg.infos
        self._slowdown = np.array([_num(i.temp_slowdown_c) for i in infos])
        self._max_w = np.array([_num(i.power_limit_max_w) for i in infos])
        node_numbers: dict[str, int] = {}
        self._group = np.array(
            [node_numbers.setdefault(n, len(node_numbers)) for n in reg.node_of_slot], dtype=np.int64
        )
        self._layout = base.Layout(self._group)
        self._facts_version = reg.version

    # -- the passes ----------------------------------------------------------------------------

    def run(
        self,
        reg: registry.Registry,
        store: ring.RingStore,
        now_ns: int,
        *,
        slots: base.I64 | None = None,
        critical_only: bool = False,
    ) -> list[base.Finding]:
        """One pass over `slots` (default: every device); returns what raised or cleared.

        A full pass (no `slots`, not `critical_only`) also advances the detectors' own state
        (EWMAs, run lengths); a critical-path pass only judges.
        """
        findings: list[base.Finding] = []
        if slots is None and not critical_only:
            for _ in self.steps(reg, store, now_ns, findings):
                pass
            return findings
        n = len(reg)
        self.grow(n)
        self._facts(reg)
        if slots is None:
            slots = np.arange(n, dtype=np.int64)
        if slots.size == 0:
            return []
        frame = self._frame(store, now_ns, slots, full=False)
        for det in self.detectors:
            if det.critical_path:
                findings.extend(self._judge(det, frame))
        return findings

    def steps(
        self, reg: registry.Registry, store: ring.RingStore, now_ns: int, findings: list[base.Finding]
    ) -> Iterator[None]:
        """A full pass over every device, one detector per step, adding to `findings`.

        Other work may run between the steps (the tick yields to it): a device that got a newer
        sample meanwhile may also have been judged by the critical path on that sample, so the
        critical-path detectors leave it to the next pass rather than judge it on the older one.
        """
        n = len(reg)
        self.grow(n)
        self._facts(reg)
        if n == 0:
            return
        slots = np.arange(n, dtype=np.int64)
        frame = self._frame(store, now_ns, slots, full=True)
        for det in self.detectors:
            yield
            findings.extend(self._judge(det, frame, store=store if det.critical_path else None))
        self.prev_ts[slots] = frame.latest_ts

    def _frame(self, store: ring.RingStore, now_ns: int, slots: base.I64, *, full: bool) -> base.Frame:
        latest_ts = store.latest_timestamps(slots)
        return base.Frame(
            now_ns=now_ns,
            slots=slots,
            latest=store.latest(slots),
            latest_ts=latest_ts,
            store=store,
            slowdown_c=self._slowdown[slots],
            max_w=self._max_w[slots],
            group=self._group[slots],
            fresh=latest_ts > self.prev_ts[slots],
            last_error_ns=self.last_error_ns[slots],
            last_error_code=self.last_error_code,
            layout=self._layout if full else None,
        )

    def _judge(
        self, det: base.Detector, frame: base.Frame, *, store: ring.RingStore | None = None
    ) -> list[base.Finding]:
        """Raise and clear what `det` finds; with `store`, not on devices sampled since the frame."""
        verdict = det.evaluate(frame)
        is_open = self.open[det.kind][frame.slots]
        raised = verdict.raise_ & ~is_open
        cleared = verdict.clear & is_open & ~verdict.raise_
        if store is not None:
            newer = store.latest_timestamps(frame.slots) != frame.latest_ts
            raised &= ~newer
            cleared &= ~newer
        if not (raised.any() or cleared.any()):
            return []
        mask = self.open[det.kind]
        mask[frame.slots[raised]] = True
        mask[frame.slots[cleared]] = False
        return [
            base.Finding(
                slot=int(frame.slots[i]),
                kind=det.kind,
                severity=det.severity,
                raised=bool(raised[i]),
                value=float(verdict.value[i]),
                threshold=float(verdict.threshold[i]),
                detail=det.detail(frame, i),
            )
            for i in np.flatnonzero(raised | cleared).tolist()
        ]

    # -- queries -------------------------------------------------------------------------------

    def open_kinds(self, slot: int) -> list[str]:
        """The anomalies open on one device."""
        return [k for k, m in self.open.items() if slot < m.size and m[slot]]

    def open_total(self) -> int:
        """How many (device, kind) anomalies are open."""
        return int(sum(int(m.sum()) for m in self.open.values()))

    def says(self, f: Finding) -> str:
        """What the finding's detector measured, with its units (the detector's `says`)."""
        op = ">=" if f.raised else "<"
        try:
            return self._says.get(f.kind, base.SAYS).format(value=f.value, threshold=f.threshold, op=op)
        except (ValueError, OverflowError):  # an infinite value in an integer format
            return base.SAYS.format(value=f.value, threshold=f.threshold, op=op)

    def is_open(self, kind: str) -> base.Mask:
        """Per slot: whether `kind` is open."""
        return self.open[kind]


def _num(value: float | None) -> float:
    return float("nan") if value is None else float(value)
