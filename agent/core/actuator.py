"""Actuation rules of the agent: which commands to apply, and when to fail safe (DESIGN 5, 8).

Theory of operation. A command arrives as bytes on `cmd/<node>/req`. In order:
1. a topic for another node, or a device this node does not have under that topic's node, is
   ignored (counted, not answered: the answer topic belongs to the other node);
2. bytes that are not a valid command are counted and answered with the decoding error;
3. a command whose id was seen is a duplicate: it is answered with the first result again
   (or not at all while that one is still being applied);
4. a command from a shard's owner (DESIGN 11) whose epoch is lower than the highest this agent has
   seen for that shard comes from a deposed owner: answered `stale epoch`, never applied;
5. a command past its expiry is never applied: answered `expired`; nor one whose expiry is further
   ahead than the agent's maximum lifetime (a command meant to be replayable for a year);
6. while in fail-safe, commands are still applied: the controller's lease is back if they come;
7. otherwise the cap is clamped to the device's range and applied (by the adapter, off the loop),
   and the enforced limit read back is the answer.
The lease: the controller republishes its `online` status every heartbeat. When none has come for
`failsafe_after_s` (or the controller said `lost`/`offline`, or the broker is gone, as long),
every settable device goes back to its default cap, or, in a sharded deployment, to the
site-safe cap its shard's owner pushed in advance (clamped into the device's range: thousands of
nodes restoring full power at once would exceed the site's feed), and the node reports fail-safe
until the controller is heard again. Pure: time comes in as `now_ns`.
"""

from __future__ import annotations

import collections
import math

import msgspec

from xpuctl.protos.xpu.v1 import bus

_decoder = msgspec.json.Decoder(bus.Command)


class DeviceRange(msgspec.Struct, frozen=True, kw_only=True):
    """What the actuator knows of one device."""

    uuid: str
    index: int
    min_w: float | None
    max_w: float | None
    default_w: float | None
    settable: bool


class Apply(msgspec.Struct, frozen=True, kw_only=True):
    """Set `index`'s cap to `cap_w` (already clamped); answer `id` with the enforced limit."""

    id: str
    uuid: str
    index: int
    cap_w: float
    restore: bool = False


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """Answer at once, applying nothing."""

    result: bus.Result


class Ignore(msgspec.Struct, frozen=True, kw_only=True):
    """Do nothing (say why in the log)."""

    why: str


Decision = Apply | Answer | Ignore


class Counters(msgspec.Struct, kw_only=True):
    """What the actuator has seen."""

    applied: int = 0
    failed: int = 0
    duplicates: int = 0
    expired: int = 0
    garbage: int = 0
    foreign: int = 0
    too_long: int = 0  # refused: valid for longer than the agent's maximum
    stale_epoch: int = 0  # refused: from a shard owner older than one already heard
    fail_safe_entries: int = 0


