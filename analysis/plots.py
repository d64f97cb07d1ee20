"""Figures of the runs table (as given by `analysis.tables`); each function writes one PNG.

Figures are built on matplotlib's Agg canvas directly, not through pyplot: no global figure
state, no display needed, safe to call from a CLI on a headless machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from analysis.tables import readable_dict, size_text
from analysis.tables import sizes as run_sizes

BASELINE_STRATEGY = "none"
_LINESTYLES = ("-", "--", "-.", ":")
_DPI = 120


def _ok_runs(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[(df["status"] == "ok").fillna(False) & df["latency_s"].notna()]
    return ok.copy()


def _case_labels(ok: pd.DataFrame) -> pd.Series:
    """Workload name, plus size / steps / batch where they vary within that workload."""
    parts = {
        "size": run_sizes(ok),  # frames x height x width for a video clip
        "steps": ok["steps"].astype(str) + " steps",
        "batch": "batch " + ok["batch"].astype(str),
    }
    label = ok["workload"].astype(str)
    for part in parts.values():
        varies = part.groupby(ok["workload"]).transform("nunique") > 1
        label = label.where(~varies, label + " " + part)
    return label


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, dpi=_DPI, bbox_inches="tight")
    return out


def _empty(title: str, path: str | Path) -> Path:
    fig = Figure(figsize=(6, 2.5))
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, "no ok runs", ha="center", va="center", fontsize=14, color="grey")
    return _save(fig, path)


def plot_latency_vs_world(df: pd.DataFrame, path: str | Path) -> Path:
    """Latency (s) against world size, one line per workload x strategy; returns `path`.

    Every line starts at its workload's single-rank baseline (strategy 'none'); a dotted line
    shows ideal scaling (baseline / world size). Where several runs share a world size (other
    degrees, repeated sweeps) the fastest is drawn.
    """
    title = "Denoising latency vs world size (measured)"
    ok = _ok_runs(df)
    if ok.empty:
        return _empty(title, path)
    ok["_case"] = _case_labels(ok)
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    is_base = ((ok["strategy"] == BASELINE_STRATEGY) & (ok["world_size"] == 1)).fillna(False)
    several = ok.groupby(["_case", "strategy", "world_size"])["latency_s"].size().max() > 1
    # One colour per strategy across workloads; workloads differ by line style.
    strategies = sorted(set(ok["strategy"].dropna()) - {BASELINE_STRATEGY})
    colors = {st: f"C{k % 10}" for k, st in enumerate(strategies)}
    colors[BASELINE_STRATEGY] = "dimgrey"
    base_labelled = ideal_labelled = False
    for i, (case, rows) in enumerate(ok.groupby("_case", sort=True)):
        style = _LINESTYLES[i % len(_LINESTYLES)]
        base_rows = rows[is_base[rows.index]]
        base = base_rows["latency_s"].min() if not base_rows.empty else np.nan
        others = rows[~is_base[rows.index]]
        for strategy, runs in others.groupby("strategy", sort=True):
            best = runs.groupby("world_size")["latency_s"].min()
            if not np.isnan(base) and 1 not in best.index:
                best = pd.concat([pd.Series({1: base}), best])
            best = best.sort_index()
            ax.plot(
                best.index.astype(float),
                best.to_numpy(float),
                style,
                color=colors[strategy],
                marker="o",
                label=f"{case} | {strategy}",
            )
        if not np.isnan(base):
            ax.plot(
                [1],
                [base],
                "*",
                color="black",
                markersize=12,
                label=None if base_labelled else "baseline (strategy none, 1 rank)",
            )
            base_labelled = True
            if not others.empty:
                ws = np.array(sorted({1, *others["world_size"].astype(int)}), dtype=float)
                ax.plot(
                    ws,
                    base / ws,
                    ":",
                    color="grey",
                    label=None if ideal_labelled else "ideal (baseline / world size)",
                )
                ideal_labelled = True
    worlds = sorted(int(w) for w in ok["world_size"].unique())
    ax.set_xscale("log", base=2)
    ax.set_xticks(worlds, [str(w) for w in worlds])
    ax.xaxis.set_minor_locator(NullLocator())
    lat = ok["latency_s"].to_numpy(float)
    # Workloads of very different cost would flatten each other on a linear axis.
    if lat.min() > 0 and lat.max() / lat.min() > 20:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.set_xlabel("world size (ranks, log2 scale)")
    ax.set_ylabel("latency_s: median denoising loop [s]")
    ax.set_title(title + ("\nfastest run per world size shown" if several else ""))
    ax.grid(True, alpha=0.3)
    n_entries = len(ax.get_legend_handles_labels()[1])
    if n_entries > 8:
        fig.legend(fontsize="small", loc="outside right upper")
    else:
        ax.legend(fontsize="small")
    return _save(fig, path)


def _bar_labels(rows: pd.DataFrame) -> list[str]:
    """One y-label per row of a workload's panel (the panel's title names the workload).

    Size, strategy and world size; a hybrid's degrees; steps or batch where they vary in the
    panel; and of the options only those that differ between runs of the same strategy (two
    distrifusion runs read 'split=frames' and 'split=height', not every default spelled out:
    the table beside the plot has them all).
    """
    options = [readable_dict(o) for o in rows.get("options", pd.Series([None] * len(rows)))]
    strategies = rows["strategy"].astype(str).tolist()
    differing: dict[str, set[str]] = {}
    for strategy in set(strategies):
        same = [opts for opts, s in zip(options, strategies, strict=True) if s == strategy]
        keys = {key for opts in same for key in opts}
        differing[strategy] = {k for k in keys if len({opts.get(k) for opts in same}) > 1}
    varying = [c for c in ("steps", "batch") if c in rows and rows[c].nunique() > 1]
    labels = []
    for (_, r), opts, strategy in zip(rows.iterrows(), options, strategies, strict=True):
        size = size_text(r.get("frames"), r["height"], r["width"])
        text = f"{size} | {strategy} w{r['world_size']}"
        degrees = r.get("degrees")
        # one axis ('data=2', 'patch=2') only repeats the world size; hybrids need theirs
        if len(readable_dict(degrees)) > 1:
            text += f" [{degrees}]"
        extras = [f"{c} {r[c]}" for c in varying]
        extras += [f"{k}={opts[k]}" for k in sorted(differing[strategy]) if k in opts]
        if extras:
            text += f" ({', '.join(extras)})"
        labels.append(text)
    return labels


def _breakdown_panel(ax: Axes, runs: pd.DataFrame) -> None:
    exposed = runs["exposed_comm_s"].fillna(0.0).to_numpy(float)
    compute = runs["compute_s"].to_numpy(float)
    compute = np.where(np.isnan(compute), runs["step_s"].to_numpy(float) - exposed, compute)
    compute = np.nan_to_num(compute)
    overlapped = np.clip(runs["comm_s"].fillna(0.0).to_numpy(float) - exposed, 0.0, None)
    y = np.arange(len(runs))
    ax.barh(y - 0.12, compute, height=0.5, color="tab:blue", label="compute_s")
    ax.barh(y - 0.12, exposed, height=0.5, left=compute, color="tab:red", label="exposed_comm_s")
    ax.barh(
        y + 0.3,
        overlapped,
        height=0.22,
        facecolor="white",
        edgecolor="tab:red",
        hatch="////",
        label="overlapped comm (comm_s - exposed_comm_s: in flight under compute)",
    )
    ax.set_yticks(y, _bar_labels(runs), fontsize="small")
    ax.set_ylim(len(runs) - 0.4, -0.6)  # first run on top, no empty margin
    ax.margins(x=0.04)
    ax.grid(True, axis="x", alpha=0.3)


def plot_breakdown(df: pd.DataFrame, path: str | Path) -> Path:
    """Per-step time (s) of each ok run: compute + exposed comm stacked, overlapped comm hatched.

    Overlapped comm (comm_s - exposed_comm_s: time with a collective in flight while the rank
    was not blocked) ran while the rank computed, so it is drawn as a thinner hatched bar under
    the stack rather than added to it; it is never longer than the compute bar (comm_s is a
    union of intervals within the step, see suite.worlds.record). One panel per workload, each with
    its own time axis (workloads differ in cost by orders of magnitude). Returns `path`.
    """
    title = "Per-step breakdown (measured, mean over ranks)"
    ok = _ok_runs(df)
    if ok.empty:
        return _empty(title, path)
    # Baseline first within each workload, as in the report's table.
    ok["_not_base"] = ok["strategy"] != BASELINE_STRATEGY
    order = ["workload", "frames", "height", "width", "steps", "_not_base", "strategy"]
    ok = ok.sort_values([c for c in order if c in ok] + ["world_size"], kind="stable")
    groups = [g for _, g in ok.groupby("workload", sort=True)]
    sizes = [len(g) for g in groups]
    # Height grows with the number of runs so labels never overlap.
    height = 0.42 * len(ok) + 1.1 * len(groups) + 1.2
    fig = Figure(figsize=(8, max(3.0, height)), layout="constrained")
    axes = fig.subplots(len(groups), 1, squeeze=False, height_ratios=sizes)[:, 0]
    for ax, runs in zip(axes, groups, strict=True):
        _breakdown_panel(ax, runs)
        ax.set_title(str(runs["workload"].iloc[0]), fontsize="medium", loc="left")
    axes[-1].set_xlabel("time per denoising step [s]")
    fig.suptitle(title)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize="small", loc="outside lower center", ncols=2)
    return _save(fig, path)


# -- per-rank breakdown and overlap (frames of analysis.breakdown) ----------------------------
def _empty_note(title: str, path: str | Path, note: str) -> Path:
    fig = Figure(figsize=(6, 2.5))
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, note, ha="center", va="center", fontsize=14, color="grey")
    return _save(fig, path)


def _panels(df: pd.DataFrame, bar_height: float) -> tuple[Figure, list, list[pd.DataFrame]]:
    """One panel per workload (their costs differ by orders of magnitude), baseline first."""
    df = df.assign(_not_base=df["strategy"] != BASELINE_STRATEGY)
    order = [
        "workload",
        "frames",
        "height",
        "width",
        "_not_base",
        "strategy",
        "world_size",
        "run_id",
    ]
    df = df.sort_values([c for c in order if c in df.columns], kind="stable")
    groups = [g for _, g in df.groupby("workload", sort=True)]
    sizes = [len(g) for g in groups]
    height = bar_height * len(df) + 1.1 * len(groups) + 1.2
    fig = Figure(figsize=(9, max(3.0, height)), layout="constrained")
    axes = fig.subplots(len(groups), 1, squeeze=False, height_ratios=sizes)[:, 0]
    return fig, list(axes), groups


def plot_rank_breakdown(ranks: pd.DataFrame, path: str | Path) -> Path:
    """Per-step time (s) of every rank of every ok run (`analysis.breakdown.rank_breakdown`).

    compute_s and exposed_comm_s are stacked (together the step); overlapped_comm_s ran under
    compute, so it is a thinner hatched bar below rather than part of the stack. A rank whose
    bar is longer than its peers' is the one the others wait for. Returns `path`.
    """
    title = "Per-rank breakdown per step (measured)"
    if ranks.empty:
        return _empty(title, path)
    fig, axes, groups = _panels(ranks, 0.4)
    for ax, rows in zip(axes, groups, strict=True):
        y = np.arange(len(rows))
        compute = rows["compute_s"].fillna(0.0).to_numpy(float)
        exposed = rows["exposed_comm_s"].fillna(0.0).to_numpy(float)
        overlapped = np.clip(rows["overlapped_comm_s"].fillna(0.0).to_numpy(float), 0.0, None)
        ax.barh(y - 0.12, compute, height=0.5, color="tab:blue", label="compute_s")
        ax.barh(
            y - 0.12, exposed, left=compute, height=0.5, color="tab:red", label="exposed_comm_s"
        )
        ax.barh(
            y + 0.3,
            overlapped,
            height=0.22,
            facecolor="white",
            edgecolor="tab:red",
            hatch="////",
            label="overlapped_comm_s (hidden by compute)",
        )
        ranks = rows["rank"].tolist()
        labels = [
            f"{text} | rank {rank}" for text, rank in zip(_bar_labels(rows), ranks, strict=True)
        ]
        ax.set_yticks(y, labels, fontsize="small")
        ax.set_ylim(len(rows) - 0.4, -0.6)
        ax.margins(x=0.04)
        ax.grid(True, axis="x", alpha=0.3)
        ax.set_title(str(rows["workload"].iloc[0]), fontsize="medium", loc="left")
    axes[-1].set_xlabel("time per denoising step [s], mean over timed steps")
    fig.suptitle(title)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize="small", loc="outside lower center", ncols=3)
    return _save(fig, path)


def plot_overlap(ranks: pd.DataFrame, path: str | Path) -> Path:
    """Communication per step (s) of each ok run with communication, mean over ranks: the part
    the ranks were blocked on (exposed) and the part hidden under compute (overlapped), with
    overlap_pct written at the end of each bar. Takes `rank_breakdown`'s frame; returns `path`.
    """
    title = "Communication overlap per step (measured, mean over ranks)"
    keys = ["run_id", "workload", "frames", "height", "width", "strategy", "options", "world_size"]
    keys = [k for k in keys if k in ranks.columns]
    runs = (
        ranks.groupby(keys, dropna=False, sort=False)[["comm_s", "exposed_comm_s"]]
        .mean()
        .reset_index()
    )
    runs = runs[runs["comm_s"].fillna(0.0) > 0]
    if runs.empty:
        return _empty_note(title, path, "no run logged communication")
    fig, axes, groups = _panels(runs, 0.35)
    for ax, rows in zip(axes, groups, strict=True):
        y = np.arange(len(rows))
        comm = rows["comm_s"].to_numpy(float)
        exposed = np.minimum(rows["exposed_comm_s"].fillna(0.0).to_numpy(float), comm)
        ax.barh(y, exposed, height=0.6, color="tab:red", label="exposed (rank blocked)")
        ax.barh(
            y,
            comm - exposed,
            left=exposed,
            height=0.6,
            facecolor="white",
            edgecolor="tab:red",
            hatch="////",
            label="overlapped (hidden by compute)",
        )
        for yi, c, e in zip(y, comm, exposed, strict=True):
            ax.text(c, yi, f"  {100.0 * (1.0 - e / c):.0f}% overlap", va="center", fontsize="small")
        ax.set_yticks(y, _bar_labels(rows), fontsize="small")
        ax.set_ylim(len(rows) - 0.4, -0.6)
        ax.margins(x=0.25)
        ax.set_xlim(left=0)
        ax.grid(True, axis="x", alpha=0.3)
        ax.set_title(str(rows["workload"].iloc[0]), fontsize="medium", loc="left")
    axes[-1].set_xlabel("time with a collective in flight per denoising step [s] (comm_s)")
    fig.suptitle(title)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize="small", loc="outside lower center", ncols=2)
    return _save(fig, path)
