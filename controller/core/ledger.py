"""The action ledger: every command the controller issued, and what became of it.

Theory of operation. A command is `issued` with an id, a device and an expiry. It is sent, and
sent again every `retry_after_s` while no result came and it has not expired (the agent drops
repeats by id, and answers a repeat with the result it already has). The agent's result moves it
to `applied` or `failed`; reaching its expiry first moves it to `expired` (the agent will never
apply it either: it checks the same expiry). One writer per device: a new command for a device
whose previous one is still open moves the previous one to `superseded`. Each transition is an
event. Pure: time comes in as `now_ns`.

Across a restart (issue 18.2) the open commands are saved (`core/desired.py`) and `restore`d
under their own ids: a result for one is still recognised, and it is still retried until it
expires. A restored command has no slot until its device says Hello again (`bind`).
"""

from __future__ import annotations

import math
import secrets

import msgspec

from xpuctl.controller.core import desired, events

ISSUED, APPLIED, FAILED, EXPIRED, SUPERSEDED = "issued", "applied", "failed", "expired", "superseded"
FINAL = frozenset((APPLIED, FAILED, EXPIRED, SUPERSEDED))


class Entry(msgspec.Struct, kw_only=True):
    """One command and its fate."""

    id: str
    kind: str  # set_power_cap | restore_default
    slot: int
    node_id: str
    device_uuid: str
    cap_w: float
    reason: str
    issued_at_ns: int
    expires_at_ns: int
    state: str = ISSUED
    urgent: bool = False  # a thermal emergency: sent before every other message
    attempts: int = 0
    last_sent_ns: int = 0
    applied_cap_w: float = math.nan
    error: str = ""
    finished_ns: int = 0


