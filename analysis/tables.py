"""Tidy DataFrames computed from the results store (no plotting here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from suite.results import ResultStore

# A run and its baseline must agree on all of these; only the parallelism may differ.
BASELINE_KEY = [
    "workload",
    "height",
    "width",
    "steps",
    "batch",
    "scheduler",
    "guidance",
    "dtype",
    "device",
    "threads_per_rank",
    "seed",
]
BASELINE_STRATEGY = "none"


def open_store(db_path: str | Path) -> ResultStore:
    """Open an existing store; FileNotFoundError if there is none at `db_path`."""
    path = Path(db_path)
    # ResultStore would create an empty store at a mistyped path; a reader should not.
    if not path.is_file():
        raise FileNotFoundError(f"No results store at {path}.")
    return ResultStore(path)


def read_table(db: str | Path | ResultStore, name: str) -> pd.DataFrame:
    """Table `name` of a store given as an open ResultStore or the path of its SQLite file."""
    if isinstance(db, ResultStore):
        return db.table(name)
    with open_store(db) as store:
        return store.table(name)


def readable_json(text: object) -> object:
    """'{"data": 2, "cfg": 2}' -> 'data=2, cfg=2'; '{}' -> ''; non-JSON is returned as is."""
    if not isinstance(text, str):
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return text


def load_runs(db: str | Path | ResultStore) -> pd.DataFrame:
    """The runs table with `degrees` and `options` decoded to readable 'axis=n' strings."""
    df = read_table(db, "runs")
    for col in ("degrees", "options"):
        df[col] = df[col].map(readable_json).astype(df[col].dtype)
    return df


def with_speedup(df: pd.DataFrame) -> pd.DataFrame:
    """Add `speedup` (baseline latency_s / latency_s) and `efficiency_pct` (100 * speedup / ranks).

    The baseline of a run is the ok run with strategy 'none' on one rank with equal
    `BASELINE_KEY` values; several matching baselines (repeated sweeps) count by their median
    latency. Runs without a baseline, and failed runs, get NaN.
    """
    out = df.copy()
    is_base = (
        (df["status"] == "ok")
        & (df["strategy"] == BASELINE_STRATEGY)
        & (df["world_size"] == 1)
        & df["latency_s"].notna()
    ).fillna(False)
    base = (
        df[is_base]
        .groupby(BASELINE_KEY, dropna=False, sort=False)["latency_s"]
        .median()
        .rename("_baseline_latency_s")
        .reset_index()
    )
    # A left merge on the key keeps df's row order; NaN keys (e.g. no seed) match each other.
    merged = out[BASELINE_KEY].merge(base, on=BASELINE_KEY, how="left")
    baseline = merged["_baseline_latency_s"].to_numpy(dtype=float)
    latency = out["latency_s"].to_numpy(dtype=float)
    ok = (out["status"] == "ok").to_numpy(dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        speedup = np.where(ok & (latency > 0), baseline / latency, np.nan)
        world = out["world_size"].to_numpy(dtype=float, na_value=np.nan)
        out["speedup"] = speedup
        out["efficiency_pct"] = 100.0 * speedup / world
    return out


def comm_by_op(db: str | Path | ResultStore) -> pd.DataFrame:
    """Per run, op and mesh axis: the comm table's per-step numbers, mean over the ranks with rows.

    Columns: run_id, workload, strategy, world_size, op, axis, ranks (ranks with rows),
    calls_per_step, bytes_per_step, time_s, exposed_s (per step, seconds), and
    algbw_gb_per_s = bytes_per_step / time_s / 1e9 (nccl-tests' algorithm bandwidth).
    """
    comm = read_table(db, "comm")
    runs = read_table(db, "runs")[["run_id", "workload", "strategy", "world_size"]]
    values = ["calls_per_step", "bytes_per_step", "time_s", "exposed_s"]
    grouped = comm.groupby(["run_id", "op", "axis"], dropna=False, sort=True)
    out = grouped[values].mean()
    out.insert(0, "ranks", grouped["rank"].nunique())
    out = out.reset_index().merge(runs, on="run_id", how="left")
    with np.errstate(divide="ignore", invalid="ignore"):
        bw = out["bytes_per_step"].to_numpy(dtype=float) / out["time_s"].to_numpy(dtype=float)
    out["algbw_gb_per_s"] = np.where(np.isfinite(bw), bw / 1e9, np.nan)
    columns = ["run_id", "workload", "strategy", "world_size", "op", "axis", "ranks"]
    return out[columns + values + ["algbw_gb_per_s"]]
