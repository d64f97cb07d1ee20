"""ResultStore: schema, resume, replacement of failed runs, atomicity, export."""

from __future__ import annotations

import sqlite3

import pandas as pd
import pytest

from suite.store import schema
from suite.store.results import DuplicateRunError, ResultStore, RunRecord


def _record(
    run_id: str, status: str = "ok", latency_s: float | None = 1.5, n: int = 2
) -> RunRecord:
    run = {
        "run_id": run_id,
        "experiment": "unit",
        "workload": "tiny-x",
        "height": 64,
        "width": 64,
        "strategy": "data",
        "degrees": {"data": n},
        "world_size": n,
        "latency_s": latency_s,
        "status": status,
        "error": None if status == "ok" else "RuntimeError: boom",
    }
    comm = [
        {"rank": r, "op": "all_gather", "axis": "data", "bytes_per_step": 1024.0 * (r + 1)}
        for r in range(n)
    ]
    steps = [
        {"rank": r, "repeat": 0, "step": s, "step_s": 0.1, "peak_mem_bytes": 10**6}
        for r in range(n)
        for s in range(3)
    ]
    return RunRecord(run=run, comm=comm, rank_steps=steps)


@pytest.fixture
def store(tmp_path):
    with ResultStore(tmp_path / "sub" / "results.db") as s:
        yield s


def _snapshot(store: ResultStore) -> dict[str, pd.DataFrame]:
    return {name: store.table(name) for name in schema.TABLES}


def test_tables_have_exactly_the_schema_columns(store):
    store.save(_record("a"))
    with sqlite3.connect(store.path) as conn:
        for name in schema.TABLES:
            df = pd.read_sql(f"SELECT * FROM {name}", conn)
            assert list(df.columns) == schema.column_names(name)
    for name in schema.TABLES:
        assert list(store.table(name).columns) == schema.column_names(name)
    assert store.root == store.path.parent
    assert store.path.name == "results.db"


def test_table_dtypes_follow_sql_types(store):
    store.save(_record("a", latency_s=None))
    runs = store.table("runs")
    assert str(runs["world_size"].dtype) == "Int64"
    assert runs["latency_s"].dtype == "float64" and runs["latency_s"].isna().all()
    assert runs.loc[0, "degrees"] == '{"data": 2}'  # dicts are stored as JSON
    # An empty table still carries its dtypes.
    assert str(store.table("projection")["latency_s"].dtype) == "float64"


def test_save_and_done_run_ids(store):
    store.save(_record("a"))
    store.save(_record("b", status="failed", latency_s=None))
    assert store.done_run_ids() == {"a"}
    assert len(store.table("comm")) == 4
    assert len(store.table("rank_steps")) == 12
    assert set(store.table("comm")["run_id"]) == {"a", "b"}


def test_failed_run_is_replaced_by_ok(store):
    store.save(_record("a", status="failed", latency_s=None, n=2))
    store.save_rows("fidelity", [{"run_id": "a", "metric": "psnr", "value": 1.0}])
    store.save(_record("a", status="ok", latency_s=0.7, n=3))
    runs = store.table("runs")
    assert len(runs) == 1
    assert runs.loc[0, "status"] == "ok" and runs.loc[0, "latency_s"] == 0.7
    assert sorted(store.table("comm")["rank"]) == [0, 1, 2]
    assert len(store.table("rank_steps")) == 9
    assert store.table("fidelity").empty  # scores of the failed try are gone with it
    assert store.done_run_ids() == {"a"}


def test_ok_twice_raises_and_changes_nothing(store):
    store.save(_record("a"))
    before = _snapshot(store)
    with pytest.raises(DuplicateRunError):
        store.save(_record("a", latency_s=9.0, n=3))
    for name, df in _snapshot(store).items():
        pd.testing.assert_frame_equal(df, before[name])


def test_failure_mid_transaction_rolls_back(store):
    store.save(_record("a", status="failed", latency_s=None))
    before = _snapshot(store)
    bad = _record("a", status="ok", latency_s=0.5, n=3)
    # Passes validation (known column) but sqlite cannot bind it: the runs row and the old
    # rows' deletion have already happened inside the transaction when this is reached.
    bad.comm[-1]["time_s"] = object()
    with pytest.raises(ValueError, match="comm row 2"):
        store.save(bad)
    for name, df in _snapshot(store).items():
        pd.testing.assert_frame_equal(df, before[name])
    assert store.done_run_ids() == set()


