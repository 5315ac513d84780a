"""Controller settings: the example file, precedence (flags > XPU_* environment > file > defaults),
and bad input named by its path.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib

import msgspec
import pytest

from tests.helpers import ROOT
from xpuctl.controller import cli, config
from xpuctl.controller.core import ingest

EXAMPLE = ROOT / "deploy" / "xpu-controller.example.toml"


def test_example_config_is_fresh_and_valid() -> None:
    spec = importlib.util.spec_from_file_location("gen", ROOT / "scripts" / "gen_example_config.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert EXAMPLE.read_text() == gen.render(), "stale: run scripts/gen_example_config.py"
    assert config.load(EXAMPLE) == config.Config()  # the example spells out the defaults


def test_precedence_flags_over_environment_over_file(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[power]\nbudget_w = 1000.0\nperiod_s = 2.0\n[bus]\nroot = "site/v1"\n')
    cfg = config.load(f, {"XPU_POWER_BUDGET_W": "2000", "XPU_DETECT_SPIKE_Z": "7.5", "HOME": "/root"})
    assert (cfg.power.budget_w, cfg.power.period_s, cfg.detect.spike_z, cfg.bus.root) == (2000.0, 2.0, 7.5, "site/v1")
    args = argparse.Namespace(config=str(f), budget_w=3000.0, control_period_s=None, mqtt=None, state_dir=None)
    monkeypatch.setenv("XPU_POWER_BUDGET_W", "2000")
    assert cli._config(args).power.budget_w == 3000.0
    args.budget_w = None
    assert cli._config(args).power.budget_w == 2000.0


@pytest.mark.parametrize(
    ("text", "env", "fragment"),
    [
        ("[power]\nbudjet = 5\n", {}, "unknown field `budjet` - at `$.power`"),
        ("[power]\nbudget_w = -1.0\n", {}, "$.power.budget_w"),
        ("[power\n", {}, "not valid TOML"),
        ("", {"XPU_DETECT_STUCK_SAMPLES": "zero"}, "$.detect.stuck_samples"),
        # issue 18.11: each of these validated, then crashed or spun `serve`
        ("[power]\ncommand_ttl_s = inf\n", {}, "$.power.command_ttl_s"),
        ("[power]\nperiod_s = 1e-9\n", {}, "$.power.period_s"),
        ("[power]\nperiod_s = inf\n", {}, "$.power.period_s"),
        ("[power]\nbudget_w = nan\n", {}, "$.power.budget_w"),
        ("[bus]\nheartbeat_s = 0.0001\n", {}, "$.bus.heartbeat_s"),
        ("[detect]\nstale_after_s = inf\n", {}, "$.detect.stale_after_s"),
        ("", {"XPU_POWER_RETRY_AFTER_S": "inf"}, "$.power.retry_after_s"),
        ('[power]\nplan = "average"\n', {}, "Invalid enum value 'average' - at `$.power.plan`"),
        ("", {"XPU_POWER_PLAN": "fast"}, "$.power.plan"),
    ],
)
def test_bad_settings_name_the_key(tmp_path: pathlib.Path, text: str, env: dict[str, str], fragment: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(config.ConfigError) as err:
        config.load(f, env)
    assert fragment in str(err.value) and str(f) in str(err.value)


@pytest.mark.slow  # runs the program as a process
def test_validate_exits_78_naming_the_key(tmp_path: pathlib.Path) -> None:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    bad = tmp_path / "bad.toml"
    bad.write_text('[detect]\nthermal_margin_c = "hot"\n')
    r = subprocess.run(
        [sys.executable, "-m", "xpuctl.controller.cli", "validate", "--config", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 78 and "$.detect.thermal_margin_c" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "xpuctl.controller.cli", "validate", "--config", str(EXAMPLE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0 and '"budget_w": null' in r.stdout


def test_agent_config_precedence_and_validate(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from xpuctl.agent import cli as agent_cli  # noqa: PLC0415
    from xpuctl.agent import config as agent_config  # noqa: PLC0415

    f = tmp_path / "agent.toml"
    f.write_text('[agent]\ncontroller = "10.0.0.1:50051"\ninterval_s = 2.0\nbuffer_batches = 50\n')
    monkeypatch.setenv("XPU_AGENT_BUFFER_BATCHES", "70")
    parser = agent_cli._parser()
    args = agent_cli._with_config(parser, ["run", "--config", str(f), "--interval-s", "0.5"])
    assert (args.controller, args.interval_s, args.buffer_batches) == ("10.0.0.1:50051", 0.5, 70)
    f.write_text("[agent]\nbuffer_batches = 0\n")
    monkeypatch.delenv("XPU_AGENT_BUFFER_BATCHES")  # (it would override the file's bad value)
    with pytest.raises(agent_config.ConfigError, match=r"\$\.agent\.buffer_batches"):
        agent_config.load(f, {})
    assert agent_cli.main(["validate", "--config", str(f)]) == 78


def test_agent_example_config_is_valid() -> None:
    from xpuctl.agent import config as agent_config  # noqa: PLC0415

    cfg = agent_config.load(ROOT / "deploy" / "xpu-agent.example.toml", {}).agent
    assert cfg.driver == "auto" and cfg.controller and cfg.failsafe_after_s == 15.0
    documented = {
        line.split("=")[0].strip("# ").strip()
        for line in (ROOT / "deploy" / "xpu-agent.example.toml").read_text().splitlines()
        if "=" in line
    }
    assert documented == set(agent_config.Agent.__struct_fields__)  # every key is in the example


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [({"control_period_s": 1e-9}, "$.power.period_s"), ({"budget_w": 1e12}, "$.power.budget_w")],
)
def test_flags_meet_the_same_ranges(flags: dict[str, float], fragment: str) -> None:
    args = argparse.Namespace(
        **{"config": None, "budget_w": None, "control_period_s": None, "mqtt": None, "state_dir": None, **flags}
    )
    with pytest.raises(config.ConfigError) as err:
        cli._config(args)
    assert fragment in str(err.value) and "command-line flags" in str(err.value)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"[power]\nbudget_w = 1000.0 # \xff\xfe\n", "not UTF-8 text"),
        (b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
    ],
    ids=["non-utf8", "deeply nested"],
)
def test_files_that_are_no_config_are_named_not_a_crash(tmp_path: pathlib.Path, content: bytes, fragment: str) -> None:
    # issue 18.11: these crashed `validate` with a traceback and exit 1
    f = tmp_path / "bad.toml"
    f.write_bytes(content)
    with pytest.raises(config.ConfigError) as err:
        config.load(f)
    assert fragment in str(err.value) and str(f) in str(err.value)
    from xpuctl.agent import config as agent_config  # noqa: PLC0415

    with pytest.raises(agent_config.ConfigError) as agent_err:
        agent_config.load(f, {})
    assert fragment in str(agent_err.value)


@pytest.mark.parametrize(
    ("dir_setting", "environ", "expected"),
    [
        ("/srv/xpu", {"STATE_DIRECTORY": "/var/lib/x"}, "/srv/xpu"),
        (None, {"STATE_DIRECTORY": "/var/lib/xpu-controller:/var/lib/other"}, "/var/lib/xpu-controller"),
        (None, {"XDG_STATE_HOME": "/home/op/.st"}, "/home/op/.st/xpu-controller"),
        ("none", {"STATE_DIRECTORY": "/var/lib/x"}, None),
    ],
)
def test_where_the_desired_state_lives(dir_setting: str | None, environ: dict[str, str], expected: str | None) -> None:
    cfg = config.Config(state=config.State(dir=dir_setting))
    got = cli.state_dir(cfg, environ)
    assert (None if got is None else str(got)) == expected


def test_the_limits_group_has_the_ingest_defaults() -> None:
    # [limits] sets ingest.Limits by name: the two must not drift apart
    defaults = msgspec.structs.asdict(config.Limits())
    assert {k: getattr(ingest.Limits(), k) for k in defaults} == defaults
