"""A real Slurm on one machine for tests: munged with its own key and socket, slurmctld and two
slurmd (xn1, xn2) with two fake GPUs each, all on free ports of 127.0.0.1, state in a temporary
directory. Debian's slurm-wlm 22.05 and munge (scripts/test installs them); needs root (slurmd).
The recipe is ../shared/notes/scheduler-integration.md, appendix A.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable

from xpuctl.common.ports import free_port

NODES = ("xn1", "xn2")
CALL_TIMEOUT_S = 10.0


def missing() -> str:
    """Why Slurm cannot run here ("" when it can)."""
    if os.geteuid() != 0:
        return "slurmd and munged need root"
    for program in ("slurmctld", "slurmd", "munged", "scontrol", "sinfo", "srun"):
        if shutil.which(program) is None and not pathlib.Path(f"/usr/sbin/{program}").exists():
            return f"{program} is not installed (scripts/test installs slurm-wlm and munge)"
    return ""


class Slurm:
    """One slurmctld and two slurmd, started by `start` and stopped by `stop`."""

    def __init__(
        self, *, health_check: pathlib.Path | None = None, interval_s: int = 3, prolog: str = "", epilog: str = ""
    ) -> None:
        """A fresh folder for the configuration, state and logs; `stop` removes it. Not pytest's
        tmp_path: munged runs as user munge, which must reach its socket's folder (pytest's are 0700).
        """
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="xpulab-slurm-"))
        self.root.chmod(0o711)
        self.conf = self.root / "slurm.conf"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.health_check, self.interval_s, self.prolog, self.epilog = health_check, interval_s, prolog, epilog
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write(self) -> None:
        r = self.root
        for d in ("state", "munge", *(f"spool-{n}" for n in NODES)):
            (r / d).mkdir(parents=True, exist_ok=True)
        host = socket.gethostname().split(".")[0]
        ctld, ports = free_port(), [free_port() for _ in NODES]
        extra = ""
        if self.health_check is not None:
            extra += f"HealthCheckProgram={self.health_check}\nHealthCheckInterval={self.interval_s}\n"
        if self.prolog:
            extra += f"Prolog={self.prolog}\n"
        if self.epilog:
            extra += f"Epilog={self.epilog}\n"
        lines = [
            "ClusterName=xpulab",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={ctld}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            f"AuthInfo=socket={r}/munge/munge.sock",
            "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool-%n",
            f"SlurmctldPidFile={r}/slurmctld.pid",
            f"SlurmdPidFile={r}/slurmd-%n.pid",
            f"SlurmctldLogFile={r}/slurmctld.log",
            f"SlurmdLogFile={r}/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres",
            "MpiDefault=none",
            "ReturnToService=2",
            "GresTypes=gpu",
            extra.rstrip("\n"),
            *(
                f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={p} CPUs=1 RealMemory=500 "
                "Gres=gpu:fake:2 Features=xpu"
                for n, p in zip(NODES, ports, strict=True)
            ),
            f"PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(line for line in lines if line) + "\n")
        gres = []
        for n in NODES:  # each node its own /dev, as real nodes: SLURM_JOB_GPUS names the files' numbers
            (r / f"dev-{n}").mkdir(exist_ok=True)
            for i in (0, 1):
                dev = r / f"dev-{n}" / f"xpu{i}"
                if not dev.exists():
                    os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))  # a character device like /dev/null
            gres.append(f"NodeName={n} Name=gpu Type=fake File={r}/dev-{n}/xpu[0-1]")
        (r / "gres.conf").write_text("\n".join(gres) + "\n")
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(128))
        shutil.chown(r / "munge", "munge", "munge")
        shutil.chown(key, "munge", "munge")
        (r / "munge").chmod(0o711)  # munged: its socket's folder needs o+x
        key.chmod(0o400)

    def _spawn(self, argv: list[str], log: str) -> None:
        with (self.root / log).open("wb") as out:
            self.procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env))

    def start(self) -> Slurm:
        """Start munged, slurmctld and the slurmd; return once both nodes are idle.

        Raises:
            RuntimeError: a daemon did not come up in time (its log is named).
        """
        self._write()
        m = self.root / "munge"
        self._spawn(
            [
                "runuser", "-u", "munge", "--", "munged", "-F", f"--socket={m}/munge.sock",
                f"--key-file={m}/munge.key", f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log",
                f"--seed-file={m}/munged.seed",
            ],
            "munged.out",
        )  # fmt: skip
        self._until((m / "munge.sock").exists, "munged", "munged.out")
        self._spawn(["slurmctld", "-D", "-c", "-f", str(self.conf)], "slurmctld.out")
        self._until(lambda: "UP" in self.run("scontrol", "ping", check=False), "slurmctld", "slurmctld.log")
        for n in NODES:
            self._spawn(["slurmd", "-D", "-N", n, "-f", str(self.conf)], f"slurmd-{n}.out")
        self._until(lambda: all(s == "idle" for s in self.states().values()), "both slurmd idle", "slurmd-xn1.log")
        return self

    def _until(self, ready: Callable[[], bool], what: str, log: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if time.monotonic() > deadline:
                tail = (self.root / log).read_text(errors="replace")[-2000:] if (self.root / log).exists() else ""
                msg = f"{what} not up after {timeout_s:g} s; {log}:\n{tail}"
                raise RuntimeError(msg)
            time.sleep(0.1)

    def run(self, *argv: str, check: bool = True, timeout_s: float = CALL_TIMEOUT_S) -> str:
        """A Slurm client command under a timeout; its stdout."""
        # in the lab's folder: sbatch writes its jobs' output (slurm-<id>.out) where it is run
        done = subprocess.run(
            list(argv), capture_output=True, text=True, env=self.env, cwd=self.root, timeout=timeout_s, check=False
        )
        if check and done.returncode != 0:
            msg = f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}"
            raise RuntimeError(msg)
        return done.stdout

    def states(self) -> dict[str, str]:
        """Node -> state in long form (idle, drained, ...)."""
        out = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False)
        return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)

    def reason(self, node: str) -> str:
        """The node's reason ("none" when it has none)."""
        return self.run("sinfo", "-h", "-N", "-n", node, "-o", "%500E").splitlines()[0].strip()

    def stop(self) -> None:
        """Stop every daemon started (slurmd first, munged last)."""
        for p in reversed(self.procs):
            p.terminate()
        deadline = time.monotonic() + 10
        for p in reversed(self.procs):
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def logs(self) -> str:
        """The tail of every daemon's log, for a failing test."""
        logs = sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.out"))
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}" for log in logs)