class Actuator:
    """One node's actuation state."""

    MAX_REMEMBERED_IDS = 4096

    def __init__(
        self,
        node_id: str,
        devices: list[DeviceRange],
        *,
        failsafe_after_s: float,
        now_ns: int,
        max_lifetime_s: float = 300.0,
    ) -> None:
        """Devices by uuid; the lease starts now (a controller has `failsafe_after_s` to show up).

        A command whose expiry is more than `max_lifetime_s` ahead is refused (issue 19).
        """
        self.node_id = node_id
        self.max_lifetime_ns = int(max_lifetime_s * 1e9)
        self.devices = {d.uuid: d for d in devices}
        self.failsafe_after_ns = int(failsafe_after_s * 1e9)
        self.last_heard_ns = now_ns
        self.controller_online = False
        self.fail_safe = False
        self.enforced_w: dict[str, float | None] = {d.uuid: None for d in devices}
        self.results: collections.OrderedDict[str, bus.Result | None] = collections.OrderedDict()
        self.epochs: dict[str, int] = {}  # the highest fencing epoch seen per shard
        self.safe_w: dict[str, float] = {}  # site-safe caps by device uuid (sharded deployments)
        self.counters = Counters()

    # -- commands --------------------------------------------------------------------------------

    def on_command(self, topic_node: str, payload: bytes, now_ns: int) -> Decision:
        """Judge one command (see the module docstring for the order of the rules)."""
        if topic_node != self.node_id:
            self.counters.foreign += 1
            return Ignore(why=f"command for node {topic_node!r}, this is {self.node_id!r}")
        try:
            cmd = _decoder.decode(payload)
        except msgspec.DecodeError as exc:
            self.counters.garbage += 1
            return Answer(result=bus.Result(id=_id_of(payload), ok=False, error=f"bad command: {exc}"))
        if cmd.id in self.results:
            self.counters.duplicates += 1
            first = self.results[cmd.id]
            if first is None:
                return Ignore(why=f"command {cmd.id} is being applied")
            return Answer(result=first)
        if cmd.shard:
            highest = self.epochs.get(cmd.shard, 0)
            if cmd.epoch < highest:
                self.counters.stale_epoch += 1
                error = (
                    f"stale epoch {cmd.epoch} for shard {cmd.shard}: its owner has since changed "
                    f"(epoch {highest} seen); not applied"
                )
                return self._remember(cmd.id, bus.Result(id=cmd.id, ok=False, error=error))
            self.epochs[cmd.shard] = cmd.epoch
        device = self.devices.get(cmd.device_uuid)
        if device is None:
            self.counters.foreign += 1
            return self._remember(
                cmd.id,
                bus.Result(id=cmd.id, ok=False, error=f"device {cmd.device_uuid!r} is not on node {self.node_id}"),
            )
        if now_ns >= cmd.expires_at_ns:
            self.counters.expired += 1
            late_s = (now_ns - cmd.expires_at_ns) / 1e9
            return self._remember(
                cmd.id, bus.Result(id=cmd.id, ok=False, error=f"expired {late_s:.1f}s ago; not applied")
            )
        if cmd.expires_at_ns - now_ns > self.max_lifetime_ns:
            self.counters.too_long += 1
            ahead_s = (cmd.expires_at_ns - now_ns) / 1e9
            return self._remember(
                cmd.id,
                bus.Result(
                    id=cmd.id,
                    ok=False,
                    error=f"expires {ahead_s:.0f}s ahead, beyond this agent's {self.max_lifetime_ns / 1e9:g}s "
                    "maximum (--max-command-lifetime-s); not applied",
                ),
            )
        if not device.settable:
            return self._remember(
                cmd.id, bus.Result(id=cmd.id, ok=False, error=f"{device.uuid} has no power-cap setter")
            )
        if isinstance(cmd, bus.RestoreDefault):
            cap, restore = device.default_w, True
        else:
            cap, restore = cmd.power_cap_w, False
        if cap is None or not math.isfinite(cap):
            return self._remember(cmd.id, bus.Result(id=cmd.id, ok=False, error=f"{device.uuid} has no default cap"))
        self.results[cmd.id] = None  # in flight
        self._trim()
        return Apply(id=cmd.id, uuid=device.uuid, index=device.index, cap_w=clamp(cap, device), restore=restore)

    def _remember(self, id_: str, result: bus.Result) -> Answer:
        self.results[id_] = result
        self._trim()
        return Answer(result=result)

    def _trim(self) -> None:
        while len(self.results) > self.MAX_REMEMBERED_IDS:
            self.results.popitem(last=False)

    def applied(self, apply: Apply, enforced_w: float) -> bus.Result:
        """The driver set the cap and read `enforced_w` back."""
        self.counters.applied += 1
        self.enforced_w[apply.uuid] = enforced_w
        result = bus.Result(id=apply.id, ok=True, applied_cap_w=enforced_w)
        if apply.id:
            self.results[apply.id] = result
        return result

    def failed(self, apply: Apply, error: str) -> bus.Result:
        """The driver call failed or timed out."""
        self.counters.failed += 1
        result = bus.Result(id=apply.id, ok=False, error=error)
        if apply.id:
            self.results[apply.id] = result
        return result

    # -- the lease -------------------------------------------------------------------------------

    def on_controller_status(self, state: str, now_ns: int) -> bool:
        """The controller's retained status (or heartbeat) arrived.

        Returns:
            True when it ends a fail-safe: the node's reported state must say so, so that the
            controller knows its caps are its own to set again.
        """
        self.controller_online = state == bus.ONLINE
        if not self.controller_online:
            return False
        self.last_heard_ns = now_ns
        ended, self.fail_safe = self.fail_safe, False
        return ended

    def on_bus_lost(self) -> None:
        """The broker connection is gone: the controller cannot be heard."""
        self.controller_online = False

    def on_safe_caps(self, payload: bytes) -> str:
        """The owner's site-safe caps (`safe/<node>`); '' when taken, else why not (logged, counted).

        Only an owner at least as recent as every one heard (its epoch) may set them.
        """
        try:
            safe = msgspec.json.decode(payload, type=bus.SafeCaps)
        except msgspec.DecodeError as exc:
            self.counters.garbage += 1
            return f"unreadable site-safe caps: {exc}"
        if safe.epoch < self.epochs.get(safe.shard, 0):
            self.counters.stale_epoch += 1
            return f"site-safe caps of stale epoch {safe.epoch} for shard {safe.shard}; kept the ones before"
        self.epochs[safe.shard] = safe.epoch
        self.safe_w = {u: clamp(w, self.devices[u]) for u, w in safe.caps.items() if u in self.devices}
        return ""

    def check_lease(self, now_ns: int) -> list[Apply]:
        """Fail safe once the lease is gone longer than allowed (see the module docstring); what to apply."""
        if self.fail_safe:
            return []
        silent_ns = now_ns - self.last_heard_ns
        if self.controller_online and silent_ns <= self.failsafe_after_ns:
            return []
        if silent_ns <= self.failsafe_after_ns:
            return []
        self.fail_safe = True
        self.counters.fail_safe_entries += 1
        out = []
        for d in self.devices.values():
            if not d.settable:
                continue
            if d.uuid in self.safe_w:
                out.append(Apply(id="", uuid=d.uuid, index=d.index, cap_w=self.safe_w[d.uuid]))
            elif d.default_w is not None:
                out.append(Apply(id="", uuid=d.uuid, index=d.index, cap_w=float(d.default_w), restore=True))
        return out

    def state(self, now_ns: int) -> bus.NodeState:
        """The reported state."""
        return bus.NodeState(
            node_id=self.node_id,
            at_ns=now_ns,
            fail_safe=self.fail_safe,
            devices=[
                bus.DeviceState(
                    uuid=d.uuid,
                    power_limit_w=self.enforced_w.get(d.uuid),
                    default_w=d.default_w,
                    fail_safe=self.fail_safe,
                )
                for d in self.devices.values()
            ],
            commands_applied=self.counters.applied,
            commands_rejected=self.counters.garbage + self.counters.expired + self.counters.stale_epoch,
        )


def clamp(cap_w: float, device: DeviceRange) -> float:
    """`cap_w` within the device's range (an end that is unknown does not bound)."""
    if device.min_w is not None:
        cap_w = max(cap_w, device.min_w)
    if device.max_w is not None:
        cap_w = min(cap_w, device.max_w)
    return cap_w


class _IdOnly(msgspec.Struct):
    id: str = ""


def _id_of(payload: bytes) -> str:
    """The id of a command that failed to decode, when at least that much can be read."""
    try:
        return msgspec.json.decode(payload, type=_IdOnly).id[:128]
    except (msgspec.DecodeError, TypeError):
        return ""
