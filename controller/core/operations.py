"""What operators may ask of the loop, and the rules each request must pass (pure).

The budget, the weight of a device or a node in the power allocation, and cordons. Each rule
raises a typed error from `controller/errors.py` that names the value and the fix; the gRPC
adapter only maps those errors to status codes. No clock (time arrives as `now_ns`), no I/O.
"""

from __future__ import annotations

import math

from xpuctl.controller import errors
from xpuctl.controller.core import events, registry

MAX_WEIGHT = 1000.0


def budget(budget_w: float) -> float | None:
    """The budget a request asks for, in watts; None when it removes the budget (0).

    Raises:
        errors.BadValue: not a finite number of watts >= 0.
    """
    if not math.isfinite(budget_w) or budget_w < 0:
        raise errors.BadValue("budget_w", budget_w, "must be a finite number of watts >= 0 (0 = no budget)")
    return budget_w or None


def weight(weight: float) -> float:
    """A device or node weight, checked.

    Raises:
        errors.BadValue: outside (0, MAX_WEIGHT].
    """
    if not (math.isfinite(weight) and 0 < weight <= MAX_WEIGHT):
        raise errors.BadValue("weight", weight, f"must be in (0, {MAX_WEIGHT:g}]; 1 is the default")
    return weight


def device_slot(reg: registry.Registry, uuid: str, hint: str = "") -> int:
    """The registry slot of device `uuid`.

    Raises:
        errors.UnknownDevice: no such device.
    """
    slot = reg.slot_of_uuid.get(uuid)
    if slot is None:
        raise errors.UnknownDevice(uuid, hint)
    return slot


def target_slots(reg: registry.Registry, *, device_uuid: str, node_id: str) -> list[int]:
    """The slots a request names: one device, or every device of one node.

    Raises:
        errors.UnknownDevice: the device is not known.
        errors.UnknownNode: the node is not known.
        errors.MissingTarget: neither is named.
    """
    if device_uuid:
        return [device_slot(reg, device_uuid)]
    if node_id:
        return [int(s) for s in reg.slots_of(known_node(reg, node_id)).tolist()]
    raise errors.MissingTarget


def known_node(reg: registry.Registry, node_id: str) -> str:
    """`node_id`, when the registry knows it.

    Raises:
        errors.UnknownNode: it does not.
    """
    if node_id not in reg.nodes:
        raise errors.UnknownNode(node_id)
    return node_id


def cordon(reg: registry.Registry, slots: list[int], *, cordoned: bool, reason: str, now_ns: int) -> list[events.Event]:
    """Mark `slots` cordoned (not for new work, with `reason`) or uncordoned; one event each.

    Raises:
        errors.MissingReason: a cordon with an empty reason.
    """
    if cordoned and not reason.strip():
        raise errors.MissingReason
    out = []
    for slot in slots:
        reg.cordoned[slot] = cordoned
        reg.cordon_reason[slot] = reason if cordoned else ""
        if cordoned:
            reg.cordons[reg.infos[slot].uuid] = reason
        else:
            reg.cordons.pop(reg.infos[slot].uuid, None)
        out.append(
            events.Event(
                timestamp_ns=now_ns,
                kind="device.cordoned" if cordoned else "device.uncordoned",
                node_id=reg.node_of_slot[slot],
                device_uuid=reg.infos[slot].uuid,
                message=(f"cordoned: {reason}" if cordoned else "uncordoned"),
            )
        )
    return out


def releasable(reg: registry.Registry, uuid: str) -> int:
    """The slot of a device an operator may release: gone from its node's Hello, or of a node that
    is not connected (a card moved to another machine).

    Raises:
        errors.UnknownDevice: no such device.
        errors.DeviceInUse: its node streams and lists it.
    """
    slot = device_slot(reg, uuid)
    owner = reg.nodes.get(reg.node_of_slot[slot])
    if owner is not None and owner.streams > 0 and reg.present[slot]:
        raise errors.DeviceInUse(uuid, owner.node_id)
    return slot