class Ledger:
    """Open commands by id and by device; a bounded history of finished ones."""

    MAX_FINISHED = 10_000

    def __init__(self, *, prefix: str, ttl_s: float, retry_after_s: float) -> None:
        """Ids are `<prefix>-<n>-<random>`; `prefix` should be unique per controller start."""
        self.prefix = prefix
        self.ttl_ns = int(ttl_s * 1e9)
        self.retry_ns = int(retry_after_s * 1e9)
        self.counter = 0
        self.open: dict[str, Entry] = {}
        self.open_by_slot: dict[int, str] = {}
        self.finished: list[Entry] = []
        self.unknown_results = 0
        self.foreign_results = 0  # answers from a node other than the command's
        self.totals: dict[str, int] = {}
        self.unbound: dict[str, str] = {}  # device uuid -> id of a restored command without a slot yet
        self.version = 0  # bumped whenever the set of open commands changes (what is saved)

    def _event(self, e: Entry, kind: str, now_ns: int, message: str, severity: str = "") -> events.Event:
        """An action.<kind> event. A routine command's life (issued, applied, superseded) is
        `debug`: operators read one `power.period` line per period instead (issue 17.5); an
        emergency's is `info`, a failure or an expiry `warning`.
        """
        self.totals[kind] = self.totals.get(kind, 0) + 1
        severity = severity or ("info" if e.urgent else "debug")
        return events.Event(
            timestamp_ns=now_ns,
            kind=f"action.{kind}",
            node_id=e.node_id,
            device_uuid=e.device_uuid,
            severity=severity,
            message=message,
            value=e.applied_cap_w if kind == APPLIED else e.cap_w,
            action_id=e.id,
        )

    def _finish(self, e: Entry, state: str, now_ns: int) -> None:
        self.version += 1
        e.state = state
        e.finished_ns = now_ns
        self.open.pop(e.id, None)
        if self.open_by_slot.get(e.slot) == e.id:
            del self.open_by_slot[e.slot]
        self.finished.append(e)
        del self.finished[: -self.MAX_FINISHED]

    def is_open(self, e: Entry) -> bool:
        """Whether `e` is still the device's command (not superseded, answered or expired)."""
        return self.open.get(e.id) is e

    def issue(
        self,
        now_ns: int,
        *,
        slot: int,
        node_id: str,
        device_uuid: str,
        cap_w: float,
        reason: str,
        kind: str = "set_power_cap",
        urgent: bool = False,
    ) -> tuple[Entry, list[events.Event]]:
        """A new command (superseding the device's open one); returns it and the events."""
        out = []
        previous = self.open_by_slot.get(slot)
        if previous is not None:
            old = self.open[previous]
            self._finish(old, SUPERSEDED, now_ns)
            out.append(self._event(old, SUPERSEDED, now_ns, f"superseded by a newer command for {device_uuid}"))
        self.counter += 1
        e = Entry(
            # the counter orders them for people; the random part makes an id unguessable (a node
            # reads the prefix in the controller's lease and could count, issue 19.2)
            id=f"{self.prefix}-{self.counter}-{secrets.token_hex(6)}",
            kind=kind,
            slot=slot,
            node_id=node_id,
            device_uuid=device_uuid,
            cap_w=cap_w,
            reason=reason,
            issued_at_ns=now_ns,
            expires_at_ns=now_ns + self.ttl_ns,
            urgent=urgent,
        )
        self.open[e.id] = e
        self.open_by_slot[slot] = e.id
        self.version += 1
        what = (
            f"cap {device_uuid} at {cap_w:.0f} W ({reason})"
            if kind == "set_power_cap"
            else f"restore the default cap of {device_uuid} ({reason})"
        )
        out.append(self._event(e, ISSUED, now_ns, what))
        return e, out

    def restore(self, saved: list[desired.OpenCommand]) -> None:
        """Take back the open commands a previous start saved (their slots come with `bind`)."""
        for c in saved:
            if c.id in self.open:
                continue
            e = Entry(
                id=c.id,
                kind=c.kind,
                slot=-1,
                node_id=c.node_id,
                device_uuid=c.device_uuid,
                cap_w=c.cap_w,
                reason=c.reason,
                issued_at_ns=c.issued_at_ns,
                expires_at_ns=c.expires_at_ns,
            )
            self.open[e.id] = e
            self.unbound[e.device_uuid] = e.id
        self.version += 1

    def bind(self, slot_of_uuid: dict[str, int]) -> list[Entry]:
        """Give restored commands the slots their devices have now; those that got one."""
        bound = []
        for uuid, id_ in list(self.unbound.items()):
            e = self.open.get(id_)
            if e is None:
                del self.unbound[uuid]  # answered or expired meanwhile
                continue
            slot = slot_of_uuid.get(uuid)
            if slot is None:
                continue
            del self.unbound[uuid]
            e.slot = slot
            self.open_by_slot.setdefault(slot, e.id)
            bound.append(e)
        return bound

    def drop_slot(self, slot: int) -> None:
        """The slot's device is forgotten: an open command for it no longer points at the slot
        (a late answer must not reach the next device that takes it).
        """
        id_ = self.open_by_slot.pop(slot, None)
        if id_ is not None and id_ in self.open:
            self.open[id_].slot = -1

    def saved(self) -> list[desired.OpenCommand]:
        """The open commands, as `restore` takes them back."""
        return [
            desired.OpenCommand(
                id=e.id,
                kind=e.kind,
                node_id=e.node_id,
                device_uuid=e.device_uuid,
                cap_w=e.cap_w,
                reason=e.reason,
                issued_at_ns=e.issued_at_ns,
                expires_at_ns=e.expires_at_ns,
            )
            for e in self.open.values()
        ]

    def sent(self, e: Entry, now_ns: int) -> None:
        """Note that `e` went out."""
        e.attempts += 1
        e.last_sent_ns = now_ns

    def result(
        self,
        now_ns: int,
        *,
        node_id: str,
        id: str,  # noqa: A002 - the payload's own name
        ok: bool,
        applied_cap_w: float | None,
        error: str,
    ) -> tuple[Entry | None, list[events.Event]]:
        """An agent's answer, from `node_id` (the node whose topic carried it).

        Answers to unknown or finished ids are counted and ignored, and so is an answer from a node
        the command was not addressed to (issue 19.2: a node settled another node's commands).
        """
        e = self.open.get(id)
        if e is None:
            self.unknown_results += 1
            return None, []
        if e.node_id != node_id:
            self.foreign_results += 1
            return None, []
        e.applied_cap_w = math.nan if applied_cap_w is None else applied_cap_w
        e.error = error
        if ok:
            self._finish(e, APPLIED, now_ns)
            return e, [self._event(e, APPLIED, now_ns, f"{e.device_uuid} enforces {e.applied_cap_w:.0f} W")]
        self._finish(e, FAILED, now_ns)
        return e, [self._event(e, FAILED, now_ns, f"{e.device_uuid}: {error}", severity="warning")]

    def abandon(self, now_ns: int, why: str) -> tuple[list[Entry], list[events.Event]]:
        """Close every open command as expired, never to be sent again (a shard owner taking the
        shard again starts a new epoch: what it had in flight before was decided on what it knew
        then); the closed entries and their events.
        """
        closed, out = list(self.open.values()), []
        for e in closed:
            self._finish(e, EXPIRED, now_ns)
            out.append(self._event(e, EXPIRED, now_ns, f"not sent again: {why}", "warning"))
        return closed, out

    def due(self, now_ns: int) -> tuple[list[Entry], list[Entry], list[events.Event]]:
        """(to send now: new or unanswered past the retry time, expired now, their events)."""
        send, expired, out = [], [], []
        for e in list(self.open.values()):
            if now_ns >= e.expires_at_ns:
                self._finish(e, EXPIRED, now_ns)
                expired.append(e)
                out.append(
                    self._event(
                        e, EXPIRED, now_ns, f"no answer from {e.node_id} after {e.attempts} attempt(s)", "warning"
                    )
                )
            elif e.attempts == 0 or now_ns - e.last_sent_ns >= self.retry_ns:
                send.append(e)
        return send, expired, out
