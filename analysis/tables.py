"""Tidy DataFrames computed from the results store (no plotting here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from suite.store.results import ResultStore

# A run and its baseline must agree on all of these; only the parallelism may differ. frames: a
# video clip's (empty for images, and in stores older than the column, which read it empty).
BASELINE_KEY = [
    "workload",
    "frames",
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


def size_text(frames: object, height: object, width: object) -> str:
    """'81x720x1280' for a video clip (frames x height x width), '1024x1024' for an image
    (frames empty or 0)."""

    def text(v: object) -> str:
        return "?" if v is None or pd.isna(v) else str(int(v))

    hw = f"{text(height)}x{text(width)}"
    return hw if frames is None or pd.isna(frames) or not int(frames) else f"{int(frames)}x{hw}"


def sizes(df: pd.DataFrame) -> pd.Series:
    """`size_text` of every row of `df` (a frame without a `frames` column: images)."""
    frames = df["frames"] if "frames" in df else pd.Series(pd.NA, index=df.index)
    return pd.Series(
        [size_text(f, h, w) for f, h, w in zip(frames, df["height"], df["width"], strict=True)],
        index=df.index,
        dtype=object,
    )


def with_frames(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with an empty (image) `frames` column where it has none, e.g. a frame built by hand."""
    if "frames" in df:
        return df
    return df.assign(frames=pd.Series(pd.NA, index=df.index, dtype="Int64"))


def open_store(db_path: str | Path) -> ResultStore:
    """Open an existing store read-only (nothing created, migrated or written); StoreError if
    there is none at `db_path` or it is not a usable store (suite.store.results)."""
    return ResultStore(Path(db_path), read_only=True)


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


def readable_dict(text: object) -> dict:
    """`degrees` or `options` as stored (JSON) or as `load_runs` shows them ('split=frames,
    warmup_steps=1') back to a dict; {} when empty or unreadable. A readable value may itself
    hold ', ' (a list), so only ', ' before the next 'name=' separates two entries."""
    if isinstance(text, dict):
        return text
    if not isinstance(text, str):
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        pairs = (p.partition("=") for p in re.split(r",\s*(?=\w+=)", text.strip()))
        return {k.strip(): v.strip() for k, sep, v in pairs if sep}
    return value if isinstance(value, dict) else {}


def data_degree(degrees: object) -> int:
    """Degree of the data axis from `degrees` as stored (JSON) or as `load_runs` shows it
    ('data=2, cfg=2'); 1 when there is no data axis or the value cannot be read."""
    try:
        return max(1, int(readable_dict(degrees).get("data", 1)))
    except (TypeError, ValueError):
        return 1


def _baseline_latency(df: pd.DataFrame, key: pd.DataFrame) -> np.ndarray:
    """Per row of `key` (BASELINE_KEY columns): median latency_s of the ok single-device runs
    (strategy 'none', 1 rank) of `df` with equal values; NaN where there is none."""
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
    # A left merge on the key keeps the rows' order; NaN keys (e.g. no seed) match each other.
    # The batch compares as float: a per-rank batch is computed, the stored one an integer.
    key = key[BASELINE_KEY].astype({"batch": "float64"})
    merged = key.merge(base.astype({"batch": "float64"}), on=BASELINE_KEY, how="left")
    return merged["_baseline_latency_s"].to_numpy(dtype=float)


def with_speedup(df: pd.DataFrame) -> pd.DataFrame:
    """Add `speedup` (baseline latency_s / latency_s), `efficiency_pct` (100 * speedup / ranks)
    and the per-rank-work comparison of data-parallel runs.

    The baseline of a run is the ok run with strategy 'none' on one rank with equal
    `BASELINE_KEY` values; several matching baselines (repeated sweeps) count by their median
    latency. Runs without a baseline, and failed runs, get NaN.

    Efficiency above 100% is possible and not free speed: with data parallelism each rank runs
    batch / data images, a smaller working set that may fit in cache, or get other kernels. So
    for runs with a data axis of degree d > 1 dividing the batch: `per_rank_batch` = batch / d,
    `baseline_per_rank_work_s` = the single-device latency at that batch (same key otherwise;
    NaN when no such run is stored) and `efficiency_per_rank_work_pct` = 100 *
    baseline_per_rank_work_s / (latency_s * world_size / d): the efficiency against a device
    doing one data-parallel group's share of the work. Other runs get NA / NaN there.
    """
    df = with_frames(df)
    out = df.copy()
    baseline = _baseline_latency(df, out)
    latency = out["latency_s"].to_numpy(dtype=float)
    ok = (out["status"] == "ok").to_numpy(dtype=bool)
    world = out["world_size"].to_numpy(dtype=float, na_value=np.nan)
    data = out["degrees"].map(data_degree).to_numpy(dtype=int)
    batch = out["batch"].to_numpy(dtype=float, na_value=np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        speedup = np.where(ok & (latency > 0), baseline / latency, np.nan)
        out["speedup"] = speedup
        out["efficiency_pct"] = 100.0 * speedup / world
        per_rank = batch / data
        applies = ok & (data > 1) & (per_rank >= 1) & (per_rank == np.floor(per_rank))
        out["per_rank_batch"] = pd.array(
            np.where(applies, per_rank, np.nan), dtype="Float64"
        ).astype("Int64")
        key = out[BASELINE_KEY].assign(batch=np.where(applies, per_rank, np.nan))
        per_rank_base = np.where(applies, _baseline_latency(df, key), np.nan)
        out["baseline_per_rank_work_s"] = per_rank_base
        out["efficiency_per_rank_work_pct"] = np.where(
            latency > 0, 100.0 * per_rank_base * data / (latency * world), np.nan
        )
    return out


def comm_by_op(db: str | Path | ResultStore) -> pd.DataFrame:
    """Per run, op and mesh axis: the comm table's per-step numbers, mean over the ranks with rows.

    Columns: run_id, workload, strategy, options (readable), world_size, op, axis, ranks (ranks
    with rows),
    calls_per_step, bytes_per_step, time_s (summed call durations), inflight_s (time a call was
    in flight; NaN for rows stored before it existed), exposed_s (per step, seconds), and
    algbw_gb_per_s = bytes_per_step / time_s / 1e9 (nccl-tests' algorithm bandwidth).
    """
    comm = read_table(db, "comm")
    runs = load_runs(db)[["run_id", "workload", "strategy", "options", "world_size"]]
    values = ["calls_per_step", "bytes_per_step", "time_s", "inflight_s", "exposed_s"]
    grouped = comm.groupby(["run_id", "op", "axis"], dropna=False, sort=True)
    out = grouped[values].mean()
    out.insert(0, "ranks", grouped["rank"].nunique())
    out = out.reset_index().merge(runs, on="run_id", how="left")
    with np.errstate(divide="ignore", invalid="ignore"):
        bw = out["bytes_per_step"].to_numpy(dtype=float) / out["time_s"].to_numpy(dtype=float)
    out["algbw_gb_per_s"] = np.where(np.isfinite(bw), bw / 1e9, np.nan)
    columns = ["run_id", "workload", "strategy", "options", "world_size", "op", "axis", "ranks"]
    return out[columns + values + ["algbw_gb_per_s"]]
