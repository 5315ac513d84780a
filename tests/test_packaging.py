"""The distribution as users get it: one `xpuctl` namespace, the programs under `python -m`, and
command lines that take no abbreviations.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import zipfile

import pytest

from tests.helpers import ROOT
from xpuctl.agent import cli as agent_cli
from xpuctl.controller import cli as controller_cli
from xpuctl.controller.ctl import main as ctl_main

FOLDERS = ("agent", "controller", "protos", "common")


def parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """`parser` and every subparser below it."""
    out = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out.extend(parsers(sub))
    return out


PROGRAMS = {
    "xpu-agent": agent_cli._parser,
    "xpu-controller": controller_cli._parser,
    "xpuctl": ctl_main._parser,
}


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_no_parser_takes_abbreviations(program: str) -> None:
    found = parsers(PROGRAMS[program]())
    assert len(found) > 2
    assert [p.prog for p in found if p.allow_abbrev] == []


def test_a_prefix_of_a_flag_is_refused_not_taken_for_it(capsys: pytest.CaptureFixture[str]) -> None:
    # `--interval 2` was read as `--interval-s 2`, while the config merge, which knows only the full
    # flag, let the file's value win over it
    with pytest.raises(SystemExit) as exit_:
        agent_cli._parser().parse_args(["run", "--controller", "127.0.0.1:1", "--interval", "2"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --interval 2" in capsys.readouterr().err


def test_the_full_flag_wins_over_the_config_file(tmp_path: pathlib.Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[agent]\ncontroller = "127.0.0.1:1"\ninterval_s = 5.0\n')
    parser = agent_cli._parser()
    args = agent_cli._with_config(parser, ["run", "--config", str(cfg), "--interval-s", "2"])
    assert args.interval_s == 2.0
    args = agent_cli._with_config(parser, ["run", "--config", str(cfg)])
    assert args.interval_s == 5.0


@pytest.mark.slow  # builds the wheel with pip (a fresh build environment)
def test_the_wheel_holds_only_the_xpuctl_namespace(wheel: pathlib.Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"xpuctl", next(t for t in tops if t.endswith(".dist-info"))}
    assert "xpuctl/__init__.py" not in names  # a namespace: nothing else may claim it
    # every module of the four folders is in the wheel, under its xpuctl name
    sources = {
        f"xpuctl/{p.relative_to(ROOT).as_posix()}"
        for folder in FOLDERS
        for p in (ROOT / folder).rglob("*")
        if p.suffix in {".py", ".pyi", ".proto"} or p.name == "py.typed"
    }
    assert sources - set(names) == set()
    # the example configs that `config example` prints (issue 20.1)
    assert {"xpuctl/agent/xpu-agent.example.toml", "xpuctl/controller/xpu-controller.example.toml"} <= set(names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for line in (
        "xpu-agent = xpuctl.agent.cli:main",
        # the controller's programs first check for their extra (issue 21)
        "xpu-controller = xpuctl.controller.entry:controller",
        "xpuctl = xpuctl.controller.entry:xpuctl",
    ):
        assert line in entry_points


@pytest.mark.slow  # starts the programs as processes
@pytest.mark.parametrize(
    ("module", "prog"),
    [("xpuctl.agent", "xpu-agent"), ("xpuctl.controller", "xpu-controller"), ("xpuctl.controller.ctl", "xpuctl")],
)
def test_python_dash_m_runs_each_program(module: str, prog: str) -> None:
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=False, cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: {prog}")


@pytest.mark.slow  # starts Python as a process
def test_the_bare_folder_names_are_not_importable_from_elsewhere() -> None:
    code = (
        "import importlib.util as u; print([n for n in ('agent', 'controller', 'protos', 'common') if u.find_spec(n)])"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert r.stdout.strip() == "[]"


@pytest.mark.slow  # a fresh interpreter
def test_an_agent_reading_real_devices_does_not_load_numpy() -> None:
    # issue 13.7: numpy (~10 MiB of the agent's RSS) is the simulator's and the load generator's only
    code = (
        "import sys; import xpuctl.agent.cli, xpuctl.agent.runtime, xpuctl.agent.drivers.tool, "
        "xpuctl.agent.adapters.mqtt; print(sorted(m for m in ('numpy', 'rich', 'amqtt') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert r.stdout.strip() == "[]", r.stdout
