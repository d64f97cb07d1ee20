"""The store under faults: two sweeps into one directory, a creator killed, a resumed sweep's
missing scores, damaged files met by every command.

One real sweep (the tiny quick start, 4 runs) serves the lock, rows-vs-files and resume checks;
damaged stores go through `suite.commands.cli.main` in this process (no world is ever started for them)
and, once per command, through a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from suite.commands.cli import main
from suite.store.results import LOCK_FILE, PENDING_PREFIX, ResultStore, RunRecord
from tests.e2e.test_cli import ROOT, cli, read_runs, write_config
from tests.unit.test_results import DAMAGE, _damaged

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="flock, SIGSTOP")

ENV = os.environ | {"PYTHONPATH": str(ROOT)}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _table(db: Path, name: str) -> pd.DataFrame:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return pd.read_sql(f"SELECT * FROM {name}", con)


def _wait_for_holder(lock: Path, proc: subprocess.Popen, deadline_s: float) -> dict:
    """The lock file's holder record once `proc` holds the lock (polled; no fixed sleep)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the first sweep ended (exit {proc.returncode}) before taking the lock")
        try:
            holder = json.loads(lock.read_text())
            if holder["pid"] == proc.pid:
                return holder
        except (OSError, ValueError):
            pass  # not yet created, or being written
        time.sleep(0.05)
    pytest.fail("the first sweep did not take the lock in time")


def _held(lock: Path) -> bool:
    import fcntl

    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory):
    """Sweep A into results/quickstart (over a 0-byte results.db an older crash left), held
    stopped (SIGSTOP) while it holds the lock; sweep B into the same directory meanwhile."""
    tmp = tmp_path_factory.mktemp("lock")
    config = write_config(tmp)
    out = tmp / "results" / "quickstart"
    out.mkdir(parents=True)
    (out / "results.db").write_bytes(b"")
    log_out, log_err = (tmp / "a.out").open("w"), (tmp / "a.err").open("w")
    a = subprocess.Popen(
        [sys.executable, "-m", "suite.commands.cli", "run", str(config), "--no-progress", "--no-report"],
        cwd=tmp, env=ENV, stdout=log_out, stderr=log_err, start_new_session=True,
    )  # fmt: skip
    try:
        holder = _wait_for_holder(out / LOCK_FILE, a, deadline_s=240)
        # Stopped, A cannot finish and release the lock while B tries: no race on timing.
        os.kill(a.pid, signal.SIGSTOP)
        try:
            assert _held(out / LOCK_FILE)
            t0 = time.monotonic()
            b = cli("run", str(config), "--no-progress", "--no-report", cwd=tmp, check=False)
            b_s = time.monotonic() - t0
        finally:
            os.kill(a.pid, signal.SIGCONT)
        a.wait(timeout=900)
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
            a.wait()
        log_out.close()
        log_err.close()
    return {
        "tmp": tmp, "config": config, "out": out, "holder": holder, "a": a, "b": b, "b_s": b_s,
        "a_out": (tmp / "a.out").read_text(), "a_err": (tmp / "a.err").read_text(),
    }  # fmt: skip


def test_second_sweep_is_refused_naming_the_holder(two_sweeps):
    a, b, holder = two_sweeps["a"], two_sweeps["b"], two_sweeps["holder"]
    assert b.returncode == 4, b.stdout + b.stderr
    assert f"pid {a.pid} on host {holder['host']}" in b.stderr and "in use" in b.stderr
    assert str(two_sweeps["out"]) in b.stderr and "Traceback" not in b.stderr
    assert "ok," not in b.stdout  # refused before any run: no summary, no world


def test_first_sweep_completes_over_an_empty_leftover_file(two_sweeps):
    assert two_sweeps["a"].returncode == 0, two_sweeps["a_out"] + two_sweeps["a_err"]
    assert "4 ok, 0 failed" in two_sweeps["a_out"]
    assert "empty (0 bytes" in two_sweeps["a_err"]  # the leftover was replaced, and said so
    assert not _held(two_sweeps["out"] / LOCK_FILE)


def test_rows_and_files_agree(two_sweeps):
    out = two_sweeps["out"]
    runs = read_runs(out / "results.db")
    steps = _table(out / "results.db", "rank_steps")
    assert len(runs) == 4 and set(runs["status"]) == {"ok"}
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(runs["run_id"])
    for run in runs.itertuples():
        trace = np.load(out / run.output_dir / "trace.npz")
        for rank in range(run.world_size):
            marks = np.sort(trace[f"steps_rank{rank}"], order=["repeat", "step"])
            rows = steps[(steps["run_id"] == run.run_id) & (steps["rank"] == rank)]
            rows = rows.sort_values(["repeat", "step"])
            assert len(rows) == len(marks) > 0
            # the stored step_s is t_end - t_start of these very marks (float64 both ways)
            np.testing.assert_array_equal(rows["step_s"], marks["t_end"] - marks["t_start"])


