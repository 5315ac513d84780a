"""`python -m xpuctl.controller`: the same as `xpu-controller`."""

import sys

from xpuctl.controller import entry

sys.exit(entry.controller())
