"""Issue 20.9-20.13: xpuctl as someone used to nvidia-smi and kubectl uses it, against a real
controller process and a simulated node.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys

import pytest

from tests.helpers import ROOT, Processes, agent_argv, free_port, wait_until

pytestmark = pytest.mark.slow

LONG_NODE = "rack-07-row-b-node-000123-with-a-long-site-name"


def ctl(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xpuctl.controller.ctl", "--controller", target, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def devices(target: str) -> list[dict[str, object]]:
    r = ctl(target, "devices", "--json")
    return json.loads(r.stdout) if r.returncode == 0 else []


def serve(processes: Processes, target: str, bus_port: int) -> subprocess.Popen[bytes]:
    return processes.start(
        "xpuctl.controller.cli",
        "serve",
        "--listen",
        target,
        "--mqtt",
        "embedded",
        "--embedded-port",
        str(bus_port),
        "--state-dir",
        "none",
    )


@pytest.fixture
async def cluster(processes: Processes) -> tuple[str, int, subprocess.Popen[bytes]]:
    """A controller with its embedded bus, and one node of 4 simulated devices in training (they
    draw 2-3 kW: a budget of 1.2 kW needs every cap cut) that takes commands.
    """
    target, bus_port = f"127.0.0.1:{free_port()}", free_port()
    controller = serve(processes, target, bus_port)
    mqtt = f"mqtt://127.0.0.1:{bus_port}?protocol=3.1.1"
    processes.start(
        *agent_argv(target, LONG_NODE, "nvidia", "--sim-devices", "4", "--sim-workload", "training", "--mqtt", mqtt)
    )
    await wait_until(lambda: len(devices(target)) == 4, timeout_s=60, what="4 devices")
    return target, bus_port, controller


async def test_devices_show_the_id_in_full_and_json_has_every_field(
    cluster: tuple[str, int, subprocess.Popen[bytes]],
) -> None:
    target, _, _ = cluster
    r = ctl(target, "devices")  # into a pipe: nothing truncated, whatever the width
    assert r.returncode == 0
    uuids = [str(d["uuid"]) for d in devices(target)]
    for uuid in uuids:
        assert uuid in r.stdout, r.stdout  # the id `xpuctl device` takes
    assert LONG_NODE in r.stdout and "…" not in r.stdout
    one = devices(target)[0]
    assert {"bus_id", "driver_version", "core_clock_hz", "memory_temperature_c", "energy_j", "weight"} <= set(one)
    assert ctl(target, "devices", "-o", "wide").stdout.count(uuids[0]) == 1


async def test_one_device_like_nvidia_smi_q_and_priorities_read_back(
    cluster: tuple[str, int, subprocess.Popen[bytes]],
) -> None:
    target, _, _ = cluster
    uuids = [str(d["uuid"]) for d in devices(target)]
    assert ctl(target, "budget", "1200").returncode == 0  # commands for the devices the budget needs cut
    commanded: list[str] = []

    def one_commanded() -> bool:
        commanded[:] = [u for u in uuids if "action.applied" in ctl(target, "device", u).stdout]
        return bool(commanded)

    await wait_until(one_commanded, timeout_s=30, what="a command on a device")
    uuid = commanded[0]
    shown = ctl(target, "device", uuid).stdout
    for label in ("power cap", "cap range", "cap settable", "temperature", "core clock", "anomalies open", "cordoned"):
        assert label in shown, (label, shown)
    assert " W" in shown and " C" in shown and " MHz" in shown  # every reading with its unit
    as_json = json.loads(ctl(target, "device", uuid, "--json").stdout)
    assert any(e["kind"] == "action.applied" for e in as_json["events"])

    assert ctl(target, "priority", "--device", uuid, "2.5").returncode == 0
    assert json.loads(ctl(target, "priority", "--device", uuid, "--json").stdout) == {
        "device_uuid": uuid,
        "weight": 2.5,
    }
    assert json.loads(ctl(target, "priority", "--node", LONG_NODE, "--json").stdout)["weight"] == 1.0
    r = ctl(target, "priority", "--node", "no-such-node")
    assert r.returncode == 4 and "no node 'no-such-node'" in r.stderr


async def test_events_show_history_and_follow_survives_a_controller_restart(
    cluster: tuple[str, int, subprocess.Popen[bytes]], processes: Processes
) -> None:
    target, bus_port, controller = cluster

    # what happened before the command ran: the node came online (the control tick after its Hello)
    def history_kinds() -> list[str]:
        out = ctl(target, "events", "--since", "10m", "--seconds", "0.5", "--json").stdout
        return [json.loads(x)["kind"] for x in out.splitlines()]

    await wait_until(lambda: "node.online" in history_kinds(), timeout_s=30, what="node.online in the history")

    # --since: the follower shows the budget below even when it connects after it was set (a slow start)
    processes.start("xpuctl.controller.ctl", "--controller", target, "events", "--follow", "--json", "--since", "1h")
    out = processes.logs[-1]  # its output and its errors
    assert ctl(target, "budget", "5000").returncode == 0
    await wait_until(lambda: "5000 W" in out.read_text(), timeout_s=30, what="the follower following")
    controller.send_signal(signal.SIGTERM)
    controller.wait(timeout=20)
    serve(processes, target, bus_port)
    await wait_until(lambda: ctl(target, "summary").returncode == 0, timeout_s=60, what="the controller back")
    assert ctl(target, "budget", "1300").returncode == 0
    # the follower is still there, and shows what the restarted controller did
    await wait_until(lambda: "1300 W" in out.read_text(), timeout_s=30, what="the new budget followed")
    assert out.read_text().count("reconnecting") == 1, out.read_text()  # said once per outage


def tmux(*args: str) -> int:
    return subprocess.run(["tmux", *args], capture_output=True, check=False).returncode


def rows(session: str) -> set[str]:
    """The nodes of the device table's rows (the event feed names nodes too)."""
    return set(re.findall(r"^(node-[ab])\s+\d+\s", pane(session), re.MULTILINE))