def test_resumed_sweep_scores_what_a_crash_left_unscored_and_settles_pending_dirs(two_sweeps):
    tmp, config, out = two_sweeps["tmp"], two_sweeps["config"], two_sweeps["out"]
    db = out / "results.db"
    runs = read_runs(db)
    scored = runs[runs["strategy"] == "data"]["run_id"].tolist()  # the runs with a baseline
    before = _table(db, "fidelity").sort_values(["run_id", "reference", "metric"])
    assert set(before["run_id"]) == set(scored) and before["value"].notna().any()
    killed_before_score, killed_before_move = scored
    # A sweep killed after each run's commit: one before it was scored; the other before its
    # files were moved into place (so it could not be scored either); and a third run killed
    # before its commit left its pending files.
    with sqlite3.connect(db) as con:
        con.execute("DELETE FROM fidelity")
    (out / "runs" / killed_before_move).rename(
        out / "runs" / f"{PENDING_PREFIX}{killed_before_move}"
    )
    orphan = out / "runs" / f"{PENDING_PREFIX}0123456789abcdef"
    orphan.mkdir()
    (orphan / "trace.npz").write_bytes(b"half written")

    proc = cli("run", str(config), "--no-progress", "--no-report", cwd=tmp)
    assert "0 ok, 0 failed, 0 skipped as unsupported, 4 already stored" in proc.stdout
    assert f"run {killed_before_move}: stored ok, its files moved into" in proc.stderr
    assert "0123456789abcdef: not stored ok, its unfinished files removed" in proc.stderr
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(runs["run_id"])
    after = _table(db, "fidelity").sort_values(["run_id", "reference", "metric"])
    # Scored again from the same files: the same rows and values.
    key = ["run_id", "baseline_run_id", "reference", "metric", "backbone", "n_images"]
    pd.testing.assert_frame_equal(
        after[key].reset_index(drop=True), before[key].reset_index(drop=True)
    )
    np.testing.assert_allclose(after["value"], before["value"], rtol=1e-12)  # same PNGs


# -- damaged stores --------------------------------------------------------------------------


def _commands(config: Path, out: Path) -> dict[str, list[str]]:
    return {
        "run": ["run", str(config), "--out", str(out), "--no-progress", "--no-report"],
        "dry-run": ["run", str(config), "--out", str(out), "--dry-run"],
        "report": ["report", str(out), "--out", str(out.parent / "report")],
        "export": ["export", str(out), "--out", str(out.parent / "export")],
        "fidelity": ["fidelity", str(out), "--no-download"],
        "project": ["project", str(out), "--hardware", "8xH100-NVLink"],
    }


COMMANDS = ["run", "dry-run", "report", "export", "fidelity", "project"]


# A sweep takes an empty file for no store and replaces it (test_first_sweep_completes_...).
@pytest.mark.parametrize(
    "kind, command",
    [(k, c) for k in sorted(DAMAGE) for c in COMMANDS if (k, c) != ("empty", "run")],
)
def test_damaged_store_is_exit_3_with_a_sentence_and_left_unchanged(
    tmp_path, capsys, kind, command
):
    out = tmp_path / "results"
    out.mkdir()
    db = out / "results.db"
    db.write_bytes(_damaged(kind, tmp_path))
    digest = _sha(db)
    code = main(_commands(write_config(tmp_path), out)[command])  # no world is started
    err = capsys.readouterr().err
    assert code == 3, err
    assert f"error: {db} " in err, err  # the sentence names the file first
    assert "Traceback" not in err
    assert _sha(db) == digest
    assert not (out / "runs").exists()


def test_damaged_store_in_subprocesses(tmp_path):
    """Each command once as a process (exit status, stderr as a user sees them)."""
    config = write_config(tmp_path)
    cases = {"run": "truncated", "dry-run": "random", "report": "header", "export": "foreign"}
    procs, dbs = {}, {}
    for command, kind in cases.items():
        out = tmp_path / command
        out.mkdir()
        dbs[command] = out / "results.db"
        dbs[command].write_bytes(_damaged(kind, tmp_path))
        digest = _sha(dbs[command])
        argv = _commands(config, out)[command]
        procs[command] = (digest, subprocess.Popen(
            [sys.executable, "-m", "suite.commands.cli", *argv], cwd=tmp_path, env=ENV,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))  # fmt: skip
    for command, (digest, proc) in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 3, (command, stdout, stderr)
        assert str(dbs[command]) in stderr and "Traceback" not in stderr, (command, stderr)
        assert _sha(dbs[command]) == digest, command


# -- creation seen from outside, and killed --------------------------------------------------

