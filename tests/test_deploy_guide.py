"""deploy/README.md's install block, run as written in a scratch root (issue 20.1, 20.2).

No PID 1 is needed: the block's paths under /opt and /etc are moved under a scratch directory,
its commands run, and then every path the installed units name must exist there (the programs,
the config files, the drop-in), the configs must validate, and `systemd-analyze verify` must
accept the units as installed. The one line not run as written is the `pip install` from the
package index: the scratch venv gets this checkout's programs instead (the wheel's contents are
tests/test_packaging.py's).
"""

from __future__ import annotations

import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # runs the programs as processes

GUIDE = ROOT / "deploy" / "README.md"


def install_block() -> list[str]:
    """The commands of the block under `<!-- install -->`."""
    text = GUIDE.read_text()
    m = re.search(r"<!-- install -->\n```sh\n(.*?)\n```", text, re.DOTALL)
    assert m is not None, "deploy/README.md lost its <!-- install --> block"
    return [line for line in m.group(1).splitlines() if line.strip() and not line.startswith("#")]


def rooted(line: str, root: pathlib.Path) -> str:
    return re.sub(r"(?<![\w.])/(opt|etc)/", lambda m: f"{root}/{m.group(1)}/", line)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_install_block_leaves_everything_the_units_name(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "root"
    bindir = pathlib.Path(sys.executable).parent
    script = ["set -eu"]
    for line in install_block():
        if "pip install" in line:  # this checkout's programs instead of the package index's
            assert line.startswith("/opt/xpuctl/bin/pip install 'xpuctl"), line
            script += [
                f"ln -s {bindir / p} {root}/opt/xpuctl/bin/{p}" for p in ("xpu-agent", "xpu-controller", "xpuctl")
            ]
            continue
        if line.startswith("python3 -m venv"):
            line = line.replace("python3 -m venv", f"{sys.executable} -m venv --without-pip")  # noqa: PLW2901
        if line.startswith(("cp ", "install ")) and "/etc/systemd" in line:
            script.append(f"mkdir -p {root}/etc/systemd/system")
        script.append(rooted(line, root))
    (root / "etc").mkdir(parents=True)
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr

    units = root / "etc" / "systemd" / "system"
    named: set[str] = set()
    for unit in ("xpu-controller.service", "xpu-agent.service"):
        text = (units / unit).read_text()
        exec_start = next(x for x in text.splitlines() if x.startswith("ExecStart="))
        words = shlex.split(exec_start.removeprefix("ExecStart="))
        named.add(words[0])
        named.update(words[k + 1] for k, w in enumerate(words) if w == "--config")
        # the unit as installed in the scratch root: every absolute path it names exists there
        for path in sorted(named):
            assert (root / path.lstrip("/")).exists(), f"{unit} names {path}, which the guide does not create"
        placed = tmp_path / unit
        placed.write_text(rooted(text, root))
        verify = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(placed)], capture_output=True, text=True, check=False
        )
        assert verify.returncode == 0 and not verify.stdout + verify.stderr, verify.stdout + verify.stderr
    assert (units / "xpu-agent.service.d" / "caps.conf").read_text().startswith("# ")
    for program, config in (("xpu-agent", "agent.toml"), ("xpu-controller", "controller.toml")):
        check = subprocess.run(
            [str(root / "opt/xpuctl/bin" / program), "validate", "--config", str(root / "etc/xpuctl" / config)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert check.returncode == 0, f"{program}: {check.stderr}"


def test_cap_paths_allow_exactly_the_amd_and_hygon_hwmon_directories(tmp_path: pathlib.Path) -> None:
    # a fake /sys: an AMD GPU, a Hygon DCU, an NVIDIA GPU, a connector and a render node
    sysfs = tmp_path / "sys"
    for card, pci, vendor in (
        ("card0", "0000:03:00.0", "0x1002"),
        ("card1", "0000:04:00.0", "0x1d94"),
        ("card2", "0000:05:00.0", "0x10de"),
    ):
        device = sysfs / "devices" / "pci0000:00" / pci
        (device / "hwmon" / "hwmon3").mkdir(parents=True)
        (device / "vendor").write_text(vendor + "\n")
        (sysfs / "class" / "drm").mkdir(parents=True, exist_ok=True)
        (device / "drm" / card).mkdir(parents=True)
        (device / "drm" / card / "device").symlink_to(device)
        (sysfs / "class" / "drm" / card).symlink_to(device / "drm" / card)
    (sysfs / "class" / "drm" / "card0-DP-1").symlink_to(sysfs / "devices" / "pci0000:00" / "0000:03:00.0" / "drm")
    done = subprocess.run(
        [sys.executable, "-m", "xpuctl.agent", "config", "cap-paths", "--sysfs", str(sysfs)],
        capture_output=True,
        text=True,
        check=True,
    )
    allowed = [x for x in done.stdout.splitlines() if x.startswith("ReadWritePaths=")]
    assert allowed == [
        "ReadWritePaths=-/sys/devices/pci0000:00/0000:03:00.0/hwmon",
        "ReadWritePaths=-/sys/devices/pci0000:00/0000:04:00.0/hwmon",
    ]
    assert "[Service]" in done.stdout
