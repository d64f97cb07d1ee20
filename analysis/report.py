"""The HTML / Markdown report of a store: where it was measured, results, plots, failures."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from analysis import breakdown, plots
from analysis.fidelity_report import fidelity_section
from analysis.fmt import fmt_fixed, fmt_int, fmt_mb, fmt_sig, fmt_text, is_missing
from analysis.render import (
    Block,
    Code,
    Heading,
    Image,
    KeyValues,
    Para,
    Table,
    to_html,
    to_markdown,
)
from analysis.tables import (
    comm_by_op,
    load_runs,
    open_store,
    read_table,
    readable_json,
    size_text,
    with_speedup,
)
from suite.store import schema
from suite.store.results import ResultStore

_DOCS = {c.name: c.doc for c in schema.RUNS}
_ERROR_LINES = 6

# Results-table columns: (header, explanation for the Columns section).
RESULT_COLUMNS: list[tuple[str, str]] = [
    ("experiment", _DOCS["experiment"]),
    ("workload", _DOCS["workload"]),
    ("size", "image height x width, or a video clip's frames x height x width, in pixels"),
    ("steps", _DOCS["steps"]),
    ("batch", _DOCS["batch"]),
    ("strategy", _DOCS["strategy"]),
    ("degrees", "degree per mesh axis, axis=degree"),
    ("options", "the strategy's options, option=value (defaults filled in)"),
    ("world_size", _DOCS["world_size"]),
    ("latency_s", _DOCS["latency_s"] + " [s]"),
    ("latency_min_max_s", "fastest - slowest timed loop (latency_min_s - latency_max_s) [s]"),
    (
        "speedup",
        "latency_s of the baseline / latency_s; the baseline is the ok run with strategy "
        "'none' on 1 rank with the same workload, size, steps, batch, scheduler, guidance, dtype, "
        "device, threads_per_rank and seed",
    ),
    ("efficiency_pct", "100 * speedup / world_size [%]; † marks a value above 100% (see below)"),
    (
        "baseline_per_rank_work_s",
        "runs with a data axis of degree d > 1: latency_s of the single-device run at the "
        "per-rank batch (batch / d), same key as the baseline otherwise [s]; '- ‡' where the "
        "store holds no such run, '-' where it does not apply",
    ),
    (
        "efficiency_per_rank_work_pct",
        "100 * baseline_per_rank_work_s / (latency_s * world_size / d): efficiency against a "
        "device doing one data-parallel group's share of the work [%]",
    ),
    ("step_s", _DOCS["step_s"] + " [s]"),
    ("compute_s", _DOCS["compute_s"] + " [s per step]"),
    ("exposed_comm_s", _DOCS["exposed_comm_s"] + " [s]"),
    ("overlap_pct", _DOCS["overlap_pct"] + " [%]"),
    ("comm_mb_per_step", "comm_bytes_per_step / 10^6: " + _DOCS["comm_bytes_per_step"]),
    ("peak_mem_mb", "peak_mem_bytes / 10^6: " + _DOCS["peak_mem_bytes"]),
    ("param_mb_per_rank", "param_bytes_per_rank / 10^6: " + _DOCS["param_bytes_per_rank"]),
    ("buffer_mb_per_rank", "buffer_bytes_per_rank / 10^6: " + _DOCS["buffer_bytes_per_rank"]),
    ("status", _DOCS["status"]),
]
_TEXT_COLUMNS = {
    "experiment",
    "workload",
    "size",
    "strategy",
    "degrees",
    "options",
    "status",
}


def _ordered(runs: pd.DataFrame) -> pd.DataFrame:
    # Baseline first within each workload, then strategies by name, then by world size.
    key = runs.assign(_not_base=runs["strategy"] != "none")
    cols = ["experiment", "workload", "frames", "height", "width", "steps", "_not_base", "strategy"]
    cols = [c for c in cols if c in key] + ["batch"]  # frames: absent from frames built by hand
    key = key.sort_values(
        [*cols, "world_size", "degrees", "options"], kind="stable", na_position="last"
    )
    return runs.loc[key.index].reset_index(drop=True)


def _result_row(r: pd.Series) -> dict[str, str]:
    lo, hi = r["latency_min_s"], r["latency_max_s"]
    return {
        "experiment": fmt_text(r["experiment"]),
        "workload": fmt_text(r["workload"]),
        "size": size_text(r.get("frames"), r["height"], r["width"]),
        "steps": fmt_int(r["steps"]),
        "batch": fmt_int(r["batch"]),
        "strategy": fmt_text(r["strategy"]),
        "degrees": fmt_text(r["degrees"]),
        "options": fmt_text(r["options"]),
        "world_size": fmt_int(r["world_size"]),
        "latency_s": fmt_sig(r["latency_s"]),
        "latency_min_max_s": "-"
        if is_missing(lo) and is_missing(hi)
        else f"{fmt_sig(lo)}-{fmt_sig(hi)}",
        "speedup": fmt_fixed(r["speedup"], 2),
        "efficiency_pct": _efficiency(r["efficiency_pct"]),
        "baseline_per_rank_work_s": _per_rank_work(r, fmt_sig(r["baseline_per_rank_work_s"])),
        "efficiency_per_rank_work_pct": _per_rank_work(
            r, _efficiency(r["efficiency_per_rank_work_pct"])
        ),
        "step_s": fmt_sig(r["step_s"]),
        "compute_s": fmt_sig(r["compute_s"]),
        "exposed_comm_s": fmt_sig(r["exposed_comm_s"]),
        "overlap_pct": fmt_fixed(r["overlap_pct"], 1),
        "comm_mb_per_step": fmt_mb(r["comm_bytes_per_step"]),
        "peak_mem_mb": fmt_mb(r["peak_mem_bytes"]),
        "param_mb_per_rank": fmt_mb(r["param_bytes_per_rank"]),
        "buffer_mb_per_rank": fmt_mb(r.get("buffer_bytes_per_rank")),
        "status": fmt_text(r["status"]),
    }


SUPERLINEAR, NOT_STORED = "†", "‡"
_PER_RANK_WORK = ("baseline_per_rank_work_s", "efficiency_per_rank_work_pct")


def _efficiency(pct: object) -> str:
    """Efficiency in %, flagged when above 100 (superlinear: explained under the table)."""
    text = fmt_fixed(pct, 1)
    return f"{text} {SUPERLINEAR}" if not is_missing(pct) and float(pct) > 100.0 else text


def _per_rank_work(r: pd.Series, text: str) -> str:
    """A per-rank-work cell: '-' where it does not apply, '- ‡' where no baseline is stored."""
    if is_missing(r["per_rank_batch"]):
        return "-"
    return f"- {NOT_STORED}" if is_missing(r["baseline_per_rank_work_s"]) else text


def _efficiency_notes(runs: pd.DataFrame) -> list[Block]:
    notes: list[Block] = []
    over = (runs["efficiency_pct"] > 100) | (runs["efficiency_per_rank_work_pct"] > 100)
    if over.fillna(False).any():
        notes.append(
            Para(
                f"{SUPERLINEAR} Efficiency above 100% (superlinear). It is not free speed: each "
                "rank works on a smaller share (e.g. half the batch), whose working set can fit "
                "in a cache the whole problem does not, with fewer threads contending for memory "
                "bandwidth, or for which the library picks a different kernel. The single device "
                "at the same total work is then a weak baseline; baseline_per_rank_work_s and "
                "efficiency_per_rank_work_pct compare against a device doing one rank group's "
                "share, where the store holds such a run."
            )
        )
    missing = runs["per_rank_batch"].notna() & runs["baseline_per_rank_work_s"].isna()
    if missing.fillna(False).any():
        notes.append(
            Para(
                f"{NOT_STORED} No single-device run at the per-rank batch (batch / data degree, "
                "same workload, size, steps, scheduler, guidance, dtype, device, "
                "threads_per_rank and seed) is stored: add strategy 'none' with that batch to "
                "the experiment to compare against one rank's share of the work."
            )
        )
    return notes


def _distinct(values: pd.Series) -> str:
    seen = [str(v) for v in values.dropna().unique() if str(v) != ""]
    return "; ".join(seen) if seen else "not recorded"


def _measured_on(runs: pd.DataFrame) -> list[Block]:
    created = runs["created_at"].dropna()
    span = "not recorded" if created.empty else f"{created.min()} to {created.max()}"
    if not created.empty and created.min() == created.max():
        span = str(created.min())
    pairs = [(c, _distinct(runs[c])) for c in ("host", "device", "backend", "world_mode")]
    pairs += [
        ("threads_per_rank", _distinct(runs["threads_per_rank"])),
        ("versions", _distinct(runs["versions"].map(readable_json))),
        ("git_commit", _distinct(runs["git_commit"])),
        ("created_at (UTC)", span),
    ]
    blocks: list[Block] = [
        Heading("Measured on"),
        Para(
            "All numbers in this report are MEASURED on the machine(s) below; none is "
            "projected or simulated.",
            strong=True,
        ),
        KeyValues(pairs),
    ]
    if (runs["world_mode"] == "fake").any():
        blocks.append(
            Para(
                "Runs with world_mode 'fake' emulated each rank in one process: compute ran at the "
                "real per-rank shapes, collectives were recorded but moved no data, so their "
                "communication times do not time an interconnect."
            )
        )
    if (runs["world_mode"] == "analytic").any():
        blocks.append(
            Para(
                "Runs with world_mode 'analytic' emulated each rank on the meta device and "
                "measured nothing: their time and memory columns are empty ('-'); their "
                "communication bytes and calls, parameter and buffer sizes are counted. Project "
                "them onto hardware with `diffscale project` (the operator model prices their "
                "recorded operators)."
            )
        )
    return blocks


def _results(runs: pd.DataFrame) -> tuple[list[Block], list[str]]:
    headers = [h for h, _ in RESULT_COLUMNS]
    if runs["experiment"].nunique(dropna=True) <= 1:
        headers.remove("experiment")
    if runs["per_rank_batch"].isna().all():  # no data-parallel run: nothing to compare
        headers = [h for h in headers if h not in _PER_RANK_WORK]
    cells = [_result_row(r) for _, r in runs.iterrows()]
    rows = [[c[h] for h in headers] for c in cells]
    right = {i for i, h in enumerate(headers) if h not in _TEXT_COLUMNS}
    counts = runs["status"].value_counts()
    shown = ("ok", "skipped", "failed") if counts.get("skipped", 0) else ("ok", "failed")
    tally = ", ".join(f"{int(counts.get(s, 0))} {s}" for s in shown)
    blocks: list[Block] = [
        Heading("Results"),
        Para(
            f"Runs: {len(runs)} ({tally}). "
            "Times per denoising step unless the column says otherwise; '-' marks a missing "
            "value. Columns are explained at the end."
        ),
        Table(headers, rows, right),
        *_efficiency_notes(runs),
    ]
    return blocks, headers


def _error_excerpt(text: object) -> str:
    if is_missing(text) or not str(text).strip():
        return "(no error text recorded)"
    lines = str(text).strip().splitlines()
    if len(lines) <= _ERROR_LINES:
        return "\n".join(lines)
    # A traceback's last line names the exception, so keep it after the head.
    return "\n".join(
        [*lines[:_ERROR_LINES], f"... ({len(lines) - _ERROR_LINES - 1} more lines)", lines[-1]]
    )


def _failures(runs: pd.DataFrame) -> list[Block]:
    failed = runs[runs["status"] != "ok"]
    # skipped: the method cannot run here (e.g. a library without CPU support); the reason is
    # stored in `error` like a failure's traceback
    blocks: list[Block] = [Heading("Failed and skipped runs")]
    if failed.empty:
        return [*blocks, Para("None.")]
    for _, r in failed.iterrows():
        what = f"{fmt_text(r['workload'])} | {fmt_text(r['strategy'])} w{fmt_int(r['world_size'])}"
        what = f"{r['status']}: {what}"
        if fmt_text(r["degrees"]) != "-":
            what += f" [{r['degrees']}]"
        blocks += [Para(f"{what} (run {fmt_text(r['run_id'])})"), Code(_error_excerpt(r["error"]))]
    return blocks


def _comm(store: ResultStore) -> list[Block]:
    df = comm_by_op(store)
    if df.empty:
        return []
    headers = [
        "workload",
        "strategy",
        "world_size",
        "op",
        "axis",
        "ranks",
        "calls_per_step",
        "mb_per_step",
        "time_s",
        "inflight_s",
        "exposed_s",
        "algbw_gb_per_s",
    ]
    rows = [
        [
            *_run_cells(r),
            fmt_text(r["op"]),
            fmt_text(r["axis"]),
            fmt_int(r["ranks"]),
            fmt_sig(r["calls_per_step"]),
            fmt_mb(r["bytes_per_step"]),
            fmt_sig(r["time_s"]),
            fmt_sig(r["inflight_s"]),
            fmt_sig(r["exposed_s"]),
            fmt_sig(r["algbw_gb_per_s"]),
        ]
        for _, r in df.iterrows()
    ]
    return [
        Heading("Communication by op"),
        Para(
            "Per timed step, mean over the ranks that issued the op. mb_per_step = payload "
            "bytes / 10^6; time_s sums the calls' durations (concurrent calls each counted, so "
            "it can exceed the step); inflight_s is the time at least one call was in flight; "
            "exposed_s the time the rank was blocked on them; algbw_gb_per_s = payload bytes / "
            "time_s / 10^9."
        ),
        Table(headers, rows, right=set(range(5, len(headers))) | {2}),
    ]


def _pipeline(store: ResultStore) -> list[Block]:
    """PipeFusion runs: measured pipeline bubble beside the analytic one."""
    from suite.parallel.pipeline_bubble import bubble_table

    df = bubble_table(store.table("runs"), store.table("comm"), store.table("rank_steps"))
    if df.empty:
        return []
    headers = ["workload", "strategy", "degrees", "N", "M", "steps", "warmup_steps"]
    headers += ["bubble_pct", "bubble_max_pct", "analytic_pct", "paper_pct"]
    rows = [
        [
            fmt_text(r["workload"]),
            fmt_text(r["strategy"]),
            fmt_text(r["degrees"]),
            fmt_int(r["stages"]),
            fmt_int(r["patches"]),
            fmt_int(r["steps"]),
            fmt_int(r["warmup_steps"]),
            *(fmt_fixed(100 * r[c], 1) for c in ("bubble_measured", "bubble_measured_max")),
            *(fmt_fixed(100 * r[c], 1) for c in ("bubble_analytic", "bubble_analytic_paper")),
        ]
        for _, r in df.iterrows()
    ]
    return [
        Heading("Pipeline bubble (PipeFusion)"),
        Para(
            "bubble_pct: time a rank is blocked waiting for its pipeline input (receives on the "
            "pipefusion axis) / its step time, mean over ranks (max: the worst rank). "
            "analytic_pct = 1 - S*M / (W*N*M + (S-W)*M + N-1) with W synchronous warm-up steps; "
            "paper_pct = 1 - M*S / (M*S + N-1), the paper's formula (no warm-up)."
        ),
        Table(headers, rows, right=set(range(3, len(headers)))),
    ]


def _run_cells(r: pd.Series) -> list[str]:
    strategy = fmt_text(r["strategy"])
    if isinstance(r["options"], str) and r["options"]:
        strategy += f" [{r['options']}]"
    return [fmt_text(r["workload"]), strategy, fmt_int(r["world_size"])]


def _mean_over_ranks(df: pd.DataFrame, by: list[str], values: list[str]) -> pd.DataFrame:
    keys = ["run_id", "workload", "strategy", "options", "world_size", *by]
    g = df.groupby(keys, dropna=False, sort=False)
    out = g[values].mean()
    out.insert(0, "ranks", g["rank"].nunique())
    return out.reset_index()


def _breakdown(store: ResultStore, out: Path) -> list[Block]:
    """Compute / exposed / overlapped time per rank, the no-communication ideal, and where the
    bytes go (mesh axis, layer type)."""
    ranks = breakdown.rank_breakdown(store)
    if ranks.empty:
        return []
    ideal = breakdown.ideal_latency(store)
    ranks_png = plots.plot_rank_breakdown(ranks, out / "rank_breakdown.png")
    overlap_png = plots.plot_overlap(ranks, out / "overlap.png")
    run_head = ["workload", "strategy", "world_size"]
    ideal_rows = [
        [
            *_run_cells(r),
            fmt_sig(r["latency_s"]),
            fmt_sig(r["ideal_latency_s"]),
            fmt_fixed(r["comm_overhead_pct"], 1),
            fmt_fixed(r["overlap_pct"], 1),
            fmt_mb(r["comm_bytes_per_step"]),
        ]
        for _, r in ideal.iterrows()
    ]
    rank_rows = [
        [
            *_run_cells(r),
            fmt_int(r["rank"]),
            fmt_sig(r["step_s"]),
            fmt_sig(r["compute_s"]),
            fmt_sig(r["exposed_comm_s"]),
            fmt_sig(r["overlapped_comm_s"]),
            fmt_fixed(r["overlap_pct"], 1),
            fmt_mb(r["comm_bytes_per_step"]),
        ]
        for _, r in ranks.iterrows()
    ]
    blocks: list[Block] = [
        Heading("Breakdown"),
        Para(
            "Per rank and timed step: comm_s is the time at least one collective was in "
            "flight, exposed_comm_s the time the rank was blocked on communication (both "
            "unions of intervals within the step, so exposed <= comm <= step); compute_s = "
            "step_s - exposed_comm_s; overlapped_comm_s = comm_s - exposed_comm_s ran hidden "
            "under compute and is at most compute_s; overlap_pct = 100 * (1 - exposed_comm_s "
            "/ comm_s). "
            "ideal_latency_s is the no-communication ideal (the compute critical path): per "
            "timed loop the slowest rank's summed compute_s, median over loops; "
            "comm_overhead_pct = 100 * (latency_s - ideal_latency_s) / latency_s. "
            "MB = 10^6 bytes, per step."
        ),
        Heading("Latency vs no-communication ideal", level=3),
        Table(
            [
                *run_head,
                "latency_s",
                "ideal_latency_s",
                "comm_overhead_pct",
                "overlap_pct",
                "comm_mb_per_step",
            ],
            ideal_rows,
            right=set(range(2, 8)),
        ),
        Heading("Per rank", level=3),
        Table(
            [
                *run_head,
                "rank",
                "step_s",
                "compute_s",
                "exposed_comm_s",
                "overlapped_comm_s",
                "overlap_pct",
                "comm_mb_per_step",
            ],
            rank_rows,
            right=set(range(2, 10)),
        ),
        Image(ranks_png.name, "per-rank compute / exposed / overlapped communication"),
        Image(overlap_png.name, "communication overlap per run"),
    ]
    values = ["bytes_per_step", "time_s", "inflight_s", "exposed_s", "overlapped_s"]
    for title, df, by in (
        ("Per mesh axis", _per_axis(store), "axis"),
        ("Per layer type", breakdown.layer_breakdown(store, by=("layer_type",)), "layer_type"),
    ):
        if df.empty:
            continue
        df = _mean_over_ranks(df, [by], ["calls_per_step", *values, "bytes_pct"])
        rows = [
            [
                *_run_cells(r),
                fmt_text(r[by]),
                fmt_int(r["ranks"]),
                fmt_sig(r["calls_per_step"]),
                fmt_mb(r["bytes_per_step"]),
                fmt_fixed(r["bytes_pct"], 1),
                fmt_sig(r["time_s"]),
                fmt_sig(r["inflight_s"]),
                fmt_sig(r["exposed_s"]),
                fmt_sig(r["overlapped_s"]),
            ]
            for _, r in df.iterrows()
        ]
        head = [*run_head, by, "ranks", "calls_per_step", "mb_per_step", "bytes_pct"]
        blocks += [
            Heading(title, level=3),
            Para(
                "Mean over the ranks with such communication; bytes_pct is the share of the "
                "rank's bytes per step; time_s sums the calls' durations, inflight_s is the "
                "time at least one of them was in flight, overlapped_s = inflight_s - "
                "exposed_s."
                + (
                    " Layer types come from the module paths the ledger logged "
                    "(runs/<run_id>/trace.npz)."
                    if by == "layer_type"
                    else ""
                )
            ),
            Table(
                [*head, "time_s", "inflight_s", "exposed_s", "overlapped_s"],
                rows,
                right={2} | set(range(4, 12)),
            ),
        ]
    return blocks


def _per_axis(store: ResultStore) -> pd.DataFrame:
    """Per run, rank and mesh axis: exact unions from the run's trace where there is one (the
    comm table's per-op unions would count two ops of an axis in flight together twice)."""
    exact = breakdown.layer_breakdown(store, by=("axis",))
    stored = breakdown.comm_breakdown(store, by=("axis",))
    stored = stored[~stored["run_id"].isin(exact["run_id"])]
    frames = [f for f in (exact, stored) if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else stored


def _columns(headers: list[str]) -> list[Block]:
    docs = dict(RESULT_COLUMNS)
    return [
        Heading("Columns"),
        Para("MB = 10^6 bytes. Per-step values are means over timed steps and ranks."),
        Table(["column", "meaning"], [[h, docs[h]] for h in headers]),
    ]


def _experiment_names(runs: pd.DataFrame) -> list[str]:
    return sorted(str(n) for n in runs["experiment"].dropna().unique())


def default_report_dir(db_path: str | Path) -> Path:
    """reports/<experiment> (names '+'-joined when the store holds several), relative to cwd."""
    names = _experiment_names(read_table(db_path, "runs"))
    # Experiment names become one path component: keep them filesystem-safe.
    safe = [re.sub(r"[^A-Za-z0-9._+-]", "_", n) for n in names]
    return Path("reports") / ("+".join(safe) or Path(db_path).resolve().parent.name)


def write_report(db_path: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """Write out_dir/index.html, out_dir/index.md and their PNGs; returns (html, md) paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open_store(db_path) as store:
        runs = _ordered(with_speedup(load_runs(store)))
        names = _experiment_names(runs)
        title = "diffscale report: " + (", ".join(names) or "empty store")
        latency_png = plots.plot_latency_vs_world(runs, out / "latency_vs_world.png")
        breakdown_png = plots.plot_breakdown(runs, out / "breakdown.png")
        results, headers = _results(runs)
        blocks: list[Block] = [
            Heading(title, level=1),
            Para(f"Store: {db_path}"),
            *_measured_on(runs),
            *results,
            Heading("Plots"),
            Image(latency_png.name, "latency vs world size"),
            Image(breakdown_png.name, "per-step compute / communication breakdown"),
            *_failures(runs),
            *_comm(store),
            *_breakdown(store, out),
            *_pipeline(store),
            *fidelity_section(store, runs, out),
            *_columns(headers),
        ]
    html_path, md_path = out / "index.html", out / "index.md"
    html_path.write_text(to_html(blocks, title), encoding="utf-8")
    md_path.write_text(to_markdown(blocks), encoding="utf-8")
    return html_path, md_path
