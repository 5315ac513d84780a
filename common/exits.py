"""Exit codes of the three programs (README, DESIGN 6): one table, so that they cannot drift."""

from __future__ import annotations

OK = 0
FAILURE = 1
USAGE = 2  # argparse's own
UNREACHABLE = 3  # xpuctl: the controller cannot be reached
REFUSED = 4  # xpuctl: the controller refused the request (the message says why)
DENIED = 5  # xpuctl: the controller refused the caller's credentials
CONFIG = 78  # EX_CONFIG (sysexits.h): the fix is in the config; systemd does not restart on it
INTERRUPTED = 130  # 128 + SIGINT
BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of our output left
