"""Shared fixtures: free ports, an in-process controller on 127.0.0.1, agent processes, waiting."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator

import grpc.aio
import pytest

from controller.adapters import grpc_api
from controller.core import ingest, registry

ROOT = pathlib.Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until(predicate: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    """Poll a condition on the event loop until it holds; fail naming `what` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g}s waiting for {what}")
        await asyncio.sleep(0.05)


class Controller:
    """An in-process controller (real grpc.aio server on 127.0.0.1) that tests can stop and restart."""

    def __init__(self, port: int, **state_kwargs: object) -> None:
        """Not started yet."""
        self.port = port
        self.target = f"127.0.0.1:{port}"
        self.state_kwargs = state_kwargs
        self.state: grpc_api.State | None = None
        self.server: grpc.aio.Server | None = None

    async def start(self) -> grpc_api.State:
        """Start with empty state (as a restarted controller process would have)."""
        self.state = grpc_api.State(**self.state_kwargs)  # type: ignore[arg-type]
        self.server, _ = grpc_api.build_server(self.state, self.target)
        await self.server.start()
        return self.state

    async def stop(self) -> None:
        """Stop at once, cutting every stream."""
        if self.server is not None:
            await self.server.stop(None)
            self.server = None


@pytest.fixture
async def controller() -> AsyncIterator[Controller]:
    """A started in-process controller; stale after 2 s."""
    c = Controller(free_port(), liveness=registry.Liveness(stale_after_s=2.0, offline_after_s=10.0),
                   limits=ingest.Limits(max_message_bytes=64 * 1024, max_rows_per_batch=64))
    await c.start()
    yield c
    await c.stop()


class Processes:
    """Child processes of a test, terminated at teardown."""

    def __init__(self, log_dir: pathlib.Path) -> None:
        """None yet; each child's output goes to a file in `log_dir`."""
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log_dir = log_dir
        self.logs: list[pathlib.Path] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        """Run `python -m <args>` from the repository root."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        log = self.log_dir / f"proc-{len(self.procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env,
                                    stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def agent(self, controller: str, node_id: str, vendor: str, *extra: str) -> subprocess.Popen[bytes]:
        """An `xpu-agent run` of 8 simulated devices of `vendor`."""
        return self.start("agent.cli", "run", "--node-id", node_id, "--controller", controller,
                          "--sim-vendor", vendor, "--sim-devices", "8", "--reconnect-max-s", "0.5", *extra)

    def stop_all(self) -> None:
        """SIGTERM, then SIGKILL what lingers."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def processes(tmp_path: pathlib.Path) -> Iterator[Processes]:
    """Start child processes; all are stopped after the test, and their output is shown on failure."""
    p = Processes(tmp_path)
    yield p
    p.stop_all()
    for log in p.logs:
        sys.stderr.write(f"--- {log.name}\n{log.read_text()[-3000:]}\n")
