"""`xpu-agent capture`: what this node's vendor tools print, saved for a bug report.

Runs every vendor tool found on PATH in every form the drivers read plus its version, each with a
timeout (argv lists, never a shell; read-only forms only), and saves the raw outputs with their
command lines, exit codes and times in a .tar.gz, with what the readers made of each. A user
attaches the archive to an issue when a device is misread (README).
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable

import msgspec

from xpuctl.agent.core import parse
from xpuctl.agent.drivers import tool

# vendor -> the read-only forms to capture: the driver's own (tool.FORMS) and the others readers
# know, then a version line. Sources: shared/notes/vendor-tools.md and the fixtures' SOURCES.md.
FORMS: dict[str, list[list[str]]] = {
    "nvidia": [
        *tool.FORMS["nvidia"],
        ["nvidia-smi", "-L"],
        ["nvidia-smi", "--version"],
    ],
    "ascend": [["npu-smi", "info"], ["npu-smi", "info", "-m"], ["npu-smi", "info", "-l"], ["npu-smi", "-v"]],
    "cambricon": [["cnmon"], ["cnmon", "-v"]],
    "metax": [["mx-smi"], ["mx-smi", "topo", "-m"], ["mx-smi", "--version"]],
    "iluvatar": [*tool.FORMS["iluvatar"], ["ixsmi", "-L"], ["ixsmi", "--version"]],
    "kunlunxin": [*tool.FORMS["kunlunxin"], ["xpu_smi"], ["xpu-smi", "--version"]],
    "moorethreads": [["mthreads-gmi"], ["mthreads-gmi", "-v"]],
    "enflame": [["efsmi", "-q"], ["efsmi"], ["efsmi", "--version"]],
    "amd": [
        *tool.FORMS["amd"],
        ["rocm-smi"],
        ["amd-smi", "static", "--json"],
        ["amd-smi", "list", "--json"],
        ["amd-smi", "version"],
    ],
    "hygon": [*tool.FORMS["hygon"], ["hy-smi", "--version"]],
    "thead": [["ppu-smi"], ["ppu-smi", "--version"]],
}
MAX_BYTES = 4 << 20


class Run(msgspec.Struct, kw_only=True):
    """One command as it ran, and what the readers made of its output."""

    vendor: str
    argv: list[str]
    exit_code: int | None  # None: it did not finish in time (killed)
    seconds: float
    stdout_file: str
    stderr_file: str
    parsed: str  # `N device(s)`, `ParseError: ...`, or why it was not read


def _read(vendor: str, argv: list[str], out: str, code: int | None) -> str:
    if code is None:
        return "not read: timed out"
    if argv[-1] in ("--version", "-v", "version"):
        return "not read: a version line"
    if not out.strip():
        return f"not read: no output (exit {code})"
    try:
        devices = parse.parse(vendor, out)
    except parse.ParseError as exc:
        return f"ParseError: {exc}"
    except KeyError as exc:
        return f"not read: {exc.args[0]}"
    warned = sum(len(d.warnings) for d in devices)
    return f"{len(devices)} device(s)" + (f", {warned} warning(s)" if warned else "")


def capture(out_path: str, *, timeout_s: float, which: Callable[[str], str | None] = shutil.which) -> list[Run]:
    """Run every form of every tool found; write the archive; the runs (empty: no tool found).

    Raises:
        OSError: the archive cannot be written.
    """
    runs: list[Run] = []
    files: list[tuple[str, bytes]] = []
    for vendor, forms in FORMS.items():
        for argv in forms:
            if which(argv[0]) is None:
                continue
            name = f"{len(runs):02d}-{'_'.join(a.strip('-') for a in argv)[:60]}"
            started = time.monotonic()
            try:
                done = subprocess.run(  # noqa: S603 - a fixed argv, never a shell
                    argv, capture_output=True, timeout=timeout_s, check=False
                )
                stdout, stderr, code = done.stdout[:MAX_BYTES], done.stderr[:MAX_BYTES], done.returncode
            except subprocess.TimeoutExpired as exc:
                stdout, stderr, code = (exc.stdout or b"")[:MAX_BYTES], (exc.stderr or b"")[:MAX_BYTES], None
            except OSError as exc:
                stdout, stderr, code = b"", f"could not run: {exc.strerror}".encode(), 127
            seconds = round(time.monotonic() - started, 3)
            text = stdout.decode(errors="replace")
            runs.append(
                Run(
                    vendor=vendor,
                    argv=argv,
                    exit_code=code,
                    seconds=seconds,
                    stdout_file=f"{name}.out",
                    stderr_file=f"{name}.err",
                    parsed=_read(vendor, argv, text, code),
                )
            )
            files += [(f"{name}.out", stdout), (f"{name}.err", stderr)]
    if not runs:
        return runs
    manifest = {
        "host": socket.gethostname(),
        "captured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": msgspec.to_builtins(runs),
    }
    files.append(("manifest.json", json.dumps(manifest, indent=2).encode()))
    with tarfile.open(out_path, "w:gz") as tar:
        for name, data in files:
            info = tarfile.TarInfo(f"xpu-capture/{name}")
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
    return runs
