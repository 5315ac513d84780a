"""Issue 20.14: a node that stops shows offline at once, a fresh stream is online before its first
batch, and after a controller restart the nodes not back yet are offline, not missing.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import signal
import time

import pytest

from tests.helpers import Processes, agent_argv, free_port, xpuctl
from xpuctl.controller.core import registry

pytestmark = pytest.mark.slow


def test_a_stream_that_said_hello_is_online_before_its_first_batch() -> None:
    live = registry.Liveness(stale_after_s=5.0, offline_after_s=30.0)
    node = registry.NodeState("n1")
    node.streams, node.last_hello_ns = 1, 1_000_000_000
    assert node.status(2_000_000_000, live) == registry.NodeStatus.ONLINE  # was STALE: a node.stale per start
    assert node.status(7_000_000_000, live) == registry.NodeStatus.STALE  # no data 6 s after its Hello
    node.streams, node.left_ns = 0, 2_000_000_000
    assert node.status(2_000_000_001, live) == registry.NodeStatus.OFFLINE  # said goodbye


async def nodes(target: str) -> dict[str, str]:
    """Node id -> status; empty while the controller is not up yet (exit 3)."""
    rc, out, err = await xpuctl(target, "nodes", "--json")
    assert rc in (0, 3), err
    return {n["node_id"]: n["status"] for n in json.loads(out)} if rc == 0 else {}


async def wait_status(target: str, want: dict[str, str], timeout_s: float) -> float:
    """Seconds until `xpuctl nodes` shows `want`; fails the test after `timeout_s`."""
    started = time.monotonic()
    seen: dict[str, str] = {}
    while time.monotonic() - started < timeout_s:
        seen = await nodes(target)
        if all(seen.get(n) == s for n, s in want.items()):
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    pytest.fail(f"{want} not shown within {timeout_s:g}s; last seen {seen}")


def serve(processes: Processes, target: str, state: pathlib.Path) -> object:
    # stale after 20 s, offline after 60 s: only a goodbye makes a node offline within seconds
    return processes.start(
        "xpuctl.controller.cli",
        "serve",
        "--listen",
        target,
        "--state-dir",
        str(state),
        "--stale-after-s",
        "20",
        "--offline-after-s",
        "60",
    )


async def test_a_stopped_agent_is_offline_at_once_and_a_restart_keeps_the_nodes(
    processes: Processes, tmp_path: pathlib.Path
) -> None:
    target = f"127.0.0.1:{free_port()}"
    controller = serve(processes, target, tmp_path / "state")
    a = processes.start(*agent_argv(target, "n-a", "nvidia"))
    processes.start(*agent_argv(target, "n-b", "amd"))
    await wait_status(target, {"n-a": "online", "n-b": "online"}, 60)

    a.send_signal(signal.SIGTERM)  # a graceful stop: its goodbye makes it offline, not stale for 20 s
    took = await wait_status(target, {"n-a": "offline", "n-b": "online"}, 15)
    assert a.wait(timeout=10) == 0
    assert took < 15

    # a controller restart: n-b comes back by itself within the reconnect cap; n-a, still stopped,
    # is listed offline (it was known before the restart), not missing
    controller.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
    controller.wait(timeout=20)  # type: ignore[attr-defined]
    serve(processes, target, tmp_path / "state")
    took = await wait_status(target, {"n-a": "offline", "n-b": "online"}, 30)
    assert took < 30
