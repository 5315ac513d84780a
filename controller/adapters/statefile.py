"""The desired state in a local directory (`--state-dir`): the default `desired.Store`.

`<dir>/state.json` holds it. A save writes `state.json.tmp`, fsyncs it, renames it over
`state.json` and fsyncs the directory: after a crash at any point the file is the old state or
the new one, whole. `<dir>/lock` is held (flock) while the controller runs, so that two
controllers cannot share one directory and overwrite each other's decisions.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import threading

from xpuctl.controller import errors
from xpuctl.controller.core import desired

NAME = "state.json"


class StateDirError(errors.XpuError):
    """The state directory cannot be used; the message names it and the fix."""

    def __init__(self, message: str, *, in_use: bool = False) -> None:
        """`in_use`: another controller holds it (not a config problem)."""
        super().__init__(message)
        self.in_use = in_use


class FileStore:
    """`desired.Store` over one directory, locked for this process."""

    def __init__(self, directory: str | pathlib.Path) -> None:
        """Create the directory (0700) if needed and take its lock.

        Raises:
            StateDirError: it cannot be created or written, or another controller holds it.
        """
        self.dir = pathlib.Path(directory).expanduser()
        self.path = self.dir / NAME
        self._writing = threading.Lock()
        self.where = str(self.path)
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateDirError(
                f"state dir {self.dir}: cannot use it ({exc.strerror}); "
                "pass --state-dir DIR (or XPU_STATE_DIR) naming a directory this user can write"
            ) from exc
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._lock, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._lock)
            raise StateDirError(
                f"state dir {self.dir} is in use by another controller (pid {holder}); "
                "give each controller its own --state-dir",
                in_use=True,
            ) from None
        os.ftruncate(self._lock, 0)
        os.pwrite(self._lock, f"{os.getpid()}\n".encode(), 0)

    def load(self) -> desired.Desired | None:
        """The saved state; None when there is none yet.

        Raises:
            desired.Corrupt: the file cannot be read as a saved state (the message names it).
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise desired.Corrupt(f"state file {self.path}: cannot read it ({exc.strerror})") from exc
        try:
            return desired.decode(data)
        except desired.Corrupt as exc:
            raise desired.Corrupt(
                f"state file {self.path}: {exc}; move it aside (mv {self.path} {self.path}.bad) to start "
                "without the saved budget, cordons and priorities, or put a good copy in its place"
            ) from exc

    def save(self, d: desired.Desired) -> None:
        """Write `d` durably: a temporary file, fsync, rename over the old one, fsync the directory.

        Raises:
            OSError: it could not be written (the previous file is untouched).
        """
        data = desired.encode(d)
        tmp = self.dir / (NAME + ".tmp")
        # one write at a time: the service's saver runs in a thread that a shutdown does not stop,
        # and the final save on the event loop's thread used the same temporary file (ENOENT on
        # one of the two renames, and no state saved on the way out)
        with self._writing:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            tmp.replace(self.path)
            dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def close(self) -> None:
        """Let the directory go (another controller may take it)."""
        with contextlib.suppress(OSError):
            os.close(self._lock)
