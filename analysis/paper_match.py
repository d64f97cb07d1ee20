"""A paper's published rows set beside ours: which of our runs answers each row, and how far off.

`ours` is one row per (run, hardware, anchoring): the run's fields (workload, size, steps,
strategy, degrees, options, world_size), where the number comes from (`source`: projected on a
profile, or measured), and the seconds of each stage a paper may time (`loop_s`, `text_s`,
`vae_s`; analysis.papers.TIMED says which a row's latency covers) plus `link_pct`.

A paper row is matched on workload, size, steps, hardware profile (projected numbers) and device
count; then on its strategy, degrees and options where the paper states them. Where it leaves
them unstated (PipeFusion's patch number, xDiT's "best hybrid"), the row gets the fastest of our
candidates, and says which one it took. Speedups are ours over our own single device, the
paper's convention. Torch-free.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

LATENCY_METRICS = ("latency_s", "speedup", "comm_share_pct")
STAGES = {"loop": ("loop_s",), "loop+text": ("loop_s", "text_s"),
          "pipeline": ("loop_s", "text_s", "vae_s")}  # fmt: skip
MISS_PCT = 30.0  # a miss the page must explain (issue: every miss above 30%)


def canonical(text) -> str:
    """A degrees / options JSON cell in one spelling (sorted keys); '' when empty."""
    if text is None or (isinstance(text, float) and np.isnan(text)) or text == "":
        return ""
    value = json.loads(text) if isinstance(text, str) else text
    return json.dumps(value, sort_keys=True) if value else ""


def total_s(ours: pd.DataFrame, timed: str) -> pd.Series:
    """Seconds of what a paper with convention `timed` measures, per row of `ours`."""
    return sum(ours[c] for c in STAGES[timed])


def _contains(options: str, wanted: str) -> bool:
    have = json.loads(options) if options else {}
    return all(have.get(k) == v for k, v in json.loads(wanted).items())


def same_workload(ours: pd.DataFrame, row: pd.Series) -> pd.Series:
    """Mask of our rows with paper `row`'s workload, size and steps."""
    return (
        (ours["workload"] == row["workload"])
        & (ours["height"] == row["height"])
        & (ours["width"] == row["width"])
        & (ours["steps"] == row["steps"])
    )


def candidates(row: pd.Series, ours: pd.DataFrame) -> pd.DataFrame:
    """Our rows that answer paper `row` (any number of them: the caller picks the fastest)."""
    c = ours[
        same_workload(ours, row)
        & (ours["world_size"] == row["devices"])
        & ((ours["source"] == "measured") | (ours["hardware"] == row["hardware_profile"]))
    ]
    if row["strategy"]:
        c = c[c["strategy"] == row["strategy"]]
    if canonical(row["degrees"]):
        c = c[c["degrees"].map(canonical) == canonical(row["degrees"])]
    if canonical(row["options"]):
        c = c[c["options"].map(lambda o: _contains(canonical(o), canonical(row["options"])))]
    return c


def _label(r: pd.Series) -> str:
    degrees = " ".join(f"{k}={v}" for k, v in json.loads(r["degrees"] or "{}").items())
    return f"{r['strategy']} {degrees}".strip()


def _pick(row: pd.Series, cands: pd.DataFrame) -> pd.Series | None:
    """The fastest candidate, measured numbers before projected ones."""
    if cands.empty:
        return None
    measured = cands[cands["source"] == "measured"]
    pool = measured if len(measured) else cands
    return pool.loc[total_s(pool, row["timed"]).idxmin()]


def _baseline(row: pd.Series, ours: pd.DataFrame, mine: pd.Series) -> pd.Series | None:
    """Our single-device run of the same workload, on the same hardware and source."""
    base = ours[
        same_workload(ours, row)
        & (ours["world_size"] == 1)
        & (ours["hardware"] == mine["hardware"])
        & (ours["source"] == mine["source"])
    ]
    return None if base.empty else base.iloc[0]


def _value(row: pd.Series, ours: pd.DataFrame, mine: pd.Series) -> float:
    seconds = float(sum(mine[c] for c in STAGES[row["timed"]]))
    if row["metric"] == "latency_s":
        return seconds
    if row["metric"] == "comm_share_pct":
        return float(mine["link_pct"])
    base = _baseline(row, ours, mine)  # speedup: ours over our own single device
    if base is None:
        return float("nan")
    return float(sum(base[c] for c in STAGES[row["timed"]])) / seconds


