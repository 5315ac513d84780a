"""The clairvoyant oracle of the power bench (issue 17.1): the most work physically possible under
the budget, second by second.

Before each simulated second it looks at that second in hindsight: a copy of every node steps
uncapped (the simulator's random draws do not depend on the caps, so the copy sees exactly the
demand, noise and activity the real second will have). Then it chooses caps that maximise the
TDP-weighted work of that second under the budget, with the same device ranges and the same fixed
loads (devices without a cap setter draw what they want), and sets them at once (no command delay).
Work per device is tdp x activity x ((p - idle) / (demand - idle)) ** alpha (the simulator's
`throughput_fraction`), concave in the power p: the optimum gives every device the same marginal
work per watt (a Lagrange multiplier, found by bisection), within its range.

It ignores temperature: an upper bound, not a policy anyone could run.
"""

from __future__ import annotations

import copy

import numpy as np
import numpy.typing as npt

from xpuctl.agent.drivers.sim import engine

F64 = npt.NDArray[np.float64]


def peek(nodes: list[engine.SimNode], dt_s: float = 1.0) -> list[engine.SimNode]:
    """Each node as it will be after the next `dt_s`, uncapped (copies; the nodes are not touched)."""
    out = []
    for node in nodes:
        twin = copy.deepcopy(node)
        twin.cap_w = twin.limit_max_w.copy()
        twin.step(dt_s)
        out.append(twin)
    return out


def best_power(budget_w: float, weight: F64, alpha: F64, idle: F64, span: F64, bottom: F64, top: F64) -> F64:
    """Per device the power p in [bottom, top] that maximises sum(weight * ((p - idle) / span) ** alpha)
    under sum(p) <= budget_w; every device at its bottom when even that does not fit.
    """
    if bottom.sum() >= budget_w:
        return bottom.copy()
    if top.sum() <= budget_w:
        return top.copy()
    useful = (weight > 0) & (span > 1.0)
    safe_span = np.where(useful, span, 1.0)
    scale = np.where(useful, weight * alpha / safe_span, 1.0)  # marginal work per W at x = 1
    expo = 1.0 / (alpha - 1.0)

    def power_at(lam: float) -> F64:
        x = np.power(lam / scale, expo)  # where the marginal equals lam
        p = idle + safe_span * x
        return np.where(useful, np.clip(p, bottom, top), bottom)

    lo, hi = 1e-12, 1e12  # lam: high spends little, low spends a lot
    for _ in range(100):
        mid = np.sqrt(lo * hi)
        if power_at(mid).sum() > budget_w:
            lo = mid
        else:
            hi = mid
    p = power_at(hi)
    # what the bisection leaves (at most a watt or so) goes to devices still under their top
    left = budget_w - float(p.sum())
    room = top - p
    if left > 0 and room.sum() > 0:
        p = p + room * min(1.0, left / float(room.sum()))
    return p


def set_caps(nodes: list[engine.SimNode], budget_w: float, settable: list[npt.NDArray[np.bool_]]) -> None:
    """Set every cappable device's cap for the next second, as the oracle would."""
    ahead = peek(nodes)
    fixed = sum(float(t.power_w[~s].sum()) for t, s in zip(ahead, settable, strict=True))
    cols: dict[str, list[F64]] = {k: [] for k in ("w", "a", "idle", "span", "bot", "top")}
    for node, t, s in zip(nodes, ahead, settable, strict=True):
        demand = t.demand_w[s]
        drawn = t.power_w[s]  # uncapped, with the second's noise
        top = np.minimum(np.minimum(drawn, demand), node.limit_max_w[s])
        top = np.maximum(top, np.minimum(node.idle_w[s], drawn))
        cols["w"].append(node.tdp_w[s] * t.activity[s])
        cols["a"].append(np.full(int(s.sum()), t.alpha))
        cols["idle"].append(node.idle_w[s])
        cols["span"].append(demand - node.idle_w[s])
        cols["bot"].append(np.minimum(node.limit_min_w[s], top))
        cols["top"].append(top)
    flat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
    p = best_power(budget_w - fixed, flat["w"], flat["a"], flat["idle"], flat["span"], flat["bot"], flat["top"])
    k = 0
    for node, s in zip(nodes, settable, strict=True):
        for i in np.flatnonzero(s).tolist():
            node.set_cap(i, float(p[k]))
            k += 1
