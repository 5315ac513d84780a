"""`python -m xpuctl.controller.ctl`: the same as `xpuctl`."""

import sys

from xpuctl.common import extras

extras.require_controller("xpuctl")

from xpuctl.controller.ctl import main  # noqa: E402 - after the check (controller/entry.py says why)

sys.exit(main.main())
