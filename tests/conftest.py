"""The fixtures: an in-process controller, child processes, a Mosquitto; and the suite's guards.

Every piece they are built from lives in tests/helpers.py, which the tests import directly.
Guards: an async test that leaves tasks running fails (kopf's `_no_asyncio_pending_tasks`), and a
unit test (not marked `slow`) fails past UNIT_TIMEOUT_S.
"""

from __future__ import annotations

import asyncio
import pathlib
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.helpers import ROOT, Controller, EtcdCluster, Mosquitto, Processes, free_port
from xpuctl.controller.core import ingest, registry

UNIT_TIMEOUT_S = 2.0
LEAK_GRACE_S = 1.0  # how long tasks that are ending may take after the test's own teardown


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Unit tests (not marked slow) run under UNIT_TIMEOUT_S; a slow test keeps the global timeout."""
    for item in items:
        if item.get_closest_marker("slow") is None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT_S))


@pytest.fixture(autouse=True)
def own_state_dir(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's controllers keep their desired state in the test's own directory (XPU_STATE_DIR),
    never in the user's ~/.local/state: tests must not see each other's cordons or lock.
    """
    monkeypatch.setenv("XPU_STATE_DIR", str(tmp_path / "controller-state"))


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running after its own fixtures have stopped."""
    before = asyncio.all_tasks()
    yield
    me = asyncio.current_task()
    pending = {t for t in asyncio.all_tasks() if t is not me and t not in before and not t.done()}
    if pending:  # tasks a teardown cancelled (a gRPC server's calls) finish their last steps first
        _, pending = await asyncio.wait(pending, timeout=LEAK_GRACE_S)
    leaked = list(pending)
    for t in leaked:
        t.cancel()
    if leaked:
        names = ", ".join(sorted(t.get_name() for t in leaked))
        pytest.fail(f"the test left {len(leaked)} asyncio task(s) running: {names}")


@pytest.fixture
async def controller() -> AsyncIterator[Controller]:
    """A started in-process controller; stale after 2 s."""
    c = Controller(
        free_port(),
        liveness=registry.Liveness(stale_after_s=2.0, offline_after_s=10.0),
        limits=ingest.Limits(max_message_bytes=64 * 1024, max_rows_per_batch=64),
    )
    await c.start()
    yield c
    await c.stop()


@pytest.fixture
def processes(tmp_path: pathlib.Path) -> Iterator[Processes]:
    """Start child processes; all are stopped after the test, and their output is shown on failure."""
    p = Processes(tmp_path)
    yield p
    p.stop_all()
    for log in p.logs:
        sys.stderr.write(f"--- {log.name}\n{log.read_text()[-3000:]}\n")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The wheel of this tree, built once for the tests that read or install it."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (found,) = tmp.glob("xpuctl-*.whl")
    return found


@pytest.fixture
def mosquitto(tmp_path: pathlib.Path) -> Iterator[Mosquitto]:
    """A started Mosquitto for one test."""
    m = Mosquitto(tmp_path)
    m.start()
    yield m
    m.stop()


@pytest.fixture
def etcd(tmp_path: pathlib.Path) -> Iterator[EtcdCluster]:
    """A started 3-member etcd cluster for one test (healthy when the test begins)."""
    cluster = EtcdCluster(tmp_path)
    cluster.start()
    try:
        cluster.wait_healthy()
        yield cluster
    finally:
        cluster.stop()


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--update-golden` rewrites golden files (TUI frames) instead of comparing with them."""
    parser.addoption("--update-golden", action="store_true", help="rewrite tests/golden/* from the current output")
