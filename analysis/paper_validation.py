"""The projection against published rows, fit data and test data apart.

papers/validation.yaml declares the tables whose rows may calibrate the projection (fit); every
other published latency row tests it. A test row that repeats a fit row (the same workload,
size, steps, devices, method, hardware and value in another table) is dropped from the test
set, so that no row is both. Errors are reported signed and absolute, per table and per GPU
count, so that a bias growing with the GPU count shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from analysis.paper_match import fastest_match
from analysis.papers import PAPERS_DIR

SPLIT_FILE = PAPERS_DIR / "validation.yaml"
_KEY = ("workload", "height", "width", "steps", "devices", "strategy", "degrees",
        "hardware_profile", "value")  # fmt: skip


def load_split(path: Path = SPLIT_FILE) -> dict:
    return yaml.safe_load(path.read_text())


def fit_keys(split: dict) -> list[tuple[str, str]]:
    """(experiment, table_or_figure) of every fit table."""
    return [(f["experiment"], f["table_or_figure"]) for f in split.get("fit") or []]


def row_key(row) -> tuple:
    """What makes two published rows the same number: workload, size, steps, devices, method,
    hardware and value."""
    return tuple(str(row[k]) for k in _KEY)


def label_rows(comp: pd.DataFrame, split: dict) -> pd.DataFrame:
    """Multi-device latency rows answered by ours, with `split` fit / test; test rows that
    repeat a fit row are dropped."""
    lat = comp[(comp["metric"] == "latency_s") & (comp["devices"] > 1)]
    lat = lat[lat["value"].notna() & lat["ours"].notna()].copy()
    fits = set(fit_keys(split))
    is_fit = [
        (e, t) in fits for e, t in zip(lat["experiment"], lat["table_or_figure"], strict=True)
    ]
    lat["split"] = np.where(is_fit, "fit", "test")
    keys = lat.apply(row_key, axis=1)
    fit_rows = set(keys[lat["split"] == "fit"])
    repeat = (lat["split"] == "test") & keys.isin(fit_rows)
    return lat[~repeat]


def _stats(g: pd.DataFrame) -> dict:
    free, pinned = g["error_pct"].dropna(), g["error_anchored_pct"].dropna()
    return {
        "rows": len(free),
        "signed median %": float(np.median(free)) if len(free) else np.nan,
        "median |error| %": float(np.median(np.abs(free))) if len(free) else np.nan,
        "anchored signed median %": float(np.median(pinned)) if len(pinned) else np.nan,
        "anchored median |error| %": float(np.median(np.abs(pinned))) if len(pinned) else np.nan,
    }


def by_gpu_count(rows: pd.DataFrame) -> pd.DataFrame:
    """Per split and GPU count (and all counts): signed and absolute median errors."""
    out = []
    for split, g in rows.groupby("split"):
        for devices, d in g.groupby("devices"):
            out.append({"split": split, "GPUs": str(devices), **_stats(d)})
        out.append({"split": split, "GPUs": "all", **_stats(g)})
    out.append({"split": "all", "GPUs": "all", **_stats(rows)})
    return pd.DataFrame(out)


def by_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per table and GPU count: signed and absolute median errors, with the table's split."""
    out = []
    for (exp, table, split), g in rows.groupby(["experiment", "table_or_figure", "split"]):
        for devices, d in g.groupby("devices"):
            out.append({"table": f"{exp}: {table}", "split": split, "GPUs": devices, **_stats(d)})
    return pd.DataFrame(out)


def fastest(comp: pd.DataFrame) -> tuple[int, int]:
    """Columns where our fastest method is the paper's, over every table."""
    same = total = 0
    for _, g in comp.groupby("table_or_figure"):
        s, t = fastest_match(g)
        same, total = same + s, total + t
    return same, total


def load_comparisons(reports_root: Path) -> pd.DataFrame:
    """Every reports/papers/<experiment>/comparison.csv, stacked."""
    frames = [pd.read_csv(f) for f in sorted(reports_root.glob("*/comparison.csv"))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
