"""Read models for the Cluster API: summary, nodes, devices, computed over the slot arrays.

Pure: time comes in as `now_ns`; absent values are None.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import msgspec
import numpy as np

from xpuctl.controller.core import model, registry, ring


class DeviceView(msgspec.Struct, frozen=True, kw_only=True):
    """One device with its latest sample."""

    node_id: str
    info: model.DeviceInfo
    health: str
    health_reason: str
    timestamp_ns: int
    values: dict[str, float | None]
    cordoned: bool
    headroom_cap_w: float
    headroom_ceiling_w: float
    node_status: registry.NodeStatus
    cordon_reason: str = ""
    anomalies: tuple[str, ...] = ()


class NodeView(msgspec.Struct, frozen=True, kw_only=True):
    """One node: liveness, delivery counters, power."""

    node_id: str
    boot_id: str
    status: registry.NodeStatus
    agent_version: str
    labels: dict[str, str]
    devices: int
    power_w: float
    last_seen_ns: int
    first_seq: int
    acked_seq: int
    batches_stored: int
    duplicate_batches: int
    gap_batches: int
    dropped_total: int
    connected: bool


class SummaryView(msgspec.Struct, frozen=True, kw_only=True):
    """The cluster at a glance."""

    nodes_by_status: dict[str, int]
    devices: int
    devices_by_vendor: dict[str, int]
    devices_by_health: dict[str, int]
    power_w: float


class DeviceFilter(msgspec.Struct, frozen=True, kw_only=True):
    """ListDevices filters; None or empty means any."""

    node_id: str = ""
    vendor: str = ""
    health: str = ""
    cordoned: bool | None = None
    min_headroom_w: float | None = None


def _opt(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


class Views:
    """Builds read models from the registry and the ring store."""

    def __init__(self, reg: registry.Registry, store: ring.RingStore, liveness: registry.Liveness) -> None:
        """Read from `reg` and `store`; classify nodes with `liveness`."""
        self.registry = reg
        self.store = store
        self.liveness = liveness
        # set by the owner of the detectors: the open anomalies of a slot
        self.anomalies_of: Callable[[int], list[str]] | None = None

    def _live_slots(self, now_ns: int) -> tuple[np.ndarray, dict[str, registry.NodeStatus]]:
        """The slots of devices that exist (not gone, not released), and each node's status."""
        status = {n: s.status(now_ns, self.liveness) for n, s in self.registry.nodes.items()}
        slots = np.flatnonzero(np.array(self.registry.present, dtype=bool)).astype(np.int64)
        return slots, status

    def devices(
        self, now_ns: int, flt: DeviceFilter | None = None, *, after: str | None = None, at_most: int | None = None
    ) -> list[DeviceView]:
        """Every device matching the filter, in slot order; or a page of them: in uuid order, those
        after the uuid `after`, at most `at_most` (only that page's views are built).
        """
        flt = flt or DeviceFilter()
        slots, status = self._live_slots(now_ns)
        reg = self.registry
        if after is not None or at_most is not None:
            ordered = sorted(slots.tolist(), key=lambda s: reg.infos[s].uuid)
            slots = np.array([s for s in ordered if after is None or reg.infos[s].uuid > after], dtype=np.int64)
        latest = self.store.latest(slots)
        stamps = self.store.latest_timestamps(slots)
        out: list[DeviceView] = []
        for row, stamp, slot in zip(latest, stamps.tolist(), slots.tolist(), strict=True):
            info = reg.infos[slot]
            node_id = reg.node_of_slot[slot]
            node_status = status[node_id]
            code = row[model.HEALTH]
            health = "unknown"
            if node_status == registry.NodeStatus.ONLINE and not math.isnan(code):
                health = model.HEALTH_NAMES.get(int(code), "unknown")
            values = {name: _opt(row[i]) for i, name in enumerate(model.METRICS)}
            power, limit = values["power_w"], values["power_limit_w"]
            cordoned = reg.cordoned[slot]
            headroom_cap = 0.0
            headroom_ceiling = 0.0
            if not cordoned and power is not None and limit is not None:
                headroom_cap = max(limit - power, 0.0)
            if not cordoned and limit is not None and info.power_limit_max_w is not None and info.power_cap_settable:
                headroom_ceiling = max(info.power_limit_max_w - limit, 0.0)
            view = DeviceView(
                node_id=node_id,
                info=info,
                health=health,
                health_reason=reg.health_reason[slot],
                timestamp_ns=int(stamp),
                values=values,
                cordoned=cordoned,
                headroom_cap_w=headroom_cap,
                headroom_ceiling_w=headroom_ceiling,
                node_status=node_status,
                cordon_reason=reg.cordon_reason[slot],
                anomalies=tuple(self.anomalies_of(slot)) if self.anomalies_of else (),
            )
            if _matches(view, flt):
                out.append(view)
                if at_most is not None and len(out) >= at_most:
                    break
        return out

    def nodes(self, now_ns: int) -> list[NodeView]:
        """Every node known, by id."""
        out = []
        for node_id in sorted(self.registry.nodes):
            n = self.registry.nodes[node_id]
            slots = self.registry.slots_of(node_id)
            power = float(np.nansum(self.store.latest(slots)[:, model.M["power_w"]])) if slots.size else 0.0
            out.append(
                NodeView(
                    node_id=node_id,
                    boot_id=n.boot_id,
                    status=n.status(now_ns, self.liveness),
                    agent_version=n.agent_version,
                    labels=n.labels,
                    devices=int(slots.size),
                    power_w=power,
                    last_seen_ns=n.last_seen_ns,
                    first_seq=n.first_seq,
                    acked_seq=n.acked_seq,
                    batches_stored=n.batches_stored,
                    duplicate_batches=n.duplicate_batches,
                    gap_batches=n.gap_batches,
                    dropped_total=n.dropped_total,
                    connected=n.streams > 0,
                )
            )
        return out

    def summary(self, now_ns: int) -> SummaryView:
        """Counts by status, vendor and health; power of the devices of online nodes."""
        slots, status = self._live_slots(now_ns)
        by_status = {s.name.lower(): 0 for s in registry.NodeStatus}
        for s in status.values():
            by_status[s.name.lower()] += 1
        reg = self.registry
        online = np.array(
            [status[reg.node_of_slot[s]] == registry.NodeStatus.ONLINE for s in slots.tolist()], dtype=bool
        )
        latest = self.store.latest(slots)
        power = float(np.nansum(latest[online, model.M["power_w"]])) if slots.size else 0.0
        by_vendor: dict[str, int] = {}
        for info in (reg.infos[s] for s in slots.tolist()):
            by_vendor[info.vendor] = by_vendor.get(info.vendor, 0) + 1
        by_health: dict[str, int] = {}
        codes = latest[:, model.HEALTH] if slots.size else np.zeros(0)
        for is_online, code in zip(online.tolist(), codes.tolist(), strict=True):
            name = model.HEALTH_NAMES.get(int(code), "unknown") if is_online and not math.isnan(code) else "unknown"
            by_health[name] = by_health.get(name, 0) + 1
        return SummaryView(
            nodes_by_status=by_status,
            devices=int(slots.size),
            devices_by_vendor=by_vendor,
            devices_by_health=by_health,
            power_w=power,
        )


def _matches(view: DeviceView, flt: DeviceFilter) -> bool:
    if flt.node_id and view.node_id != flt.node_id:
        return False
    if flt.vendor and view.info.vendor != flt.vendor:
        return False
    if flt.health and view.health != flt.health:
        return False
    if flt.cordoned is not None and view.cordoned != flt.cordoned:
        return False
    return flt.min_headroom_w is None or view.headroom_cap_w >= flt.min_headroom_w
