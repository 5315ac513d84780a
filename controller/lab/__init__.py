"""The lab: the demo, the simulated cluster and the benchmarks.

The only controller code that imports the agent (its simulator and its load generator), so that
what runs in production never depends on the simulation.
"""

from __future__ import annotations

import sys


def fleet_argv(controller: str, *, nodes: int, devices_per_node: int, extra: list[str]) -> list[str]:
    """The command line of an `xpu-agent fleet` load generator (this Python), quiet but for warnings."""
    return [
        sys.executable,
        "-m",
        "xpuctl.agent.cli",
        "--log-level",
        "WARNING",
        "fleet",
        "--controller",
        controller,
        "--nodes",
        str(nodes),
        "--devices-per-node",
        str(devices_per_node),
        *extra,
    ]
