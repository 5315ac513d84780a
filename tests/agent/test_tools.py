"""Tool drivers against fake vendor tools on PATH: real captures, a hang, a failure, garbage."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import stat
import subprocess
import sys
import tarfile
import time

import pytest

from tests.helpers import ROOT, Controller, Processes, wait_until
from xpuctl.agent.adapters.sampler import Sampler
from xpuctl.agent.core import model
from xpuctl.agent.drivers import tool
from xpuctl.controller.core.registry import NodeState

pytestmark = pytest.mark.slow  # end-to-end: real processes, brokers or servers

FIX = ROOT / "tests" / "fixtures" / "vendor-smi"


def fake(bin_dir: pathlib.Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def bin_dir(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    d = tmp_path / "bin"
    d.mkdir()
    monkeypatch.setenv("PATH", f"{d}{os.pathsep}{os.environ['PATH']}")
    return d


def test_tool_driver_reads_a_capture(bin_dir: pathlib.Path) -> None:
    fake(bin_dir, "npu-smi", f"cat {FIX / 'ascend' / 'npu-smi-info_910A_v21.0.rc1.txt'}")
    d = tool.ToolDriver("ascend", timeout_s=5)
    infos = d.discover()
    assert [i.index for i in infos] == [4, 5, 6, 7] and infos[0].model == "Ascend 910A"
    samples = d.sample(123)
    assert [s.power_w for s in samples] == [67.2, 63.8, 67.1, 65.5] and samples[0].timestamp_ns == 123
    assert "ascend" in tool.available()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("sleep 30", "did not answer within"),
        ("echo 'NVML: driver not loaded' >&2; exit 9", "exited with status 9: NVML: driver not loaded"),
        ("echo 'Segmentation fault, no table today'", "line 1"),
    ],
)
async def test_a_bad_tool_makes_its_devices_unknown_and_the_rest_goes_on(
    bin_dir: pathlib.Path, body: str, reason: str
) -> None:
    from xpuctl.agent.drivers.sim import SimDriver  # noqa: PLC0415

    fake(bin_dir, "cnmon", f"cat {FIX / 'cambricon' / 'cnmon_MLU370-X4_v4.20.11.txt'}")
    cambricon = tool.ToolDriver("cambricon", timeout_s=5)
    sim = SimDriver(vendor="nvidia", node_id="n", devices=2)
    sampler = Sampler([cambricon, sim], timeout_s=1.0)
    try:
        devices = await sampler.discover()
        assert [d.vendor for d in devices] == ["cambricon"] * 3 + ["nvidia"] * 2
        fake(bin_dir, "cnmon", body)  # the tool breaks after discovery
        started = time.monotonic()
        samples, rows = await sampler.sample(1)
        assert time.monotonic() - started < 3.0, "a hung tool held the sample"
        assert rows == [0, 1, 2, 3, 4]
        assert all(s.health == model.Health.UNKNOWN for s in samples[:3])
        why = samples[0].health_reason
        assert reason in why and ("cnmon" in why or "cambricon" in why), why
        assert all(s.health == model.Health.OK and s.power_w is not None for s in samples[3:])
    finally:
        sampler.close()


def test_tool_drivers_refuse_to_cap() -> None:
    with pytest.raises(Exception, match="read-only"):
        tool.ToolDriver("metax").set_power_cap(0, 100.0)


def test_agent_once_with_driver_auto(bin_dir: pathlib.Path) -> None:
    fake(bin_dir, "mx-smi", f"cat {FIX / 'metax' / 'mx-smi_C500x8_v2.2.9.txt'}")
    fake(bin_dir, "xpu-smi", f"cat {FIX / 'kunlunxin' / 'xpu-smi_P800-OAM_v5.19.0.0_trimmed.txt'}")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run(
        [sys.executable, "-m", "xpuctl.agent.cli", "once", "--driver", "auto"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    vendors_present = set(tool.available())
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    by_vendor: dict[str, int] = {}
    for row in rows:
        by_vendor[row["vendor"]] = by_vendor.get(row["vendor"], 0) + 1
    assert by_vendor.get("metax") == 8 and by_vendor.get("kunlunxin") == 3, (by_vendor, vendors_present)
    metax = next(x for x in rows if x["vendor"] == "metax")
    assert metax["power_w"] == 57.0 and metax["power_limit_w"] == 350.0 and metax["model"] == "MetaX C500"


def test_driver_without_its_tool_says_what_to_install(bin_dir: pathlib.Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "xpuctl.agent.cli", "once", "--driver", "kunlunxin"],
        cwd=ROOT,
        env={**os.environ, "PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    # devices it cannot read are not invented, and `once` that found none says why (issue 20.15)
    assert r.returncode == 1 and r.stdout == ""
    assert "no device: kunlunxin: xpu-smi is not on PATH; install the kunlunxin driver tools" in r.stderr


@pytest.fixture(scope="module")
def fake_rsmi(tmp_path_factory: pytest.TempPathFactory) -> str:
    import shutil  # noqa: PLC0415

    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: the fake ROCm SMI library cannot be built")
    out = tmp_path_factory.mktemp("rsmi") / "librocm_smi64.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", str(out), str(ROOT / "tests" / "fakes" / "fake_rsmi.c")], check=True
    )
    return str(out)


def test_amd_caps_through_rocm_smi(bin_dir: pathlib.Path, fake_rsmi: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from xpuctl.agent.drivers import base, rsmi  # noqa: PLC0415

    fake(bin_dir, "rocm-smi", f"cat {FIX / 'amd' / 'rocm-smi-6.2.4_showall-json.json'}")
    d = tool.CappedToolDriver("amd", rsmi.RsmiCaps(fake_rsmi), timeout_s=5)
    (info,) = d.discover()
    assert (info.power_limit_min_w, info.power_limit_max_w, info.power_limit_default_w) == (100.0, 300.0, 300.0)
    assert info.power_cap_settable
    assert d.set_power_cap(0, 250.0) == 250.0
    assert d.set_power_cap(0, 20.0) == 100.0  # clamped to the range
    monkeypatch.setenv("FAKE_RSMI_DENY_SET", "1")
    with pytest.raises(base.DriverError, match="needs root"):
        d.set_power_cap(0, 200.0)


def test_a_read_only_tool_driver_reports_devices_as_not_settable(bin_dir: pathlib.Path) -> None:
    fake(bin_dir, "cnmon", f"cat {FIX / 'cambricon' / 'cnmon_MLU370-X4_v4.20.11.txt'}")
    infos = tool.ToolDriver("cambricon", timeout_s=5).discover()
    assert infos and not any(i.power_cap_settable for i in infos)  # no library for caps: a fixed load


@pytest.fixture(scope="module")
def fake_cndev(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The fake libcndev.so as the header lays it out, and two libraries laid out otherwise."""
    import shutil  # noqa: PLC0415

    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: the fake CNDev library cannot be built")
    out = {}
    for variant, flags in (("header", []), ("wide_range", ["-DWIDE_RANGE"]), ("wide_limit", ["-DWIDE_LIMIT"])):
        lib = tmp_path_factory.mktemp(f"neuware-{variant}") / "lib64" / "libcndev.so"
        lib.parent.mkdir()
        subprocess.run(
            ["gcc", "-shared", "-fPIC", *flags, "-o", str(lib), str(ROOT / "tests" / "fakes" / "fake_cndev.c")],
            check=True,
        )
        out[variant] = str(lib)
    return out