def pane(session: str, *, escapes: bool = False) -> str:
    flags = ["-e"] if escapes else []
    return subprocess.run(
        ["tmux", "capture-pane", "-p", *flags, "-t", session], capture_output=True, text=True, check=False
    ).stdout


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (scripts/test installs it)")
async def test_top_takes_keys_like_htop(processes: Processes) -> None:
    # issue 20.12: q, s, /, v, h; utilisation as a number beside its bar; a dimmed, marked frame
    # while the controller is gone
    target = f"127.0.0.1:{free_port()}"
    controller = processes.start("xpuctl.controller.cli", "serve", "--listen", target, "--state-dir", "none")
    processes.start(*agent_argv(target, "node-a", "nvidia", "--sim-devices", "2"))
    processes.start(*agent_argv(target, "node-b", "amd", "--sim-devices", "2"))
    await wait_until(lambda: len(devices(target)) == 4, timeout_s=60, what="4 devices")
    session = f"xpu-top-{free_port()}"
    cmd = f"cd {ROOT} && {sys.executable} -m xpuctl.controller.ctl --controller {target} top --interval-s 0.5"
    tmux("new-session", "-d", "-s", session, "-x", "160", "-y", "40", cmd)

    def send(*keys: str) -> None:
        tmux("send-keys", "-t", session, *keys)

    try:
        await wait_until(lambda: "node-a" in pane(session) and "node-b" in pane(session), timeout_s=30, what="top")
        assert re.search(r"█*·*\s+\d+%", pane(session)), pane(session)  # the number beside the bar
        send("s")
        await wait_until(lambda: "sorted by power" in pane(session), timeout_s=10, what="s")
        send("v")  # the first vendor present, in order: amd
        await wait_until(lambda: "vendor: amd" in pane(session) and rows(session) == {"node-b"}, timeout_s=10, what="v")
        send("Escape", "/", "node-a", "Enter")
        await wait_until(
            lambda: "filter: node-a" in pane(session) and rows(session) == {"node-a"}, timeout_s=10, what="/"
        )
        send("h")
        await wait_until(lambda: "filter by node id or vendor" in pane(session), timeout_s=10, what="h")
        send("h")
        controller.send_signal(signal.SIGTERM)  # the last frame stays, dimmed and marked
        await wait_until(lambda: "reconnecting" in pane(session), timeout_s=30, what="reconnecting")
        assert re.search(r"\x1b\[(?:[0-9;]*;)?2m", pane(session, escapes=True))  # SGR 2: dim
        send("q")
        await wait_until(lambda: tmux("has-session", "-t", session) != 0, timeout_s=10, what="q quits")
    finally:
        tmux("kill-session", "-t", session)
