"""The controller's programs as installed: each checks for the `controller` extra before its imports.

`pip install xpuctl` is the agent alone (issue 21); the modules behind these programs import rich,
amqtt and the rest at their top, so the check has to come first, in a module that imports nothing of the controller's.
"""

from __future__ import annotations

from xpuctl.common import extras


def controller() -> int:
    """`xpu-controller`."""
    extras.require_controller("xpu-controller")
    from xpuctl.controller import cli  # noqa: PLC0415 - after the check, see the module's docstring

    return cli.main()


def xpuctl() -> int:
    """`xpuctl`."""
    extras.require_controller("xpuctl")
    from xpuctl.controller.ctl import main  # noqa: PLC0415 - after the check

    return main.main()
