"""Log lines of both programs: JSON with stable keys, `<N>` priorities under journald, --log-level."""

from __future__ import annotations

import io
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, free_port
from xpuctl.common import logs


def record(level: int, msg: str, **extra: object) -> logging.LogRecord:
    r = logging.LogRecord("xpu.test", level, __file__, 1, msg, (), None)
    r.__dict__.update(extra)
    return r


def test_json_lines_have_the_stable_keys() -> None:
    line = logs.JsonFormatter().format(record(logging.WARNING, 'node "a" lost', node_id="a", seq=7, other=1))
    out = json.loads(line)
    assert list(out) == ["ts", "level", "logger", "event", "node_id", "seq"]
    assert out["level"] == "warning" and out["event"] == 'node "a" lost' and out["seq"] == 7
    assert out["ts"].endswith("Z") and len(out["ts"]) == len("2026-11-22T14:04:06.167Z")


def test_a_traceback_stays_in_one_json_line() -> None:
    try:
        raise ValueError("boom")  # noqa: TRY301 - a real traceback to format
    except ValueError:
        r = logging.LogRecord("xpu.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = logs.JsonFormatter().format(r)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exc"]


@pytest.mark.parametrize(
    ("level", "prefix"),
    [
        (logging.DEBUG, "<7>"),
        (logging.INFO, "<6>"),
        (logging.WARNING, "<4>"),
        (logging.ERROR, "<3>"),
        (logging.CRITICAL, "<2>"),
    ],
)
def test_journald_priority_prefix(level: int, prefix: str) -> None:
    text = logs.JournalPrefix(logging.Formatter("%(message)s")).format(record(level, "one\ntwo"))
    assert text == f"{prefix}one\n{prefix}two"


def test_journald_is_detected_by_the_stream_identity(tmp_path: pathlib.Path) -> None:
    with (tmp_path / "a").open("w") as a, (tmp_path / "b").open("w") as b:
        st = os.fstat(a.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert logs.under_journald(env, a)
        assert not logs.under_journald(env, b)  # inherited by a child with other stderr
        assert not logs.under_journald({}, a)
        assert not logs.under_journald({"JOURNAL_STREAM": "garbage"}, a)
        assert not logs.under_journald(env, io.StringIO())


@pytest.mark.slow  # starts the controller as a process
def test_controller_logs_json_with_priorities_under_journald(tmp_path: pathlib.Path) -> None:
    """A real `xpu-controller serve`, its stderr a file that JOURNAL_STREAM names, as systemd sets it up."""
    err = tmp_path / "stderr"
    with err.open("wb") as out:
        st = os.fstat(out.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}", "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "xpuctl.controller.cli", "serve", "--listen", f"127.0.0.1:{free_port()}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
        try:
            deadline = time.monotonic() + 60
            while "serving on port" not in err.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
                time.sleep(0.05)  # polling a child's output file, no event loop here
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
    lines = err.read_text().splitlines()
    assert lines and all(line.startswith("<6>{") for line in lines), lines
    first = json.loads(lines[0][3:])
    assert first["logger"] == "xpu.controller" and "serving on port" in first["event"]


@pytest.mark.slow  # starts the controller as a process
def test_log_level_and_text_format(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[power]\nbudjet_w = 1\n")
    r = subprocess.run(
        [sys.executable, "-m", "xpuctl.controller.cli", "--log-format", "text", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert r.returncode == 78 and " ERROR xpu.controller: config " in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "xpuctl.controller.cli", "--log-level", "CRITICAL", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2 and "invalid choice: 'CRITICAL'" in r.stderr
