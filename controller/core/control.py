"""The closed loop, pure: telemetry in, events and commands out (DESIGN 1 and 8).

`Control` joins the detectors, the power controller and the action ledger over the registry and
the ring store that ingest fills. The hub (controller/hub.py) calls it:

* `on_batch` with what batches stored (`ingest.Stored`, `ingest.FrameStored`): the critical-path
  detectors on those of their devices that could raise; a thermal anomaly steps the device down at
  once (the emergency path, not waiting for the period);
* `tick` every control period: every detector, node liveness, the power allocation, and the
  ledger's retries and expiries;
* `on_result` for each agent answer; `set_budget` and `set_weight` for the API.

Each returns an Output: events to publish, and ledger entries to send now. Pure: time is `now_ns`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import msgspec
import numpy as np
import numpy.typing as npt

from xpuctl.controller import config
from xpuctl.controller.core import detect, events, ingest, ledger, model, power, registry, ring

F64 = npt.NDArray[np.float64]
HOT_KINDS = ("thermal", "thermal_rise")
STEP_DEVICES = 1000  # devices per step of the power window (about 1 ms; 2,500 took 2.7 ms)
_OK_HEALTH = (1, 2)  # ok, degraded: a failed or unknown device is not capped


class Output(msgspec.Struct, kw_only=True):
    """What a step produced."""

    events: list[events.Event] = msgspec.field(default_factory=list)
    send: list[ledger.Entry] = msgspec.field(default_factory=list)


class Control:
    """The loop's state and rules."""

    def __init__(
        self,
        reg: registry.Registry,
        store: ring.RingStore,
        liveness: registry.Liveness,
        cfg: config.Config,
        *,
        prefix: str,
    ) -> None:
        """Wire the rules to the state they read."""
        self.registry = reg
        self.store = store
        self.liveness = liveness
        self.cfg = cfg
        self.detectors = detect.Detectors(cfg.detect)
        self.power = power.PowerController(cfg.power)
        self.ledger = ledger.Ledger(prefix=prefix, ttl_s=cfg.power.command_ttl_s, retry_after_s=cfg.power.retry_after_s)
        self.device_weight: dict[str, float] = {}  # by uuid (a weight set before a restart waits for its device)
        self.node_weight: dict[str, float] = {}
        self.node_status: dict[str, registry.NodeStatus] = {}
        self.feasible = True
        self.last_decision: power.Decision | None = None
        # a new shard owner starts cold (issue 14.4): until then it lowers caps but raises none
        self.hold_raises_until_ns = 0
        self._version = -1
        self._static: dict[str, F64] = {}
        self._group = np.zeros(0, dtype=np.int64)
        self._nodes: list[str] = []
        self._slowdown = np.zeros(0)

    # -- per-device facts ------------------------------------------------------------------------

    def _facts(self) -> None:
        reg = self.registry
        if self._version == reg.version and self._group.size == len(reg):
            return
        infos = reg.infos

        def col(name: str) -> F64:
            return np.array([math.nan if (v := getattr(i, name)) is None else float(v) for i in infos])

        self._static = {
            "min_w": col("power_limit_min_w"),
            "max_w": col("power_limit_max_w"),
            "default_w": col("power_limit_default_w"),
            "settable": np.array([i.power_cap_settable for i in infos], dtype=bool),
        }
        self._slowdown = col("temp_slowdown_c")
        numbers: dict[str, int] = {}
        self._group = np.array([numbers.setdefault(n, len(numbers)) for n in reg.node_of_slot], dtype=np.int64)
        self._nodes = list(numbers)
        self._version = reg.version

    def power_levels(self, slots: npt.NDArray[np.int64], now_ns: int) -> power.Levels:
        """Each device's power over the demand window: its peak, its mean and the least of its
        last few samples (NaN: no sample in the window).
        """
        since_ns = now_ns - int(self.cfg.power.demand_window_s * 1e9)
        window = self.store.window_view(slots, model.M["power_w"], self.cfg.power.demand_samples, since_ns=since_ns)
        return power.Levels.of(window)

    def inputs(self, now_ns: int, levels: power.Levels | None = None) -> power.Inputs:
        """What the power controller needs, for every device (`levels`: from `power_levels` over
        every device, when the caller computed them in parts).
        """
        self._facts()
        n = len(self.registry)
        self.detectors.grow(n)  # a Hello between the tick's steps may have added devices
        slots = np.arange(n, dtype=np.int64)
        latest = self.store.latest(slots)
        gone = ~np.array(self.registry.present, dtype=bool)
        latest[gone] = np.nan  # a gone device draws nothing and is not capped (issue 18.4)
        nodes = self.registry.nodes
        statuses = [
            nodes[name].status(now_ns, self.liveness) if name in nodes else registry.NodeStatus.OFFLINE
            for name in self._nodes
        ]
        online = np.array([s == registry.NodeStatus.ONLINE for s in statuses], dtype=bool)
        offline = np.array([s == registry.NodeStatus.OFFLINE for s in statuses], dtype=bool)
        node_ok = online[self._group] if n else np.zeros(0, dtype=bool)
        healthy = np.isin(latest[:, model.HEALTH], _OK_HEALTH)
        if levels is None or levels.peak.size != n:
            levels = self.power_levels(slots, now_ns)
        recent_max, mean = levels.peak.copy(), levels.mean.copy()
        # an offline node's devices are not reported: their last load is not reserved for good
        if n:
            recent_max[offline[self._group] | gone] = np.nan
            mean[offline[self._group] | gone] = np.nan
        weight = np.ones(n)
        if self.node_weight:
            by_node = np.array([self.node_weight.get(name, 1.0) for name in self._nodes])
            weight = by_node[self._group]
        for uuid, w in self.device_weight.items():
            slot = self.registry.slot_of_uuid.get(uuid, n)
            if slot < n:
                weight[slot] = w
        hot = np.zeros(n, dtype=bool)
        for kind in HOT_KINDS:
            hot |= self.detectors.is_open(kind)[:n]
        st = self._static
        return power.Inputs(
            settable=st["settable"] & node_ok & healthy,
            min_w=st["min_w"],
            max_w=st["max_w"],
            default_w=st["default_w"],
            weight=weight,
            power_w=latest[:, model.M["power_w"]],
            recent_max_w=recent_max,
            mean_w=mean,
            held_w=levels.held,
            limit_w=latest[:, model.M["power_limit_w"]],
            hot=hot,
            rising=self.detectors.is_open("thermal_rise")[:n].copy(),
            measured_w=float(np.nansum(latest[:, model.M["power_w"]])),
            pending=self._pending(n),
        )

    def _pending(self, n: int) -> npt.NDArray[np.bool_]:
        """Devices with an open command (the loop waits for its answer before it re-reads telemetry)."""
        out = np.zeros(n, dtype=bool)
        for slot in self.ledger.open_by_slot:
            if slot < n:
                out[slot] = True
        return out

    # -- findings --------------------------------------------------------------------------------

    def _finding_events(self, findings: list[detect.Finding], now_ns: int) -> list[events.Event]:
        out = []
        for f in findings:
            info = self.registry.infos[f.slot]
            verb = "raised" if f.raised else "cleared"
            detail = f" ({f.detail})" if f.detail else ""
            out.append(
                events.Event(
                    timestamp_ns=now_ns,
                    kind=f"anomaly.{verb}",
                    node_id=self.registry.node_of_slot[f.slot],
                    device_uuid=info.uuid,
                    severity=f.severity if f.raised else "info",
                    message=f"{f.kind} {verb} on {info.uuid}: {self.detectors.says(f)}{detail}",
                    value=f.value if math.isfinite(f.value) else 0.0,
                    threshold=f.threshold if math.isfinite(f.threshold) else 0.0,
                    detector=f.kind,
                )
            )
        return out

    def _issue(self, cmd: power.Command, now_ns: int, out: Output) -> None:
        info = self.registry.infos[cmd.slot]
        entry, evs = self.ledger.issue(
            now_ns,
            slot=cmd.slot,
            node_id=self.registry.node_of_slot[cmd.slot],
            device_uuid=info.uuid,
            cap_w=cmd.cap_w,
            reason=cmd.reason,
            urgent=cmd.emergency,
        )
        out.events.extend(evs)
        out.send.append(entry)

    def _emergencies(self, findings: list[detect.Finding], now_ns: int, out: Output) -> None:
        """One cut per hot device: a sample that raises both HOT_KINDS is one observation, and
        cutting once for each would compound two steps (and send two commands where one does).
        """
        first: dict[int, detect.Finding] = {}
        for f in findings:
            if f.raised and f.kind in HOT_KINDS:
                first.setdefault(f.slot, f)
        hot = list(first.values())
        if not hot:
            return
        self._facts()
        slots = np.array([f.slot for f in hot], dtype=np.int64)
        latest = self.store.latest(slots)
        st = self._static
        for f, row in zip(hot, latest, strict=True):
            node = self.registry.nodes.get(self.registry.node_of_slot[f.slot])
            healthy = row[model.HEALTH] in _OK_HEALTH
            if not (st["settable"][f.slot] and healthy and node is not None):
                continue
            cmd = self.power.emergency(
                f.slot,
                min_w=float(st["min_w"][f.slot]),
                max_w=float(st["max_w"][f.slot]),
                power_w=float(row[model.M["power_w"]]),
                limit_w=float(row[model.M["power_limit_w"]]),
                why=f"{f.kind} {f.value:.3g} >= {f.threshold:.3g}",
            )
            if cmd is not None:
                self._issue(cmd, now_ns, out)

    # -- the steps -------------------------------------------------------------------------------

    def on_batch(self, stored: ingest.Stored | ingest.FrameStored, now_ns: int) -> Output:
        """After stored batches: critical-path detectors on the devices that could raise, emergencies at once."""
        out = Output()
        self.detectors.note_errors(stored.errors)
        if stored.slots.size == 0:
            return out
        slots = self._urgent(stored.slots)
        if slots.size == 0:
            return out  # nothing near a limit and no error event: raises cannot happen, clears wait
        findings = self.detectors.run(self.registry, self.store, now_ns, slots=slots, critical_only=True)
        out.events.extend(self._finding_events(findings, now_ns))
        self._emergencies(findings, now_ns, out)
        return out

    def _urgent(self, slots: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Those of `slots` on which a critical-path detector could raise now (a cheap precheck)."""
        det = self.detectors
        det.grow(len(self.registry))
        self._facts()
        temps = self.store.newest[slots, model.M["temperature_c"]]
        with np.errstate(invalid="ignore"):  # NaN (no slowdown, no reading): not hot
            hot = temps >= self._slowdown[slots] - self._hot_margin_c()
        urgent: npt.NDArray[np.int64] = slots[hot | (det.last_error_ns[slots] > det.prev_ts[slots])]
        return urgent

    def _hot_margin_c(self) -> float:
        return max(self.cfg.detect.thermal_rise_window_c, self.cfg.detect.thermal_margin_c)

    def hot_above_c(self, slots: npt.NDArray[np.int64]) -> float:
        """The lowest temperature at which one of `slots` is urgent for the critical path (see
        `_urgent`): a batch of these devices whose temperatures all stay below it, and that carries
        no error event, raises nothing there. inf: none of them can be hot.
        """
        self._facts()
        limit = self._slowdown[slots[slots >= 0]] - self._hot_margin_c()
        limit = limit[np.isfinite(limit)]
        return float(limit.min()) if limit.size else math.inf

    def tick(self, now_ns: int) -> Output:
        """One control period, all at once."""
        out = Output()
        for _ in self.steps(now_ns, out):
            pass
        return out

    def safe_caps(self, now_ns: int, total_w: float) -> dict[str, dict[str, float]]:
        """Node -> device uuid -> its site-safe cap (see `power.PowerController.safe_caps`)."""
        caps = self.power.safe_caps(self.inputs(now_ns), total_w)
        out: dict[str, dict[str, float]] = {}
        for slot in np.flatnonzero(np.isfinite(caps)).tolist():
            if self.registry.present[slot]:
                node = self.registry.node_of_slot[slot]
                out.setdefault(node, {})[self.registry.infos[slot].uuid] = round(float(caps[slot]), 1)
        return out

    def abandon_commands(self, now_ns: int, why: str) -> list[events.Event]:
        """Close every open command (see `ledger.Ledger.abandon`); the loop takes the caps that
        telemetry reports for those devices from now on.
        """
        closed, out = self.ledger.abandon(now_ns, why)
        for e in closed:
            if e.slot >= 0:
                self.power.forget(e.slot)
        return out

    def steps(self, now_ns: int, out: Output) -> Iterator[None]:
        """One control period in steps of a few milliseconds at 10,000 devices, into `out`.

        The service runs other work (batches, the critical path, publishing) between the steps:
        a tick done in one piece took about 20 ms, and a critical sample or a command that came
        during it waited that long (issue 13.3). What another step changes meanwhile is seen
        by the next: the detectors judge a device that got a newer sample during the pass at
        the next pass (see `Detectors.steps`).
        """
        if self.ledger.unbound:
            self._bind()
        out.events.extend(self._gone(now_ns))  # first: the detectors then see gone devices as fresh
        yield
        findings: list[detect.Finding] = []
        yield from self.detectors.steps(self.registry, self.store, now_ns, findings)
        out.events.extend(self._finding_events(findings, now_ns))
        self._emergencies(findings, now_ns, out)
        yield
        out.events.extend(self._liveness(now_ns))
        yield
        n = len(self.registry)
        if n:
            parts = []
            for start in range(0, n, STEP_DEVICES):
                parts.append(self.power_levels(np.arange(start, min(n, start + STEP_DEVICES), dtype=np.int64), now_ns))
                yield
            self.power.hold_raises = now_ns < self.hold_raises_until_ns
            inputs = self.inputs(now_ns, levels=power.Levels.concat(parts))
            version = self.registry.version
            yield  # inputs and the decision over 10,000 devices were one step of 3-3.5 ms
            if self.registry.version != version:  # a slot moved meanwhile: no cap for the wrong device
                inputs = self.inputs(now_ns)
            decision = self.power.decide(inputs)
            self.last_decision = decision
            out.events.extend(
                self._feasibility(
                    now_ns,
                    feasible=decision.feasible,
                    message=decision.problem or f"the budget covers the floors again ({decision.floors_w:.0f} W)",
                    value=decision.floors_w,
                    threshold=decision.settable_budget_w,
                )
            )
            for cmd in decision.commands:
                self._issue(cmd, now_ns, out)
            if decision.commands:
                out.events.append(self._period_event(decision, inputs, now_ns))
            yield
        send, expired, evs = self.ledger.due(now_ns)
        for e in expired:
            if e.slot >= 0:
                self.power.forget(e.slot)
        out.events.extend(evs)
        seen = {e.id for e in out.send}
        out.send.extend(e for e in send if e.id not in seen)

    def _period_event(self, decision: power.Decision, inputs: power.Inputs, now_ns: int) -> events.Event:
        """One line for a period's commands (issue 17.5): what operators read, where each command
        is a `debug` event of its own (on the bus, and in `xpuctl events --verbose`).
        """
        n = len(decision.commands)
        with np.errstate(invalid="ignore"):
            cuts = sum(1 for c in decision.commands if not c.cap_w >= inputs.limit_w[c.slot])
        draw_w = inputs.measured_w if math.isfinite(inputs.measured_w) else 0.0
        budget = f"budget {self.power.budget_w / 1e3:,.1f} kW" if self.power.budget_w is not None else "no budget"
        return events.Event(
            timestamp_ns=now_ns,
            kind="power.period",
            message=f"power loop: {n} cap(s) changed ({cuts} down, {n - cuts} up), {budget}, draw {draw_w / 1e3:,.1f} kW",
            value=float(n),
            threshold=self.power.budget_w or 0.0,
        )

    def _feasibility(
        self, now_ns: int, *, feasible: bool, message: str, value: float = 0.0, threshold: float = 0.0
    ) -> list[events.Event]:
        """A budget.feasible / budget.infeasible event when feasibility changed; none otherwise."""
        if feasible == self.feasible:
            return []
        self.feasible = feasible
        return [
            events.Event(
                timestamp_ns=now_ns,
                kind="budget.feasible" if feasible else "budget.infeasible",
                severity="info" if feasible else "critical",
                message=message,
                value=value,
                threshold=threshold,
            )
        ]

    def _liveness(self, now_ns: int) -> list[events.Event]:
        """Node status changes, and nodes silent past `forget_after_s` forgotten with their devices
        (one pass over the nodes per period).
        """
        out = []
        horizon = now_ns - int(self.liveness.forget_after_s * 1e9)
        for node_id, node in list(self.registry.nodes.items()):
            if node.streams == 0 and max(node.last_seen_ns, node.last_hello_ns) < horizon:
                out.append(self._forget(node_id, now_ns))
                continue
            status = node.status(now_ns, self.liveness)
            if self.node_status.get(node_id) != status:
                self.node_status[node_id] = status
                name = status.name.lower()
                out.append(
                    events.Event(
                        timestamp_ns=now_ns,
                        kind=f"node.{name}",
                        node_id=node_id,
                        severity="warning" if status != registry.NodeStatus.ONLINE else "info",
                        message=f"node {node_id} is {name}",
                    )
                )
        return out

    def _bind(self) -> None:
        """Restored commands whose devices said Hello: the loop takes their caps as asked for, so
        that it waits for their answers instead of sending the same cap again under a new id.
        """
        for e in self.ledger.bind(self.registry.slot_of_uuid):
            if e.kind == "set_power_cap":
                self.power.asked(e.slot, e.cap_w)

    def _gone(self, now_ns: int) -> list[events.Event]:
        """Devices that left their node's Hello, and what has been gone past `forget_after_s`.

        A gone device's open anomalies close (with an event that says why); after the retention
        its slot is cleared everywhere and released (silent nodes: `_liveness`).
        """
        reg = self.registry
        out = []
        for slot in reg.newly_gone:
            uuid, node_id = reg.infos[slot].uuid, reg.node_of_slot[slot]
            out.append(
                events.Event(
                    timestamp_ns=now_ns,
                    kind="device.gone",
                    node_id=node_id,
                    device_uuid=uuid,
                    severity="warning",
                    message=f"{uuid} is missing from node {node_id}'s newest Hello: out of listings and "
                    f"the power budget; its slot is released after {self.liveness.forget_after_s:g} s",
                )
            )
            out.extend(
                events.Event(
                    timestamp_ns=now_ns,
                    kind="anomaly.cleared",
                    node_id=node_id,
                    device_uuid=uuid,
                    message=f"{kind} cleared on {uuid}: the device is gone",
                    detector=kind,
                )
                for kind in self.detectors.open_kinds(slot)
            )
            self.detectors.reset(slot)
        reg.newly_gone.clear()
        horizon = now_ns - int(self.liveness.forget_after_s * 1e9)
        for slot in [s for s, since in reg.gone_ns.items() if since < horizon]:
            self.release(slot)
        return out

    def _forget(self, node_id: str, now_ns: int) -> events.Event:
        """Drop a silent node and release its devices' slots; the `node.forgotten` event."""
        for slot in self.registry.forget(node_id):
            self.release(slot)
        self.node_status.pop(node_id, None)
        return events.Event(
            timestamp_ns=now_ns,
            kind="node.forgotten",
            node_id=node_id,
            message=f"node {node_id} was silent for {self.liveness.forget_after_s:g} s: forgotten "
            "with its devices (it is registered again when it says Hello)",
        )

    def release(self, slot: int) -> None:
        """Clear every trace of a slot's device, then free the slot for the next new device (or
        node) that declares it.
        """
        self.store.clear(slot)
        self.detectors.reset(slot)
        self.power.reset(slot)
        self.ledger.drop_slot(slot)
        self.registry.release(slot)

    def on_result(
        self,
        now_ns: int,
        *,
        node_id: str,
        id: str,  # noqa: A002 - the payload's own name
        ok: bool,
        applied_cap_w: float | None,
        error: str,
    ) -> Output:
        """An agent's answer to a command, from `node_id`."""
        if self.ledger.unbound:
            self._bind()
        entry, evs = self.ledger.result(now_ns, node_id=node_id, id=id, ok=ok, applied_cap_w=applied_cap_w, error=error)
        if entry is not None and entry.slot >= 0:
            if ok and applied_cap_w is not None and math.isfinite(applied_cap_w):
                self.power.applied(entry.slot, applied_cap_w)
            elif not ok:
                self.power.forget(entry.slot)
        return Output(events=evs)

    def set_budget(self, budget_w: float | None, now_ns: int) -> Output:
        """Change the cluster budget (None: no budget)."""
        old = self.power.budget_w
        self.power.budget_w = budget_w
        text = "none" if budget_w is None else f"{budget_w:.0f} W"
        was = "none" if old is None else f"{old:.0f} W"
        out = Output(
            events=[
                events.Event(
                    timestamp_ns=now_ns,
                    kind="budget.changed",
                    message=f"power budget {was} -> {text}",
                    value=budget_w or 0.0,
                    threshold=old or 0.0,
                )
            ]
        )
        # the answer to whoever set it is about this budget, not the last period's (issue 18.12)
        feasible, problem = self.power.assess(self.inputs(now_ns)) if len(self.registry) else (True, "")
        message = problem or f"the budget {text} covers the floors"
        out.events.extend(self._feasibility(now_ns, feasible=feasible, message=message))
        return out

    def anomalies_open(self) -> int:
        """Open (device, detector) anomalies."""
        return self.detectors.open_total()
