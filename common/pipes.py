"""What the command-line programs do when the reader of their output leaves (`xpuctl devices --json | head`).

Python ignores SIGPIPE, so a write to a closed pipe raises BrokenPipeError, and the interpreter's
own flush at exit would print a second traceback. A program wrapped here exits 141 instead
(128 + SIGPIPE: what a shell shows for a tool the signal ended), silently, as `cat` does.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import ParamSpec

P = ParamSpec("P")
EXIT_BROKEN_PIPE = 141


def quiet_when_the_reader_leaves(main: Callable[P, int]) -> Callable[P, int]:
    """Wrap an entry point: BrokenPipeError on stdout becomes exit 141 without a traceback."""

    @functools.wraps(main)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            code = main(*args, **kwargs)
            sys.stdout.flush()  # inside the try: what is still buffered can meet the closed pipe too
        except BrokenPipeError:
            # the interpreter flushes stdout once more at exit: point it at /dev/null first
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_BROKEN_PIPE
        return code

    return wrapper