def test_unknown_column_rejected(store):
    rec = _record("a")
    rec.run["latency_ms"] = 3.0
    with pytest.raises(ValueError, match="latency_ms"):
        store.save(rec)
    rec = _record("b")
    rec.comm[0]["bogus"] = 1
    with pytest.raises(ValueError, match="bogus"):
        store.save(rec)
    with pytest.raises(ValueError, match="nope"):
        store.save_rows("projection", [{"run_id": "a", "nope": 1}])
    assert store.table("runs").empty


def test_bad_status_and_mismatched_run_id_rejected(store):
    with pytest.raises(ValueError, match="status"):
        store.save(_record("a", status="maybe"))
    rec = _record("a")
    rec.comm[0]["run_id"] = "other"
    with pytest.raises(ValueError, match="other"):
        store.save(rec)


def test_save_rows_replaces_matching_rows(store):
    row = {"run_id": "a", "hardware": "h100", "latency_s": 1.0}
    store.save_rows("projection", [row, {**row, "hardware": "a100"}])
    store.save_rows("projection", [{**row, "latency_s": 2.0}], {"run_id": "a", "hardware": "h100"})
    proj = store.table("projection").set_index("hardware")["latency_s"]
    assert proj.to_dict() == {"a100": 1.0, "h100": 2.0}


def test_second_connection_reads_while_open(store):
    store.save(_record("a"))
    with ResultStore(store.path) as other:
        assert other.done_run_ids() == {"a"}
        other.save(_record("b"))
    assert store.done_run_ids() == {"a", "b"}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_round_trip(store, tmp_path, fmt):
    store.save(_record("a"))
    store.save(_record("b", status="failed", latency_s=None))
    paths = store.export(tmp_path / "out", fmt)
    assert [p.name for p in paths] == [f"{name}.{fmt}" for name in schema.TABLES]
    for name, path in zip(schema.TABLES, paths, strict=True):
        want = store.table(name)
        got = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
        assert list(got.columns) == schema.column_names(name)
        # CSV carries no types: cast back to the store's dtypes before comparing values.
        got = got.astype(want.dtypes.to_dict())
        pd.testing.assert_frame_equal(got, want)


def test_export_rejects_unknown_format(store, tmp_path):
    with pytest.raises(ValueError, match="csv.*parquet"):
        store.export(tmp_path, "xlsx")


def test_store_from_an_older_schema_gains_new_columns_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.db"
    with ResultStore(path) as s:
        s.save(_record("a"))
    with sqlite3.connect(path) as conn:  # as a store written before the column existed
        conn.execute("ALTER TABLE runs DROP COLUMN buffer_bytes_per_rank")
    with ResultStore(path) as s:
        runs = s.table("runs")
        assert list(runs["run_id"]) == ["a"] and runs["buffer_bytes_per_rank"].isna().all()
        record = _record("b")
        record.run["buffer_bytes_per_rank"] = 1024
        s.save(record)
        assert s.table("runs").set_index("run_id").loc["b", "buffer_bytes_per_rank"] == 1024


# -- atomic creation -------------------------------------------------------------------------


class _Crash(BaseException):
    """A process killed at this point: nothing after it runs (not even `finally` cleanups,
    which the tests switch off too)."""


def _complete(path) -> bool:
    """The file at `path` is a store with every table (read-only look, nothing written)."""
    with ResultStore(path, read_only=True) as s:
        return all(
            list(s.table(name).columns) == schema.column_names(name) for name in schema.TABLES
        )


@pytest.mark.parametrize("point", ["schema", "wal", "link", "after_link"])
def test_creation_killed_at_any_point_leaves_no_file_or_a_complete_store(
    tmp_path, monkeypatch, point
):
    import os
    import subprocess
    import sys

    import suite.store.results as results

    path = tmp_path / "results.db"
    real_create_sql, real_link = results._create_sql, os.link
    calls = []

    def create_sql(name, columns):  # dies while the tables are being built
        calls.append(name)
        if len(calls) == 3:
            raise _Crash
        return real_create_sql(name, columns)

    def link(src, dst):
        if point == "after_link":
            real_link(src, dst)
        raise _Crash

    class Conn:  # dies on switching to WAL, after the schema committed in the temporary file
        def __init__(self, conn):
            self._conn = conn

        def execute(self, sql, *a):
            if "journal_mode" in sql:
                raise _Crash
            return self._conn.execute(sql, *a)

        def close(self):
            self._conn.close()

    if point == "schema":
        monkeypatch.setattr(results, "_create_sql", create_sql)
    elif point == "wal":
        real_connect = results.sqlite3.connect
        monkeypatch.setattr(results.sqlite3, "connect", lambda *a, **k: Conn(real_connect(*a, **k)))
    else:
        monkeypatch.setattr(results.os, "link", link)
    monkeypatch.setattr(results, "_remove_sqlite_files", lambda p: None)  # no cleanup when killed
    with pytest.raises(_Crash):
        ResultStore(path)
    monkeypatch.undo()
    # What a reader sees after the crash: no store, or a complete one; never a schema-less file.
    if point == "after_link":
        assert _complete(path)
    else:
        assert not path.exists()
    # The killed creator's temporary file, as if of a process now gone: the next opener creates
    # (or opens) the store, removes it, and the store works.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    for tmp in tmp_path.glob("*.creating*"):
        tmp.rename(tmp.with_name(tmp.name.replace(f".{os.getpid()}.", f".{dead.stdout.strip()}.")))
    with ResultStore(path) as s:
        s.save(_record("a"))
        assert s.done_run_ids() == {"a"}
    assert [p.name for p in tmp_path.iterdir() if "creating" in p.name] == []


