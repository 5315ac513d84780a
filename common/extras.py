"""What an install lacks: the agent alone (`pip install xpuctl`) or the controller too (`xpuctl[controller]`).

The node's install is lean (issue 21): the controller, the demo, the dashboard and `xpuctl` need the
`controller` extra. Their programs ask here first, so that a node without it gets one line naming
the extra instead of a traceback from an import deep inside.
"""

from __future__ import annotations

import importlib.util
import sys

from xpuctl.common import exits

# import name -> distribution, for the `controller` extra (pyproject.toml)
CONTROLLER = {
    "grpc_health": "grpcio-health-checking",
    "grpc_reflection": "grpcio-reflection",
    "rich": "rich",
    "amqtt": "amqtt",
    "aetcd": "aetcd",
}


def missing(modules: dict[str, str]) -> list[str]:
    """The distributions of `modules` whose import name is not installed."""
    return [dist for name, dist in modules.items() if importlib.util.find_spec(name) is None]


def require_controller(program: str) -> None:
    """Exit with a clear message (and EX_CONFIG) when the `controller` extra is not installed."""
    lacking = missing(CONTROLLER)
    if lacking:
        print(
            f"{program}: this install has the agent only ({', '.join(lacking)} not installed);"
            f" {program} needs the controller's extra: pip install 'xpuctl[controller]'",
            file=sys.stderr,
        )
        sys.exit(exits.CONFIG)
