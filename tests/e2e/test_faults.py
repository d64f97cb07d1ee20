"""Faults a batch machine deals out: the sweep's parent killed or terminated, a rank killed.

No process may outlive the parent (ranks hold about 1 GB each), SIGTERM stops a sweep as
Ctrl-C does, and a rank killed by a signal is named with it instead of by its peer's
"connection reset".
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist

from suite.worlds.launch import RunFailed, headline
from tests.e2e.test_cli import ROOT, read_runs, write_config

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat fields from the state on (the command name may hold spaces)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _children(pid: int) -> dict[int, str]:
    """pid -> command line of each live child of `pid`."""
    found = {}
    for d in Path("/proc").iterdir():
        fields = _stat(int(d.name)) if d.name.isdigit() else None
        if fields and int(fields[1]) == pid and fields[0] not in "ZX":
            with contextlib.suppress(OSError):
                found[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    return found


def _alive(pid: int, started: str) -> bool:
    """Running (a zombie is dead: who reaps orphans here is not ours to rely on), and still the
    process first seen (same start time, so a reused pid does not count)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in "ZX" and fields[19] == started


def _survivors(pids: dict[int, str], since: float, within_s: float) -> tuple[list[int], float]:
    """Poll until every recorded process is gone: (survivors, seconds since `since`)."""
    while True:
        alive = [pid for pid, started in pids.items() if _alive(pid, started)]
        if not alive or time.monotonic() - since > within_s:
            return alive, time.monotonic() - since
        time.sleep(0.05)


def _sweep_mid_run(tmp_path: Path):
    """A `diffscale run` (own session) whose second run is in flight on a world of 2: the
    process, the pids of its ranks and resource tracker (pid -> start time), the store."""
    config = write_config(
        tmp_path,
        workloads=["tiny-pixart-alpha"],
        resolutions=[256],
        strategies=[
            {"name": "data", "world_sizes": [2]},  # short: stored first, in the same world as
            {"name": "data", "world_sizes": [2], "settings": {"steps": 500, "repeats": 5}},
        ],  # ... this one, which runs for minutes
    )
    db = tmp_path / "results" / "quickstart" / "results.db"
    with (
        (tmp_path / "stdout.txt").open("w") as stdout,
        (tmp_path / "stderr.txt").open("w") as stderr,
    ):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "suite.commands.cli",
                "run",
                str(config),
                "--no-progress",
                "--no-report",
            ],
            cwd=tmp_path,
            env=os.environ | {"PYTHONPATH": str(ROOT)},
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240  # two ranks importing diffusers on a loaded 2-core box
        while time.monotonic() < deadline:  # the first run stored: the second one is under way
            if proc.poll() is not None:
                pytest.fail(f"the sweep ended early ({proc.returncode})")
            with contextlib.suppress(Exception):  # the store may be mid-creation
                if db.exists() and len(read_runs(db)) >= 1:
                    break
            time.sleep(0.2)
        else:
            pytest.fail("the sweep stored nothing in time")
        children = _children(proc.pid)
        ranks = [pid for pid, cmd in children.items() if "spawn_main" in cmd]
        trackers = [pid for pid, cmd in children.items() if "resource_tracker" in cmd]
        assert len(ranks) == 2 and len(trackers) == 1, children
        pids = {pid: _stat(pid)[19] for pid in ranks + trackers}
    except BaseException:
        _cleanup(proc, {})
        raise
    return proc, pids, db


def _cleanup(proc, pids) -> None:
    """Whatever the test found, leave no process behind."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid, started in pids.items():
        if _alive(pid, started):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def test_ranks_and_resource_tracker_die_with_a_killed_parent(tmp_path):
    proc, pids = None, {}
    try:
        proc, pids, _ = _sweep_mid_run(tmp_path)
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)  # the parent only, as the OOM killer would
        proc.wait(timeout=30)
        survivors, waited = _survivors(pids, since=t0, within_s=15)
        print(f"all {len(pids)} processes gone {waited:.2f} s after the parent's SIGKILL")
        assert not survivors, f"{survivors} outlived their parent"
    finally:
        if proc is not None:
            _cleanup(proc, pids)


def test_sigterm_stops_the_sweep_like_ctrl_c(tmp_path):
    proc, pids = None, {}
    try:
        proc, pids, db = _sweep_mid_run(tmp_path)
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)  # a batch scheduler's `kill PID`
        rc = proc.wait(timeout=60)
        survivors, waited = _survivors(pids, since=t0, within_s=15)
        print(f"exit {rc}; all {len(pids)} processes gone {waited:.2f} s after the SIGTERM")
        stderr = (tmp_path / "stderr.txt").read_text()
        assert rc == 128 + signal.SIGTERM, stderr
        assert "interrupted: SIGTERM" in stderr and "Traceback" not in stderr, stderr
        assert not survivors, f"{survivors} outlived the sweep"
        runs = read_runs(db)  # the first run kept, the interrupted one not stored
        assert len(runs) == 1 and set(runs["status"]) == {"ok"}
    finally:
        if proc is not None:
            _cleanup(proc, pids)


def test_rank_killed_mid_sweep_is_stored_failed_with_its_signal(tmp_path):
    proc, pids = None, {}
    try:
        proc, pids, db = _sweep_mid_run(tmp_path)
        rank = min(pid for pid, cmd in _children(proc.pid).items() if "spawn_main" in cmd)
        os.kill(rank, signal.SIGKILL)  # as the OOM killer would
        rc = proc.wait(timeout=120)  # the failure is recorded and the sweep goes on, to its end
        assert rc == 1
        out, err = ((tmp_path / f).read_text() for f in ("stdout.txt", "stderr.txt"))
        assert "1 ok, 1 failed" in out, out + err
        death = r"rank [01] was killed by signal SIGKILL while running .*OOM killer"
        assert re.search(rf"FAILED .*: {death}", err), err  # the summary line names the death
        runs = read_runs(db).set_index("steps")
        assert runs.loc[500, "status"] == "failed"
        assert re.match(death, runs.loc[500, "error"]), runs.loc[500, "error"]
        survivors, _ = _survivors(pids, since=time.monotonic(), within_s=15)
        assert not survivors
    finally:
        if proc is not None:
            _cleanup(proc, pids)


def die_on_rank_one(ctx, how):
    """Rank 1 dies without a word while rank 0 waits for it in a collective."""
    if ctx.rank == 1:
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does
        os._exit(3)  # what a library calling exit() does
    dist.barrier()
    return ctx.rank


def whoami(ctx):
    return ctx.rank


def test_rank_killed_by_a_signal_is_named_with_it(world2):
    with pytest.raises(RunFailed) as failed:
        world2.call(die_on_rank_one, "sigkill", timeout_s=120)
    message = str(failed.value)
    first = message.splitlines()[0]
    assert first.startswith("rank 1 was killed by signal SIGKILL while running die_on_rank_one")
    assert "OOM killer" in first and "dmesg" in first
    assert headline(message) == first  # what the sweep summary prints
    assert world2.call(whoami) == [0, 1]  # a fresh world takes the next task


def test_rank_exiting_without_a_word_is_named_with_its_code(world2):
    with pytest.raises(RunFailed, match="^rank 1 exited with code 3 while running die_on_rank_one"):
        world2.call(die_on_rank_one, "exit", timeout_s=120)
    assert world2.call(whoami) == [0, 1]
