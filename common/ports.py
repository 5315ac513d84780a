"""Local TCP ports: a free one on loopback, and which process listens on one (Linux /proc), for
error messages that name it.

Best effort and read-only: None where /proc is not there or the process is not ours to see.
"""

from __future__ import annotations

import collections
import pathlib
import socket
import threading

_LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp
_RECENT = 4096  # ports handed out lately, never handed out twice in a row
_handed: collections.deque[int] = collections.deque(maxlen=_RECENT)
_lock = threading.Lock()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for private brokers and servers on loopback), and
    not one this process was given lately: the kernel may offer the same port to two binds in a row
    when the first caller has not bound it yet (an etcd cluster once got two members on one port).
    """
    with _lock:
        for _ in range(64):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in _handed:
                break
        _handed.append(port)
        return port


def holder(port: int, proc: pathlib.Path = pathlib.Path("/proc")) -> str | None:
    """`pid N (name)` of a process listening on `port`, or None when it cannot be told."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        if inodes & _links(pid_dir / "fd"):
            try:
                name = (pid_dir / "comm").read_text().strip()
            except OSError:
                name = "?"
            return f"pid {pid_dir.name} ({name})"
    return None


def _links(fd_dir: pathlib.Path) -> set[str]:
    """What a process's descriptors point at; one that closes meanwhile is skipped."""
    out: set[str] = set()
    try:
        fds = list(fd_dir.iterdir())
    except OSError:  # gone, or not ours to see
        return out
    for fd in fds:
        try:
            out.add(str(fd.readlink()))
        except OSError:
            continue
    return out
