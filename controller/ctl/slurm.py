"""`xpuctl slurm`: Slurm's view of a node follows xpuctl's: drain a node whose devices are unfit,
resume it when they are fit again.

* `health-check` judges the node it runs on, once: Slurm's HealthCheckProgram runs it (through
  `deploy/slurm/xpuctl-slurm-hook`, since Slurm passes no arguments and no PATH), and LBNL NHC
  through `check_xpuctl` (`--report-only`: say what is wrong and exit 1, NHC drains).
* `sync` judges every node the controller and Slurm both know, as events come (WatchEvents),
  without waiting for the health-check interval, and every `--reconcile-s` in full.
* `prolog` / `epilog` (Slurm's Prolog and Epilog) tell the controller which devices a job got on
  this node and when it ended there: the devices carry the job's id (`job_id` in ListDevices and on
  `/metrics`) and the job's energy is accounted (`xpuctl jobs`). With `--gate`, the prolog fails
  (exit 1) when a granted device is unfit, so that Slurm drains the node and requeues the job.
  Neither fails otherwise: a failing epilog would drain the node.

A node is unfit when one of its devices is failed, cordoned (the cordon's reason goes into the
drain's), or has an anomaly of `--drain-on` open (default: the critical detectors). The drain's
reason is `xpuctl: <what> dev=<index>/<uuid> ...`. A drain is xpuctl's when its reason starts with
`xpuctl:` (as NHC does with `NHC:`): only those are updated or resumed; a node drained or downed by
an admin or another tool is left as it is, whatever xpuctl thinks of it. When the controller cannot
be reached nothing changes (unless `--drain-when-unreachable`). health-check always exits 0 (Slurm
ignores its status: the drain is the message) and each outside call runs under a timeout, well
inside Slurm's 60 s limit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence

import msgspec

from xpuctl.client import AsyncClient, Client, ClientError, Refused, Tls
from xpuctl.controller.ctl import follow
from xpuctl.protos import names
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb

PREFIX = "xpuctl:"
# the detectors of severity critical (controller/core/detect; a test keeps the two equal)
CRITICAL = frozenset({"ecc_uncorrected", "error_event", "power_over_cap", "thermal", "thermal_rise"})
REASON_MAX = 200  # characters of a drain reason we write
# where Slurm's clients are when PATH does not say (HealthCheckProgram runs with no PATH at all)
SLURM_DIRS = ("/usr/bin", "/usr/local/bin", "/opt/slurm/bin", "/usr/sbin", "/usr/local/sbin")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def reason_for(devices: Iterable[cpb.Device], drain_on: frozenset[str] = CRITICAL) -> str | None:
    """The drain reason for a node with these devices, or None when they are all fit."""
    problems = [p.text for p in unfit(devices, drain_on)]
    if not problems:
        return None
    text = f"{PREFIX} {problems[0]}" + (f"; +{len(problems) - 1} more" if len(problems) > 1 else "")
    text = _CONTROL.sub(" ", text)
    return text if len(text) <= REASON_MAX else text[: REASON_MAX - 3] + "..."


class Problem(msgspec.Struct, frozen=True):
    """What makes one device unfit: `what` is failed, cordoned or the anomaly kinds."""

    what: str
    device: cpb.Device
    why: str

    @property
    def text(self) -> str:
        """`<what> dev=<index>/<uuid>` and why (a cordon's reason after a colon, else in brackets)."""
        where = f"dev={self.device.info.index}/{self.device.info.uuid}"
        if not self.why:
            return f"{self.what} {where}"
        return f"{self.what} {where}: {self.why}" if self.what == "cordoned" else f"{self.what} {where} ({self.why})"


def unfit(devices: Iterable[cpb.Device], drain_on: frozenset[str] = CRITICAL) -> list[Problem]:
    """The devices that are failed, cordoned or have an anomaly of `drain_on` open, by index
    (the policy `xpuctl slurm` and `xpuctl k8s` share).
    """
    out = []
    for d in sorted(devices, key=lambda d: (d.info.index, d.info.uuid)):
        if d.health == names.HEALTH_FAILED:
            out.append(Problem("failed", d, d.health_reason))
        elif d.cordoned:
            out.append(Problem("cordoned", d, d.cordon_reason))
        else:
            kinds = [k for k in d.anomalies if k in drain_on]
            if kinds:
                out.append(Problem(",".join(kinds), d, ""))
    return out


class NodeState(msgspec.Struct, frozen=True):
    """A Slurm node as sinfo shows it: its state in long form (`idle`, `drained`, `draining`,
    `mixed`, `down*`, ...) and its reason ("" for none).
    """

    name: str
    state: str
    reason: str

    @property
    def drained(self) -> bool:
        """Drained or draining."""
        return self.state.startswith("drain")

    @property
    def ours(self) -> bool:
        """Its reason is one xpuctl wrote."""
        return self.reason.startswith(PREFIX)


def decide(node: NodeState, reason: str | None) -> tuple[str, str] | None:
    """What to do: ("drain", reason), ("resume", ""), or None (nothing, or not ours to touch)."""
    if reason is not None:
        if node.reason and not node.ours:  # an admin's or another tool's drain or down: theirs
            return None
        if node.drained and node.reason == reason:
            return None
        return ("drain", reason)
    if node.drained and node.ours:
        return ("resume", "")
    return None


class SlurmError(RuntimeError):
    """A Slurm client that failed, timed out or is missing; the message says which and why."""


class Slurm:
    """scontrol and sinfo, by absolute path, each call under a timeout."""

    def __init__(self, scontrol: str | None, sinfo: str | None, timeout_s: float) -> None:
        """Find the programs (flags first, then PATH, then the usual places).

        Raises:
            SlurmError: one cannot be found.
        """
        self.scontrol = _find("scontrol", scontrol)
        self.sinfo = _find("sinfo", sinfo)
        self.timeout_s = timeout_s

    def _run(self, argv: Sequence[str]) -> str:
        try:
            done = subprocess.run(  # noqa: S603 - absolute paths, arguments as a list, no shell
                list(argv), capture_output=True, text=True, timeout=self.timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            msg = f"{argv[0]} {argv[1]} did not answer within {self.timeout_s:g} s"
            raise SlurmError(msg) from None
        except OSError as exc:
            msg = f"{argv[0]}: {exc.strerror}"
            raise SlurmError(msg) from None
        if done.returncode != 0:
            msg = f"{' '.join(argv[:3])} ... exited {done.returncode}: {done.stderr.strip() or done.stdout.strip()}"
            raise SlurmError(msg)
        return done.stdout

    def nodes(self, name: str | None = None) -> dict[str, NodeState]:
        """Every node (or one), by name."""
        argv = [self.sinfo, "-h", "-N", "-o", "%N|%T|%500E"]
        if name:
            argv[3:3] = ["-n", name]
        out: dict[str, NodeState] = {}
        for line in self._run(argv).splitlines():  # a node in two partitions shows twice
            parts = line.split("|", 2)
            if len(parts) == 3:
                reason = parts[2].strip()
                out.setdefault(parts[0], NodeState(parts[0], parts[1].strip(), "" if reason == "none" else reason))
        return out

    def drain(self, name: str, reason: str) -> None:
        """Drain `name` with `reason`."""
        self._run([self.scontrol, "update", f"nodename={name}", "state=drain", f"reason={reason}"])

    def resume(self, name: str) -> None:
        """Resume `name`."""
        self._run([self.scontrol, "update", f"nodename={name}", "state=resume"])

    def apply(self, node: NodeState, reason: str | None) -> str:
        """Do what `decide` says for `node`; one line saying what happened."""
        act = decide(node, reason)
        if act is None:
            if reason is not None and node.reason and not node.ours:
                return f"{node.name}: unfit ({reason}), but left as it is: {node.state} by someone else ({node.reason})"
            return f"{node.name}: {node.state}, {'unfit: ' + reason if reason else 'fit'}; nothing to do"
        if act[0] == "drain":
            self.drain(node.name, act[1])
            return f"{node.name}: drained: {act[1]}"
        self.resume(node.name)
        return f"{node.name}: resumed (was {node.state}: {node.reason})"


def _find(program: str, given: str | None) -> str:
    if given:
        return given
    found = shutil.which(program) or shutil.which(program, path=os.pathsep.join(SLURM_DIRS))
    if found is None:
        msg = f"{program} not found on PATH or in {', '.join(SLURM_DIRS)}; pass --{program} PATH"
        raise SlurmError(msg)
    return found


def add_parser(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    """`xpuctl slurm ...`; returns its verbs (for the global flags)."""
    sl = sub.add_parser("slurm", help="drain and resume Slurm nodes by their devices' health")
    verbs: argparse._SubParsersAction = sl.add_subparsers(dest="slurm_command", required=True)  # type: ignore[type-arg]
    hc = verbs.add_parser("health-check", help="judge this node once (Slurm's HealthCheckProgram, NHC)")
    hc.add_argument("--node", default="", help="the Slurm node (default $SLURMD_NODENAME, else the short host name)")
    hc.add_argument("--xpu-node", default="", help="its node id in xpuctl, if not the same")
    hc.add_argument("--report-only", action="store_true", help="change nothing: print what is wrong, exit 1 (NHC)")
    sy = verbs.add_parser("sync", help="judge every node as events come, until stopped")
    sy.add_argument("--reconcile-s", type=float, default=60.0, help="every node again this often")
    sy.add_argument(
        "--resume-after-s", type=float, default=30.0, help="a node is resumed once fit for this long (no flapping)"
    )
    pro = verbs.add_parser("prolog", help="a job starts here (Slurm's Prolog): its devices and energy")
    pro.add_argument("--gate", action="store_true", help="exit 1 when a granted device is unfit (Slurm requeues)")
    epi = verbs.add_parser("epilog", help="a job ends here (Slurm's Epilog)")
    for p in (pro, epi):
        p.add_argument("--node", default="", help="the Slurm node (default $SLURMD_NODENAME, else the short host name)")
        p.add_argument("--xpu-node", default="", help="its node id in xpuctl, if not the same")
        p.add_argument("--timeout-s", type=float, default=5.0, help="for the call to the controller")
    hc.add_argument(
        "--drain-when-unreachable", action="store_true", help="drain this node when the controller cannot be reached"
    )
    for p in (hc, sy):
        p.add_argument(
            "--drain-on",
            default=",".join(sorted(CRITICAL)),
            help="anomaly kinds that drain (comma-separated; failed and cordoned devices always do)",
        )
        p.add_argument("--scontrol", default=None, metavar="PATH", help="default: found on PATH or in /usr/bin ...")
        p.add_argument("--sinfo", default=None, metavar="PATH")
        p.add_argument("--timeout-s", type=float, default=5.0, help="for each call to the controller and to Slurm")
    return verbs


def _say(text: str, *, to_stderr: bool = False) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(f"{stamp} xpuctl slurm: {text}", file=sys.stderr if to_stderr else sys.stdout, flush=True)


def _drain_on(args: argparse.Namespace) -> frozenset[str]:
    return frozenset(k.strip() for k in args.drain_on.split(",") if k.strip())


# Where a job's devices are named, first found first (values: indices as the node numbers them).
# SLURM_JOB_GPUS is what Slurm's Prolog gets (verified on 22.05, notes/scheduler-integration.md
# 1.1); CUDA_, ROCR_ and GPU_DEVICE_ORDINAL are what Slurm sets for the job (verified there); the
# others are the vendors' own visible-devices variables, from their documentation (not verified
# here): Huawei ASCEND_RT_/ASCEND_, Cambricon MLU_, Moore Threads MUSA_, Enflame TOPS_, Kunlunxin XPU_.
DEVICE_VARIABLES = (
    "SLURM_JOB_GPUS",
    "SLURM_STEP_GPUS",
    "CUDA_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "GPU_DEVICE_ORDINAL",
    "ASCEND_RT_VISIBLE_DEVICES",
    "ASCEND_VISIBLE_DEVICES",
    "MLU_VISIBLE_DEVICES",
    "MUSA_VISIBLE_DEVICES",
    "TOPS_VISIBLE_DEVICES",
    "XPU_VISIBLE_DEVICES",
)


def granted(env: dict[str, str]) -> tuple[str, list[int]]:
    """(the variable, the device indices) a job got, from its environment; ("", []) for none.

    Raises:
        ValueError: the variable holds something else than indices (UUIDs, for one).
    """
    for name in DEVICE_VARIABLES:
        text = env.get(name, "").strip()
        if not text:
            continue
        try:
            return name, sorted({int(part) for part in text.split(",") if part.strip()})
        except ValueError:
            msg = f"{name}={text!r}: expected device indices such as 0,1 (xpuctl maps indices, not ids)"
            raise ValueError(msg) from None
    return "", []


def _job_node(args: argparse.Namespace) -> tuple[str, str]:
    name = args.node or os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]
    return name, args.xpu_node or name


def _prolog(args: argparse.Namespace, address: str, tls: Tls | None) -> int:
    job_id = os.environ.get("SLURM_JOB_ID", "")
    name, xpu_node = _job_node(args)
    try:
        variable, indices = granted(dict(os.environ))
    except ValueError as exc:
        _say(f"prolog of job {job_id} on {name}: {exc}; not accounted", to_stderr=True)
        return 0
    if not job_id or not indices:
        return 0  # no job, or a job without accelerators: nothing to account
    try:
        with Client(address, tls=tls, timeout_s=args.timeout_s) as xpu:
            answer = xpu.start_job(job_id, xpu_node, indices, user=os.environ.get("SLURM_JOB_USER", ""))
    except ClientError as exc:
        _say(
            f"prolog of job {job_id} on {name} ({variable}={indices}): controller {exc}; not accounted", to_stderr=True
        )
        return 0  # a controller that is down must not stop jobs
    if answer.unfit and args.gate:
        print(f"xpuctl: job {job_id}: unfit device(s) on {name}: {'; '.join(answer.unfit)}", file=sys.stderr)
        return 1
    return 0


def _epilog(args: argparse.Namespace, address: str, tls: Tls | None) -> int:
    job_id = os.environ.get("SLURM_JOB_ID", "")
    name, xpu_node = _job_node(args)
    if not job_id:
        return 0
    try:
        with Client(address, tls=tls, timeout_s=args.timeout_s) as xpu:
            xpu.end_job(job_id, xpu_node)
    except Refused as exc:
        if exc.code != "NOT_FOUND":  # NOT_FOUND: a job without accelerators, or no prolog: nothing to end
            _say(f"epilog of job {job_id} on {name}: controller {exc}", to_stderr=True)
    except ClientError as exc:
        _say(f"epilog of job {job_id} on {name}: controller {exc}; its energy counts on", to_stderr=True)
    return 0  # always: a failing epilog drains the node


def run(args: argparse.Namespace, address: str, tls: Tls | None) -> int:
    """`xpuctl slurm <verb>`."""
    if args.slurm_command == "prolog":
        return _prolog(args, address, tls)
    if args.slurm_command == "epilog":
        return _epilog(args, address, tls)
    if args.slurm_command == "sync":
        try:
            return asyncio.run(_sync(args, address, tls))
        except KeyboardInterrupt:
            return 0
    return _health_check(args, address, tls)


def _health_check(args: argparse.Namespace, address: str, tls: Tls | None) -> int:
    name = args.node or os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]
    try:
        with Client(address, tls=tls, timeout_s=args.timeout_s) as xpu:
            devices = xpu.devices(node_id=args.xpu_node or name)
    except ClientError as exc:
        _say(f"{name}: controller {exc}", to_stderr=args.report_only)
        if not args.drain_when_unreachable:
            _say(f"{name}: left as it is (--drain-when-unreachable drains)", to_stderr=args.report_only)
            return 0
        reason: str | None = f"{PREFIX} controller unreachable ({exc.code})"
    else:
        if not devices:
            what = f"the controller knows no device of node {args.xpu_node or name!r}; left as it is"
            _say(f"{name}: {what}", to_stderr=args.report_only)
            return 0
        reason = reason_for(devices, _drain_on(args))
    if args.report_only:
        if reason is None:
            return 0
        print(reason.removeprefix(PREFIX).strip(), flush=True)
        return 1
    try:
        slurm = Slurm(args.scontrol, args.sinfo, args.timeout_s)
        node = slurm.nodes(name).get(name)
        if node is None:
            _say(f"{name}: Slurm does not know this node (--node names it)")
            return 0
        _say(slurm.apply(node, reason))
    except SlurmError as exc:
        _say(f"{name}: {exc}")
    return 0  # always: Slurm ignores it, and a failing check must not stop slurmd


async def _sync(args: argparse.Namespace, address: str, tls: Tls | None) -> int:
    try:
        slurm = Slurm(args.scontrol, args.sinfo, args.timeout_s)
    except SlurmError as exc:
        print(f"xpuctl: slurm sync: {exc}", file=sys.stderr)
        return 2
    drain_on = _drain_on(args)
    fit_since: dict[str, float] = {}  # node -> when it was first seen fit while drained by us
    async with AsyncClient(address, tls=tls, timeout_s=args.timeout_s) as xpu:

        async def judge(which: set[str] | None) -> float | None:
            await _round(xpu, slurm, which, drain_on, fit_since, args.resume_after_s)
            return min((t + args.resume_after_s for t in fit_since.values()), default=None)  # a hold ending

        try:
            await follow.run(xpu, judge, reconcile_s=args.reconcile_s, say=_say)
        except ClientError as exc:
            print(f"xpuctl: slurm sync: {exc}", file=sys.stderr)
            return 4
    return 0


async def _round(
    xpu: AsyncClient,
    slurm: Slurm,
    which: set[str] | None,
    drain_on: frozenset[str],
    fit_since: dict[str, float],
    resume_after_s: float,
) -> None:
    """Judge `which` nodes (None: every node) that both the controller and Slurm know, and act."""
    try:
        by_node = await follow.devices_by_node(xpu, which)
        nodes = await asyncio.to_thread(slurm.nodes)
    except (ClientError, SlurmError) as exc:
        _say(f"{exc}; nothing changed")
        return
    now = time.monotonic()
    for name in sorted(set(by_node) & set(nodes)):  # a node without devices now is not ours to judge
        node = nodes[name]
        reason = reason_for(by_node[name], drain_on)
        held = reason is None and node.drained and node.ours
        if held and now - fit_since.setdefault(name, now) < resume_after_s:
            continue  # fit, but not for long enough yet
        fit_since.pop(name, None)
        try:
            line = await asyncio.to_thread(slurm.apply, node, reason)
        except SlurmError as exc:
            line = f"{name}: {exc}"
        if not line.endswith("nothing to do"):
            _say(line)
