"""`xpuctl k8s sync` through the official Kubernetes client against a stand-in API server
(tests/kubestub.py): the exact requests for the XpuHealthy condition, HAMi's cordon annotation and
the opt-in taint, nothing written when nothing changed, other taints kept, and an Event for an
anomaly raised; and every manifest in deploy/k8s valid against the API's schemas, offline.
"""

from __future__ import annotations

import asyncio
import pathlib
import subprocess
import sys

import pytest
import yaml

from tests import kubestub
from tests.helpers import ROOT, Processes, RunningService, make_service, wait_until
from xpuctl.client import AsyncClient

pytestmark = pytest.mark.slow

XPUCTL = str(pathlib.Path(sys.executable).with_name("xpuctl"))
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def sync(target: str, kubeconfig: pathlib.Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [XPUCTL, "--controller", target, "k8s", "sync", "--kubeconfig", str(kubeconfig), *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def writes(stub: kubestub.KubeStub) -> list[kubestub.Request]:
    return [r for r in stub.taken() if r.method != "GET"]


async def test_conditions_annotations_taints_and_events(tmp_path: pathlib.Path, processes: Processes) -> None:
    svc = make_service(None)
    ctl = await RunningService(svc).start()
    stub = kubestub.KubeStub(
        [
            kubestub.node("n1", taints=[GPU_TAINT], annotations={"team": "vision"}),
            kubestub.node("n2"),
            kubestub.node("n9"),  # a node without an agent: left alone
        ]
    ).start()
    config = stub.kubeconfig(tmp_path)
    try:
        processes.agent(ctl.target, "n1", "nvidia", "--sim-devices", "2")
        # n2: device 1 fails at once; device 0 heats up fast after 25 s (an Event)
        fault = "fall_off_bus:dev=1:at=0"
        processes.agent(
            ctl.target, "n2", "nvidia", "--sim-devices", "2", "--sim-workload", "training", "--sim-fault", fault
        )
        processes.agent(
            ctl.target,
            "n3",
            "nvidia",
            "--sim-devices",
            "1",
            "--sim-workload",
            "training",
            "--sim-fault",
            "thermal_runaway:dev=0:at=25",
        )
        st = svc.state
        await wait_until(lambda: len(st.registry) == 5, timeout_s=30, what="5 devices")
        async with AsyncClient(ctl.target) as xpu:
            assert await xpu.cordon("PSU swap", node_id="n1") == 2

            async def failed() -> bool:
                return any(d.health == 3 for d in await xpu.devices(node_id="n2"))

            for _ in range(300):
                if await failed():
                    break
                await asyncio.sleep(0.1)

        done = await asyncio.to_thread(sync, ctl.target, config, "--once", "--taint")
        assert done.returncode == 0, done.stdout + done.stderr
        got = writes(stub)
        by = {(r.path, next(iter(r.body))): r for r in got}
        assert len(got) == 4, got  # n1: condition, annotation, taint; n2: condition
        cond = by[("/api/v1/nodes/n1/status", "status")]
        assert cond.content_type.startswith("application/strategic-merge-patch+json")
        (c,) = cond.body["status"]["conditions"]
        assert (c["type"], c["status"], c["reason"]) == ("XpuHealthy", "False", "DeviceCordoned")
        assert c["message"] == "cordoned dev=0/nvidia-n1-0: PSU swap; cordoned dev=1/nvidia-n1-1: PSU swap"
        assert c["lastTransitionTime"].endswith("Z") and c["lastHeartbeatTime"].endswith("Z")
        note = by[("/api/v1/nodes/n1", "metadata")].body
        assert note == {"metadata": {"annotations": {"hami.io/device-cordon": "nvidia-n1-0,nvidia-n1-1"}}}
        taints = by[("/api/v1/nodes/n1", "spec")].body
        assert taints == {
            "spec": {"taints": [GPU_TAINT, {"key": "xpuctl.io/unhealthy", "value": "cordoned", "effect": "NoSchedule"}]}
        }
        (c2,) = by[("/api/v1/nodes/n2/status", "status")].body["status"]["conditions"]
        assert (c2["status"], c2["reason"]) == ("False", "DeviceFailed")
        assert c2["message"].startswith("failed dev=1/nvidia-n2-1 (fell off the bus")
        assert stub.node("n1")["metadata"]["annotations"]["team"] == "vision"

        # again: nothing changed, nothing written
        done = await asyncio.to_thread(sync, ctl.target, config, "--once", "--taint")
        assert done.returncode == 0 and writes(stub) == [], done.stdout

        # the cordon lifted: healthy, annotation and our taint gone, the GPU taint kept
        async with AsyncClient(ctl.target) as xpu:
            assert await xpu.uncordon(node_id="n1") == 2
        done = await asyncio.to_thread(sync, ctl.target, config, "--once", "--taint")
        n1 = stub.node("n1")
        healthy = next(c for c in n1["status"]["conditions"] if c["type"] == "XpuHealthy")
        assert (healthy["status"], healthy["reason"], healthy["message"]) == (
            "True",
            "AllDevicesHealthy",
            "2 device(s) healthy",
        )
        assert "hami.io/device-cordon" not in n1["metadata"]["annotations"] and n1["spec"]["taints"] == [GPU_TAINT]
        assert "n9" not in {r.path.split("/")[4] for r in writes(stub) if r.path.count("/") >= 4}

        # following: an Event for the anomaly raised on n3
        processes.start("xpuctl.controller.ctl", "--controller", ctl.target, "k8s", "sync", "--kubeconfig", str(config))
        await wait_until(
            lambda: any(e["involvedObject"]["name"] == "n3" for e in stub.events), timeout_s=60, what="an Event for n3"
        )
        e = next(e for e in stub.events if e["involvedObject"]["name"] == "n3")
        assert (
            e["involvedObject"]["kind"] == "Node" and e["type"] == "Warning" and e["source"] == {"component": "xpuctl"}
        )
        assert e["reason"] in ("XpuThermal", "XpuThermalRise") and e["message"].startswith("nvidia-n3-0: ")
        assert e["metadata"]["namespace"] == "default" and e["metadata"]["name"].startswith("n3.xpuctl.")
    finally:
        stub.stop()
        await ctl.stop()


def manifests() -> list[pathlib.Path]:
    return sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))


def test_every_manifest_is_valid_against_the_api_schemas() -> None:
    assert manifests()
    kinds = set()
    for path in manifests():
        for doc in yaml.safe_load_all(path.read_text()):
            kinds.add(doc["kind"])
        done = subprocess.run(
            [str(pathlib.Path(sys.executable).with_name("kubernetes-validate")), "--strict", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"{path.name}: {done.stdout}{done.stderr}"
    assert {"Deployment", "DaemonSet", "ConfigMap", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"} <= kinds


def test_the_controller_never_runs_two_owners() -> None:
    docs = [d for p in manifests() for d in yaml.safe_load_all(p.read_text())]
    ctl = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "xpu-controller")
    assert ctl["spec"]["replicas"] == 1 and ctl["spec"]["strategy"] == {"type": "Recreate"}
    # every ConfigMap a workload mounts is shipped
    shipped = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    for d in docs:
        if d["kind"] in ("Deployment", "DaemonSet"):
            for v in d["spec"]["template"]["spec"].get("volumes", []):
                if "configMap" in v:
                    assert v["configMap"]["name"] in shipped, f"{d['metadata']['name']}: {v['configMap']['name']}"
