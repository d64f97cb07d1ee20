"""ResultStore: schema, resume, replacement of failed runs, atomicity, export."""

from __future__ import annotations

import sqlite3

import pandas as pd
import pytest

from suite import schema
from suite.results import DuplicateRunError, ResultStore, RunRecord


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
