"""Operators' decisions survive a controller restart, a crash included (issue 18.2).

Real processes: `xpu-controller serve --state-dir`, an agent of 8 simulated devices, `xpuctl`.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import Processes, agent_argv, free_port, xpuctl

pytestmark = pytest.mark.slow


def serve(processes: Processes, target: str, state: pathlib.Path, *extra: str) -> subprocess.Popen[bytes]:
    """A controller process on `target` keeping its state in `state`."""
    return processes.start(
        "xpuctl.controller.cli", "--log-format", "text", "serve", "--listen", target, "--state-dir", str(state), *extra
    )


async def devices(target: str, n: int, timeout_s: float = 60.0) -> list[dict[str, object]]:
    """`xpuctl devices --json` once it lists `n` devices of an online node."""
    deadline = time.monotonic() + timeout_s
    got: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        rc, out, _ = await xpuctl(target, "devices", "--json")
        if rc == 0:
            got = json.loads(out)
            if len(got) == n and all(d["node_status"] == "online" for d in got):
                return got
        await asyncio.sleep(0.2)
    pytest.fail(f"timed out waiting for {n} online devices at {target}; last saw {len(got)}")


async def ok(target: str, *args: str) -> str:
    """Run xpuctl; fail the test on a non-zero exit."""
    rc, out, err = await xpuctl(target, *args)
    assert rc == 0, f"xpuctl {' '.join(args)}: exit {rc}: {err}"
    return out


async def test_cordons_priorities_and_the_budget_survive_a_crash(processes: Processes, tmp_path: pathlib.Path) -> None:
    target = f"127.0.0.1:{free_port()}"
    state = tmp_path / "state"
    first = serve(processes, target, state)
    processes.start(*agent_argv(target, "n1", "nvidia"))
    uuids = sorted(str(d["uuid"]) for d in await devices(target, 8))

    await ok(target, "cordon", "--device", uuids[0], "--reason", "ECC storm")
    await ok(target, "cordon", "--node", "n1", "--reason", "rack 7 maintenance")
    await ok(target, "uncordon", "--device", uuids[1])
    await ok(target, "priority", "--device", uuids[2], "3")
    await ok(target, "priority", "--node", "n1", "0.5")
    await ok(target, "budget", "4000")
    # each answer came after the save: a crash right now loses nothing
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)

    serve(processes, target, state)
    after = {str(d["uuid"]): d for d in await devices(target, 8)}
    assert after[uuids[0]]["cordoned"] is True
    assert after[uuids[0]]["cordon_reason"] == "rack 7 maintenance"
    assert after[uuids[1]]["cordoned"] is False
    assert after[uuids[1]]["cordon_reason"] is None
    assert all(after[u]["cordoned"] and after[u]["cordon_reason"] == "rack 7 maintenance" for u in uuids[2:])
    budget = json.loads(await ok(target, "budget", "--json"))
    assert budget["budget_w"] == 4000

    # the weights came back too: the next save (after one more decision) still holds them
    await ok(target, "uncordon", "--device", uuids[3])
    saved = json.loads((state / "state.json").read_text())
    assert saved["format"] == 1
    assert saved["device_weights"] == {uuids[2]: 3.0}
    assert saved["node_weights"] == {"n1": 0.5}
    assert uuids[3] not in saved["cordons"] and saved["cordons"][uuids[0]] == "rack 7 maintenance"


async def test_a_bad_state_dir_is_a_clear_error(processes: Processes, tmp_path: pathlib.Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_bytes(b'{"format": 1, "cordons": {"GPU-1": ')  # torn by hand, say
    args = ("xpuctl.controller.cli", "--log-format", "text", "serve", "--listen", f"127.0.0.1:{free_port()}")
    r = await run(*args, "--state-dir", str(state))
    assert r[0] == 78, r
    assert f"state file {state / 'state.json'}" in r[1] and "move it aside" in r[1] and "Traceback" not in r[1]

    (state / "state.json").write_text('{"format": 9}')
    r = await run(*args, "--state-dir", str(state))
    assert r[0] == 78 and "format 9 was written by a newer xpuctl" in r[1], r

    (state / "state.json").write_text('{"format": 1, "device_weights": {"GPU-1": 1e9}}')
    r = await run(*args, "--state-dir", str(state))
    assert r[0] == 78 and "device_weights" in r[1], r

    # two controllers on one state dir: the second is refused, naming the first's pid
    (state / "state.json").unlink()
    target = f"127.0.0.1:{free_port()}"
    holder = serve(processes, target, state)
    await devices_or_serving(target)
    r = await run(*args, "--state-dir", str(state))
    assert r[0] == 1 and f"in use by another controller (pid {holder.pid})" in r[1], r

    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    r = await run(*args, "--state-dir", str(blocked / "state"))
    assert r[0] == 78 and f"state dir {blocked / 'state'}: cannot use it" in r[1] and "Traceback" not in r[1], r


async def devices_or_serving(target: str) -> None:
    """Wait until the controller at `target` answers."""
    deadline = time.monotonic() + 60
    while (await xpuctl(target, "summary"))[0] != 0:
        if time.monotonic() > deadline:
            pytest.fail(f"no controller answered at {target}")
        await asyncio.sleep(0.2)


async def run(*args: str) -> tuple[int, str]:
    """`python -m args` to its end: (exit code, output)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_an_agent_restarted_with_fewer_devices_lists_only_those(processes: Processes) -> None:
    # Issue 18.4: an agent restarted with 6 of its 8 devices left the other 2 listed `ok` for good.
    target = f"127.0.0.1:{free_port()}"
    processes.start("xpuctl.controller.cli", "--log-format", "text", "serve", "--listen", target)
    agent = processes.start(*agent_argv(target, "n1", "nvidia"))
    eight = sorted(str(d["uuid"]) for d in await devices(target, 8))
    agent.send_signal(signal.SIGKILL)
    agent.wait(timeout=10)
    argv = agent_argv(target, "n1", "nvidia")
    argv[argv.index("--sim-devices") + 1] = "6"
    processes.start(*argv)
    six = sorted(str(d["uuid"]) for d in await devices(target, 6))
    assert set(six) < set(eight)
    summary = json.loads(await ok(target, "summary", "--json"))
    assert summary["devices"] == 6
    (gone, *_) = sorted(set(eight) - set(six))
    rc, _, err = await xpuctl(target, "device", gone)
    assert rc == 4 and "it is gone from its node's newest Hello" in err, err
