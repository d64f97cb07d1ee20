"""The PROJECTED page: scaling curves per interconnect, what bounds each projection, and
projected-vs-measured validation.

Kept apart from the measured report (analysis/report.py) so the two never share a table. Every
number is labelled PROJECTED with its profile, the dtype it was priced in and its anchor, if any.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.tables import open_store, sizes

# Fields that make a fake or analytic run and a real run the same experiment (all but world_mode).
# frames: a video clip's (empty for images): two clip lengths at one size never match.
MATCH = ["workload", "frames", "height", "width", "steps", "batch", "scheduler", "guidance",
         "dtype", "strategy", "degrees", "options", "world_size", "threads_per_rank", "seed"]  # fmt: skip


def projections(db_path: str | Path) -> pd.DataFrame:
    """Projection rows joined with their runs' identity and measured latency."""
    with open_store(db_path) as store:  # read-only
        runs, proj = store.table("runs"), store.table("projection")
    cols = ["run_id", "world_mode", "latency_s", *MATCH]
    out = proj.merge(runs[cols], on="run_id", suffixes=("", "_measured"))
    out["degrees"] = out["degrees"].map(
        lambda d: " ".join(f"{k}={v}" for k, v in json.loads(d).items()) or "-"
    )
    out["label"] = [_label(r) for r in out.itertuples()]
    out["size"] = sizes(out)  # a video clip's frames x height x width: clips never share a line
    return out.rename(
        columns={"latency_s": "projected_latency_s", "latency_s_measured": "measured_latency_s"}
    )


def _label(row) -> str:
    """'<profile>, <dtype>[, anchored]': how every projected number is named on the page."""
    dtype = row.projected_dtype if isinstance(row.projected_dtype, str) else row.dtype
    anchored = ", anchored" if isinstance(row.anchored_to, str) and row.anchored_to else ""
    ex = getattr(row, "execution", None)
    mode = f", {ex}" if isinstance(ex, str) and ex != "eager" else ""
    return f"{row.hardware}, {dtype}{mode}{anchored}"


def validation(db_path: str | Path, source: str) -> pd.DataFrame:
    """Fake-world and analytic runs projected on the `source` profile beside the matching real
    runs' measured latency (matched on MATCH: workload, size, steps, strategy, degrees, options,
    batch, dtype, ...). `projected_from` says which trace a row re-timed: `fake` (measured
    compute, collectives re-timed) or `analytic` (the operator model alone)."""
    with open_store(db_path) as store:  # read-only
        runs, proj = store.table("runs"), store.table("projection")
    proj = proj[proj["hardware"] == source]
    # the method's check: unanchored projections in the run's own dtype
    same_dtype = proj["projected_dtype"].isna() | proj["run_id"].map(
        runs.set_index("run_id")["dtype"].map(_short)
    ).eq(proj["projected_dtype"])
    proj = proj[same_dtype & (proj["anchored_to"].isna() | proj["anchored_to"].eq(""))]
    ok = runs[runs["status"] == "ok"]
    twins = ok[ok["world_mode"].isin(["fake", "analytic"])].merge(
        proj, on="run_id", suffixes=("_twin", "")
    )
    real = ok[ok["world_mode"] == "real"]
    both = twins.merge(real, on=MATCH, suffixes=("", "_real"))
    cols = ["workload", "strategy", "world_size", "world_mode", "latency_s", "latency_s_real",
            "exposed_comm_s", "exposed_comm_s_real", "comm_s", "comm_s_real"]  # fmt: skip
    out = both[cols].copy()
    names = {"world_mode": "projected_from", "latency_s": "projected_latency_s",
             "exposed_comm_s": "projected_exposed_comm_s", "comm_s": "projected_comm_s"}  # fmt: skip
    out = out.rename(columns={**names, "latency_s_real": "measured_latency_s",
                              "exposed_comm_s_real": "measured_exposed_comm_s",
                              "comm_s_real": "measured_comm_s"})  # fmt: skip
    for side in ("projected", "measured"):  # share of communication hidden behind compute
        comm, exposed = out[f"{side}_comm_s"], out[f"{side}_exposed_comm_s"]
        out[f"{side}_overlap_pct"] = (100 * (1 - exposed / comm)).where(comm > 0)
    out["error_pct"] = (
        100 * (out["projected_latency_s"] - out["measured_latency_s"]) / out["measured_latency_s"]
    )
    keys = ["workload", "projected_from", "world_size", "strategy"]
    return out.sort_values(keys).reset_index(drop=True)


def _short(dtype) -> str:
    return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(dtype, dtype)


