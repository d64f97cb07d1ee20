"""Fit eager execution's two host constants on the declared fit set, and test them by paper.

The constants (configs/hardware/execution.yaml, mode eager): the host time PyTorch spends per
operator call beyond the driver's launch, and per collective call. They are costs of a launch,
the same for every method. The fit uses the latency rows (one device and several) of the tables
papers/validation.yaml declares as fit data whose paper ran eager; it minimises the mean
|log(ours / paper)| over a grid. Leave-one-paper-out: for each paper of the fit set, the
constants are fitted again without its rows and its latency rows of every table are projected
with them, so the error of a paper the fit never saw is reported.

Needs the analytic runs of `make papers` in results/papers/ (it re-projects, it does not re-run).

    .venv/bin/python benchmarks/fit_execution.py [--write]   # --write: into execution.yaml

Writes reports/projection_gpu/fit_execution.md (and .csv of the grid).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analysis.execution import EXECUTION_FILE, Execution, load_execution  # noqa: E402
from analysis.paper_match import compare  # noqa: E402
from analysis.paper_validation import fit_keys, load_split, row_key  # noqa: E402
from analysis.papers import load_papers, paper_execution  # noqa: E402
from analysis.render import markdown_table  # noqa: E402
from suite.commands.reproduce import RESULTS_ROOT, SHARED, _Stages, ours_table, paper_configs  # noqa: E402
from suite.config.experiment import load_config  # noqa: E402

OP_HOST_US = (0, 10, 20, 40, 80)
COLLECTIVE_HOST_US = (0, 50, 150, 400)
OUT = ROOT / "reports" / "projection_gpu"


def _latency_errors(name: str, rows: pd.DataFrame, db: Path, execution: Execution) -> pd.DataFrame:
    """Latency rows of experiment `name` compared with ours projected under `execution`."""
    configs = paper_configs()
    run_ids = {replace(s, experiment=SHARED).run_id for s in load_config(configs[name]).runs}
    ours = ours_table(db, rows, False, _Stages({}), run_ids, execution=execution)
    comp = compare(rows, ours)
    comp = comp[(comp["metric"] == "latency_s") & comp["ours"].notna() & comp["value"].notna()]
    return comp.assign(log_ratio=np.log(comp["ours"] / comp["value"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="write the fit into execution.yaml")
    ap.add_argument(
        "--reuse-grid",
        action="store_true",
        help="read the grid of an earlier run (reports/projection_gpu/fit_execution_grid.csv)",
    )
    args = ap.parse_args(argv)
    db = RESULTS_ROOT / "results.db"
    if not db.is_file():
        print(f"no store at {db}: run `make papers` first", file=sys.stderr)
        return 2
    papers = load_papers()
    split = load_split()
    fit_tables = fit_keys(split)
    eager_fit = [
        (exp, table)
        for exp, table in fit_tables
        if paper_execution(papers.loc[papers["experiment"] == exp, "paper"].iloc[0]) == "eager"
    ]
    # every candidate on every eager fit table: one comparison each
    grid = []
    candidates = itertools.product(OP_HOST_US, COLLECTIVE_HOST_US)
    if args.reuse_grid:
        candidates = []
    for op_us, coll_us in candidates:
        ex = Execution("eager", op_us * 1e-6, coll_us * 1e-6)
        for exp, table in eager_fit:
            rows = papers[(papers["experiment"] == exp) & (papers["table_or_figure"] == table)]
            comp = _latency_errors(exp, rows, db, ex)
            for r in comp.itertuples():
                grid.append({"op_host_us": op_us, "collective_host_us": coll_us, "paper": r.paper,
                             "experiment": exp, "devices": r.devices, "key": row_key(r._asdict()),
                             "error_pct": r.error_pct, "log_ratio": r.log_ratio})  # fmt: skip
        print(f"op {op_us} us, collective {coll_us} us: done", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.reuse_grid:
        grid = pd.read_csv(OUT / "fit_execution_grid.csv")
    else:
        grid = pd.DataFrame(grid)
        grid.to_csv(OUT / "fit_execution_grid.csv", index=False)

    def best(rows: pd.DataFrame) -> tuple[float, float, float]:
        loss = rows.groupby(["op_host_us", "collective_host_us"])["log_ratio"].apply(
            lambda s: float(np.mean(np.abs(s)))
        )
        (op_us, coll_us), value = loss.idxmin(), float(loss.min())
        return float(op_us), float(coll_us), value

    op_us, coll_us, loss = best(grid)
    chosen = grid[(grid["op_host_us"] == op_us) & (grid["collective_host_us"] == coll_us)]
    lines = [
        "# Eager host constants: fit and leave-one-paper-out",
        "",
        f"Generated by benchmarks/fit_execution.py on {datetime.date.today()} from the analytic runs "
        "of results/papers (PROJECTED on the papers' hardware profiles, each paper's dtype). "
        "Fit data: the latency rows of the eager tables that papers/validation.yaml declares "
        f"({', '.join(f'{e} / {t}' for e, t in eager_fit)}); grid op_host_us {OP_HOST_US} x "
        f"collective_host_us {COLLECTIVE_HOST_US}; loss: mean |log(ours / paper)|.",
        "",
        f"**Fit: op_host_us = {op_us:g}, collective_host_us = {coll_us:g}** (loss {loss:.3f}; "
        f"{len(chosen)} rows; median |error| {np.median(np.abs(chosen['error_pct'])):.1f}%, "
        f"signed median {np.median(chosen['error_pct']):+.1f}%).",
        "",
        "## Leave one paper out",
        "",
        "For each paper: constants fitted without its rows, then every latency row of that paper "
        "(all its tables, not only the fit ones) projected with them.",
        "",
    ]
    lopo = []
    for paper in sorted(
        papers.loc[papers["experiment"].isin([e for e, _ in fit_tables]), "paper"].unique()
    ):
        rest = grid[grid["paper"] != paper]
        if rest.empty:
            continue
        o, c, _ = best(rest)
        mode = paper_execution(paper)
        ex = Execution("eager", o * 1e-6, c * 1e-6)
        errs = []
        for exp in sorted(papers.loc[papers["paper"] == paper, "experiment"].unique()):
            rows = papers[papers["experiment"] == exp]
            if not rows["metric"].eq("latency_s").any():
                continue
            # the eager constants do not touch a paper timed otherwise
            comp = _latency_errors(exp, rows, db, ex if mode == "eager" else load_execution(mode))
            errs.append(comp[comp["devices"] > 1])
        errs = pd.concat(errs) if errs else pd.DataFrame({"error_pct": []})
        lopo.append({"held-out paper": paper, "its mode": mode, "op_host_us": o,
                     "collective_host_us": c, "multi-device rows": len(errs),
                     "median |error| %": float(np.median(np.abs(errs["error_pct"]))),
                     "signed median %": float(np.median(errs["error_pct"]))})  # fmt: skip
    table = pd.DataFrame(lopo)
    cells = [
        [f"{v:.1f}" if isinstance(v, float) else str(v) for v in r]
        for r in table.itertuples(index=False)
    ]
    lines += markdown_table(
        list(table.columns), cells, set(range(2, len(table.columns)))
    ).splitlines()
    (OUT / "fit_execution.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.write:
        text = EXECUTION_FILE.read_text()
        text = re.sub(r"op_host_us: [0-9.]+  # FITTED[^\n]*",
                      f"op_host_us: {op_us:g}  # FITTED: benchmarks/fit_execution.py", text)  # fmt: skip
        text = re.sub(r"collective_host_us: [0-9.]+  # FITTED[^\n]*",
                      f"collective_host_us: {coll_us:g}  # FITTED: benchmarks/fit_execution.py", text)  # fmt: skip
        tables = "".join(f"    - {e} / {t}\n" for e, t in eager_fit)
        block = (
            "fit:  # written by benchmarks/fit_execution.py\n"
            f"  date: '{datetime.date.today()}'\n"
            f"  tables:\n{tables}"
            f"  loss_mean_abs_log_ratio: {loss:.4f}  # mean |log(ours / paper)| at the fit\n"
            f"  rows: {len(chosen)}  # fit rows the loss is over\n"
            "  report: reports/projection_gpu/fit_execution.md\n"
        )
        text = re.sub(r"\nfit:.*\Z", "\n" + block, text, flags=re.S)
        EXECUTION_FILE.write_text(text)
        print(f"wrote {EXECUTION_FILE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