def test_creation_keeps_a_store_another_process_created_meanwhile(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import suite.store.results as results

    path = tmp_path / "results.db"
    real_link = os.link

    def link(src, dst):  # another process wins the race and already stored a row
        code = (
            "from suite.store.results import ResultStore; "
            f"ResultStore({str(path)!r}).save_rows('projection', [{{'run_id': 'theirs'}}])"
        )
        env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
        real_link(src, dst)

    monkeypatch.setattr(results.os, "link", link)
    with ResultStore(path) as s:  # their store (and row) kept, not overwritten
        assert list(s.table("projection")["run_id"]) == ["theirs"]


def test_new_store_is_wal_and_created_with_its_parent(tmp_path):
    path = tmp_path / "a" / "b" / "results.db"
    ResultStore(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.db"]


# -- what is not a store ---------------------------------------------------------------------


def _damaged(kind: str, tmp_path) -> bytes:
    """The bytes of a results.db damaged in one way."""
    import os

    good = tmp_path / f"good-{kind}.db"
    good.unlink(missing_ok=True)
    with ResultStore(good) as s:
        for i in range(40):  # a few pages, so that a truncated copy misses some
            s.save(_record(f"r{i}", n=4))
    data = good.read_bytes()
    if kind == "truncated":
        return data[: len(data) // 2]
    if kind == "random":
        return os.urandom(8192)
    if kind == "header":
        return b"\0" * 16 + data[16:]
    if kind == "empty":
        return b""
    if kind == "foreign":
        other = tmp_path / "foreign.db"
        other.unlink(missing_ok=True)
        with sqlite3.connect(other) as conn:
            conn.execute("CREATE TABLE notes (text TEXT)")
        return other.read_bytes()
    raise ValueError(kind)


DAMAGE = {
    "truncated": "damaged SQLite database",
    "random": "does not start with the SQLite header",
    "header": "does not start with the SQLite header",
    "empty": r"empty \(0 bytes\)",
    "foreign": "not a diffscale results store",
}


@pytest.mark.parametrize("read_only", [True, False], ids=["ro", "rw"])
@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_unusable_file_raises_store_error_and_is_left_unchanged(tmp_path, kind, read_only):
    from suite.store.results import StoreError

    path = tmp_path / "results.db"
    path.write_bytes(_damaged(kind, tmp_path))
    before = path.read_bytes()
    with pytest.raises(StoreError, match=DAMAGE[kind]) as e:
        ResultStore(path, read_only=read_only)
    assert str(path) in str(e.value) and e.value.exit_code == 3
    assert path.read_bytes() == before


def test_empty_file_is_replaced_only_when_asked(tmp_path, capsys):
    from suite.store.results import StoreError

    path = tmp_path / "results.db"
    path.write_bytes(b"")
    with pytest.raises(StoreError, match="0 bytes"):
        ResultStore(path)
    with ResultStore(path, replace_empty=True) as s:  # what a sweep does, under its lock
        s.save(_record("a"))
    assert "empty (0 bytes" in capsys.readouterr().err
    with ResultStore(path, replace_empty=True) as s:  # a store with rows is never replaced
        assert s.done_run_ids() == {"a"}


# -- read-only opening -----------------------------------------------------------------------


def test_read_only_open_never_creates_or_writes(tmp_path):
    from suite.store.results import StoreError

    missing = tmp_path / "nope" / "results.db"
    with pytest.raises(StoreError, match="no results database") as e:
        ResultStore(missing, read_only=True)
    assert isinstance(e.value, FileNotFoundError) and not missing.parent.exists()

    path = tmp_path / "results.db"
    with ResultStore(path) as s:
        s.save(_record("a"))
    before = path.read_bytes()
    with ResultStore(path, read_only=True) as ro:
        assert ro.read_only and ro.done_run_ids() == {"a"}
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            ro.save(_record("b"))
        with pytest.raises(StoreError, match="read-only"):
            ro.recover_run_dirs()
    assert path.read_bytes() == before


def test_read_only_open_of_an_older_schema_reads_missing_parts_empty(tmp_path):
    path = tmp_path / "old.db"
    with ResultStore(path) as s:
        s.save(_record("a"))
        s.save_rows("projection", [{"run_id": "a", "hardware": "h100", "latency_s": 1.0}])
    with sqlite3.connect(path) as conn:  # a store written before this column and table existed
        conn.execute("ALTER TABLE runs DROP COLUMN buffer_bytes_per_rank")
        conn.execute("DROP TABLE projection")
    before = path.read_bytes()
    with ResultStore(path, read_only=True) as ro:
        runs = ro.table("runs")
        assert list(runs.columns) == schema.column_names("runs")
        assert list(runs["run_id"]) == ["a"] and runs["buffer_bytes_per_rank"].isna().all()
        assert ro.table("projection").empty
        assert str(ro.table("projection")["latency_s"].dtype) == "float64"
    assert path.read_bytes() == before  # no migration written by a reader
    with ResultStore(path) as s:  # a writer migrates
        assert s.table("projection").empty


# -- a run's files: pending until its row commits --------------------------------------------


def test_pending_dir_is_fresh_and_placed_over_a_stale_dir(tmp_path):
    from suite.store.results import pending_run_dir, place_run_dir

    old = pending_run_dir(tmp_path, "a")
    (old / "latents.pt").write_text("an earlier try")
    pending = pending_run_dir(tmp_path, "a")
    assert pending == tmp_path / "runs" / ".pending-a" and list(pending.iterdir()) == []
    (pending / "trace.npz").write_text("new")
    stale = tmp_path / "runs" / "a"
    stale.mkdir()
    (stale / "latents.pt").write_text("of a try never stored ok")
    final = place_run_dir(tmp_path, "a", "runs/a")
    assert final == stale and sorted(p.name for p in final.iterdir()) == ["trace.npz"]
    assert not pending.exists()


def test_recover_run_dirs_settles_what_a_crash_left(store):
    from suite.store.results import pending_run_dir

    root = store.root
    ok = _record("ok")
    ok.run["output_dir"] = "runs/ok"
    store.save(ok)
    store.save(_record("failed", status="failed", latency_s=None))
    (root / "runs" / "ok").mkdir(parents=True)
    (root / "runs" / "ok" / "trace.npz").write_text("stale: an older try")
    for run_id in ("ok", "failed", "unknown"):  # killed after (ok) or before its commit
        (pending_run_dir(root, run_id) / "trace.npz").write_text(f"{run_id} pending")
    notes = store.recover_run_dirs()
    assert len(notes) == 3 and any("moved into runs/ok" in n for n in notes)
    assert sorted(p.name for p in (root / "runs").iterdir()) == ["ok"]
    assert (root / "runs" / "ok" / "trace.npz").read_text() == "ok pending"
    assert store.recover_run_dirs() == []


# -- the directory lock ----------------------------------------------------------------------


def test_directory_lock_refuses_a_second_writer_and_names_the_holder(tmp_path):
    import json
    import os

    from suite.store.results import DirectoryLock, StoreBusyError

    with DirectoryLock(tmp_path, command="diffscale run exp.yaml") as lock:
        holder = json.loads(lock.path.read_text())
        assert holder["pid"] == os.getpid() and holder["command"] == "diffscale run exp.yaml"
        with pytest.raises(StoreBusyError) as e:
            DirectoryLock(tmp_path).acquire()
        assert f"pid {os.getpid()}" in str(e.value) and "diffscale run exp.yaml" in str(e.value)
        assert str(tmp_path) in str(e.value) and e.value.exit_code == 4
    with DirectoryLock(tmp_path):  # released: the next writer gets it
        pass


def test_directory_lock_dies_with_its_process(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from suite.store.results import DirectoryLock, StoreBusyError

    root = Path(__file__).resolve().parents[2]
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from suite.store.results import DirectoryLock; "
         f"DirectoryLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); "
         "time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, env=os.environ | {"PYTHONPATH": str(root)},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreBusyError, match=f"pid {holder.pid} "):
            DirectoryLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)  # no cleanup runs: the kernel drops the flock
        holder.wait()
    with DirectoryLock(tmp_path):
        pass
