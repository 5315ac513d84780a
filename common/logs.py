"""Log output of xpu-agent and xpu-controller: JSON lines with stable keys, or text for people.

Keys (a contract: log shippers and alerts match on them): `ts` (UTC, RFC 3339, milliseconds),
`level` (debug, info, warning, error, critical), `logger`, `event` (the message), and when the
call site gives them with `extra=`: `node_id`, `hw.id`, `seq`; `exc` holds a traceback. Under
systemd (`JOURNAL_STREAM` names our stderr) each line starts with the `<N>` syslog priority
that journald reads (sd-daemon(3)), so `journalctl -p warning` works. Notes A4 and A5.

Both programs use it (common/ decides nothing).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

FORMATS = ("json", "text")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
EXTRA_KEYS = ("node_id", "hw.id", "seq")

# syslog priorities (sd-daemon(3)): <3> err, <4> warning, <6> info, <7> debug; highest level first
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (levels between the named ones round down)."""
    return next((p for level, p in _PRIORITY.items() if levelno >= level), 7)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, keys as in the module docstring."""

    def format(self, record: logging.LogRecord) -> str:
        """Render `record`."""
        ts = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
        out: dict[str, object] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key in EXTRA_KEYS:
            if key in record.__dict__:
                out[key] = record.__dict__[key]
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class JournalPrefix(logging.Formatter):
    """Wraps a formatter and puts `<N>` in front of every line (journald reads it as the priority)."""

    def __init__(self, inner: logging.Formatter) -> None:
        """Prefix what `inner` renders."""
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        """Render with the prefix (on each line, so a traceback keeps the priority)."""
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


def under_journald(environ: Mapping[str, str], stream: TextIO) -> bool:
    """Whether `stream` is connected to the journal (`JOURNAL_STREAM` is `DEVICE:INODE` of it)."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at the time of the record (as logging's last resort does)."""

    @property
    def stream(self) -> TextIO:
        """The current standard error."""
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        pass


def setup(level: str, fmt: str, environ: Mapping[str, str]) -> None:
    """Configure the root logger at start-up (only the CLI entry points call this; again replaces ours)."""
    formatter: logging.Formatter = (
        JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    if under_journald(environ, sys.stderr):
        formatter = JournalPrefix(formatter)
    handler = StderrHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


class Throttle:
    """At most one log line per key per `every_s`; the next one says how many were held back.

    A flood of the same warning (21,003 lines from one burst of MQTT garbage, issue 18.9) hides
    everything else in the journal; the counters keep the exact count.
    """

    def __init__(self, every_s: float = 10.0) -> None:
        """One line per key per `every_s` seconds (monotonic clock of the caller)."""
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str, now_s: float) -> int | None:
        """None: hold this line back; else log it, with the number held back since the last one."""
        last = self._last.get(key)
        if last is not None and now_s - last < self.every_s:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now_s
        return self._held.pop(key, 0)