_CREATOR = """
import sys, time
from pathlib import Path
from suite.store.results import ResultStore
d, n, handshake = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
for i in range(n):
    while handshake and not (d / f"go{i}").exists():
        time.sleep(0.0002)
    ResultStore(d / f"{i}.db").close()
    print(i, flush=True)
"""


def test_a_reader_never_sees_a_store_without_its_tables(tmp_path):
    """The reader asks for each store while its creator is making it: it sees no file or a
    complete store (before atomic creation most such reads saw a file without tables)."""
    n, seen_without_tables = 100, []
    creator = subprocess.Popen(
        [sys.executable, "-c", _CREATOR, str(tmp_path), str(n), "1"], env=ENV,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for i in range(n):
            path = tmp_path / f"{i}.db"
            (tmp_path / f"go{i}").touch()
            deadline = time.monotonic() + 120
            while not path.exists():
                assert creator.poll() is None, f"the creator died (exit {creator.returncode})"
                assert time.monotonic() < deadline, f"store {i} not created in time"
                time.sleep(0.0002)
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                con.execute("SELECT count(*) FROM runs").fetchone()
            except sqlite3.Error as e:
                seen_without_tables.append((i, str(e)))
            finally:
                con.close()
        assert creator.wait(timeout=120) == 0
    finally:
        if creator.poll() is None:
            creator.kill()
            creator.wait()
    assert seen_without_tables == []


def test_creator_killed_anywhere_leaves_no_file_or_a_complete_store(tmp_path):
    """Creators killed with SIGKILL at assorted moments of a creation loop: every store file
    left behind is complete, and the next open of a missing one works."""
    left = []
    for attempt in range(4):
        d = tmp_path / str(attempt)
        d.mkdir()
        creator = subprocess.Popen(
            [sys.executable, "-c", _CREATOR, str(d), "100000", "0"], env=ENV,
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            for _ in range(5 + 7 * attempt):  # a different moment each time
                assert creator.stdout.readline(), "the creator died"
        finally:
            creator.kill()
            creator.wait()
        made = sorted(d.glob("*.db"))
        for db in made:  # what a reader finds: complete stores only
            with ResultStore(db, read_only=True) as s:
                assert list(s.table("runs").columns) == list(read_runs(db).columns)
        left += made
        # The next writer of each path (the one being created when the kill came included)
        # opens or creates it, and the killed creator's temporary file goes.
        following = next(i for i in range(len(made) + 2) if not (d / f"{i}.db").exists())
        for db in [*made, d / f"{following}.db"]:
            with ResultStore(db) as s:
                assert s.done_run_ids() == set()
        assert [f.name for f in d.iterdir() if "creating" in f.name] == []
    assert len(left) >= 4 * 5


# -- fidelity on resume: which runs ----------------------------------------------------------


def test_unscored_runs_are_real_ok_runs_lacking_rows_they_can_have(tmp_path):
    from suite.fidelity.score import FidelityOptions, unscored_runs

    def run(run_id, strategy, world, mode="real", status="ok"):
        return RunRecord(
            run={
                "run_id": run_id, "workload": "tiny-x", "height": 32, "width": 32, "steps": 2,
                "scheduler": "ddim", "guidance": 1.0, "batch": 2, "seed": 0, "dtype": "fp32",
                "strategy": strategy, "world_size": world, "world_mode": mode, "status": status,
                "device": "cpu", "created_at": "2025-01-01T00:00:00",
            }
        )  # fmt: skip

    with ResultStore(tmp_path / "results.db") as store:
        for record in (
            run("base", "none", 1),
            run("data", "data", 2),
            run("fake", "data", 2, mode="fake"),  # emulated ranks: never scored
            run("failed", "data", 2, status="failed"),
        ):
            store.save(record)
        assert unscored_runs(store) == ["data"]  # the baseline itself needs a reference
        with_reference = FidelityOptions(reference=str(tmp_path))
        assert unscored_runs(store, with_reference) == ["base", "data"]
        store.save_rows("fidelity", [{"run_id": "data", "reference": "original", "metric": "psnr"}])
        assert unscored_runs(store) == []
        assert unscored_runs(store, with_reference) == ["base", "data"]  # ground truth missing


def test_a_run_stored_ok_meanwhile_is_a_warning_not_a_traceback(tmp_path, capsys):
    from suite.commands.sweep import _save

    record = RunRecord(run={"run_id": "a", "status": "ok", "latency_s": 1.0})
    with ResultStore(tmp_path / "results.db") as store:
        assert _save(store, record)
        again = RunRecord(run={"run_id": "a", "status": "failed", "error": "boom"})
        assert not _save(store, again)  # a writer that skipped the lock stored it first
        assert store.table("runs")["status"].tolist() == ["ok"]
    assert "run a is already stored ok" in capsys.readouterr().err
