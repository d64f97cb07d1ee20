"""The projection's validation ladder -> reports/projection_gpu/VALIDATION.md.

  (a) this CPU: every analytic (and fake) run of results/projection_cpu projected on the
      calibrated local profile, beside the measured latency of its real gloo twin
      (configs/perf/projection_cpu.yaml; `diffscale project ... --hardware local-cpu` first);
  (b) the papers' single-device rows, unanchored: from reports/papers/*/comparison.csv
      (`diffscale reproduce all` first), each with the paper, table and our profile;
  (c) a GPU: reports/projection_gpu/gpu_check/gpu_check.md when benchmarks/gpu_check.sh has run
      on a lent GPU, else marked NOT RUN.

    .venv/bin/python benchmarks/projection_validation.py [--cpu-store results/projection_cpu]

Every number is labelled PROJECTED, MEASURED or PUBLISHED with where it came from.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analysis.paper_validation import (  # noqa: E402
    by_gpu_count,
    by_table,
    fastest,
    label_rows,
    load_comparisons,
    load_split,
)
from analysis.projection_report import validation  # noqa: E402
from analysis.render import markdown_table  # noqa: E402

TARGETS = {"a_median": 10.0, "a_world2": 20.0, "b_median": 25.0, "c_each": 15.0}


def _git() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True)
    return out.stdout.decode().strip() or "unknown"


def rung_a(store: Path) -> tuple[list[str], dict]:
    db = store / "results.db"
    if not db.is_file():
        return [f"NOT RUN: no store at {store} (run configs/perf/projection_cpu.yaml)."], {}
    val = validation(db, "local-cpu")
    lines, figures = [], {}
    for mode in ("analytic", "fake"):
        rows = val[val["projected_from"] == mode]
        if rows.empty:
            continue
        med = float(np.median(np.abs(rows["error_pct"])))
        w2 = rows[rows["world_size"] <= 2]
        worst = w2.loc[w2["error_pct"].abs().idxmax()] if len(w2) else None
        figures[mode] = {
            "median": med,
            "world2_worst": abs(worst["error_pct"]) if worst is not None else np.nan,
        }
        lines += [
            f"### Projected from the {mode} trace",
            "",
            f"Median absolute error **{med:.1f}%** over {len(rows)} runs (target <= "
            f"{TARGETS['a_median']:.0f}%); worst at world <= 2: "
            + (f"{worst['strategy']} {worst['error_pct']:+.1f}%" if worst is not None else "-")
            + f" (target <= {TARGETS['a_world2']:.0f}%).",
            "",
            markdown_table(
                [
                    "strategy",
                    "world",
                    "PROJECTED [s]",
                    "MEASURED [s]",
                    "error",
                    "exposed comm/step PROJ. [ms]",
                    "MEAS. [ms]",
                    "overlap PROJ.",
                    "MEAS.",
                ],
                [
                    [
                        r["strategy"],
                        str(r["world_size"]),
                        f"{r['projected_latency_s']:.3f}",
                        f"{r['measured_latency_s']:.3f}",
                        f"{r['error_pct']:+.1f}%",
                        _ms(r["projected_exposed_comm_s"]),
                        _ms(r["measured_exposed_comm_s"]),
                        _pct(r["projected_overlap_pct"]),
                        _pct(r["measured_overlap_pct"]),
                    ]
                    for _, r in rows.sort_values(["world_size", "strategy"]).iterrows()
                ],  # fmt: skip
                {1, 2, 3, 4, 5, 6, 7, 8},
            ),
            "",
        ]
    lines += _inflation(db)
    return lines, figures


def _ms(seconds) -> str:
    return "-" if pd.isna(seconds) else f"{1e3 * seconds:.1f}"


def _pct(value) -> str:
    return "-" if pd.isna(value) else f"{value:.0f}%"


def _inflation(db: Path) -> list[str]:
    """Why measured-compute (fake) projections miss too: a real world's compute per step over
    its fake twin's (the same ranks' work, measured alone) shows what concurrent ranks and gloo
    traffic cost the compute on 2 cores, which the profile does not contain."""
    from analysis.projection_report import MATCH
    from analysis.tables import open_store

    with open_store(db) as store:
        runs = store.table("runs")
    ok = runs[runs["status"] == "ok"]
    real = ok[ok["world_mode"] == "real"]
    fake = ok[ok["world_mode"] == "fake"]
    both = real.merge(fake, on=MATCH, suffixes=("_real", "_fake"))
    if both.empty:
        return []
    both["ratio"] = both["compute_s_real"] / both["compute_s_fake"]
    rows = [[r["strategy"], str(r["world_size"]), f"{r['compute_s_real']:.4f}",
             f"{r['compute_s_fake']:.4f}", f"{r['ratio']:.2f}"]
            for _, r in both.sort_values(["world_size", "strategy"]).iterrows()]  # fmt: skip
    return [
        "### Compute of real runs vs their fake twins (MEASURED)",
        "",
        "Compute per step (seconds not blocked on communication, slowest rank) of each real run "
        "and of its fake twin (the same ranks' work, one at a time, collectives moving no data). "
        "A ratio above 1 at world 2 (2 ranks on 2 cores) is compute slowed by the other rank's "
        "gloo traffic; at world 4 it also holds core sharing, which the projection models. "
        f"Median ratio at world 2: {both.loc[both['world_size'] == 2, 'ratio'].median():.2f} "
        f"(cfg, which communicates once per step: "
        f"{both.loc[both['strategy'] == 'cfg', 'ratio'].min():.2f}). Neither the calibrated "
        "profile (each op timed alone) nor the core-sharing model contains that slowdown, so "
        "every communicating strategy is projected too fast by about as much, from a fake trace "
        "and from an analytic one alike; the analytic path adds the operator model's own error, "
        "its single-device row above.",
        "",
        markdown_table(
            ["strategy", "world", "real compute [s/step]", "fake compute [s/step]", "ratio"],
            rows,
            {1, 2, 3, 4},
        ),
        "",
    ]


def rung_b(pages: Path) -> tuple[list[str], dict]:
    frames = [pd.read_csv(p) for p in sorted(pages.glob("*/comparison.csv"))]
    if not frames:
        return ["NOT RUN: no reports/papers/*/comparison.csv (run `diffscale reproduce all`)."], {}
    comp = pd.concat(frames, ignore_index=True)
    single = comp[(comp["devices"] == 1) & (comp["metric"] == "latency_s") & comp["ours"].notna()]
    single = single.drop_duplicates(["paper", "workload", "height", "steps", "hardware_profile"])
    med = float(np.median(np.abs(single["error_pct"])))
    rows = [[r["paper"], str(r["table_or_figure"]), r["workload"], f"{r['height']}x{r['width']}",
             str(r["steps"]), r["timed"], r["hardware_profile"], f"{r['value']:.4g}",
             f"{r['ours']:.4g}", f"{r['error_pct']:+.1f}%"]
            for _, r in single.iterrows()]  # fmt: skip
    lines = [
        f"Median absolute error **{med:.1f}%** over {len(single)} single-device rows (target <= "
        f"{TARGETS['b_median']:.0f}%). PUBLISHED: papers/<paper>.csv (source per row); PROJECTED: "
        "the analytic trace priced on the profile, unanchored, plus the stages the paper times "
        "('timed': loop+text = prompt encoding and loop; pipeline = also the VAE decode).",
        "",
        markdown_table(
            [
                "paper",
                "table",
                "workload",
                "size",
                "steps",
                "timed",
                "profile",
                "PUBLISHED [s]",
                "PROJECTED [s]",
                "error",
            ],  # fmt: skip
            rows,
            {4, 7, 8, 9},
        ),
        "",
    ]
    return lines, {"median": med, "rows": len(single)}


def _fmt(df: pd.DataFrame) -> str:
    cols = list(df.columns)

    def cell(c, v) -> str:
        if isinstance(v, float):
            return "-" if np.isnan(v) else f"{v:+.1f}" if "signed" in c else f"{v:.1f}"
        return str(v)

    rows = [[cell(c, v) for c, v in zip(cols, r, strict=True)] for r in df.itertuples(index=False)]
    return markdown_table(cols, rows, set(range(2, len(cols))))


def rung_d(pages: Path) -> tuple[list[str], dict]:
    comp = load_comparisons(pages)
    if comp.empty:
        return ["NOT RUN: no reports/papers/*/comparison.csv (run `diffscale reproduce all`)."], {}
    rows = label_rows(comp, load_split())
    gpus = by_gpu_count(rows)
    same, total = fastest(comp)
    test = gpus[(gpus["split"] == "test") & (gpus["GPUs"] == "all")].iloc[0]
    eight = rows[rows["devices"] == 8]
    figures = {
        "test_median_abs": float(test["median |error| %"]),
        "test_signed": float(test["signed median %"]),
        "all_median_abs": float(np.median(np.abs(rows["error_pct"]))),
        "all_signed": float(np.median(rows["error_pct"])),
        "eight_median_abs": float(np.median(np.abs(eight["error_pct"]))),
        "anchored_median_abs": float(np.median(np.abs(rows["error_anchored_pct"].dropna()))),
        "fastest": f"{same}/{total}",
    }
    lines = [
        f"{len(rows)} multi-device latency rows answered ({int((rows['split'] == 'fit').sum())} fit, "
        f"{int((rows['split'] == 'test').sum())} test; papers/validation.yaml declares the fit "
        "tables, and a test row repeating a fit row is dropped). Unanchored: median |error| "
        f"**{figures['all_median_abs']:.1f}%**, signed median **{figures['all_signed']:+.1f}%**; "
        f"8-GPU rows {figures['eight_median_abs']:.1f}%; anchored on the paper's single device "
        f"{figures['anchored_median_abs']:.1f}%. Test set alone: median |error| "
        f"**{figures['test_median_abs']:.1f}%**, signed {figures['test_signed']:+.1f}%. Fastest "
        f"method the paper's in **{same} of {total}** columns. Targets (issue 21): <= 15% "
        "unanchored overall and at 8 GPUs, signed within +-5%, anchored <= 8%, fastest >= 18/22.",
        "",
        "### By split and GPU count",
        "",
        _fmt(gpus),
        "",
        "### By table and GPU count",
        "",
        _fmt(by_table(rows)),
        "",
        "Leave-one-paper-out errors of the fitted eager constants: "
        "[fit_execution.md](fit_execution.md).",
        "",
    ]
    return lines, figures


def rung_c(gpu_dir: Path) -> list[str]:
    page = gpu_dir / "gpu_check.md"
    if page.is_file():
        return [f"See [{page.relative_to(gpu_dir.parent)}]({page.relative_to(gpu_dir.parent)})."]
    return [
        "**NOT RUN.** No GPU has been lent to any session so far (the device tool's `status` "
        "said `can_start_another: false` in every session, last on 2026-12-07). The script is "
        "ready: `benchmarks/gpu_check.sh` (configs/perf/gpu_check*.yaml) calibrates the GPU's "
        "operator curves, measures sdxl 1024², pixart-alpha 1024² and 2048², flux-dev 1024² "
        "and the video DiT wan2.1-t2v-1.3b at 81×480×832 on one device (bf16) and compares "
        f"each with its unanchored projection (target <= "
        f"{TARGETS['c_each']:.0f}%); its output goes to reports/projection_gpu/gpu_check/."
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-store", default=str(ROOT / "results/projection_cpu"))
    ap.add_argument("--papers", default=str(ROOT / "reports/papers"))
    ap.add_argument("--out", default=str(ROOT / "reports/projection_gpu/VALIDATION.md"))
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    a_lines, a = rung_a(Path(args.cpu_store))
    b_lines, b = rung_b(Path(args.papers))
    d_lines, d = rung_d(Path(args.papers))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Projection validation ladder",
        "",
        f"Generated {now} at commit {_git()} by `benchmarks/projection_validation.py`. "
        "PROJECTED: `diffscale project` / `diffscale reproduce` (operator model, "
        "analysis/opmodel.py; collectives as NCCL runs them, analysis/collectives.py). MEASURED: real runs timed on this machine. "
        "PUBLISHED: the papers' numbers (papers/*.csv).",
        "",
        "## (a) This CPU: analytic traces projected on the calibrated profile vs real gloo runs",
        "",
        "small-pixart-alpha 256², 4 steps, CFG, batch 1, fp32, 1 thread per rank, 3 timed "
        "repeats (median), worlds 2 and 4 on 2 cores (configs/perf/projection_cpu.yaml). "
        "Profile: configs/hardware/local-cpu.yaml (measured by `diffscale calibrate`).",
        "",
        *a_lines,
        "## (b) The papers' single-device rows, unanchored",
        "",
        *b_lines,
        "## (c) A GPU",
        "",
        *rung_c(out.parent / "gpu_check"),
        "",
        "## (d) The papers' multi-device rows: fit and test, by GPU count",
        "",
        *d_lines,
    ]
    out.write_text("\n".join(lines))
    print(out, {"a": a, "b": b, "d": d})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