def test_cambricon_caps_through_cndev(
    bin_dir: pathlib.Path, fake_cndev: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from xpuctl.agent.drivers import base, cndev  # noqa: PLC0415

    home = str(pathlib.Path(fake_cndev["header"]).parent.parent)
    assert cndev.find_library({"NEUWARE_HOME": home}) == fake_cndev["header"]
    fake(bin_dir, "cnmon", f"cat {FIX / 'cambricon' / 'cnmon_MLU370-X4_v4.20.11.txt'}")
    d = tool.CappedToolDriver("cambricon", cndev.CndevCaps(fake_cndev["header"]), timeout_s=5)
    infos = d.discover()
    # cards 0 and 1 are the library's; the others it does not know stay read-only (a fixed load)
    assert [i.power_cap_settable for i in infos[:3]] == [True, True, False]
    assert (infos[0].power_limit_min_w, infos[0].power_limit_max_w, infos[0].power_limit_default_w) == (
        75.0,
        150.0,
        150.0,
    )
    assert d.set_power_cap(1, 100.4) == 100.0  # whole watts, read back
    assert d.set_power_cap(0, 10.0) == 75.0  # clamped to the range
    assert d.set_power_cap(0, 900.0) == 150.0
    monkeypatch.setenv("FAKE_CNDEV_DENY_SET", "1")
    with pytest.raises(base.DriverError, match=r"No permission \(status 11\).*needs root"):
        d.set_power_cap(0, 120.0)


@pytest.mark.parametrize(
    ("variant", "why"),
    [("wide_range", "lays the range out differently"), ("wide_limit", "lays the limitation out differently")],
)
def test_a_cndev_with_another_layout_is_left_read_only(
    bin_dir: pathlib.Path, fake_cndev: dict[str, str], variant: str, why: str
) -> None:
    from xpuctl.agent.drivers import base, cndev  # noqa: PLC0415

    caps = cndev.CndevCaps(fake_cndev[variant])
    with pytest.raises(base.DriverError, match=why):
        caps.range_w(0)
    with pytest.raises(base.DriverError, match=why):
        caps.set_w(0, 100.0)  # never a write through a struct we cannot read
    fake(bin_dir, "cnmon", f"cat {FIX / 'cambricon' / 'cnmon_MLU370-X4_v4.20.11.txt'}")
    infos = tool.CappedToolDriver("cambricon", caps, timeout_s=5).discover()
    assert infos and not any(i.power_cap_settable for i in infos)  # a fixed load, never a misread cap


def test_cndev_missing_library_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    from xpuctl.agent.drivers import base, cndev  # noqa: PLC0415

    with pytest.raises(base.DriverError, match="cannot load CNDev"):
        cndev.CndevCaps(str(tmp_path / "libcndev.so"))


async def test_a_tool_broken_at_start_joins_later_as_a_new_boot(
    bin_dir: pathlib.Path, controller: Controller, processes: Processes
) -> None:
    """npu-smi fails while the agent starts (driver not loaded yet); once it works, its NPUs stream."""
    ready = bin_dir.parent / "npu-driver-loaded"
    fake(bin_dir, "cnmon", f"cat {FIX / 'cambricon' / 'cnmon_MLU370-X4_v4.20.11.txt'}")
    fake(
        bin_dir,
        "npu-smi",
        f"if [ -f {ready} ]; then cat {FIX / 'ascend' / 'npu-smi-info_910A_v21.0.rc1.txt'}; "
        "else echo 'dcmi module initialize failed. ret is -8005' >&2; exit 9; fi",
    )
    st = controller.state
    assert st is not None
    processes.start(
        "xpuctl.agent.cli",
        "--log-format",
        "text",
        "run",
        "--node-id",
        "late",
        "--controller",
        controller.target,
        "--driver",
        "auto",
        "--rediscover-s",
        "0.3",
        "--interval-s",
        "0.2",
        env={"PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"},
    )

    def node() -> NodeState | None:
        return st.registry.nodes.get("late")

    await wait_until(lambda: (n := node()) is not None and n.batches_stored >= 3, timeout_s=30, what="cnmon's devices")
    first = node()
    assert first is not None and len(first.slots) == 3  # cambricon only: npu-smi failed
    first_boot = first.boot_id
    ready.touch()
    await wait_until(
        lambda: (n := node()) is not None and n.boot_id != first_boot and n.batches_stored >= 3,
        timeout_s=30,
        what="a new boot with the NPUs",
    )
    n = node()
    assert n is not None and len(n.slots) == 7
    vendors = sorted(st.registry.infos[s].vendor for s in n.slots)
    assert vendors == ["ascend"] * 4 + ["cambricon"] * 3
    assert n.gap_batches == 0  # the new boot's seq starts at 1, nothing missing


def agent(*args: str, path: str, timeout: float = 60, system_bins: bool = True) -> subprocess.CompletedProcess[str]:
    """`xpu-agent ARGS` with only `path` (and the system's bins, for the fake tools' `cat`) on PATH."""
    return subprocess.run(
        [sys.executable, "-m", "xpuctl.agent.cli", "--log-format", "text", *args],
        cwd=ROOT,
        env={**os.environ, "PATH": f"{path}{os.pathsep}/usr/bin{os.pathsep}/bin" if system_bins else path},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_once_reads_real_devices_by_default(bin_dir: pathlib.Path) -> None:
    # Issue 12.7: with no flag, `once` reported eight simulated H100s on a real node.
    fake(bin_dir, "mx-smi", f"cat {FIX / 'metax' / 'mx-smi_C500x8_v2.2.9.txt'}")
    r = agent("once", path=str(bin_dir))
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 8 and {row["vendor"] for row in rows} == {"metax"}
    assert not any(row.get("simulated") for row in rows)


def test_once_with_no_device_says_so(bin_dir: pathlib.Path) -> None:
    r = agent("once", path=str(bin_dir), system_bins=False)
    assert r.returncode == 1 and r.stdout == ""
    assert "--driver auto found no vendor tool on PATH" in r.stderr and "--driver sim" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_sim_flag_asks_for_the_simulator(bin_dir: pathlib.Path) -> None:
    fake(bin_dir, "mx-smi", f"cat {FIX / 'metax' / 'mx-smi_C500x8_v2.2.9.txt'}")
    r = agent("once", "--sim-vendor", "ascend", "--sim-devices", "2", path=str(bin_dir))
    assert r.returncode == 0, r.stderr
    assert [row["vendor"] for row in json.loads(r.stdout)] == ["ascend", "ascend"]


def test_run_with_no_device_keeps_looking_until_stopped(bin_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "xpuctl.agent.cli",
                "--log-format",
                "text",
                "run",
                "--node-id",
                "bare",
                "--controller",
                "127.0.0.1:9",
                "--rediscover-s",
                "0.2",
            ],
            cwd=ROOT,
            env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while log.read_text().count("looking again") < 2:  # said, and looked again
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        fake(bin_dir, "mx-smi", f"cat {FIX / 'metax' / 'mx-smi_C500x8_v2.2.9.txt'}")  # the tools arrive
        while "8 device(s) discovered" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()
    text = log.read_text()
    assert "no devices to report: --driver auto found no vendor tool on PATH" in text and "Traceback" not in text


def test_capture_saves_every_tool_form_and_says_what_parsed(bin_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    # Issue 12.8: a bug report's capture, with fake tools on PATH: one that reads, one that fails
    fake(
        bin_dir,
        "mx-smi",
        f'[ "$1" = "--version" ] && echo "mx-smi version: 2.2.9" && exit 0; cat {FIX / "metax" / "mx-smi_C500x8_v2.2.9.txt"}',
    )
    fake(bin_dir, "xpu_smi", 'echo "xpu_smi: driver not loaded" >&2; exit 3')
    out = tmp_path / "report.tar.gz"
    r = agent("capture", "--out", str(out), "--timeout-s", "10", path=str(bin_dir))
    assert r.returncode == 0, r.stderr
    assert re.search(r"^mx-smi\s+exit 0 .* 8 device\(s\)", r.stdout, re.MULTILINE), r.stdout
    assert re.search(r"^xpu_smi\s+exit 3 .* not read: no output \(exit 3\)", r.stdout, re.MULTILINE), r.stdout
    with tarfile.open(out) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("xpu-capture/manifest.json").read())  # type: ignore[union-attr]
        first = next(run for run in manifest["runs"] if run["argv"] == ["mx-smi"])
        captured = tar.extractfile(f"xpu-capture/{first['stdout_file']}").read()  # type: ignore[union-attr]
    assert captured == (FIX / "metax" / "mx-smi_C500x8_v2.2.9.txt").read_bytes()
    assert {tuple(run["argv"]) for run in manifest["runs"]} >= {("mx-smi",), ("mx-smi", "--version"), ("xpu_smi",)}
    assert any(n.endswith(".err") for n in names)


def test_capture_with_no_tool_says_so(bin_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    r = agent("capture", "--out", str(tmp_path / "x.tar.gz"), path=str(bin_dir), system_bins=False)
    assert r.returncode == 1 and "no vendor tool on PATH" in r.stderr and not (tmp_path / "x.tar.gz").exists()


def test_older_and_newer_tool_names_are_found(bin_dir: pathlib.Path) -> None:
    # Issue 12.5: Kunlunxin's older packages install `xpu_smi`; T-Head's `ppu-smi` is read without HGML
    fake(bin_dir, "xpu_smi", f"cat {FIX / 'kunlunxin' / 'xpu-smi_P800-OAMx4_driver-515.58_XPU-RT-NA.txt'}")
    fake(bin_dir, "ppu-smi", f"cat {FIX / 'thead' / 'ppu-smi_PPU-ZW810E_v1.17_drv2.1.1.txt'}")
    r = agent("once", path=str(bin_dir))
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert sorted({row["vendor"] for row in rows}) == ["kunlunxin", "thead"]
    thead = next(row for row in rows if row["vendor"] == "thead")
    assert (thead["model"], thead["power_w"], thead["power_cap_settable"]) == ("PPU-ZW810E", 57.0, False)
    assert sum(row["vendor"] == "kunlunxin" for row in rows) == 4


def test_a_dcu_seen_through_rocm_smi_is_hygon(bin_dir: pathlib.Path) -> None:
    # Issue 12.5: DTK's rocm-smi on a Hygon node printed DCUs that `auto` reported as AMD GPUs
    fake(bin_dir, "rocm-smi", f"cat {FIX / 'hygon' / 'rocm-smi-json_Z100L_docstring.json'}")
    r = agent("once", path=str(bin_dir))
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows and {row["vendor"] for row in rows} == {"hygon"}
    fake(bin_dir, "hy-smi", f"cat {FIX / 'hygon' / 'rocm-smi-json_Z100L_docstring.json'}")
    r = agent("once", path=str(bin_dir))  # both tools: the DCUs once, not twice
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)) == len(rows)


def test_amd_smi_alone_is_read_as_json_with_its_identity(
    bin_dir: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 12.5: no rocm-smi on PATH (ROCm 7 nodes): `amd-smi metric --json` for readings, its
    # `static --json` once for the model and the cap range
    from tests.agent.test_parsers_amdsmi import METRIC_NEW  # noqa: PLC0415

    (bin_dir / "metric.json").write_text(json.dumps(METRIC_NEW))
    static = FIX / "amd" / "amd-smi-static-json_MI210.json"
    fake(
        bin_dir,
        "amd-smi",
        f'case "$1 $2" in "metric --json") cat {bin_dir / "metric.json"};; "static --json") cat {static};;'
        ' *) echo "unexpected: $*" >&2; exit 2;; esac',
    )
    caplog.set_level("WARNING")
    d = tool.ToolDriver("amd", timeout_s=5)
    (info,) = d.discover()
    assert d.argv[:3] == ["amd-smi", "metric", "--json"]
    assert (info.model, info.power_limit_max_w, info.memory_total_bytes) == ("AMD Instinct MI210", 300.0, 196592 << 20)
    (s,) = d.sample(7)
    assert (s.power_w, s.temperature_c, s.utilization) == (412.0, 61.0, 0.37)
    assert "rocm-smi is not on PATH" in caplog.text  # it said why it fell back


def test_a_form_the_tool_refuses_falls_back_to_the_table(
    bin_dir: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    # ixsmi that does not take nvidia-smi's --query-gpu: the table is read, and the log says why
    table = FIX / "iluvatar" / "ixsmi_BI-V150x16_v4.1.0.txt"
    fake(
        bin_dir,
        "ixsmi",
        f'case "$1" in --format*) echo "Invalid combination of input arguments" >&2; exit 2;; esac; cat {table}',
    )
    caplog.set_level("WARNING")
    d = tool.ToolDriver("iluvatar", timeout_s=5)
    infos = d.discover()
    assert len(infos) == 16 and d.argv == ["ixsmi"]
    assert "exited with status 2: Invalid combination" in caplog.text
    fake(bin_dir, "ixsmi", "exit 3")  # nothing answers: one error naming every form
    with pytest.raises(Exception, match=r"no form of the iluvatar tool could be read: .*status 3.*status 3"):
        tool.ToolDriver("iluvatar", timeout_s=5).discover()


def test_the_older_xpu_smi_name_is_found(bin_dir: pathlib.Path) -> None:
    q = FIX / "kunlunxin" / "xpu-smi-q-id_P800-PCIe_v5.0.21.26.txt"
    fake(bin_dir, "xpu_smi", f'[ "$1" = -q ] && cat {q}')
    assert tool.available() == ["kunlunxin"]
    d = tool.ToolDriver("kunlunxin", timeout_s=5)
    assert [i.model for i in d.discover()] == ["P800 PCIe"] and d.argv == ["xpu_smi", "-q"]
