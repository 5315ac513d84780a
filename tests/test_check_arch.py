"""Issue 21.2: the agent on aarch64 (Phytium's ISA), in a Debian arm64 root under qemu-user.

`scripts/check-arch aarch64` does the work and prints what it ran; this test runs it (about one
minute with the root kept in /var/cache/xpuctl-arch, three and a half from nothing) and checks the
facts it printed.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.helpers import ROOT


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(os.geteuid() != 0, reason="scripts/check-arch needs root (debootstrap, chroot, binfmt_misc)")
def test_the_agent_installs_reads_parses_and_streams_on_aarch64() -> None:
    r = subprocess.run(
        [ROOT / "scripts" / "check-arch", "aarch64"],
        env={**os.environ, "DURATION_S": "10"},
        capture_output=True,
        text=True,
        timeout=580,
        check=False,
    )
    out = r.stdout
    assert r.returncode == 0, out[-4000:] + r.stderr[-4000:]
    assert "the root: aarch64 Python 3.11" in out
    assert "native parts: cygrpc.cpython-311-aarch64-linux-gnu.so" in out  # grpcio's own aarch64 wheel
    assert "uvloop" not in re.sub(r".*uvloop is not installed.*", "", out)  # the lean install: no uvloop
    assert "2 devices: nvidia-vm-0" in out  # once --driver sim
    assert "2 devices: Ascend 310P3" in out and "1 devices: DCU xxxx" in out  # parse
    assert "8 devices: NVIDIA A800-SXM4-80GB (simulated: False)" in out  # a tool found on PATH
    assert "the controller lists 8 devices of aarch64-node" in out
    highest = re.search(r"highest power limit: (\d+) W", out)
    # 4000 W over 8 devices drawing more: capped from 700 (the budget bounds power, not the sum of caps)
    assert highest is not None and int(highest.group(1)) < 700
    assert re.search(r"the agent under emulation on x86_64: [\d.]+% of a core, RSS \d+ MiB", out)
