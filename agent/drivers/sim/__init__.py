"""Simulated devices of every vendor (DESIGN section 9), behind the ordinary driver interface.

`SimDriver` lives in `driver.py` and is imported on first use: the simulator needs numpy, and an
agent reading real devices (which imports `faults` for its command line) should not pay numpy's
memory for it (issue 13.7: the agent's RSS).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xpuctl.agent.drivers.sim.driver import SimDriver

__all__ = ["SimDriver"]


def __getattr__(name: str) -> object:
    if name == "SimDriver":
        from xpuctl.agent.drivers.sim.driver import SimDriver  # noqa: PLC0415 - on first use

        return SimDriver
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
