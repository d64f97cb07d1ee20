"""`frames` in the analysis keys: two clip lengths at one height x width never share a baseline, a
label, an anchor or a projection twin; stores older than the column still load (as images)."""

from __future__ import annotations

import sqlite3

import pandas as pd
import pytest

from analysis.breakdown import RUN_KEYS
from analysis.projection import TWIN_KEY, WORKLOAD_KEY, ProjectionInputError, StoreTraces
from analysis.projection_report import MATCH, validation
from analysis.report import write_report
from analysis.tables import BASELINE_KEY, load_runs, size_text, with_speedup
from suite.store.results import ResultStore, RunRecord
from tests.unit.test_report import _md_row, _run

# (run_id, strategy, world, frames, latency): the 17-frame clip costs twice the 9-frame one
VIDEO = [
    ("none-f9", "none", 1, 9, 2.0),
    ("none-f17", "none", 1, 17, 4.0),
    ("uly-f9", "ulysses", 2, 9, 1.25),
    ("uly-f17", "ulysses", 2, 17, 2.0),
]


def _store(path, rows=VIDEO):
    with ResultStore(path) as store:
        for run_id, strategy, world, frames, lat in rows:
            extra = {"frames": frames} if frames else {}
            store.save(RunRecord(run=_run(run_id, strategy, world, latency_s=lat, **extra)))
    return path


def test_every_key_knows_frames():
    for key in (WORKLOAD_KEY, TWIN_KEY, MATCH, BASELINE_KEY, RUN_KEYS):
        assert "frames" in key


def test_two_clip_lengths_at_one_size_keep_their_own_baselines_and_labels(tmp_path):
    db = _store(tmp_path / "results.db")
    df = with_speedup(load_runs(db)).set_index("run_id")
    # exactly representable ratios: approx only absorbs the last-bit rounding
    assert df.loc["uly-f9", "speedup"] == pytest.approx(1.6, rel=1e-12)  # 2.0 / 1.25
    assert df.loc["uly-f17", "speedup"] == pytest.approx(2.0, rel=1e-12)  # 4.0 / 2.0
    _, md = write_report(db, tmp_path / "report")
    text = md.read_text(encoding="utf-8")
    # one row per clip, each with its own baseline's speedup
    assert _md_row(text, "9x64x64", "ulysses")[:2] == ["tiny-x", "9x64x64"]
    assert "1.60" in _md_row(text, "9x64x64", "ulysses")
    assert "2.00" in _md_row(text, "17x64x64", "ulysses")
    assert "size" in _md_row(text, "workload")
    assert size_text(pd.NA, 64, 64) == "64x64" and size_text(81, 720, 1280) == "81x720x1280"


def test_anchor_and_validation_never_match_another_clip_length(tmp_path):
    db = _store(tmp_path / "results.db")
    with ResultStore(db) as store:
        ctx = StoreTraces(store, source=None)
        # two single-device workloads (9 and 17 frames): a latency alone cannot say which
        with pytest.raises(ProjectionInputError, match="2 workloads"):
            ctx.anchor_baseline(10.0)
        base, _, _ = ctx.anchor_baseline("none-f17")
        assert base.run_id == "none-f17"
    # an analytic twin of the 9-frame ulysses run, projected on the source profile
    twin = _run("ana-uly-f9", "ulysses", 2, frames=9, world_mode="analytic")
    wrong = _run("ana-uly-f13", "ulysses", 2, frames=13, world_mode="analytic")
    with ResultStore(db) as store:
        store.save(RunRecord(run=twin))
        store.save(RunRecord(run=wrong))
        store.save_rows(
            "projection",
            [
                {"run_id": r, "hardware": "cpu", "latency_s": 1.0, "projected_dtype": "fp32"}
                for r in ("ana-uly-f9", "ana-uly-f13")
            ],
        )
    val = validation(db, "cpu")
    assert list(val["measured_latency_s"]) == [1.25]  # the 9-frame real run only


def test_a_store_from_before_the_frames_column_loads_as_images(tmp_path):
    db = _store(tmp_path / "old.db", [(i, s, w, 0, lat) for i, s, w, _, lat in VIDEO[::2]])
    with sqlite3.connect(db) as conn:  # as a store written before the column existed
        conn.execute("ALTER TABLE runs DROP COLUMN frames")
    runs = load_runs(db)
    assert runs["frames"].isna().all()
    df = with_speedup(runs).set_index("run_id")
    assert df.loc["uly-f9", "speedup"] == pytest.approx(1.6, rel=1e-12)
    _, md = write_report(db, tmp_path / "report")
    assert _md_row(md.read_text(encoding="utf-8"), "ulysses")[:2] == ["tiny-x", "64x64"]


def test_representative_gemm_of_a_clip_counts_every_latent_frame():
    from analysis.opmodel import representative_gemm

    # tiny Wan at 9x64x64: 3 latent frames x (8/2)^2 patches = 48 tokens, 2 CFG branches, 2 ranks
    m, n, k = representative_gemm("tiny-wan2.1-t2v-1.3b", 64, 64, 1, 5.0, 2, frames=9)
    assert (m, n, k) == (48, 64, 64)
    assert representative_gemm("tiny-wan2.1-t2v-1.3b", 64, 64, 1, 5.0, 2)[0] == 16  # one frame
