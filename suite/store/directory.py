"""A results directory beside its store: the errors of an unusable store, the writer's lock and
a run's files before and after its row commits (see suite.store.results for how they fit together).

Torch- and pandas-free, so the CLI can name a store error without importing either.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import shlex
import shutil
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = ".lock"  # in the results directory; see DirectoryLock
PENDING_PREFIX = ".pending-"  # runs/.pending-<run_id>: a run's files before its row commits


class StoreError(RuntimeError):
    """The results store cannot be used; the message names the file, what is wrong and what to
    do. The CLI exits with `exit_code` (3), without a traceback."""

    exit_code = 3


class StoreMissingError(StoreError, FileNotFoundError):
    """There is no store at the path (a FileNotFoundError too, for callers that expect one)."""


class StoreBusyError(StoreError):
    """Another process holds the results directory's lock (it is named in the message); the CLI
    exits with 4."""

    exit_code = 4


def pending_run_dir(root: str | Path, run_id: str) -> Path:
    """An empty root/runs/.pending-<run_id> for a run's files until its row commits (leftovers
    of an earlier try are removed first)."""
    pending = Path(root) / "runs" / f"{PENDING_PREFIX}{run_id}"
    if pending.exists():
        shutil.rmtree(pending)
    pending.mkdir(parents=True)
    return pending


def place_run_dir(root: str | Path, run_id: str, output_dir: str | Path) -> Path:
    """Move runs/.pending-<run_id> to root/output_dir once the run is stored ok; returns it.

    A directory already there (an earlier try not stored ok, e.g. killed before its commit) is
    replaced. A crash between the removal and the move leaves the pending directory, which
    `ResultStore.recover_run_dirs` moves on the next open.
    """
    root = Path(root)
    final = root / output_dir
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(root / "runs" / f"{PENDING_PREFIX}{run_id}", final)
    return final


class DirectoryLock:
    """Exclusive lock of a results directory for one writing process (a sweep, `diffscale
    fidelity`, `project`); non-blocking: a second writer gets StoreBusyError at once.

    flock on DIR/.lock: the kernel drops it when the holder's process ends, however it ends, so
    a killed sweep never leaves the directory locked. The holder writes its pid, host, start
    time and command into the file for the error message of the one refused.
    """

    def __init__(self, directory: str | Path, command: str | None = None) -> None:
        self.path = Path(directory).resolve() / LOCK_FILE
        self.command = command or shlex.join(["diffscale", *sys.argv[1:]])
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # never truncated by a loser
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise StoreBusyError(
                f"results directory {self.path.parent} is in use by another diffscale process "
                f"({holder}). Wait for it to finish, or give another --out; the lock "
                f"({self.path}) is released when that process ends."
            ) from None
        except BaseException:
            os.close(fd)
            raise
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": self.command,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # an empty file: nobody holds it
            os.close(self._fd)  # drops the flock
            self._fd = None

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock_holder(fd: int, wait_s: float = 2.0) -> str:
    """'pid 123 on host h since <time>: <command>' from a held lock file. The holder writes it
    just after taking the lock: an empty file is read again for up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        text = os.pread(fd, 65536, 0).decode(errors="replace")
        try:
            h = json.loads(text)
            return f"pid {h['pid']} on host {h['host']} since {h['started']}: {h['command']}"
        except (ValueError, KeyError, TypeError):
            if time.monotonic() > deadline:
                return "holder unknown: its lock file names no process"
            time.sleep(0.05)
