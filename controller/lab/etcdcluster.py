"""A private etcd cluster on free loopback ports, for the failover bench and the tests (issue 14).

Never the standard ports 2379/2380 (services on these machines may hold them). Members can be
killed and started again (`--initial-cluster-state existing`); data lives in a scratch directory.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import time
import urllib.request

from xpuctl.common import ports


class EtcdError(RuntimeError):
    """The cluster could not be started; the message says why."""


def etcd_binary() -> str | None:
    """Where etcd is (PATH, or Debian's /usr/bin; scripts/test installs etcd-server), or None."""
    for candidate in (shutil.which("etcd"), "/usr/bin/etcd"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class EtcdCluster:
    """`members` etcd processes on 127.0.0.1, each killable and restartable."""

    def __init__(self, workdir: pathlib.Path, members: int = 3) -> None:
        """Not started.

        Raises:
            EtcdError: etcd is not installed.
        """
        binary = etcd_binary()
        if binary is None:
            msg = "etcd is not installed: apt-get install etcd-server (scripts/test does it)"
            raise EtcdError(msg)
        self.binary = binary
        self.workdir = workdir
        self.names = [f"m{k + 1}" for k in range(members)]
        self.client_ports = [ports.free_port() for _ in self.names]
        self.peer_ports = [ports.free_port() for _ in self.names]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * members
        self.started = [False] * members
        self.initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, self.peer_ports, strict=True))
        self.urls = ",".join(f"http://127.0.0.1:{p}" for p in self.client_ports)

    def log(self, k: int) -> pathlib.Path:
        """Member `k`'s output."""
        return self.workdir / f"etcd-{self.names[k]}.log"

    def start(self, k: int | None = None) -> None:
        """Start every member (or member `k` again); returns at once (see `wait_healthy`)."""
        for i in [k] if k is not None else range(len(self.names)):
            name, cport, pport = self.names[i], self.client_ports[i], self.peer_ports[i]
            argv = [
                self.binary,
                "--name", name,
                "--data-dir", str(self.workdir / f"etcd-{name}"),
                "--listen-client-urls", f"http://127.0.0.1:{cport}",
                "--advertise-client-urls", f"http://127.0.0.1:{cport}",
                "--listen-peer-urls", f"http://127.0.0.1:{pport}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
                "--initial-cluster", self.initial,
                "--initial-cluster-token", f"xpu-{self.peer_ports[0]}",
                "--initial-cluster-state", "existing" if self.started[i] else "new",
                "--heartbeat-interval", "100",
                "--election-timeout", "1000",
                "--log-level", "warn",
            ]  # fmt: skip
            with self.log(i).open("ab") as out:
                self.procs[i] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603 - our argv
            self.started[i] = True

    def healthy(self, k: int) -> bool:
        """Whether member `k` answers /health with quorum."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.client_ports[k]}/health", timeout=1) as r:
                return b'"true"' in r.read()
        except OSError:
            return False

    def wait_healthy(self, timeout_s: float = 20.0) -> None:
        """Block until every running member reports health.

        Raises:
            EtcdError: a member exited, or no quorum within `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        running = [k for k, p in enumerate(self.procs) if p is not None]
        while not all(self.healthy(k) for k in running):
            for k in running:
                proc = self.procs[k]
                if proc is not None and proc.poll() is not None:
                    msg = f"etcd {self.names[k]} exited: {self.log(k).read_text()[-2000:]}"
                    raise EtcdError(msg)
            if time.monotonic() > deadline:
                msg = f"etcd not healthy within {timeout_s:g}s"
                raise EtcdError(msg)
            time.sleep(0.1)

    def kill(self, k: int) -> None:
        """SIGKILL member `k`."""
        proc = self.procs[k]
        if proc is not None:
            proc.kill()
            proc.wait()
            self.procs[k] = None

    def stop(self) -> None:
        """Kill every member."""
        for k in range(len(self.names)):
            self.kill(k)
