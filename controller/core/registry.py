"""Device registry: nodes, their devices, dense slots, and node liveness.

Every device (by uuid) gets a dense slot, an index into the ring store and into the per-slot
arrays here, so per-tick analysis can run over all devices at once. A device that moves to
another node keeps its slot.

A device missing from its node's newest Hello is gone (`present` false, `gone_ns` says since
when): it leaves the listings and the power loop at once. After `Liveness.forget_after_s` its
slot is released (the owner of the other per-slot state clears it first) and the next new device
takes it, and a node silent that long is forgotten with its devices (issues 18.4, 18.7): memory
follows the devices that exist, not every id ever seen. Pure: time comes in as `now_ns`.
"""

from __future__ import annotations

import enum

import msgspec
import numpy as np
import numpy.typing as npt

from xpuctl.controller.core import model

RELEASED = model.DeviceInfo(uuid="", index=-1, vendor="", model="")  # what a released slot holds


class NodeStatus(enum.IntEnum):
    """Liveness, numbered as `xpu.v1.NodeStatus`."""

    ONLINE = 1
    STALE = 2
    OFFLINE = 3


class Liveness(msgspec.Struct, frozen=True, kw_only=True):
    """When a node counts as stale and offline."""

    stale_after_s: float = 5.0
    offline_after_s: float = 30.0
    forget_after_s: float = 3600.0  # a gone device's slot, and a silent node, are released after this


class NodeState:
    """What the controller knows of one node and its current boot."""

    def __init__(self, node_id: str) -> None:
        """A node not yet heard from."""
        self.node_id = node_id
        self.boot_id = ""
        self.agent_version = ""
        self.labels: dict[str, str] = {}
        self.interval_s = 1.0
        # row of the Hello's device list -> slot, or -1 where the device was rejected
        self.slots: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self.row_problems: dict[int, str] = {}
        # row -> the device's highest power limit as declared (NaN: not declared), for plausibility
        self.declared_max_w: npt.NDArray[np.float64] = np.zeros(0)
        self.first_seq = 0
        self.acked_seq = 0
        self.batches_stored = 0
        self.duplicate_batches = 0
        self.gap_batches = 0
        self.dropped_total = 0
        self.last_seen_ns = 0
        self.last_hello_ns = 0
        self.streams = 0  # open streams (0 or 1, briefly 2 while a new one supersedes)
        self.peer = ""  # the address of the stream that said the current Hello
        self.hello_ns: list[int] = []  # when it said Hello in the last minute (a rate bound)
        self.stream_epoch = 0  # bumped per Hello; an older stream sees it and ends
        self.left_ns = 0  # when its agent ended the stream as a stop (a goodbye); 0 after a Hello

    def status(self, now_ns: int, liveness: Liveness) -> NodeStatus:
        """Online, stale or offline from the time of the last data (or of the Hello of a stream
        still open that has sent none yet); offline at once after a goodbye.
        """
        if self.streams == 0 and self.left_ns:
            return NodeStatus.OFFLINE
        seen = max(self.last_seen_ns, self.last_hello_ns if self.streams else 0)
        if seen == 0:
            return NodeStatus.OFFLINE
        age_s = (now_ns - seen) / 1e9
        if age_s <= liveness.stale_after_s:
            return NodeStatus.ONLINE
        if age_s <= liveness.offline_after_s:
            return NodeStatus.STALE
        return NodeStatus.OFFLINE


