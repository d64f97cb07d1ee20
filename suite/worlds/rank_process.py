"""A spawned rank's life: bound to its parent's, and how its death is told.

Torch-free on purpose: a spawned rank binds itself to its parent (`die_with_parent`) before
the seconds of importing torch and diffusers, and the parent describes a dead rank (its signal,
its memory) without caring what the rank was running.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import sys

_DEATH = re.compile(r"rank \d+ (was killed by signal|exited with code) ")


def headline(error: str) -> str:
    """The one line that sums up a run's error: a rank's death (said first), else the last line
    (a traceback's exception)."""
    lines = [line for line in error.strip().splitlines() if line.strip()]
    if not lines:
        return error
    return lines[0] if _DEATH.match(lines[0]) else lines[-1]


def die_with_parent(parent_pid: int) -> None:
    """End this rank when the process that spawned it ends, however it ends (SIGKILL included).

    On Linux the kernel sends SIGKILL at the parent's death, which also reaches a rank stuck in
    a collective (PR_SET_PDEATHSIG follows the spawning thread: start a LocalWorld from a thread
    that outlives it). The parent may have died before this call, hence the check after it; an
    idle rank also polls for its parent (`suite.worlds.rank_worker.serve_runs`), the only guard elsewhere.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def peak_rss_bytes(pid: int) -> int | None:
    """A process's peak resident set (VmHWM, since its last reset by the runner); Linux only."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def total_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            return int(f.readline().split()[1]) * 1024  # MemTotal: first line, in kB
    except (OSError, ValueError, IndexError):
        return None


def rank_main(*args) -> None:
    """A spawned rank's target: bound to the parent's life (the args end with its pid), then
    `suite.worlds.rank_worker.serve_runs`. Only this module is imported before the binding, so a
    parent killed during a rank's seconds of importing torch and diffusers takes the rank with it.
    """
    die_with_parent(args[-1])
    from suite.worlds.rank_worker import serve_runs

    serve_runs(*args)
