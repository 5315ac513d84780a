"""`python -m xpuctl.controller.ctl`: the same as `xpuctl`."""

import sys

from xpuctl.controller.ctl import main

sys.exit(main.main())
