"""The controller's hub: the state it holds, the fan-out of its events, and the operators' verbs.

One `Hub` per controller process, owned by the event loop (no locks). The gRPC services, the
metrics page, the demo and the service's loops all reach the controller's state through it:

* telemetry goes in through `hello` and `batch`, or `batches` for many at once (ingest,
  then the critical path at once);
* `tick` runs one control period; `result` takes an agent's answer to a command;
* the verbs `set_budget`, `set_weight` and `cordon` apply an operator's request after the core's
  rules (`core/operations.py`) have accepted it, and publish their own events;
* every event goes through `publish`: the recent list, the counters, each WatchEvents queue and,
  with a bus, `forward` (to `xpu/v1/events`); every command the loop wants sent goes to `send`.

It decides nothing itself: the rules are in `core/`, and the adapters map its typed errors.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Iterator

import msgspec

from xpuctl.controller import config, errors
from xpuctl.controller.core import (
    access,
    control,
    desired,
    detect,
    events,
    ingest,
    jobs,
    ledger,
    model,
    operations,
    ownership,
    registry,
    ring,
    views,
)

log = logging.getLogger("xpu.controller")
# events kept for `xpuctl events --since` and `xpuctl device` (a few minutes of a busy cluster)
EVENT_BACKLOG = 10_000
HANDLE_STEP = 128  # events and commands handed on per step of a tick


class Hub:
    """Everything the controller holds, and the one way to change it."""

    def __init__(
        self,
        *,
        window: int = 600,
        liveness: registry.Liveness | None = None,
        limits: ingest.Limits | None = None,
        budget_w: float | None = None,
        cfg: config.Config | None = None,
        prefix: str = "c",
    ) -> None:
        """Empty registry and ring store; the loop's rules with `cfg` (budget_w overrides it)."""
        cfg = cfg or config.Config()
        if budget_w is not None:
            cfg = msgspec.structs.replace(cfg, power=msgspec.structs.replace(cfg.power, budget_w=budget_w))
        self.cfg = cfg
        self.registry = registry.Registry()
        self.store = ring.RingStore(n_metrics=model.N_STORED, window=window, counters=model.COUNTERS)
        self.ingest = ingest.Ingest(self.registry, self.store, limits=limits)
        self.liveness = liveness or registry.Liveness()
        self.views = views.Views(self.registry, self.store, self.liveness)
        self.control = control.Control(self.registry, self.store, self.liveness, cfg, prefix=prefix)
        self.views.anomalies_of = self.control.detectors.open_kinds
        self.streams_open = 0
        self.recent_events: collections.deque[events.Event] = collections.deque(maxlen=EVENT_BACKLOG)
        # event ids start at the start time in microseconds: a watcher's last id from before a
        # restart is below every id after it (unless the controller published more than a million
        # events a second on average, or the clock went back)
        self.first_event_id = time.time_ns() // 1000
        self.next_event_id = self.first_event_id
        self.watchers: set[asyncio.Queue[events.Event]] = set()
        self.events_dropped = 0
        self.event_counts: dict[str, int] = {}  # by kind, since start
        self.raised_by_detector: dict[str, int] = {}  # anomaly.raised by detector, since start
        self.jobs = jobs.Jobs()  # scheduler jobs and their energy (issue 16.3)
        self.policy = access.Policy()  # who may do what; set by the service when TLS is on
        self.denied: dict[str, int] = {}  # refused Cluster calls, by status code name
        # set by the service when there is a bus: every event, and each command to send
        self.forward: Callable[[events.Event], None] | None = None
        self.send: Callable[[ledger.Entry, int], bool] | None = None
        self.bus_stats: Callable[[], dict[str, int]] | None = None  # the bus's counters, for /metrics
        self.history_stats: Callable[[], dict[str, int | str]] | None = None  # the history export's, if any
        # set by the service with a state store: returns once what was decided so far is saved
        self.persist: Callable[[], Awaitable[None]] | None = None
        self.decisions = 0  # operator decisions since start (with the ledger's version: what to save)
        self.saves = 0  # set by the service: desired-state saves done, and those that failed
        self.save_errors = 0
        # set by the service in a sharded deployment (issue 14): who acts for the shard, and its nodes
        self.ownership: ownership.Ownership | None = None
        self.shard_nodes: tuple[str, ...] = ()
        self.site_managed = False  # the budget is the site root's grant (issue 15): SetPowerBudget refused

    @property
    def budget_w(self) -> float | None:
        """The cluster power budget (None: no budget)."""
        return self.control.power.budget_w

    # -- telemetry in ------------------------------------------------------------------------------

    def hello(self, stream: ingest.StreamState, facts: ingest.HelloFacts, now_ns: int) -> ingest.Answer:
        """A stream's Hello (see `ingest.Ingest.hello`, which raises ProtocolViolation)."""
        answer = self.ingest.hello(stream, facts, now_ns)
        for uuid in list(self.jobs.unplaced):  # devices of jobs that ran across a restart
            slot = self.registry.slot_of_uuid.get(uuid)
            if slot is not None:
                self.jobs.adopt(uuid, slot, self.store)
        return answer

    def batch(self, stream: ingest.StreamState, cols: ingest.BatchColumns, now_ns: int) -> ingest.Answer:
        """Store one batch, then run the critical path on what it stored; the Ack's fields."""
        stored = self.ingest.batch(stream, cols, now_ns)
        self.handle(self.control.on_batch(stored, now_ns), now_ns)
        return stored.answer

    def batches(self, nodes: list[registry.NodeState], frame: ingest.Frame, now_ns: int) -> list[ingest.Answer]:
        """Store batches admitted by `ingest.Ingest.admit` (batch i from `nodes[i]`), then run
        the critical path on what they stored; each batch's Ack fields.
        """
        stored = self.ingest.store_frame(nodes, frame, now_ns)
        self.handle(self.control.on_batch(stored, now_ns), now_ns)
        return stored.answers

    def admission(self, node_id: str | None) -> errors.NotOwner | None:
        """Why a stream (a Hello from `node_id`, or a batch: None) may not be taken; None when it may.

        Only a sharded controller refuses: while it is not the shard's acting owner, and a Hello
        from a node outside the shard's patterns.
        """
        own = self.ownership
        if own is None:
            return None
        if not own.acting(time.monotonic()):
            owner = own.owner_address if own.owner_address != own.address else ""
            return errors.NotOwner("not_owner", own.refusal(), owner=owner, node_id=node_id or "")
        if node_id is not None and not ownership.member(node_id, self.shard_nodes):
            message = f"node {node_id!r} is not in shard {own.shard} (nodes {', '.join(self.shard_nodes)})"
            return errors.NotOwner("not_in_shard", message, node_id=node_id)
        return None

    def refused(self, violation: errors.ProtocolViolation, *, peer: str, now_ns: int) -> None:
        """A stream ended for a protocol violation; a second machine with a node's id is an event."""
        if violation.reason == "duplicate_node":
            self.publish(
                [
                    events.Event(
                        timestamp_ns=now_ns,
                        kind="node.duplicate",
                        node_id=violation.node_id,
                        severity="warning",
                        message=f"refused a second stream from {peer}: {violation.message}",
                    )
                ]
            )

    # -- the loop --------------------------------------------------------------------------------

    def tick(self, now_ns: int) -> None:
        """One control period, all at once."""
        for _ in self.tick_steps(now_ns):
            pass

    def tick_steps(self, now_ns: int) -> Iterator[None]:
        """One control period in steps, between which the caller lets other work run (see
        `control.Control.steps`); its events and commands go out at the end.
        """
        out = control.Output()
        self.jobs.integrate(self.store)
        yield from self.control.steps(now_ns, out)
        # a period can end with hundreds of events and commands: hand them on in parts
        for start in range(0, max(len(out.events), len(out.send)), HANDLE_STEP):
            yield
            part = control.Output(
                events=out.events[start : start + HANDLE_STEP], send=out.send[start : start + HANDLE_STEP]
            )
            self.handle(part, now_ns)

    def result(
        self,
        now_ns: int,
        *,
        node_id: str,
        id: str,  # noqa: A002 - the payload's own name
        ok: bool,
        applied_cap_w: float | None,
        error: str,
    ) -> None:
        """An agent's answer to a command, from `node_id` (the topic it came on)."""
        out = self.control.on_result(now_ns, node_id=node_id, id=id, ok=ok, applied_cap_w=applied_cap_w, error=error)
        self.handle(out, now_ns)

    def handle(self, out: control.Output, now_ns: int) -> None:
        """Send a step's commands (when there is a bus to send them on), then publish its events:
        an emergency reaches the socket before the events that tell of it are handed on (issue 13.3).
        """
        if self.send is not None:
            for entry in out.send:
                if self.send(entry, now_ns):
                    self.control.ledger.sent(entry, now_ns)
        self.publish(out.events)
        for e in out.events:
            if e.severity in ("critical", "warning"):
                extra = {"node_id": e.node_id, "hw.id": e.device_uuid} if e.device_uuid else {"node_id": e.node_id}
                level = logging.WARNING if e.severity == "critical" else logging.INFO
                log.log(level, "%s: %s", e.kind, e.message, extra=extra)

    def publish(self, evs: list[events.Event]) -> None:
        """Hand events to WatchEvents streams (a slow watcher loses events, counted) and onwards."""
        for e in evs:
            e = msgspec.structs.replace(e, id=self.next_event_id)  # noqa: PLW2901 - numbered here
            self.next_event_id += 1
            self.recent_events.append(e)
            self.event_counts[e.kind] = self.event_counts.get(e.kind, 0) + 1
            if e.kind == "anomaly.raised":
                self.raised_by_detector[e.detector] = self.raised_by_detector.get(e.detector, 0) + 1
            if self.forward is not None:
                self.forward(e)
            for q in self.watchers:
                try:
                    q.put_nowait(e)
                except asyncio.QueueFull:
                    self.events_dropped += 1

    # -- the operators' verbs ----------------------------------------------------------------------

    def _must_act(self) -> None:
        """A decision taken by a standby would be lost (and not its to take): refuse it, naming the owner."""
        refusal = self.admission(None)
        if refusal is not None:
            raise refusal

    def set_budget(self, budget_w: float, now_ns: int) -> None:
        """Set the cluster budget in watts; 0 removes it.

        Raises:
            errors.BadValue: not a finite number of watts >= 0.
            errors.NotOwner: a shard candidate that does not act for its shard (names the owner).
        """
        self._must_act()
        if self.site_managed and self.ownership is not None:
            raise errors.SiteManaged(self.ownership.shard)
        self.publish(self.control.set_budget(operations.budget(budget_w), now_ns).events)
        self.decisions += 1

    def set_weight(self, weight: float, *, device_uuid: str = "", node_id: str = "") -> None:
        """The weight of one device, or of every device of a node, in the power allocation.

        Raises:
            errors.BadValue: the weight is outside its range.
            errors.UnknownDevice, errors.UnknownNode, errors.MissingTarget: see `operations`.
            errors.NotOwner: see `set_budget`.
        """
        self._must_act()
        w = operations.weight(weight)
        if device_uuid:
            operations.device_slot(self.registry, device_uuid)
            self.control.device_weight[device_uuid] = w
        elif node_id:
            self.control.node_weight[operations.known_node(self.registry, node_id)] = w
        else:
            raise errors.MissingTarget
        self.decisions += 1

    def cordon(self, *, device_uuid: str, node_id: str, reason: str, cordoned: bool, now_ns: int) -> int:
        """Cordon (or uncordon) a device or every device of a node; the number of devices.

        Raises:
            errors.UnknownDevice, errors.UnknownNode, errors.MissingTarget, errors.MissingReason.
            errors.NotOwner: see `set_budget`.
        """
        self._must_act()
        slots = operations.target_slots(self.registry, device_uuid=device_uuid, node_id=node_id)
        self.publish(operations.cordon(self.registry, slots, cordoned=cordoned, reason=reason, now_ns=now_ns))
        self.decisions += 1
        return len(slots)

    def release_device(self, uuid: str, *, reason: str, who: str, now_ns: int) -> str:
        """Let a device go from its node (issue 19.1), audited by a `device.released` event; the
        node it belonged to.

        Raises:
            errors.UnknownDevice, errors.DeviceInUse: see `operations.releasable`.
            errors.MissingReason: no reason given.
            errors.NotOwner: see `set_budget`.
        """
        self._must_act()
        if not reason.strip():
            raise errors.MissingReason
        slot = operations.releasable(self.registry, uuid)
        owner = self.registry.node_of_slot[slot]
        self.control.release(slot)
        self.publish(
            [
                events.Event(
                    timestamp_ns=now_ns,
                    kind="device.released",
                    node_id=owner,
                    device_uuid=uuid,
                    severity="warning",
                    message=f"{uuid} released from node {owner} by {who}: {reason}",
                )
            ]
        )
        return owner

    async def durable(self) -> None:
        """Return once the decisions taken so far are saved (at once without a state store).

        Raises:
            errors.NotSaved: the store could not write them.
        """
        if self.persist is not None:
            await self.persist()

    # -- jobs (issue 16.3) -------------------------------------------------------------------------

    def start_job(
        self, job_id: str, node_id: str, indices: list[int], *, user: str, now_ns: int
    ) -> tuple[jobs.Job, list[str]]:
        """A job began on `node_id` with its devices of these indices; returns the job and, per
        granted device that is failed, cordoned or has a critical anomaly open, what is wrong.

        Raises:
            errors.NotOwner: this controller is a standby.
            errors.UnknownNode: a node it does not know.
            errors.BadJob: no job id, or an index the node does not have.
        """
        self._must_act()
        if not job_id.strip():
            raise errors.BadJob("a job id is required (SLURM_JOB_ID)")
        reg = self.registry
        if node_id not in reg.nodes:
            raise errors.UnknownNode(node_id, ": its agent has not said Hello; `xpuctl nodes` lists the nodes")
        mine = {reg.infos[s].index: s for s in reg.slots_of(node_id) if reg.present[s]}
        missing = sorted(set(indices) - set(mine))
        if missing:
            raise errors.BadJob(
                f"node {node_id!r} has no device of index {', '.join(map(str, missing))} "
                f"(it has {', '.join(map(str, sorted(mine))) or 'none'})"
            )
        granted = [(reg.infos[mine[i]].uuid, i, mine[i]) for i in sorted(set(indices))]
        job, orphaned = self.jobs.start(job_id, node_id, granted, self.store, user=user, now_ns=now_ns)
        self.decisions += 1
        evs = [
            events.Event(
                timestamp_ns=now_ns,
                kind="job.started",
                node_id=node_id,
                message=f"job {job_id} started on {node_id} with device(s) {', '.join(u for u, _, _ in granted) or 'none'}",
            )
        ]
        evs += [
            events.Event(
                timestamp_ns=now_ns,
                kind="job.ended",
                node_id=node_id,
                severity="warning",
                message=f"job {other}: its device on {node_id} went to job {job_id} without an end being told",
            )
            for other in orphaned
        ]
        self.publish(evs)
        verdicts = [self._unfit(slot) for _, _, slot in granted]
        return job, [v for v in verdicts if v]

    def _unfit(self, slot: int) -> str:
        """What makes a device unfit for new work ("" when nothing does)."""
        reg = self.registry
        where = f"dev={reg.infos[slot].index}/{reg.infos[slot].uuid}"
        health = self.store.newest[slot, model.HEALTH]
        if health == model.HEALTH_FAILED:
            return f"failed {where}"
        if reg.cordoned[slot]:
            return f"cordoned {where}: {reg.cordon_reason[slot]}"
        critical = [k for k in self.control.detectors.open_kinds(slot) if k in detect.CRITICAL_KINDS]
        return f"{','.join(critical)} {where}" if critical else ""

    def end_job(self, job_id: str, node_id: str, now_ns: int) -> jobs.Job:
        """A job ended on `node_id`.

        Raises:
            errors.NotOwner: this controller is a standby.
            errors.UnknownJob: no such running job.
        """
        self._must_act()
        job = self.jobs.end(job_id, node_id, self.store, now_ns)
        if job is None:
            raise errors.UnknownJob(job_id)
        self.decisions += 1
        if job.ended_ns:
            joules = sum(self.jobs.device_energy(d, self.store)[0] for d in job.devices)
            message = f"job {job_id} ended: {len(job.devices)} device(s), {joules / 3.6e6:.4f} kWh"
        else:
            message = f"job {job_id} ended on {node_id}; it runs on elsewhere"
        self.publish([events.Event(timestamp_ns=now_ns, kind="job.ended", node_id=node_id, message=message)])
        return job

    # -- the desired state, across restarts (issue 18.2) -------------------------------------------

    def desired_version(self) -> tuple[int, int, int]:
        """Changes when what `snapshot` returns changes (operator decisions, open commands)."""
        return self.decisions, self.control.ledger.version, self.registry.node_changes

    def snapshot(self, now_ns: int) -> desired.Desired:
        """What a restarted controller must still know."""
        c = self.control
        return desired.Desired(
            saved_at_ns=now_ns,
            budget_w=self.budget_w,
            config_budget_w=self.cfg.power.budget_w,
            cordons=dict(self.registry.cordons),
            device_weights=dict(c.device_weight),
            node_weights=dict(c.node_weight),
            commands=c.ledger.saved(),
            nodes={n: max(s.last_seen_ns, s.last_hello_ns) for n, s in self.registry.nodes.items()},
            jobs=self.jobs.saved(self.store),
        )

    def restore(self, saved: desired.Desired, *, where: str, now_ns: int) -> None:
        """Take back what an earlier start saved; one `state.restored` event says what.

        The saved budget is kept unless the config's budget changed since it was saved (then the
        config is the newer decision). Cordons and weights of devices not seen yet wait for them.
        """
        reg, c = self.registry, self.control
        budget_w = saved.budget_w
        note = ""
        if saved.config_budget_w != self.cfg.power.budget_w:
            budget_w = self.cfg.power.budget_w
            note = f" (the config's budget replaces the saved {_watts(saved.budget_w)}: it changed since)"
        c.power.budget_w = budget_w
        reg.cordons.update(saved.cordons)
        for uuid, reason in saved.cordons.items():
            slot = reg.slot_of_uuid.get(uuid)
            if slot is not None:
                reg.cordoned[slot], reg.cordon_reason[slot] = True, reason
        c.device_weight.update(saved.device_weights)
        c.node_weight.update(saved.node_weights)
        c.ledger.restore(saved.commands)
        self.jobs.restore(saved.jobs)
        for node_id, seen_ns in saved.nodes.items():  # offline until they say Hello, not missing
            if node_id not in reg.nodes:
                node = reg.node(node_id)
                node.last_seen_ns, node.left_ns = seen_ns, now_ns
                c.node_status[node_id] = registry.NodeStatus.OFFLINE  # known offline: no event per node
        message = (
            f"restored from {where}: budget {_watts(budget_w)}{note}, {len(saved.cordons)} cordon(s), "
            f"{len(saved.device_weights) + len(saved.node_weights)} weight(s), {len(saved.commands)} open command(s), "
            f"{len(saved.nodes)} node(s) offline until they reconnect, {len(self.jobs.running)} job(s) running"
        )
        log.info("%s", message)
        self.publish([events.Event(timestamp_ns=now_ns, kind="state.restored", message=message)])


def _watts(w: float | None) -> str:
    return "none" if w is None else f"{w:.0f} W"
