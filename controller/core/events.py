"""Events: what the controller tells the world happened (WatchEvents, `xpu/v1/events`).

Kinds: anomaly.raised / anomaly.cleared (with `detector`), action.issued / applied / failed /
expired / superseded (with `action_id`), power.period (one per control period with commands: how
many, the budget, the draw), node.online / node.stale / node.offline, budget.changed /
budget.infeasible / budget.feasible, job.started / job.ended, watch.lost.

Severities: critical, warning, info, and debug for what operators do not read one by one (a
routine command's issue, answer and supersession: `power.period` sums them up); operator surfaces
hide debug unless asked (`xpuctl events --verbose`), the bus and WatchEvents carry everything.
"""

from __future__ import annotations

import msgspec


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One event. `value` and `threshold` are in the unit of the detector or action (W, C, ...)."""

    timestamp_ns: int
    kind: str
    node_id: str = ""
    device_uuid: str = ""
    severity: str = "info"
    message: str = ""
    value: float = 0.0
    threshold: float = 0.0
    detector: str = ""
    action_id: str = ""
    id: int = 0  # set when the hub publishes it: increasing, and across restarts (see Hub.publish)
