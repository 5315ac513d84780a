"""The agent installed alone (issue 21): `pip install xpuctl` into a fresh venv, none of the
controller's dependencies, and the agent reads, parses and streams to a controller.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import subprocess
import sys

import pytest

from tests.helpers import ROOT, Controller, free_port, wait_until

# the `controller` and `fast` extras: none may come with the agent's own install
NOT_FOR_THE_AGENT = {"rich", "amqtt", "aetcd", "uvloop", "grpcio-health-checking", "grpcio-reflection"}
UVLOOP_LINE = "uvloop is not installed"


def venv(where: pathlib.Path, *install: str) -> pathlib.Path:
    """The `bin` folder of a fresh venv in `where`, after `pip install *install`."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=120)
    subprocess.run([where / "bin" / "pip", "install", "-q", *install], check=True, capture_output=True, timeout=600)
    return where / "bin"


@pytest.fixture(scope="module")
def lean(wheel: pathlib.Path) -> pathlib.Path:
    """`pip install xpuctl`: the wheel and what pip takes for it."""
    return venv(wheel.parent / "lean", str(wheel))


@pytest.fixture(scope="module")
def bare(wheel: pathlib.Path) -> pathlib.Path:
    """What a host without wheels of numpy and uvloop can have (LoongArch: deploy/README.md).

    No numpy, no uvloop, and protobuf's pure-Python implementation (the one its py3-none-any
    wheel has) chosen by the environment `bare_env` gives.
    """
    bin_ = venv(wheel.parent / "bare", "grpcio", "protobuf", "msgspec", "aiomqtt")
    subprocess.run(
        [bin_ / "pip", "install", "-q", "--no-deps", str(wheel)], check=True, capture_output=True, timeout=300
    )
    return bin_


# a tool on PATH, as on a node; and protobuf's pure-Python implementation, as where it has no wheel
def bare_env(tools: pathlib.Path) -> dict[str, str]:
    return {"PATH": f"{tools}:/usr/bin:/bin", "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}


def run(lean: pathlib.Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """One of the lean install's programs, from a folder outside the checkout."""
    return subprocess.run(
        [lean / argv[0], *argv[1:]], capture_output=True, text=True, timeout=120, check=False, cwd=lean
    )


@pytest.mark.slow
def test_the_lean_install_has_none_of_the_controllers_dependencies(lean: pathlib.Path) -> None:
    listed = subprocess.run(
        [lean / "pip", "list", "--format", "json"], capture_output=True, text=True, check=True, timeout=120
    )
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"xpuctl", "grpcio", "protobuf", "aiomqtt", "msgspec"} <= names
    assert names & NOT_FOR_THE_AGENT == set()


@pytest.mark.slow
def test_the_agent_reads_simulated_devices_and_parses_captures(lean: pathlib.Path) -> None:
    once = run(lean, "xpu-agent", "once", "--driver", "sim", "--sim-devices", "3", "--log-format", "text")
    assert once.returncode == 0, once.stderr
    assert [d["index"] for d in json.loads(once.stdout)] == [0, 1, 2]
    assert once.stderr.count(UVLOOP_LINE) == 1  # the fallback, said once

    fixtures = ROOT / "tests" / "fixtures" / "vendor-smi"
    for vendor, capture in [
        ("auto", fixtures / "hygon" / "rocm-smi-hygon-24.04.3_json.json"),
        ("ascend", fixtures / "ascend" / "npu-smi-info_310P3_v25.5.1.txt"),
    ]:
        parsed = run(lean, "xpu-agent", "parse", vendor, str(capture))
        assert parsed.returncode == 0, parsed.stderr
        assert len(json.loads(parsed.stdout)) >= 1
        assert UVLOOP_LINE not in parsed.stderr  # no event loop here, nothing to say


@pytest.mark.slow
@pytest.mark.parametrize("program", ["xpu-controller", "xpuctl"])
def test_the_controllers_programs_name_the_extra_they_need(lean: pathlib.Path, program: str) -> None:
    r = run(lean, program, "--help")
    assert r.returncode == 78  # EX_CONFIG: the fix is an install, not a retry
    assert "pip install 'xpuctl[controller]'" in r.stderr
    assert "Traceback" not in r.stderr


async def stream(agent_bin: pathlib.Path, devices: int, *argv: str, env: dict[str, str] | None = None) -> str:
    """Run `xpu-agent run *argv` against a controller until it stored two rounds of `devices`; its log."""
    c = Controller(free_port())
    st = await c.start()
    log = agent_bin.parent / f"run-{free_port()}.log"
    with log.open("wb") as out:
        agent = await asyncio.create_subprocess_exec(
            agent_bin / "xpu-agent", "run", "--controller", c.target, "--log-format", "text", *argv,
            stdout=out, stderr=subprocess.STDOUT, cwd=agent_bin, env=env,
        )  # fmt: skip
    try:
        await wait_until(lambda: len(st.registry) == devices, timeout_s=30, what=f"the agent's {devices} devices")
        await wait_until(
            lambda: st.ingest.counters.samples_total >= 2 * devices, timeout_s=30, what="two rounds of samples stored"
        )
    finally:
        agent.terminate()
        await asyncio.wait_for(agent.wait(), 10)
        await c.stop()
    return log.read_text()


@pytest.mark.slow
async def test_the_lean_agent_streams_to_a_controller(lean: pathlib.Path) -> None:
    log = await stream(lean, 2, "--node-id", "lean1", "--driver", "sim", "--sim-devices", "2")
    assert log.count(UVLOOP_LINE) == 1


@pytest.mark.slow
def test_the_bare_install_lacks_numpy_and_uvloop_and_says_what_the_simulator_needs(
    bare: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    code = (
        "import importlib.util as u, google.protobuf.internal.api_implementation as a;"
        " print(u.find_spec('numpy') is None, u.find_spec('uvloop') is None, a.Type())"
    )
    check = subprocess.run(
        [bare / "python", "-c", code], env=bare_env(tmp_path), capture_output=True, text=True, check=True, timeout=60
    )
    assert check.stdout.split() == ["True", "True", "python"]
    sim = subprocess.run(
        [bare / "xpu-agent", "once", "--driver", "sim"],
        env=bare_env(tmp_path), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert sim.returncode == 1
    assert "--driver sim needs numpy (pip install numpy)" in sim.stderr and "Traceback" not in sim.stderr


@pytest.mark.slow
async def test_an_agent_without_numpy_and_with_pure_python_protobuf_streams_a_tools_devices(
    bare: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    npu_smi = tools / "npu-smi"
    capture = ROOT / "tests" / "fixtures" / "vendor-smi" / "ascend" / "npu-smi-info_910A_v21.0.rc1.txt"
    npu_smi.write_text(f"#!/bin/sh\ncat {capture}\n")
    npu_smi.chmod(0o755)
    log = await stream(bare, 4, "--node-id", "la1", "--driver", "ascend", env=bare_env(tools))  # the 910A's 4 NPUs
    assert log.count(UVLOOP_LINE) == 1
