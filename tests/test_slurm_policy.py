"""The drain policy of `xpuctl slurm` (controller/ctl/slurm.py), without Slurm: which devices make a
node unfit, what the reason says, and which drains are xpuctl's to change.
"""

from __future__ import annotations

import pytest

from xpuctl.controller.core import detect
from xpuctl.controller.ctl import slurm
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb
from xpuctl.protos.xpu.v1 import telemetry_pb2 as pb


def device(index: int, *, health: int = 1, cordon: str = "", anomalies: tuple[str, ...] = ()) -> cpb.Device:
    d = cpb.Device(node_id="n1", info=pb.DeviceInfo(uuid=f"gpu-{index}", index=index), health=health)  # type: ignore[arg-type]
    d.anomalies.extend(anomalies)
    if cordon:
        d.cordoned, d.cordon_reason = True, cordon
    return d


def test_the_critical_kinds_are_the_critical_detectors() -> None:
    assert detect.CRITICAL_KINDS == slurm.CRITICAL


def test_reasons() -> None:
    assert slurm.reason_for([device(0), device(1, anomalies=("stuck", "straggler"))]) is None  # warnings only
    assert slurm.reason_for([device(1, anomalies=("thermal",)), device(0)]) == "xpuctl: thermal dev=1/gpu-1"
    many = [device(3, health=3), device(1, cordon="ECC storm"), device(2, anomalies=("ecc_uncorrected", "stuck"))]
    assert slurm.reason_for(many) == "xpuctl: cordoned dev=1/gpu-1: ECC storm; +2 more"
    assert slurm.reason_for([device(0, anomalies=("stuck",))], frozenset({"stuck"})) == "xpuctl: stuck dev=0/gpu-0"
    long = slurm.reason_for([device(0, cordon="x" * 500 + "\n\x1b[2J")])
    assert long is not None and len(long) == slurm.REASON_MAX and long.endswith("...") and "\n" not in long


@pytest.mark.parametrize(
    ("state", "reason", "unfit", "want"),
    [
        ("idle", "", "xpuctl: failed dev=0/g", ("drain", "xpuctl: failed dev=0/g")),
        ("mixed", "", "xpuctl: failed dev=0/g", ("drain", "xpuctl: failed dev=0/g")),
        ("drained", "xpuctl: failed dev=0/g", "xpuctl: failed dev=0/g", None),  # already so
        ("drained", "xpuctl: thermal dev=1/g", "xpuctl: failed dev=0/g", ("drain", "xpuctl: failed dev=0/g")),
        ("drained", "admin: bios update", "xpuctl: failed dev=0/g", None),  # the admin's
        ("down*", "Not responding", "xpuctl: failed dev=0/g", None),  # Slurm's own
        ("drained", "NHC: check_fs_mount", None, None),
        ("drained", "xpuctl: failed dev=0/g", None, ("resume", "")),
        ("draining", "xpuctl: failed dev=0/g", None, ("resume", "")),
        ("drained*", "xpuctl: failed dev=0/g", None, ("resume", "")),
        ("idle", "", None, None),
    ],
)
def test_decide(state: str, reason: str, unfit: str | None, want: tuple[str, str] | None) -> None:
    assert slurm.decide(slurm.NodeState("n1", state, reason), unfit) == want