def compare(paper: pd.DataFrame, ours: pd.DataFrame) -> pd.DataFrame:
    """Each timing row of `paper` with ours beside it: `ours` / `ours_anchored` (NaN where we
    have no run), their `config`, `source`, error in percent (ours - paper) / paper, and `why`
    where we have nothing. `ours` holds unanchored rows (`anchored` False) and, optionally,
    anchored ones."""
    rows = []
    pinned = ours["anchored"].astype(bool)
    free, anchored = ours[~pinned], ours[pinned]
    timing = paper[paper["metric"].isin(LATENCY_METRICS)]
    timing = timing[(timing["metric"] != "speedup") | (timing["devices"] > 1)]  # 1x by definition
    for _, row in timing.iterrows():
        out = row.to_dict()
        mine = _pick(row, candidates(row, free))
        out["ours"] = np.nan if mine is None else _value(row, free, mine)
        out["config"] = "" if mine is None else _label(mine)
        out["source"] = "" if mine is None else mine["source"]
        out["hardware_used"] = "" if mine is None else mine["hardware"]
        out["dtype_used"] = "" if mine is None else str(mine["dtype"]).replace("float", "fp")
        out["why"] = "" if mine is not None else _why(row, free)
        pinned = None if mine is None else candidates(row, anchored)
        if pinned is not None and len(pinned):
            pinned = pinned[(pinned["strategy"] == mine["strategy"])
                            & (pinned["degrees"] == mine["degrees"])
                            & (pinned["options"] == mine["options"])]  # fmt: skip
        a = None if pinned is None or pinned.empty else pinned.iloc[0]
        out["ours_anchored"] = np.nan if a is None else _value(row, anchored, a)
        out["anchor"] = "" if a is None else a["anchor"]
        rows.append(out)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for col, err in (("ours", "error_pct"), ("ours_anchored", "error_anchored_pct")):
        df[err] = 100 * (df[col] - df["value"]) / df["value"]
    df["ratio"] = df["ours"] / df["value"]
    return df


def _why(row: pd.Series, ours: pd.DataFrame) -> str:
    if row["status"] == "oom":
        return "the paper reports out of memory (no value)"
    size = (ours["height"] == row["height"]) & (ours["width"] == row["width"])
    if not (size & (ours["steps"] == row["steps"])).any():
        return (
            f"no run at {row['height']}x{row['width']}, {row['steps']} steps in "
            f"configs/papers/{row['experiment']}.yaml"
        )
    if not row["strategy"] and row["devices"] > 1 and not canonical(row["degrees"]):
        return "no run of ours at this device count"
    return f"no matching run in configs/papers/{row['experiment']}.yaml (its 'skipped' block)"


def fastest_match(comp: pd.DataFrame, column: str = "ours") -> tuple[int, int]:
    """(columns where our fastest method is the paper's, columns compared). A column: one table,
    column label, hardware and device count with at least two methods the paper times and we
    answer (multi-device latency rows)."""
    lat = comp[(comp["metric"] == "latency_s") & (comp["devices"] > 1)]
    lat = lat[lat["value"].notna() & lat[column].notna()]
    same = total = 0
    keys = ["table_or_figure", "column_label", "hardware_profile", "devices"]
    for _, g in lat.groupby(keys):
        if g["row_label"].nunique() < 2:
            continue
        total += 1
        same += g.loc[g["value"].idxmin(), "row_label"] == g.loc[g[column].idxmin(), "row_label"]
    return int(same), total


def summary(comp: pd.DataFrame) -> pd.DataFrame:
    """Per table or figure: rows compared, the median absolute error of the multi-device latency
    rows (unanchored, anchored) and how often our fastest method per column is the paper's."""
    out = []
    for table, g in comp.groupby("table_or_figure", sort=False):
        lat = g[(g["metric"] == "latency_s") & (g["devices"] > 1)]
        free, pinned = lat["error_pct"].dropna(), lat["error_anchored_pct"].dropna()
        same, total = fastest_match(g)
        out.append(
            {
                "experiment": g["experiment"].iloc[0],
                "table_or_figure": table,
                "rows": int(g["value"].notna().sum()),
                "answered": int((g["ours"].notna() & g["value"].notna()).sum()),
                "multi_device_latency_rows": len(free),
                "median_abs_error_pct": float(np.median(np.abs(free))) if len(free) else np.nan,
                "median_abs_error_anchored_pct": (
                    float(np.median(np.abs(pinned))) if len(pinned) else np.nan
                ),
                "fastest_same": same,
                "fastest_columns": total,
            }
        )
    return pd.DataFrame(out)
