"""Issue 20.9-20.13: xpuctl as someone used to nvidia-smi and kubectl uses it, against a real
controller process and a simulated node.
"""

from __future__ import annotations

import json
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
    """A controller with its embedded bus, and one node of 4 simulated devices that takes commands."""
    target, bus_port = f"127.0.0.1:{free_port()}", free_port()
    controller = serve(processes, target, bus_port)
    mqtt = f"mqtt://127.0.0.1:{bus_port}?protocol=3.1.1"
    processes.start(*agent_argv(target, LONG_NODE, "nvidia", "--sim-devices", "4", "--mqtt", mqtt))
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
    uuid = str(devices(target)[1]["uuid"])
    assert ctl(target, "budget", "1200").returncode == 0  # commands for every device
    await wait_until(
        lambda: "action.applied" in ctl(target, "device", uuid).stdout, timeout_s=30, what="a command on the device"
    )
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
    # what happened before the command ran: the node came online
    history = ctl(target, "events", "--since", "10m", "--seconds", "0.5", "--json").stdout
    assert any(json.loads(x)["kind"] == "node.online" for x in history.splitlines()), history

    processes.start("xpuctl.controller.ctl", "--controller", target, "events", "--follow", "--json")
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
