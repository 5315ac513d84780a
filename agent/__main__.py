"""`python -m xpuctl.agent`: the same as `xpu-agent`."""

import sys

from xpuctl.agent import cli

sys.exit(cli.main())