class Registry:
    """Nodes by id, devices by uuid, and the slot arrays."""

    def __init__(self) -> None:
        """An empty registry."""
        self.nodes: dict[str, NodeState] = {}
        self.node_changes = 0  # bumped when a node is first seen or forgotten (the saved node list)
        self.slot_of_uuid: dict[str, int] = {}
        self.infos: list[model.DeviceInfo] = []
        self.node_of_slot: list[str] = []
        self.health_reason: list[str] = []  # per slot, latest non-ok reason
        self.cordoned: list[bool] = []
        self.cordon_reason: list[str] = []
        # uuid -> reason: the cordons themselves, kept by uuid so that a restored cordon waits for
        # its device's Hello (the per-slot lists above follow it)
        self.cordons: dict[str, str] = {}
        self.present: list[bool] = []  # per slot: listed by its node's newest Hello
        self.gone_ns: dict[int, int] = {}  # slot -> when its node's Hello stopped listing it
        self.newly_gone: list[int] = []  # gone since the loop last looked (it raises the events)
        self.free: list[int] = []  # released slots, taken again before new ones are added
        self.version = 0  # bumped whenever a slot is added, released or moves to another node

    def __len__(self) -> int:
        """Device slots (the size of every per-slot array), released ones included."""
        return len(self.infos)

    def in_use(self) -> int:
        """Slots held by a device (present or gone and not yet released)."""
        return len(self.infos) - len(self.free)

    def _claim(self, info: model.DeviceInfo, node_id: str) -> int:
        """A slot for a device never seen (or released): a released one first."""
        cordon = self.cordons.get(info.uuid)
        if self.free:
            slot = self.free.pop()
            self.infos[slot] = info
            self.node_of_slot[slot] = node_id
            self.health_reason[slot] = ""
            self.cordoned[slot] = cordon is not None
            self.cordon_reason[slot] = cordon or ""
            self.present[slot] = True
        else:
            slot = len(self.infos)
            self.infos.append(info)
            self.node_of_slot.append(node_id)
            self.health_reason.append("")
            self.cordoned.append(cordon is not None)
            self.cordon_reason.append(cordon or "")
            self.present.append(True)
        self.slot_of_uuid[info.uuid] = slot
        self.version += 1
        return slot

    def release(self, slot: int) -> None:
        """Free a gone device's slot for the next new device (its cordon, kept by uuid, stays)."""
        self.slot_of_uuid.pop(self.infos[slot].uuid, None)
        owner = self.nodes.get(self.node_of_slot[slot])
        if owner is not None:  # its node's rows no longer lead here (they are set again at its next Hello)
            owner.slots[owner.slots == slot] = -1
        self.infos[slot] = RELEASED
        self.node_of_slot[slot] = ""
        self.health_reason[slot] = ""
        self.cordoned[slot] = False
        self.cordon_reason[slot] = ""
        self.present[slot] = False
        self.gone_ns.pop(slot, None)
        self.free.append(slot)
        self.version += 1

    def node(self, node_id: str) -> NodeState:
        """The node's state, created on first sight."""
        state = self.nodes.get(node_id)
        if state is None:
            state = self.nodes[node_id] = NodeState(node_id)
            self.node_changes += 1
        return state

    def register(
        self, node: NodeState, devices: list[model.DeviceInfo], now_ns: int = 0, keep_gone: int = 1024
    ) -> dict[int, str]:
        """Map a Hello's devices to slots; returns the rejected rows with the reason.

        A device with an unknown vendor or a uuid that appears twice is rejected: its samples
        will be rejected too, and the rest of the node is served. The node's devices that this
        Hello no longer lists are gone from `now_ns` on; of its gone devices, past `keep_gone`
        the oldest are due for release at once (a node that churns ids only spends its own share).
        """
        before = self.slots_of(node.node_id)
        slots = np.full(len(devices), -1, dtype=np.int64)
        problems: dict[int, str] = {}
        seen: set[str] = set()
        for row, info in enumerate(devices):
            if info.vendor not in model.VENDORS:
                problems[row] = (
                    f"device {info.uuid!r}: unknown vendor {info.vendor!r}; "
                    f"expected one of {', '.join(sorted(model.VENDORS))}"
                )
                continue
            if not info.uuid or info.uuid in seen:
                problems[row] = f"device row {row}: uuid {info.uuid!r} is empty or repeated"
                continue
            seen.add(info.uuid)
            slot = self.slot_of_uuid.get(info.uuid)
            if slot is None:
                slot = self._claim(info, node.node_id)
            else:
                if self.infos[slot] != info or self.node_of_slot[slot] != node.node_id or not self.present[slot]:
                    self.version += 1
                self.infos[slot] = info
                self.node_of_slot[slot] = node.node_id
                self.present[slot] = True
                self.gone_ns.pop(slot, None)
            slots[row] = slot
        node.slots = slots
        listed = set(slots.tolist())
        for slot in before.tolist():
            if slot not in listed and self.present[slot]:
                self.present[slot] = False
                self.gone_ns[slot] = now_ns
                self.newly_gone.append(slot)
                self.version += 1
        if len(before) > len(listed & set(before.tolist())):
            mine = sorted((t, s) for s, t in self.gone_ns.items() if self.node_of_slot[s] == node.node_id)
            for _, slot in mine[: max(0, len(mine) - keep_gone)]:
                self.gone_ns[slot] = 0  # released by the next control period
        node.row_problems = problems
        node.declared_max_w = np.array(
            [max(info.power_limit_max_w or 0.0, info.power_limit_default_w or 0.0) or np.nan for info in devices]
        )
        return problems

    def slots_of(self, node_id: str) -> npt.NDArray[np.int64]:
        """The slots currently owned by a node."""
        node = self.nodes.get(node_id)
        if node is None:
            return np.zeros(0, dtype=np.int64)
        slots = node.slots[node.slots >= 0]
        owned = [s for s in slots.tolist() if self.node_of_slot[s] == node_id]
        return np.array(owned, dtype=np.int64)

    def forget(self, node_id: str) -> list[int]:
        """Drop a node; returns the slots it still owned (the caller clears and releases them)."""
        owned = self.slots_of(node_id)
        del self.nodes[node_id]
        self.node_changes += 1
        return [int(s) for s in owned.tolist()]
