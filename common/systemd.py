"""systemd's notify protocol (sd_notify(3)), hand-rolled: READY, WATCHDOG, STATUS, STOPPING.

systemd guarantees this protocol is stable (systemd.io/PORTABILITY_AND_STABILITY; its own
self-contained example is man/notify-selfcontained-example.py, notes A4): one datagram of
newline-separated `KEY=VALUE` lines to the AF_UNIX socket named by `NOTIFY_SOCKET` (a leading
`@` means the abstract namespace). Without `NOTIFY_SOCKET` every call is a no-op, so the
programs behave the same outside systemd. `WATCHDOG_USEC` asks for `WATCHDOG=1` at least that
often; we send it every half of it (sd_watchdog_enabled(3)) from the event loop, so a wedged
loop stops the pings and systemd restarts the service.

It lives under protos/ because the agent and the controller both need it and neither may import
the other (DESIGN 2); it is transport plumbing, like mqtt_session.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("xpu.systemd")


class Notifier:
    """Talks to the service manager, if there is one."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        """Read `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from `environ`."""
        path = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path
        self.watchdog_interval_s: float | None = None
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval_s = int(usec) / 2e6  # half the timeout, as sd_watchdog_enabled(3) advises
        self.sent_total = 0
        self.failed_total = 0

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return bool(self.address)

    def notify(self, *fields: str) -> None:
        """Send `fields` (e.g. "READY=1") as one datagram; a failure is logged and counted, never raised."""
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall("\n".join(fields).encode())
        except OSError as exc:
            self.failed_total += 1
            if self.failed_total == 1:
                log.warning("sd_notify to %r failed: %s", self.address, exc)
            return
        self.sent_total += 1

    def ready(self, status: str) -> None:
        """Start-up is complete (Type=notify units leave "activating" now)."""
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        """A one-line status for `systemctl status`."""
        self.notify(f"STATUS={status}")

    def stopping(self) -> None:
        """Shutdown has begun."""
        self.notify("STOPPING=1", "STATUS=stopping")

    async def watchdog_loop(self) -> None:
        """Ping the watchdog every half interval, from the event loop, until cancelled."""
        if self.watchdog_interval_s is None or not self.address:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval_s)
