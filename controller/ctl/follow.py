"""The loop `xpuctl slurm sync` and `xpuctl k8s sync` share: judge every node, then the nodes that
events name as they come, and every node again each `reconcile_s`.

`judge(which)` gets the node ids an event named since the last round, or None for every node; it
returns when the next round is due at the latest (a monotonic time; None: the next full round),
for a decision that waits (a node fit for long enough to resume). `on_event` sees each event
first (an Event to write, say). Events in a burst make one round (0.2 s apart at the least). A
watch the controller refuses (a credential) ends the loop with its error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from xpuctl.client import AsyncClient, ClientError
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb

KINDS = ("anomaly.", "device.", "node.")  # what can change a node's verdict
BURST_S = 0.2


async def devices_by_node(xpu: AsyncClient, which: set[str] | None) -> dict[str, list[cpb.Device]]:
    """The devices of `which` nodes (None: every node), by node.

    Raises:
        ClientError: the controller did not answer.
    """
    if which is None:
        devices = await xpu.devices()
    else:
        devices = [d for n in sorted(which) for d in await xpu.devices(node_id=n)]
    out: dict[str, list[cpb.Device]] = {}
    for d in devices:
        out.setdefault(d.node_id, []).append(d)
    return out


async def run(
    xpu: AsyncClient,
    judge: Callable[[set[str] | None], Awaitable[float | None]],
    *,
    reconcile_s: float,
    say: Callable[[str], None],
    on_event: Callable[[cpb.Event], Awaitable[None]] | None = None,
) -> None:
    """Until cancelled.

    Raises:
        ClientError: the controller refused the watch.
    """
    dirty: set[str] = set()
    wake = asyncio.Event()

    async def follow() -> None:
        def gone(exc: ClientError) -> None:
            say(f"controller gone ({exc.code}); reconnecting")

        async for e in xpu.watch(kinds=list(KINDS), on_gone=gone):
            if on_event is not None:
                await on_event(e)
            if e.node_id:
                dirty.add(e.node_id)
                wake.set()

    watcher = asyncio.create_task(follow(), name="xpuctl.follow")
    say(f"following {xpu.address}; every node again each {reconcile_s:g} s")
    try:
        next_full = 0.0
        while True:
            full = time.monotonic() >= next_full
            if full:
                next_full = time.monotonic() + reconcile_s
            which = None if full else set(dirty)
            dirty.clear()
            wake.clear()
            due = await judge(which)
            deadline = next_full if due is None else min(next_full, due)
            try:
                await asyncio.wait_for(wake.wait(), timeout=max(deadline - time.monotonic(), 0.05))
                await asyncio.sleep(BURST_S)
            except TimeoutError:
                pass
            if watcher.done():
                watcher.result()  # a refusal: raise it
    finally:
        watcher.cancel()
