"""`xpuctl slurm` against a real Slurm (tests/slurmlab.py: munged, slurmctld, two slurmd on
loopback) and a real controller fed by simulated agents: an injected fault drains the right node
with the right reason within one health-check interval, recovery resumes it, an admin's drain is
left alone, a cordon drains through `sync`, and NHC's check_xpuctl says what is wrong.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import pytest

from tests import slurmlab
from tests.helpers import ROOT, Processes, RunningService, free_port, http_get
from xpuctl.client import AsyncClient
from xpuctl.controller import config, service
from xpuctl.controller.core import registry

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(slurmlab.missing()), reason=slurmlab.missing())]

INTERVAL_S = 3  # HealthCheckInterval
XPUCTL = str(pathlib.Path(sys.executable).with_name("xpuctl"))
ADMIN = "admin: bios update"


def controller() -> service.Service:
    cfg = config.Config(detect=config.Detect(error_clear_after_s=2.0))
    return service.Service(
        cfg, listen=f"127.0.0.1:{free_port()}", liveness=registry.Liveness(stale_after_s=3.0, offline_after_s=10.0)
    )


def hooks(target: str, slurm_conf: pathlib.Path, *, prolog_args: str = "") -> dict[str, pathlib.Path]:
    """The shipped xpuctl-slurm-hook installed under its three names (as deploy/README.md's `ln -s`
    do), reading its settings from a defaults file of this test, next to slurm.conf.
    """
    where = slurm_conf.parent / "hooks"
    where.mkdir(exist_ok=True)
    defaults = where / "xpuctl.default"
    defaults.write_text(
        f"XPUCTL={XPUCTL}\nXPUCTL_CONTROLLER={target}\nSLURM_CONF={slurm_conf}\n"
        f'XPUCTL_HEALTH_CHECK_ARGS="--timeout-s 3"\nXPUCTL_PROLOG_ARGS="{prolog_args}"\n'
    )
    shipped = (ROOT / "deploy" / "slurm" / "xpuctl-slurm-hook").read_text()
    assert "XPUCTL_DEFAULTS=/etc/default/xpuctl\n" in shipped
    program = where / "xpuctl-slurm-hook"
    program.write_text(shipped.replace("XPUCTL_DEFAULTS=/etc/default/xpuctl\n", f"XPUCTL_DEFAULTS={defaults}\n"))
    program.chmod(0o755)
    out = {}
    for name in ("xpuctl-health-check", "xpuctl-prolog", "xpuctl-epilog"):
        out[name] = where / name
        out[name].symlink_to(program.name)
    return out


async def test_a_fault_drains_its_node_within_one_interval_and_recovery_resumes_it(processes: Processes) -> None:
    ctl = await RunningService(controller()).start()
    slurm = slurmlab.Slurm(interval_s=INTERVAL_S)
    slurm.health_check = hooks(ctl.target, slurm.conf)["xpuctl-health-check"]
    try:
        processes.agent(ctl.target, "xn1", "nvidia", "--sim-devices", "2")
        # device 1 of xn2 falls off the bus 12 s after its agent starts, for 8 s
        processes.agent(
            ctl.target, "xn2", "nvidia", "--sim-devices", "2", "--sim-fault", "fall_off_bus:dev=1:at=12:for=8"
        )
        async with AsyncClient(ctl.target, timeout_s=5.0) as xpu:
            await wait_until_async(lambda: devices_total(xpu), 4, what="both agents' devices")
            await asyncio.to_thread(slurm.start)
            await asyncio.to_thread(slurm.run, "scontrol", "update", "nodename=xn1", "state=drain", f"reason={ADMIN}")

            async def failed() -> bool:
                return any(d.health == 3 for d in await xpu.devices(node_id="xn2"))

            await wait_for(failed, timeout_s=30, what="xn2's device 1 to fail")
            seen_s = time.monotonic()
            await wait_for(
                lambda: asyncio.to_thread(lambda: slurm.states().get("xn2") == "drained"),
                timeout_s=INTERVAL_S + 5,
                what="xn2 drained within one health-check interval",
            )
            time.monotonic() - seen_s
            reason = await asyncio.to_thread(slurm.reason, "xn2")
            assert reason.startswith("xpuctl: failed dev=1/nvidia-xn2-1"), reason
            assert await asyncio.to_thread(slurm.reason, "xn1") == ADMIN  # unfit or not, xn1 is the admin's

            async def fit() -> bool:
                return all(d.health == 1 and not d.anomalies for d in await xpu.devices(node_id="xn2"))

            await wait_for(fit, timeout_s=30, what="xn2's devices fit again")
            fit_s = time.monotonic()
            await wait_for(
                lambda: asyncio.to_thread(lambda: slurm.states().get("xn2") == "idle"),
                timeout_s=INTERVAL_S + 5,
                what="xn2 resumed within one health-check interval",
            )
            time.monotonic() - fit_s
            states = await asyncio.to_thread(slurm.states)
            assert states["xn1"] == "drained" and await asyncio.to_thread(slurm.reason, "xn1") == ADMIN
        # the controller gone: the check leaves the node as it is, unless told to drain
        await ctl.stop()
        env = {"SLURMD_NODENAME": "xn2"}  # all Slurm gives it
        done = await asyncio.to_thread(run, [str(slurm.health_check)], env)
        assert done.returncode == 0 and "left as it is" in done.stdout, done.stdout + done.stderr
        assert (await asyncio.to_thread(slurm.states))["xn2"] == "idle"
        argv = [XPUCTL, "--controller", ctl.target, "slurm", "health-check", "--node", "xn2", "--timeout-s", "2"]
        done = await asyncio.to_thread(run, [*argv, "--drain-when-unreachable"], {"SLURM_CONF": str(slurm.conf)})
        assert done.returncode == 0
        assert (await asyncio.to_thread(slurm.reason, "xn2")).startswith("xpuctl: controller unreachable")
    except BaseException:
        sys.stderr.write(slurm.logs())
        raise
    finally:
        await asyncio.to_thread(slurm.stop)
        await ctl.stop()


async def test_sync_drains_on_a_cordon_and_leaves_an_admins_drain(processes: Processes) -> None:
    ctl = await RunningService(controller()).start()
    slurm = slurmlab.Slurm()
    try:
        processes.agent(ctl.target, "xn1", "nvidia", "--sim-devices", "2")
        processes.agent(ctl.target, "xn2", "nvidia", "--sim-devices", "2")
        async with AsyncClient(ctl.target, timeout_s=5.0) as xpu:
            await wait_until_async(lambda: devices_total(xpu), 4, what="both agents' devices")
            await asyncio.to_thread(slurm.start)
            await asyncio.to_thread(slurm.run, "scontrol", "update", "nodename=xn2", "state=drain", f"reason={ADMIN}")
            processes.start(
                "xpuctl.controller.ctl",
                "--controller",
                ctl.target,
                "slurm",
                "sync",
                "--reconcile-s",
                "600",  # so that only events can explain a quick drain
                "--resume-after-s",
                "0",
                env={"SLURM_CONF": str(slurm.conf)},
            )
            assert await xpu.cordon("ECC storm", device_uuid="nvidia-xn1-0") == 1
            time.monotonic()
            await wait_for(
                lambda: asyncio.to_thread(lambda: slurm.states().get("xn1") == "drained"),
                timeout_s=10,
                what="sync to drain xn1 on the cordon",
            )
            assert await asyncio.to_thread(slurm.reason, "xn1") == "xpuctl: cordoned dev=0/nvidia-xn1-0: ECC storm"

            # NHC's module says the same (NHC drains with it)
            nhc = await asyncio.to_thread(
                run,
                [
                    "bash",
                    "-c",
                    (
                        f'die() {{ echo "die $1: $2"; }}; source {ROOT}/deploy/slurm/check_xpuctl.nhc; '
                        "check_xpuctl; echo rc=$?"
                    ),
                ],
                {
                    "XPUCTL": XPUCTL,
                    "XPUCTL_CONTROLLER": ctl.target,
                    "HOSTNAME_S": "xn1",
                    "XPUCTL_DEFAULTS": "/nonexistent",
                },
            )
            assert nhc.stdout == "die 1: check_xpuctl: cordoned dev=0/nvidia-xn1-0: ECC storm\nrc=1\n", nhc.stdout

            assert await xpu.cordon("fan swap", node_id="xn2") == 2  # the admin's drain stays
            assert await xpu.uncordon(device_uuid="nvidia-xn1-0") == 1
            await wait_for(
                lambda: asyncio.to_thread(lambda: slurm.states().get("xn1") == "idle"),
                timeout_s=10,
                what="sync to resume xn1 on the uncordon",
            )
            assert await asyncio.to_thread(slurm.reason, "xn2") == ADMIN
            assert (await asyncio.to_thread(slurm.states))["xn2"] == "drained"
    except BaseException:
        sys.stderr.write(slurm.logs())
        raise
    finally:
        await asyncio.to_thread(slurm.stop)
        await ctl.stop()


async def test_jobs_are_accounted_and_a_gate_requeues(processes: Processes) -> None:
    svc = controller()
    svc.metrics_listen = "127.0.0.1:0"
    ctl = await RunningService(svc).start()
    slurm = slurmlab.Slurm()
    installed = hooks(ctl.target, slurm.conf, prolog_args="--gate")
    slurm.prolog, slurm.epilog = str(installed["xpuctl-prolog"]), str(installed["xpuctl-epilog"])
    try:
        processes.agent(ctl.target, "xn1", "nvidia", "--sim-devices", "2", "--sim-workload", "training")
        processes.agent(ctl.target, "xn2", "nvidia", "--sim-devices", "2")
        async with AsyncClient(ctl.target, timeout_s=5.0) as xpu:
            await wait_until_async(lambda: devices_total(xpu), 4, what="both agents' devices")
            await asyncio.to_thread(slurm.start)
            # as a user would: srun blocks until the job is done (in a thread, with the checks alongside)
            job = ("srun", "-w", "xn1", "--gres=gpu:1", "bash", "-c", "echo $SLURM_JOB_ID; sleep 6")
            srun = asyncio.create_task(asyncio.to_thread(slurm.run, *job, timeout_s=60))

            async def labelled() -> bool:  # while it runs, its device carries its job's id
                return any(d.job_id for d in await xpu.devices(node_id="xn1"))

            await wait_for(labelled, timeout_s=20, what="the job's device labelled")
            devices = {d.info.uuid: d.job_id for d in await xpu.devices(node_id="xn1")}
            job_id = devices["nvidia-xn1-0"]
            assert devices == {"nvidia-xn1-0": job_id, "nvidia-xn1-1": ""}  # SLURM_JOB_GPUS=0
            page = (await asyncio.to_thread(http_get, f"http://127.0.0.1:{svc.metrics_port}/metrics") or b"").decode()
            power = [line for line in page.splitlines() if line.startswith("hw_power_watts{")]
            assert len(power) == 4 and sum(f'job_id="{job_id}"' in line for line in power) == 1, power
            assert any('hw_id="nvidia-xn1-0"' in line and f'job_id="{job_id}"' in line for line in power)
            assert (await srun).strip() == job_id

            async def ended() -> bool:
                return any(j.job_id == job_id and j.ended_ns for j in await xpu.jobs())

            await wait_for(ended, timeout_s=30, what=f"job {job_id} ended")
            (j,) = await xpu.jobs(job_id=job_id)
            assert [(d.uuid, d.index, d.method) for d in j.devices] == [("nvidia-xn1-0", 0, "counter")]
            assert j.method == "counter" and 5 <= j.duration_s <= 20
            # a training H100-class simulated device draws hundreds of watts
            assert 100 < j.mean_power_w < 1000 and j.energy_j == pytest.approx(j.mean_power_w * j.duration_s)
            assert all(not d.job_id for d in await xpu.devices(node_id="xn1"))
            listed = await asyncio.to_thread(run, [XPUCTL, "--controller", ctl.target, "jobs", "--json"], {})
            (shown,) = json.loads(listed.stdout)
            assert shown["job_id"] == job_id and shown["state"] == "ended"
            assert shown["energy_kwh"] == pytest.approx(j.energy_j / 3.6e6)

            # the gate: a job granted a cordoned device fails its prolog; Slurm drains and requeues
            await xpu.cordon("fan swap", device_uuid="nvidia-xn2-0")
            await asyncio.to_thread(slurm.run, "sbatch", "-w", "xn2", "--gres=gpu:1", "--wrap", "true")
            await wait_for(
                lambda: asyncio.to_thread(lambda: slurm.states().get("xn2", "").startswith("drain")),
                timeout_s=20,
                what="Slurm to drain xn2 on the failed prolog",
            )
            assert "Prolog error" in await asyncio.to_thread(slurm.reason, "xn2")
    except BaseException:
        sys.stderr.write(slurm.logs())
        raise
    finally:
        await asyncio.to_thread(slurm.stop)
        await ctl.stop()


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A program with only `env` (and a PATH where the caller needs one), under a timeout."""
    base = {"PATH": os.environ["PATH"]} if argv[0] == "bash" or argv[0] == XPUCTL else {}
    return subprocess.run(argv, env={**base, **env}, capture_output=True, text=True, timeout=30, check=False)


async def devices_total(xpu: AsyncClient) -> int:
    return len(await xpu.devices())


async def wait_until_async(
    count: Callable[[], Awaitable[int]], want: int, *, what: str, timeout_s: float = 30.0
) -> None:
    async def reached() -> bool:
        return await count() == want

    await wait_for(reached, timeout_s=timeout_s, what=what)


async def wait_for(check: Callable[[], Awaitable[bool]], *, timeout_s: float, what: str) -> None:
    """Poll an async condition until it holds; fail naming `what` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g}s waiting for {what}")
        await asyncio.sleep(0.1)
