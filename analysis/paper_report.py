"""The pages of `diffscale reproduce`: reports/papers/<NAME>/index.md + index.html (a paper's
rows beside ours, speedup curves with the paper's points, misses explained) and
reports/papers/index.md (one line per table: median error, fastest-method agreement)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from analysis.papers import PAPERS_DIR
from analysis.render import Block, Code, Heading, Image, Para, Table, to_html, to_markdown

EXPLANATIONS = PAPERS_DIR / "explanations.yaml"


def _num(v, digits: int = 4) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}g}"


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:+.1f}%"


def _relative(path: Path) -> str:
    try:
        return path.resolve().relative_to(PAPERS_DIR.parent).as_posix()
    except ValueError:
        return path.as_posix()


def explanations(path: Path = EXPLANATIONS) -> list[dict]:
    """Why rows miss by more than 30%: entries of {experiment, match (regex on 'row | column'),
    text}, written after reading the numbers (papers/explanations.yaml)."""
    if not path.is_file():
        return []
    return list(yaml.safe_load(path.read_text()) or [])


def explain(row: pd.Series, notes: list[dict]) -> str:
    where = f"{row['row_label']} | {row['column_label']}"
    hits = [
        n["text"]
        for n in notes
        if n.get("experiment") == row["experiment"] and re.search(n.get("match", ""), where)
    ]
    return " ".join(hits) if hits else "UNEXPLAINED"


def _speedup_points(comp: pd.DataFrame) -> pd.DataFrame | None:
    """(panel, method, devices, paper, ours) speedups: the speedup rows as they are, and each
    multi-device latency row over the single-device latency row of the same table and size (on
    the same hardware profile where the table has one there, else on any). A panel is one table,
    size and hardware profile."""
    pts = []
    single = comp[(comp["metric"] == "latency_s") & (comp["devices"] == 1)]
    for _, r in comp.iterrows():
        if r["metric"] == "speedup":
            pts.append((r, r["value"], r["ours"]))
        elif r["metric"] == "latency_s" and r["devices"] > 1:
            base = single[
                (single["table_or_figure"] == r["table_or_figure"])
                & (single["height"] == r["height"])
                & (single["width"] == r["width"])
                & (single["steps"] == r["steps"])
            ]
            here = base[base["hardware_profile"] == r["hardware_profile"]]
            base = here if len(here) else base
            if len(base):
                b = base.iloc[0]
                pts.append((r, b["value"] / r["value"], b["ours"] / r["ours"]))
    rows = [
        {"panel": f"{r['table_or_figure']}: {r['height']}x{r['width']} ({r['hardware_profile']})",
         "method": r["method"], "devices": int(r["devices"]), "paper": p, "ours": o}
        for r, p, o in pts
    ]  # fmt: skip
    return pd.DataFrame(rows).drop_duplicates(["panel", "method", "devices"]) if rows else None


def plot_speedups(comp: pd.DataFrame, path: Path, title: str) -> Path | None:
    """Speedup vs devices, a panel per table column: ours as lines, the paper's as markers."""
    pts = _speedup_points(comp)
    if pts is None or pts.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(pts["panel"]))
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.3 * nrows + 0.6), squeeze=False)
    methods = list(dict.fromkeys(pts["method"]))
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    for ax, panel in zip(axes.flat, panels, strict=False):
        sub = pts[pts["panel"] == panel]
        for method, g in sub.groupby("method", sort=False):
            g = g.sort_values("devices")
            ax.plot(g["devices"], g["ours"], "--", marker=".", color=colors[method], lw=1.2)
            ax.plot(g["devices"], g["paper"], "o", color=colors[method], ms=6, mfc="none")
        top = max(sub["devices"].max(), 2)
        ax.plot([1, top], [1, top], ":", color="grey", lw=0.8)  # linear scaling
        ax.set_xscale("log", base=2)
        ax.set_title(textwrap.fill(panel, 48), fontsize=7)
        ax.set_xlabel("devices", fontsize=8)
        ax.set_ylabel("speedup over 1 device", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", alpha=0.25)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    handles = [
        plt.Line2D([], [], color=colors[m], marker="o", mfc="none", ls="--") for m in methods
    ]
    fig.legend(handles, methods, loc="lower center", ncol=min(4, len(methods)), fontsize=7)
    fig.suptitle(f"{title}: ours PROJECTED (dashed) vs the paper (circles)", fontsize=10)
    fig.tight_layout(rect=(0, 0.7 / (3.3 * nrows + 0.6), 1, 0.95))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _source(r: pd.Series) -> str:
    if not r["source"]:
        return ""
    if r["source"] == "measured":
        return f"MEASURED loop on {r['hardware_used']} (+ projected stages)"
    return f"PROJECTED on {r['hardware_used']}, {r['dtype_used']}"


