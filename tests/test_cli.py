"""The command lines as users run them: xpu-agent once, xpuctl against a live controller, bench."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.helpers import ROOT, Controller, Processes, free_port, wait_until

pytestmark = pytest.mark.slow  # end-to-end: real processes, brokers or servers

ONCE_KEYS = {
    "index",
    "uuid",
    "vendor",
    "model",
    "bus_id",
    "memory_total_bytes",
    "power_limit_min_w",
    "power_limit_max_w",
    "power_limit_default_w",
    "power_cap_settable",
    "power_w",
    "power_limit_w",
    "temperature_c",
    "utilization",
    "memory_used_bytes",
}


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


async def arun(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_agent_once_prints_normalised_json() -> None:
    r = run("xpuctl.agent.cli", "once", "--sim-vendor", "kunlunxin", "--sim-devices", "3")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 3
    for i, row in enumerate(rows):
        assert row.keys() >= ONCE_KEYS
        assert (row["index"], row["vendor"], row["model"]) == (i, "kunlunxin", "P800 PCIe")
        assert row["power_cap_settable"] is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sim-vendor", "acme"], "unknown vendor 'acme'"),
        (["--sim-fault", "melt"], "unknown kind 'melt'"),
        (["--sim-devices", "0"], "must be a number > 0"),
    ],
)
def test_agent_bad_arguments_are_named(args: list[str], message: str) -> None:
    r = run("xpuctl.agent.cli", "once", *args)
    assert r.returncode == 2
    assert message in r.stderr


def test_agent_refuses_unknown_driver_clearly() -> None:
    r = run("xpuctl.agent.cli", "once", "--driver", "voodoo")
    assert r.returncode != 0
    assert "--driver 'voodoo': use auto, sim or one of" in r.stderr and "thead" in r.stderr
    # no libhgml.so on a CI machine: ppu-smi (read-only) is the way in, and it is not there either
    r = run("xpuctl.agent.cli", "once", "--driver", "thead")
    # issue 20.15: a driver that finds nothing is exit 1 with the reason, not an empty list
    assert r.returncode == 1 and r.stdout == "" and "no device: thead: ppu-smi is not on PATH" in r.stderr


async def test_xpuctl_against_a_live_controller(controller: Controller, processes: Processes) -> None:
    processes.agent(controller.target, "ctl-a", "biren", "--interval-s", "0.2")
    processes.agent(controller.target, "ctl-b", "thead", "--interval-s", "0.2")
    st = controller.state
    assert st is not None
    await wait_until(
        lambda: len(st.registry) == 16 and all(n.acked_seq > 1 for n in st.registry.nodes.values()),
        timeout_s=30,
        what="two agents",
    )
    c = ("xpuctl.controller.ctl", "--controller", controller.target)
    rc, out, err = await arun(*c, "summary", "--json")
    assert rc == 0, err
    summary = json.loads(out)
    assert {"nodes", "devices", "power_w", "budget_w", "anomalies_open"} <= summary.keys()
    assert (summary["nodes"], summary["devices"]) == (2, 16)
    assert summary["devices_by_vendor"] == {"biren": 8, "thead": 8}
    rc, out, _ = await arun(*c, "devices", "--json", "--vendor", "thead", "--sort", "power")
    devices = json.loads(out)
    assert rc == 0 and len(devices) == 8
    assert {
        "node_id",
        "uuid",
        "index",
        "vendor",
        "model",
        "health",
        "power_w",
        "power_limit_w",
        "temperature_c",
        "utilization",
        "cordoned",
    } <= devices[0].keys()
    powers = [d["power_w"] for d in devices]
    assert powers == sorted(powers, reverse=True)
    rc, out, _ = await arun(*c, "nodes", "--json")
    assert rc == 0 and [n["node_id"] for n in json.loads(out)] == ["ctl-a", "ctl-b"]
    rc, out, _ = await arun(*c, "devices")
    assert rc == 0 and "16 device(s)" in out and "biren" in out
    rc, _, err = await arun(*c, "devices", "--vendor", "acme")
    assert rc == 4 and "unknown vendor 'acme'" in err
    r = await asyncio.to_thread(run_into_a_closed_pipe, *c, "devices", "--json")  # `xpuctl devices --json | head`
    assert r.returncode == 141 and r.stderr == "", r.stderr


def test_xpuctl_unreachable_controller_exits_3() -> None:
    r = run("xpuctl.controller.ctl", "--controller", f"127.0.0.1:{free_port()}", "summary")
    assert r.returncode == 3
    assert "cannot reach the controller" in r.stderr


def bench_json(*args: str) -> dict[str, Any]:
    """`xpu-controller bench ARGS --json` (8 s, 1 s of ramp): its result."""
    r = run("xpuctl.controller.cli", "bench", *args, "--duration-s", "8", "--ramp-s", "1", "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    result: dict[str, Any] = json.loads(r.stdout)
    return result


def test_bench_reports_the_contract_keys() -> None:
    result = bench_json("--devices", "40", "--interval-s", "0.5", "--hot-per-s", "2")
    for key in (
        "samples_per_s",
        "controller_cpu_us_per_sample",
        "ingest_p50_ms",
        "ingest_p99_ms",
        "controller_rss_bytes",
        "loadgen_cpu_cores",
    ):
        assert isinstance(result[key], (int, float)) and result[key] > 0, key
    assert result["devices_registered"] == 40
    assert 0.5 * 80 < result["samples_per_s"] < 1.5 * 80  # 40 devices every 0.5 s
    # issue 13.3: hot samples at a known rate, each timed to its emergency command on the bus
    assert result["hot_samples"] > 0 and result["hot_without_command"] == 0
    assert 0 < result["critical_to_command_p50_ms"] <= result["critical_to_command_p99_ms"]


def test_bench_flat_out_reports_the_sustained_rate() -> None:
    result = bench_json("--flat-out", "--streams", "4")
    assert result["flat_out"] is True and result["devices_registered"] == 32
    assert result["samples_per_s"] > 32  # faster than once a second per device: not paced
    assert isinstance(result["kept_up"], bool) and result["loadgen_processes"] == 1


def test_demo_runs_a_mixed_fleet_and_exits() -> None:
    listen = f"127.0.0.1:{free_port()}"
    r = run("xpuctl.controller.cli", "demo", "--listen", listen, "--nodes", "16", "--duration-s", "4", timeout=60)
    assert r.returncode == 0, r.stderr
    assert "demo: 128 devices of 13 vendors on 16 nodes" in r.stdout
    # issue 20.6: with the dashboard on, the logs went to the file it named, none over the screen
    log_file = re.search(r"demo: its logs are in (\S+)", r.stdout)
    assert log_file is not None, r.stdout
    logged = pathlib.Path(log_file.group(1)).read_text()
    assert f"serving on port {listen.rpartition(':')[2]}" in logged and r.stderr == "", r.stderr
    pathlib.Path(log_file.group(1)).unlink()


def test_bench_power_reports_each_policy() -> None:
    r = run(
        "xpuctl.controller.cli",
        "bench",
        "--scenario",
        "power",
        "--nodes",
        "4",
        "--simulated-s",
        "40",
        "--budget-frac",
        "0.7,0.85",
        "--seeds",
        "2",
        "--json",
        timeout=120,
    )
    assert r.returncode in (0, 1), r.stderr  # 1 = the loop did not beat the static cap on this tiny run
    out = json.loads(r.stdout)
    assert [(c["seed"], c["budget_frac"]) for c in out["cases"]] == [(0, 0.7), (0, 0.85), (1, 0.7), (1, 0.85)]
    first = out["cases"][0]
    assert [x["policy"] for x in first["runs"]] == ["uncapped", "static", "xpuctl", "oracle"]
    assert first["budget_w"] == pytest.approx(0.7 * first["demand_w"], rel=1e-3)
    for key in ("work_tdp_s", "energy_kwh", "seconds_above_budget", "worst_overshoot_pct"):
        assert all(key in x for x in first["runs"])
    oracle, static = first["runs"][3]["work_tdp_s"], first["runs"][1]["work_tdp_s"]
    assert oracle >= first["runs"][2]["work_tdp_s"] and oracle >= static  # the oracle is the bound
    assert set(out["summary"]) == {"0.7", "0.85"} and "share_of_oracle_gain" in out["summary"]["0.7"]
    assert "seed 1, budget 85%" in r.stderr  # progress on stderr
    assert out["plan"] == "mean"  # the loop's default


def test_bench_power_runs_the_loop_planned_on_the_peak() -> None:
    args = ["--nodes", "2", "--simulated-s", "20", "--budget-frac", "0.85", "--seeds", "1", "--plan", "peak"]
    r = run("xpuctl.controller.cli", "bench", "--scenario", "power", *args, timeout=120)
    assert r.returncode in (0, 1), r.stderr
    assert "the loop plans on the peak" in r.stdout and "share" in r.stdout
    bad = run("xpuctl.controller.cli", "bench", "--scenario", "power", "--plan", "median", timeout=60)
    assert bad.returncode == 2 and "invalid choice: 'median'" in bad.stderr and "Traceback" not in bad.stderr


def test_bench_detect_reports_false_alarms_and_delays() -> None:
    r = run(
        "xpuctl.controller.cli",
        "bench",
        "--scenario",
        "detect",
        "--nodes",
        "2",
        "--simulated-s",
        "60",
        "--devices",
        "800",
        "--json",
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["healthy"]["false_alarms"] == 0
    assert set(out["faults"]) == {
        "thermal_runaway",
        "power_spike",
        "ecc_storm",
        "xid",
        "stuck",
        "straggler",
        "fall_off_bus",
        "driver_hang",
    }
    assert all(f["detector"] for f in out["faults"].values())
    assert out["pass"]["devices"] == 800


def test_serve_refuses_a_bad_config_with_78(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "x.toml"
    bad.write_text("[power]\nbudget_w = 1000.0\nbudjet = 5\n")
    r = run("xpuctl.controller.cli", "serve", "--listen", "127.0.0.1:0", "--config", str(bad), timeout=30)
    assert r.returncode == 78
    assert "budjet" in r.stderr and str(bad) in r.stderr
    bad.write_text("[power]\nbudget_w = -5\n")
    r = run("xpuctl.controller.cli", "serve", "--listen", "127.0.0.1:0", "--config", str(bad), timeout=30)
    assert r.returncode == 78 and "$.power.budget_w" in r.stderr


def test_bad_mqtt_url_is_refused() -> None:
    r = run("xpuctl.agent.cli", "run", "--controller", "127.0.0.1:1", "--mqtt", "http://x", timeout=30)
    assert r.returncode == 2 and "scheme must be mqtt or mqtts" in r.stderr


def test_reserved_node_id_is_refused() -> None:
    r = run("xpuctl.agent.cli", "run", "--controller", "127.0.0.1:1", "--node-id", "controller", timeout=30)
    assert r.returncode == 2 and "reserved" in r.stderr


def test_demo_headless_reports_anomalies_and_actions() -> None:
    r = run(
        "xpuctl.controller.cli",
        "--log-level",
        "WARNING",
        "demo",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--headless",
        "--duration-s",
        "20",
        "--json",
        timeout=90,
    )
    assert r.returncode == 0, r.stderr
    # issue 20.5: the fleet and the broker stop without a traceback (amqtt writing to a client that left)
    assert "Traceback" not in r.stderr and "never retrieved" not in r.stderr and "fork_posix" not in r.stderr, r.stderr
    out = json.loads(r.stdout)
    assert set(out) >= {
        "devices",
        "vendors",
        "anomalies_raised",
        "anomalies_cleared",
        "actions_applied",
        "max_power_w",
        "budget_w",
    }
    assert out["devices"] == 128 and out["vendors"] >= 6
    assert out["anomalies_raised"] >= 1 and out["actions_applied"] >= 1
    assert out["budget_w"] is not None and out["max_power_w"] > 0


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (scripts/test installs it)")
def test_demo_dashboard_in_tmux_shows_vendors_budget_and_an_anomaly(tmp_path: pathlib.Path) -> None:
    session, port = f"xpu-demo-{free_port()}", free_port()
    cmd = f"cd {ROOT} && {sys.executable} -m xpuctl.controller.cli demo --listen 127.0.0.1:{port} --duration-s 60"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "50", cmd], check=True)
    subprocess.run(["tmux", "resize-window", "-t", session, "-x", "200", "-y", "50"], check=False)
    try:
        deadline = time.monotonic() + 45
        screen = ""
        while time.monotonic() < deadline:
            screen = subprocess.run(
                ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
            ).stdout
            if re.search(r"anomalies open [1-9]", screen) and "budget" in screen and "no budget" not in screen:
                break
            time.sleep(0.5)  # polling another process's screen; there is nothing to wait on
        assert "xpuctl demo" in screen, screen
        for vendor in ("nvidia", "ascend", "cambricon", "amd", "hygon", "metax"):
            assert vendor in screen, (vendor, screen)
        assert "budget" in screen and "no budget" not in screen, screen
        assert re.search(r"anomalies open [1-9]", screen), screen
        assert re.search(r"thermal_rise|error_event|ecc_", screen), screen
        # issue 20.6/20.7: no log line over the dashboard, which says how to attach; xpuctl attaches so
        assert " INFO " not in screen and " WARNING " not in screen, screen
        assert f"attach: xpuctl --controller 127.0.0.1:{port} top" in screen, screen
        r = run("xpuctl.controller.ctl", "--controller", f"127.0.0.1:{port}", "summary", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["devices"] == 128, r.stderr
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)


def test_agent_parse_prints_normalised_json_or_a_clear_error(tmp_path: pathlib.Path) -> None:
    capture = ROOT / "tests" / "fixtures" / "vendor-smi" / "ascend" / "npu-smi-info_310P3_v25.5.1.txt"
    r = run("xpuctl.agent.cli", "parse", "ascend", str(capture), timeout=30)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [x["model"] for x in rows] == ["Ascend 310P3", "Ascend 310P3"]
    assert rows[0]["power_w"] is None and rows[0]["temperature_c"] == 37.0  # NA is absent, not 0
    for key in (
        "index",
        "uuid",
        "vendor",
        "bus_id",
        "memory_total_bytes",
        "power_limit_max_w",
        "power_cap_settable",
        "power_limit_w",
        "utilization",
        "memory_used_bytes",
    ):
        assert key in rows[0]
    bad = tmp_path / "bad.txt"
    bad.write_text("not an npu-smi table\n")
    r = run("xpuctl.agent.cli", "parse", "ascend", str(bad), timeout=30)
    assert r.returncode == 1 and "npu-smi output, line 1" in r.stderr
    r = run("xpuctl.agent.cli", "parse", "nvidia", str(tmp_path / "missing.txt"), timeout=30)
    assert r.returncode == 1 and "cannot read" in r.stderr


def run_into_a_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m ARGS` with stdout a pipe whose reader is gone before the first byte (`... | head -0`)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write is EPIPE
    try:
        return subprocess.run(
            [sys.executable, "-m", *args],
            cwd=ROOT,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "args",
    [
        (
            "xpuctl.agent.cli",
            "parse",
            "hygon",
            str(ROOT / "tests" / "fixtures" / "vendor-smi" / "hygon" / "rocm-smi-hygon-24.04.3_json.json"),
        ),
        ("xpuctl.agent.cli", "validate", "--config", str(ROOT / "deploy" / "xpu-agent.example.toml")),
        ("xpuctl.controller.cli", "validate", "--config", str(ROOT / "deploy" / "xpu-controller.example.toml")),
    ],
    ids=["xpu-agent parse", "xpu-agent validate", "xpu-controller validate"],
)
def test_output_into_a_reader_that_left_exits_quietly(args: tuple[str, ...]) -> None:
    """`... | head`: no traceback, exit 141 like other tools that SIGPIPE ends."""
    r = run_into_a_closed_pipe(*args)
    assert r.returncode == 141 and r.stderr == "", r.stderr


async def test_a_second_controller_on_a_taken_address_is_refused(controller: Controller) -> None:
    # Issue 18.5: gRPC's default SO_REUSEPORT let a second `serve` share the port silently.
    rc, _, err = await arun("xpuctl.controller.cli", "--log-format", "text", "serve", "--listen", controller.target)
    port = controller.target.rsplit(":", 1)[1]
    assert rc == 1, err
    assert f"port {port} is in use" in err and f"pid {os.getpid()}" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("listen", ["50051", ":50051", "127.0.0.1:http", "127.0.0.1:70000", "localhost"])
def test_a_listen_address_without_host_and_port_is_a_usage_error(listen: str) -> None:
    r = run("xpuctl.controller.cli", "serve", "--listen", listen, timeout=30)
    assert r.returncode == 2
    assert f"--listen {listen!r} is not HOST:PORT" in r.stderr and "Traceback" not in r.stderr


def test_foreign_text_cannot_drive_the_terminal() -> None:
    # Issue 19: cordon reasons and other operator strings reached terminals raw (ANSI escapes, newlines).
    from rich.console import Console  # noqa: PLC0415

    from xpuctl.controller.ctl import main as ctl  # noqa: PLC0415

    hostile = "ECC\x1b[2J\x1b]0;owned\x07\nfake line\x9b"
    assert ctl.printable(hostile) == "ECC\\x1b[2J\\x1b]0;owned\\x07\\nfake line\\x9b"
    console = Console(record=True, width=200, color_system=None)
    console.print(ctl.cell("[red]model[/red]\x1b[5m"))
    assert console.export_text().strip() == "[red]model[/red]\\x1b[5m"


def test_parse_auto_recognises_the_tool() -> None:
    capture = ROOT / "tests" / "fixtures" / "vendor-smi" / "thead" / "ppu-smi_PPU-ZW810E_v1.17_drv2.1.1.txt"
    r = subprocess.run(
        [sys.executable, "-m", "xpuctl.agent.cli", "parse", "auto", "-"],
        cwd=ROOT,
        input=capture.read_text(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "read as thead output" in r.stderr
    (row,) = json.loads(r.stdout)
    assert (row["vendor"], row["model"], row["power_w"], row["power_limit_w"]) == ("thead", "PPU-ZW810E", 57.0, 400.0)
    r = subprocess.run(
        [sys.executable, "-m", "xpuctl.agent.cli", "parse", "auto", "-"],
        cwd=ROOT,
        input="hello\nworld\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "cannot tell which tool printed -" in r.stderr and "Traceback" not in r.stderr