def plot_scaling(df: pd.DataFrame, path: Path) -> Path:
    """Projected latency vs world size: a panel per workload x strategy, a line per hardware
    profile (the single-device run at world 1 starts every line), log-log axes so that CPU and
    GPU profiles share a panel. Lines are named by `label` (profile, dtype, anchored) if given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "label" not in df:
        df = df.assign(label=df["hardware"])
    hardware = sorted(df["label"].unique())
    colors = {hw: f"C{i % 10}" for i, hw in enumerate(hardware)}
    if "size" not in df:  # a frame built by hand: one size per workload
        df = df.assign(size="")
    panels = [
        (wl, size, st)
        for wl, size in sorted(set(zip(df["workload"], df["size"], strict=True)))
        for st in sorted(df.loc[(df["workload"] == wl) & (df["size"] == size), "strategy"].unique())
        if st != "none"
    ] or [("(none)", "", "none")]
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.9 * nrows + 0.9), squeeze=False)
    for ax, (wl, size, st) in zip(axes.flat, panels, strict=False):
        sub = df[(df["workload"] == wl) & (df["size"] == size) & df["strategy"].isin([st, "none"])]
        for hw, g in sub.groupby("label"):
            runs = g[g["strategy"] == st]
            base = g[(g["strategy"] == "none") & (g["world_size"] == 1)]
            if "batch" in g:  # the baseline of the same batch (data parallelism runs more images)
                base = base[base["batch"].isin(runs["batch"])]
            curve = pd.concat([base, runs])
            pts = curve.groupby("world_size")["projected_latency_s"].min()
            ax.plot(pts.index, pts.values, "-", marker="o", ms=3, color=colors[hw], label=hw)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{wl} {size}".strip() + f": {st}", fontsize=9)
        ax.set_xlabel("world size (ranks)", fontsize=8)
        ax.set_ylabel("PROJECTED latency [s]", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", alpha=0.25)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], color=colors[hw], marker="o", ms=3) for hw in hardware]
    fig.legend(handles, hardware, loc="lower center", ncol=min(5, len(hardware)), fontsize=8)
    fig.suptitle("PROJECTED latency per interconnect (re-timed ledger traces; world 1 = none)")
    fig.tight_layout(rect=(0, 0.5 / (2.9 * nrows + 0.9), 1, 0.97))  # room for the legend
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _table(df: pd.DataFrame) -> str:
    from analysis.render import markdown_table

    def cell(v) -> str:
        if v is None or (isinstance(v, float) and v != v):
            return "–"  # empty: e.g. no compute split without an operator trace
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    numeric = {i for i, c in enumerate(df.columns) if pd.api.types.is_numeric_dtype(df[c])}
    return markdown_table(
        list(df.columns), [[cell(v) for v in row] for row in df.itertuples(index=False)], numeric
    )


def write_projection_report(db_path: str | Path, out_dir: str | Path, source: str) -> Path:
    """Write out_dir/projection.md (+ projection.png); returns the Markdown path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = projections(db_path)
    plot = plot_scaling(df, out_dir / "projection.png")
    anchors = sorted({f"`{r.hardware}` to {r.anchored_to} (compute x {r.anchor_scale:.4g})"
                      for r in df.itertuples() if isinstance(r.anchored_to, str) and r.anchored_to})  # fmt: skip
    lines = [
        "# Projected results (NOT measured)",
        "",
        "Every latency on this page is PROJECTED, named by its profile, the dtype it was priced "
        "in and whether it is anchored. Collectives: alpha-beta on the link each group crosses. "
        "Compute: the operator model (every operator's roofline time, FLOPs at the device's "
        "achieved throughput for its class, dtype and size or bytes at its achieved bandwidth, "
        "plus per-call launch overhead); analytic runs are priced operator by operator, measured "
        f"runs (real, fake) have their compute scaled from the source profile `{source}` (column "
        "`compute_model` says by which ratio). Profiles, curves and their sources: "
        "configs/hardware/ and configs/hardware/opcurves/.",
        "",
        "Anchored: " + "; ".join(anchors) + ". An anchored profile's compute is scaled so that "
        "the single-device run reproduces the anchor exactly; its other rows inherit the factor."
        if anchors
        else "Unanchored: compute efficiencies come from the profiles' curves alone.",
        "",
        f"![projected scaling]({plot.name})",
        "",
        "## Projections (PROJECTED)",
        "",
    ]
    table = df[["workload", "size", "strategy", "degrees", "world_size", "world_mode", "label",
                "projected_latency_s", "compute_s", "comm_s", "exposed_comm_s"]]  # fmt: skip
    lines += [_table(table.rename(columns={"label": "projected on (profile, dtype)"})), ""]
    bounds = df[["workload", "size", "strategy", "degrees", "world_size", "label",
                 "compute_bound_pct", "memory_bound_pct", "launch_pct", "link_pct", "compute_model"]]  # fmt: skip
    lines += [
        "## What bounds each projection (PROJECTED)",
        "",
        "Shares of the critical path (the slowest rank's timeline, %): in compute-bound operators, "
        "in memory-bound operators, in launch overhead not hidden behind kernels, and blocked on "
        "communication (`link_pct`: exposed collectives, waits on slower peers included). A "
        "faster link can win at most `link_pct`; faster compute or memory the other shares. The "
        "compute split needs an operator trace: empty for measured runs without an analytic twin.",
        "",
        _table(bounds.rename(columns={"label": "projected on (profile, dtype)"})),
        "",
    ]
    val = validation(db_path, source)
    for mode, how in (
        ("fake", "one process emulating every rank, compute measured, collectives moving no "
         "data and re-timed"),
        ("analytic", "every rank on the meta device, nothing measured: compute from the "
         "operator model alone, collectives re-timed"),
    ):  # fmt: skip
        rows = val[val["projected_from"] == mode].drop(columns="projected_from")
        if not len(rows):
            continue
        med = float(np.median(np.abs(rows["error_pct"])))
        lines += [
            f"## Validation on `{source}`: {mode}-world projections vs measured real runs",
            "",
            f"Each {mode}-world run ({how}) is projected on the calibrated profile of this "
            "machine and set beside the measured latency of the same run in a real gloo world. "
            f"Median absolute error: **{med:.1f}%**.",
            "",
            _table(rows),
            "",
        ]
    path = out_dir / "projection.md"
    path.write_text("\n".join(lines))
    return path
