"""`diffscale reproduce` end to end on a toy paper: a tiny preset's analytic runs, projected on a
catalog profile, beside two published rows; anchoring, the page, the index, and a re-run that
reuses the stored runs."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.papers import PAPERS_DIR
from analysis.projection import project_store
from suite.commands.reproduce import reproduce
from suite.store.results import ResultStore

CONFIG = """\
experiment: toy_paper
description: tiny PixArt, one device and Ulysses over 2 (analytic world)
workloads: [tiny-pixart-alpha]
resolutions: [64]
settings: {steps: 2, scheduler: ddim, guidance: 4.5, dtype: float16, world_mode: analytic}
strategies:
  - {name: none}
  - {name: ulysses, world_sizes: [2]}
"""


def _rows() -> pd.DataFrame:
    proto = pd.read_csv(PAPERS_DIR / "xdit.csv", dtype=str, keep_default_na=False).iloc[:2].copy()
    fields = {"experiment": "toy_paper", "workload": "tiny-pixart-alpha", "height": "64",
              "width": "64", "steps": "2", "scheduler": "ddim", "guidance": "4.5",
              "dtype": "float16", "batch": "1", "timed": "loop", "metric": "latency_s",
              "unit": "s", "hardware_profile": "8xA100-80GB-NVLink", "status": "reported",
              "options": "", "table_or_figure": "Toy table", "column_label": "64px"}  # fmt: skip
    for k, v in fields.items():
        proto[k] = v
    proto["devices"] = ["1", "2"]
    proto["strategy"] = ["none", "ulysses"]
    proto["degrees"] = ["{}", '{"ulysses": 2}']
    proto["row_label"] = ["one device", "Ulysses"]
    proto["value"] = ["0.02", "0.015"]
    return proto


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    (root / "configs").mkdir()
    (root / "papers").mkdir()
    (root / "configs" / "toy_paper.yaml").write_text(CONFIG)
    _rows().to_csv(root / "papers" / "xdit.csv", index=False)
    dirs = {"results_root": root / "results", "reports_root": root / "reports",
            "papers_dir": root / "papers", "configs_dir": root / "configs"}  # fmt: skip
    summary = reproduce(["toy_paper"], anchor=True, progress=False, **dirs)
    return root, dirs, summary


def test_ours_is_the_projection_of_the_stored_runs(toy):
    root, dirs, summary = toy
    comp = pd.read_csv(root / "reports" / "toy_paper" / "comparison.csv").set_index("row_label")
    db = root / "results" / "results.db"
    rows = project_store(db, ["8xA100-80GB-NVLink"], "local-cpu")
    with ResultStore(db, read_only=True) as store:
        runs = store.table("runs").set_index("run_id")
    by_strategy = {runs.loc[r["run_id"], "strategy"]: r["latency_s"] for r in rows}
    # 'timed: loop': ours is exactly the projected loop, unanchored
    assert comp.loc["Ulysses", "ours"] == pytest.approx(by_strategy["ulysses"], rel=1e-9)
    assert comp.loc["one device", "ours"] == pytest.approx(by_strategy["none"], rel=1e-9)
    error = 100 * (by_strategy["ulysses"] - 0.015) / 0.015
    assert comp.loc["Ulysses", "error_pct"] == pytest.approx(error)
    # anchored: our single device lands on the paper's, the scale carries to Ulysses' compute
    assert comp.loc["one device", "ours_anchored"] == pytest.approx(0.02, rel=1e-9)
    assert comp.loc["Ulysses", "ours_anchored"] != pytest.approx(comp.loc["Ulysses", "ours"])
    assert comp["source"].eq("projected").all()
    (row,) = summary
    assert row["answered"] == 2 and row["multi_device_latency_rows"] == 1
    assert row["median_abs_error_pct"] == pytest.approx(abs(error))


def test_pages_and_rerun_reuses_the_store(toy):
    root, dirs, _ = toy
    page = (root / "reports" / "toy_paper" / "index.md").read_text()
    assert "PROJECTED on 8xA100-80GB-NVLink, fp16" in page and "Ulysses" in page
    assert "[toy_paper](toy_paper/index.md)" in (root / "reports" / "index.md").read_text()
    db = root / "results" / "results.db"
    with ResultStore(db, read_only=True) as store:
        before = store.table("runs")[["run_id", "created_at"]]
    reproduce(["toy_paper"], anchor=False, progress=False, **dirs)
    with ResultStore(db, read_only=True) as store:
        after = store.table("runs")[["run_id", "created_at"]]
    pd.testing.assert_frame_equal(before, after)  # nothing re-ran
    assert len(before) == 2
