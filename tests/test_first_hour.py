"""Issue 20: the habits an operator brings from nvidia-smi, kubectl and friends, tried as they would."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.helpers import ROOT, Processes, agent_argv, free_port, wait_until
from xpuctl.common import cli

PROGRAMS = {"xpuctl.agent": "xpu-agent", "xpuctl.controller": "xpu-controller", "xpuctl.controller.ctl": "xpuctl"}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow  # starts the programs
@pytest.mark.parametrize("module", sorted(PROGRAMS))
def test_every_program_says_its_version(module: str) -> None:
    r = run(module, "--version")
    assert r.returncode == 0 and r.stdout.startswith(f"{PROGRAMS[module]} 0."), r.stdout + r.stderr


@pytest.mark.parametrize(
    ("given", "dialled"),
    [
        ("ctl", "ctl:50051"),
        ("ctl.example.internal:7000", "ctl.example.internal:7000"),
        ("10.0.0.1", "10.0.0.1:50051"),
        ("[::1]", "[::1]:50051"),
        ("[::1]:9", "[::1]:9"),
        ("::1", "[::1]:50051"),
        ("dns:///ctl:5", "dns:///ctl:5"),
        ("unix:/run/xpu.sock", "unix:/run/xpu.sock"),
    ],
)
def test_a_controller_address_without_port_means_50051(given: str, dialled: str) -> None:
    assert cli.address(given) == dialled  # gRPC's own default would be 443


@pytest.mark.parametrize("bad", ["", "ctl:http", "[::1]:x"])
def test_a_bad_controller_address_is_named(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="HOST"):
        cli.address(bad)


@pytest.mark.slow  # starts the programs
def test_xpuctl_takes_its_address_from_the_environment_and_flags_after_the_subcommand() -> None:
    # nobody listens on port 1: the error names the address it dialled
    r = run("xpuctl.controller.ctl", "summary", env={"XPUCTL_CONTROLLER": "127.0.0.1:1"})
    assert r.returncode == 3 and "at 127.0.0.1:1:" in r.stderr, r.stderr
    r = run("xpuctl.controller.ctl", "summary", "--controller", "127.0.0.1:2", env={"XPUCTL_CONTROLLER": "x:1"})
    assert r.returncode == 3 and "at 127.0.0.1:2:" in r.stderr, r.stderr  # the flag wins, after the subcommand too
    r = run("xpuctl.controller.ctl", "summary", env={"XPUCTL_CONTROLLER": "ctl:http"})
    assert r.returncode == 2 and "XPUCTL_CONTROLLER" in r.stderr and "'http' is not a number" in r.stderr


@pytest.mark.slow  # starts the programs
def test_global_flags_are_taken_after_the_subcommand() -> None:
    r = run("xpuctl.agent", "once", "--driver", "sim", "--sim-devices", "1", "--log-level", "WARNING")
    assert r.returncode == 0, r.stderr
    r = run("xpuctl.agent", "once", "--driver", "sim", "--sim-devices", "1", "--log-level", "LOUD")
    assert r.returncode == 2 and "invalid choice: 'LOUD'" in r.stderr
    for command in (["config", "example"], ["validate", "--config", str(ROOT / "agent" / "xpu-agent.example.toml")]):
        r = run("xpuctl.agent", "--log-level", "WARNING", *command)  # a global flag before these too
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


@pytest.mark.slow  # starts the programs
@pytest.mark.parametrize(
    ("module", "shipped"),
    [("xpuctl.agent", "agent/xpu-agent.example.toml"), ("xpuctl.controller", "controller/xpu-controller.example.toml")],
)
def test_config_example_prints_the_shipped_example(module: str, shipped: str) -> None:
    r = run(module, "config", "example")
    assert r.returncode == 0 and r.stdout == (ROOT / shipped).read_text()
    assert (ROOT / "deploy" / shipped.split("/")[1]).read_text() == r.stdout  # deploy/ holds the same file


@pytest.mark.slow  # starts the programs
def test_an_agent_without_a_controller_is_a_config_error_systemd_does_not_restart() -> None:
    r = run("xpuctl.agent", "run", "--driver", "sim")
    assert r.returncode == 78 and "no controller address" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow  # starts the programs
def test_usage_mistakes_are_named_not_tracebacks(tmp_path: pathlib.Path) -> None:
    # issue 20.15: a fault on a device that does not exist, a negative history, a driver without its tool
    r = run("xpuctl.agent", "once", "--sim-devices", "2", "--sim-fault", "thermal_runaway:dev=99")
    assert r.returncode == 2 and "dev=99 is beyond the 2 simulated device(s)" in r.stderr
    r = run("xpuctl.controller.ctl", "device", "some-uuid", "--limit", "-1")
    assert r.returncode == 2 and "--limit: '-1' must be a number > 0" in r.stderr
    empty = tmp_path / "bin"
    empty.mkdir()
    r = run("xpuctl.agent", "once", "--driver", "nvidia", env={"PATH": str(empty)})
    assert r.returncode == 1 and "no device: nvidia: nvidia-smi is not on PATH" in r.stderr, r.stderr
    assert r.stderr.count("nvidia-smi is not on PATH") <= 2  # the log line and the answer, not once per form
    r = run("xpuctl.agent", "once", "--sim-vendor", "Ascend", "--sim-devices", "1")
    assert r.returncode == 0 and '"vendor": "ascend"' in r.stdout
    r = run("xpuctl.agent", "run", "--help")
    assert "(default: 15.0)" in r.stdout and "(default: 1.0)" in r.stdout  # help shows the defaults


@pytest.mark.slow  # a controller and an agent as processes
async def test_an_unknown_node_is_an_error_and_vendors_ignore_case(processes: Processes) -> None:
    target = f"127.0.0.1:{free_port()}"
    processes.start("xpuctl.controller.cli", "serve", "--listen", target)
    processes.start(*agent_argv(target, "n1", "nvidia"))
    await wait_until(lambda: run_json(target, "devices", "--json") is not None, timeout_s=60, what="8 devices")
    assert [d["node_id"] for d in run_json(target, "devices", "--vendor", "NVIDIA", "--json") or []] == ["n1"] * 8
    r = run("xpuctl.controller.ctl", "--controller", target, "devices", "--node", "n2")
    assert r.returncode == 4 and "no node 'n2'" in r.stderr, r.stderr  # like an unknown vendor, not an empty list
    r = run("xpuctl.controller.ctl", "--controller", target, "devices", "--vendor", "nvidiaa")
    assert r.returncode == 4 and "unknown vendor 'nvidiaa'" in r.stderr


def run_json(target: str, *args: str) -> list[dict[str, object]] | None:
    """`xpuctl ARGS` as JSON once it lists 8 devices; None before."""
    r = run("xpuctl.controller.ctl", "--controller", target, *args)
    got = json.loads(r.stdout) if r.returncode == 0 else []
    return got if len(got) == 8 else None