def _comparison_table(g: pd.DataFrame, anchored: bool) -> Table:
    header = ["row", "column", "devices", "ours (strategy, degrees)", "timed", "paper", "ours",
              "ratio", "error"]  # fmt: skip
    if anchored:
        header += ["ours anchored", "error anchored"]
    header += ["ours is"]
    rows = []
    for _, r in g.iterrows():
        unit = {"latency_s": " s", "speedup": "x", "comm_share_pct": "%"}[r["metric"]]
        paper = "OOM" if r["status"] == "oom" else _num(r["value"]) + unit
        line = [r["row_label"], r["column_label"], str(r["devices"]), r["config"] or r["why"],
                r["timed"], paper, _num(r["ours"]) + (unit if r["ours"] == r["ours"] else ""),
                _num(r["ratio"], 3), _pct(r["error_pct"])]  # fmt: skip
        if anchored:
            line += [_num(r["ours_anchored"]), _pct(r["error_anchored_pct"])]
        rows.append([*line, _source(r)])
    right = {2, 5, 6, 7, 8} | ({9, 10} if anchored else set())
    return Table(header, rows, right)


def _summary_table(table: pd.DataFrame) -> Table:
    rows = [
        [r["table_or_figure"], f"{r['answered']}/{r['rows']}", str(r["multi_device_latency_rows"]),
         _pct(r["median_abs_error_pct"]).lstrip("+"),
         _pct(r["median_abs_error_anchored_pct"]).lstrip("+"),
         f"{r['fastest_same']}/{r['fastest_columns']}" if r["fastest_columns"] else "-"]
        for _, r in table.iterrows()
    ]  # fmt: skip
    return Table(
        [
            "table or figure",
            "answered",
            "multi-device latency rows",
            "median abs error",
            "median abs error, anchored",
            "fastest method same as paper",
        ],  # fmt: skip
        rows,
        {1, 2, 3, 4, 5},
    )


