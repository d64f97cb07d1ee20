"""PipeFusion's pipeline bubble: measured from the stored tables, beside the analytic value.

Analytic (in units of one stage's compute for one patch, a "slot"): with N stages, M patches,
S steps of which W are synchronous whole-image warm-up steps, every rank computes S*M slots
while the loop lasts W*N*M + (S-W)*M + (N-1) slots: a warm-up step runs the stages one after
another, and the pipelined steps pay the fill / drain of N-1 slots once. The useful fraction is
their ratio; W = 0 gives the paper's M*S / (M*S + N - 1).

Measured: a rank idles exactly while it waits for its input, i.e. blocked on a receive on the
'pipefusion' axis (activations from the previous stage; on stage 0 the predictions coming
back). So bubble fraction = exposed recv time / step time, per rank from the `comm` table
(exposed_s per timed step) and the `rank_steps` table (step_s), then the mean over ranks. No
extra column is stored: both tables already hold what it needs.
"""

from __future__ import annotations

import json

import pandas as pd


def useful_fraction(patches: int, steps: int, stages: int, warmup_steps: int = 0) -> float:
    """Analytic fraction of the loop a rank computes (1 - bubble), see the module docstring."""
    w = min(warmup_steps, steps)
    fill = stages - 1 if steps > w else 0
    slots = w * stages * patches + (steps - w) * patches + fill
    return steps * patches / slots


def _pipe_degrees(run: pd.Series) -> tuple[int, int]:
    degrees = json.loads(run["degrees"] or "{}")
    options = json.loads(run["options"] or "{}")
    stages = int(degrees.get("pipefusion", 1))
    patches = options.get("patches")
    return stages, stages if patches is None else int(patches)


def bubble_table(runs: pd.DataFrame, comm: pd.DataFrame, rank_steps: pd.DataFrame) -> pd.DataFrame:
    """One row per ok pipefusion run: measured bubble (mean and max over ranks, fractions of the
    step time) beside the analytic bubble with and without the warm-up steps."""
    rows = []
    ok = runs[(runs["status"] == "ok") & runs["strategy"].str.contains("pipefusion", na=False)]
    for _, run in ok.iterrows():
        stages, patches = _pipe_degrees(run)
        steps, warmup = int(run["steps"]), int(run["warmup_steps"] or 0)
        step_s = rank_steps[rank_steps["run_id"] == run["run_id"]].groupby("rank")["step_s"].mean()
        recv = comm[
            (comm["run_id"] == run["run_id"])
            & (comm["op"] == "recv")
            & (comm["axis"] == "pipefusion")
        ]
        waited = recv.groupby("rank")["exposed_s"].sum().reindex(step_s.index, fill_value=0.0)
        per_rank = waited / step_s
        rows.append(
            {
                "run_id": run["run_id"],
                "workload": run["workload"],
                "strategy": run["strategy"],
                "degrees": run["degrees"],
                "stages": stages,
                "patches": patches,
                "steps": steps,
                "warmup_steps": warmup,
                "bubble_measured": float(per_rank.mean()) if len(per_rank) else None,
                "bubble_measured_max": float(per_rank.max()) if len(per_rank) else None,
                "bubble_analytic": 1 - useful_fraction(patches, steps, stages, warmup),
                "bubble_analytic_paper": 1 - useful_fraction(patches, steps, stages, 0),
            }
        )
    return pd.DataFrame(rows)