def write_paper_page(
    out_dir: Path,
    name: str,
    config: Path,
    rows: pd.DataFrame,
    ours: pd.DataFrame,
    comp: pd.DataFrame,
    table: pd.DataFrame,
    failed: list[str],
    anchored: bool,
) -> Path:
    """reports/papers/<name>/index.md and index.html (+ speedups.png, comparison.csv)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    first = rows.iloc[0]
    if len(comp):
        comp.drop(columns=["note"]).to_csv(out_dir / "comparison.csv", index=False)
    profiles = sorted(set(rows["hardware_profile"]) - {""})
    blocks: list[Block] = [
        Heading(f"{first['paper']} ({first['arxiv_id']}): {name}", 1),
        Para(
            "Every number of ours on this page is PROJECTED (analytic world: each rank on the "
            "meta device, its operators priced with the operator model on the paper's hardware "
            f"profile: {', '.join(profiles) or 'none'}; collectives on the profile's links), "
            "unless a row says MEASURED (a --measured store of real runs). The paper's numbers "
            "are PUBLISHED, from papers/" + f"{first['paper']}.csv, each with its source there.",
            strong=True,
        ),
        Para(
            f"Config: {_relative(config)} (workload, sizes, steps, scheduler, guidance, dtype, "
            "devices, methods; its comment lists what diffscale cannot run and why). 'timed' is "
            "what the paper's latency covers: loop, loop+text (prompt encoding too) or pipeline "
            "(also the VAE decode); ours adds the same stages, priced on meta like the loop. "
            "Error = (ours - paper) / paper. Rows whose degrees the paper leaves unstated take "
            "the fastest of our runs of that method and device count (named in the table)."
            + (
                " Anchored: one compute scale per profile and workload makes our single device "
                "equal to the paper's single-device row (named in 'anchor' in comparison.csv)."
                if anchored
                else " Unanchored: efficiencies from the profiles' curves alone."
            )
        ),
    ]
    if len(comp):
        blocks += [Heading("Summary"), _summary_table(table)]
        plot = plot_speedups(comp, out_dir / "speedups.png", name)
        if plot is not None:
            blocks.append(Image("speedups.png", "speedup curves"))
        notes = explanations()
        for tf, g in comp.groupby("table_or_figure", sort=False):
            blocks += [Heading(tf, 3), _comparison_table(g, anchored)]
            misses = g[g["error_pct"].abs() > 30]
            if len(misses):
                blocks.append(Para("Misses above 30% (unanchored) and why:"))
                blocks.append(
                    Table(
                        ["row", "column", "error", "why"],
                        [
                            [
                                r["row_label"],
                                r["column_label"],
                                _pct(r["error_pct"]),
                                explain(r, notes),
                            ]
                            for _, r in misses.iterrows()
                        ],  # fmt: skip
                        {2},
                    )
                )
    fidelity = rows[~rows["metric"].isin(["latency_s", "speedup", "comm_share_pct"])]
    if len(fidelity):
        blocks += [
            Heading("Fidelity rows (not reproduced here)"),
            Para(
                f"{len(fidelity)} published fidelity numbers ({', '.join(sorted(set(fidelity['metric'])))}) "
                "need the real weights and the data set (COCO captions and images): an analytic "
                "world computes nothing. Fill them with --measured runs that have them (real "
                "world, weights: <pipeline dir>, fidelity: {reference: <COCO dir>})."
            ),
        ]
    if failed:
        blocks += [Heading("Failed runs"), Code("\n".join(failed))]
    blocks += [
        Heading("Regenerate"),
        Code(
            f".venv/bin/diffscale reproduce {name}{' --anchor single-device' if anchored else ''}"
        ),
    ]
    (out_dir / "index.md").write_text(to_markdown(blocks))
    (out_dir / "index.html").write_text(to_html(blocks, f"diffscale reproduce {name}"))
    return out_dir / "index.md"


def write_index(root: Path, summaries: pd.DataFrame, names: list[str], anchored: bool) -> Path:
    """reports/papers/index.md: one line per table, merged with the tables already there."""
    root.mkdir(parents=True, exist_ok=True)
    data = root / "summary.csv"
    if data.is_file():  # keep the experiments this call did not re-run
        old = pd.read_csv(data)
        old = old[~old["experiment"].isin(names)]
        summaries = pd.concat([old, summaries], ignore_index=True)
    summaries = summaries.sort_values(["experiment"], kind="stable").reset_index(drop=True)
    summaries.to_csv(data, index=False)
    rows = [
        [f"[{r['experiment']}]({r['experiment']}/index.md)", r["table_or_figure"],
         f"{r['answered']}/{r['rows']}", _pct(r["median_abs_error_pct"]).lstrip("+"),
         _pct(r["median_abs_error_anchored_pct"]).lstrip("+"),
         f"{int(r['fastest_same'])}/{int(r['fastest_columns'])}" if r["fastest_columns"] else "-"]
        for _, r in summaries.iterrows()
    ]  # fmt: skip
    blocks: list[Block] = [
        Heading("Paper tables reproduced (PROJECTED)", 1),
        Para(
            "One line per published table or figure: how many of its timings diffscale answers, "
            "the median absolute error of the multi-device latency rows (unanchored: operator "
            "model alone; anchored: scaled to the paper's single device), and in how many "
            "columns our fastest method is the paper's. Ours are projected on the paper's "
            "hardware profile; the pages say so per row. Targets (issue 13): median <= 25% "
            "unanchored, <= 15% anchored, fastest method the same in >= 80% of columns."
        ),
        Table(
            [
                "experiment",
                "table or figure",
                "answered",
                "median abs error",
                "anchored",
                "fastest same",
            ],  # fmt: skip
            rows,
            {2, 3, 4, 5},
        ),
    ]
    (root / "index.md").write_text(to_markdown(blocks))
    (root / "index.html").write_text(to_html(blocks, "diffscale: paper tables reproduced"))
    return root / "index.md"
