"""Speedup / efficiency numbers and the HTML / Markdown report, from a synthetic store."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis.fmt import fmt_sig
from analysis.render import markdown_table
from analysis.report import default_report_dir, write_report
from analysis.tables import comm_by_op, load_runs, with_speedup
from suite.store.results import ResultStore, RunRecord

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Latencies chosen so speedups are short decimals: 2.0 / 1.25 = 1.6, 2.0 / 0.8 = 2.5.
LATENCY_S = {("none", 1): 2.0, ("data", 2): 1.25, ("data", 4): 0.8}


def _run(run_id: str, strategy: str, world: int, **extra) -> dict:
    run = {
        "run_id": run_id,
        "experiment": "unit-exp",
        "created_at": f"2025-01-0{world}T00:00:00Z",
        "git_commit": "abc123",
        "versions": {"python": "3.11", "torch": "2.5"},
        "host": "testhost",
        "device": "cpu: test",
        "backend": "gloo" if world > 1 else "none",
        "world_mode": "real",
        "threads_per_rank": 1,
        "workload": "tiny-x",
        "model": "UNet2DConditionModel",
        "height": 64,
        "width": 64,
        "steps": 4,
        "scheduler": "ddim",
        "guidance": 1.0,
        "batch": 1,
        "seed": 0,
        "dtype": "float32",
        "strategy": strategy,
        "degrees": {strategy: world} if strategy != "none" else {},
        "world_size": world,
        "status": "ok",
    }
    return {**run, **extra}


def _ok_record(strategy: str, world: int) -> RunRecord:
    lat = LATENCY_S[(strategy, world)]
    step = lat / 4
    exposed = 0.01 * (world - 1)
    comm = 0.02 * (world - 1)
    run = _run(
        f"{strategy}-w{world}",
        strategy,
        world,
        latency_s=lat,
        latency_min_s=lat * 0.9,
        latency_max_s=lat * 1.1,
        step_s=step,
        compute_s=step - exposed,
        comm_s=comm or None,
        exposed_comm_s=exposed,
        overlap_pct=100 * (1 - exposed / comm) if comm else None,
        comm_bytes_per_step=2_500_000.0 * (world - 1),
        peak_mem_bytes=123_456_789,
        param_bytes_per_rank=50_000_000,
    )
    comm_rows = (
        [
            {
                "rank": r,
                "op": "all_gather",
                "axis": "data",
                "calls_per_step": 2.0,
                "bytes_per_step": 1e6 * (r + 1),
                "time_s": 0.001,
                "exposed_s": 0.0005,
            }
            for r in range(world)
        ]
        if world > 1
        else []
    )
    return RunRecord(run=run, comm=comm_rows)


FAILED_ERROR = "ValueError: ulysses degree 2 must divide the head count 3\n" + "\n".join(
    f"  frame {i}" for i in range(20)
)


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "results.db"
    with ResultStore(path) as store:
        for strategy, world in LATENCY_S:
            store.save(_ok_record(strategy, world))
        store.save(
            RunRecord(run=_run("ulysses-w2", "ulysses", 2, status="failed", error=FAILED_ERROR))
        )
        # Another workload without a baseline: its speedup must stay NaN.
        store.save(
            RunRecord(
                run=_run("y-data-w2", "data", 2, workload="tiny-y", latency_s=3.0, step_s=0.75)
            )
        )
    return path


def test_load_runs_decodes_json(db):
    runs = load_runs(db).set_index("run_id")
    assert runs.loc["data-w2", "degrees"] == "data=2"
    assert runs.loc["none-w1", "degrees"] == ""


def test_speedup_and_efficiency(db):
    df = with_speedup(load_runs(db)).set_index("run_id")
    # Ratios of exactly representable latencies; approx only absorbs the last-bit rounding.
    assert df.loc["none-w1", "speedup"] == pytest.approx(1.0, rel=1e-12)
    assert df.loc["data-w2", "speedup"] == pytest.approx(1.6, rel=1e-12)
    assert df.loc["data-w2", "efficiency_pct"] == pytest.approx(80.0, rel=1e-12)
    assert df.loc["data-w4", "speedup"] == pytest.approx(2.5, rel=1e-12)
    assert df.loc["data-w4", "efficiency_pct"] == pytest.approx(62.5, rel=1e-12)
    assert math.isnan(df.loc["ulysses-w2", "speedup"])  # failed
    assert math.isnan(df.loc["y-data-w2", "speedup"])  # no baseline for tiny-y


def test_baseline_must_match_the_key(db):
    df = load_runs(db)
    df.loc[df["run_id"] == "data-w2", "seed"] = 7  # another seed: not comparable
    out = with_speedup(df).set_index("run_id")
    assert math.isnan(out.loc["data-w2", "speedup"])
    assert out.loc["data-w4", "speedup"] == pytest.approx(2.5, rel=1e-12)


def test_comm_by_op_means_over_ranks(db):
    df = comm_by_op(db).set_index("run_id")
    w4 = df.loc["data-w4"]
    assert (w4["op"], w4["axis"], w4["ranks"]) == ("all_gather", "data", 4)
    assert w4["bytes_per_step"] == pytest.approx(2.5e6)  # mean of 1, 2, 3, 4 MB
    assert w4["algbw_gb_per_s"] == pytest.approx(2.5)  # 2.5 MB in 1 ms


def _md_row(md: str, *cells: str) -> list[str]:
    """Cells of the first Markdown table row containing all `cells` as whole cells."""
    for line in md.splitlines():
        row = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and all(c in row for c in cells):
            return row
    raise AssertionError(f"no table row with {cells}")


def test_write_report(db, tmp_path):
    html_path, md_path = write_report(db, tmp_path / "report")
    assert html_path == tmp_path / "report" / "index.html" and md_path.name == "index.md"
    for png in ("latency_vs_world.png", "breakdown.png"):
        data = (tmp_path / "report" / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    md = md_path.read_text(encoding="utf-8")
    html = html_path.read_text(encoding="utf-8")
    assert "unit-exp" in md.splitlines()[0]
    assert "MEASURED" in md and "testhost" in md and "abc123" in md and "python=3.11" in md
    assert "2025-01-01T00:00:00Z to 2025-01-04T00:00:00Z" in md
    base = _md_row(md, "none", "2.000")
    assert base[:7] == ["tiny-x", "64x64", "4", "1", "none", "-", "-"]  # batch, ..., options
    assert base[7:11] == ["1", "2.000", "1.800-2.200", "1.00"]
    w2 = _md_row(md, "data=2", "1.250")
    # latency, range, speedup, efficiency, step, compute, exposed, overlap, comm MB, mem, params,
    # buffers (not recorded here), status
    assert w2[8:] == [
        "1.250",
        "1.125-1.375",
        "1.60",
        "80.0",
        "0.3125",
        "0.3025",
        "0.01000",
        "50.0",
        "2.500",
        "123.5",
        "50.00",
        "-",
        "ok",
    ]
    w4 = _md_row(md, "data=4", "0.8000")
    assert w4[10:12] == ["2.50", "62.5"]
    assert _md_row(md, "tiny-y")[9] == "-"
    assert _md_row(md, "ulysses")[-1] == "failed"
    # Error excerpt: first lines plus the omitted-count marker, in both formats.
    assert "ulysses degree 2 must divide the head count 3" in md
    assert "ulysses degree 2 must divide the head count 3" in html
    assert "more lines)" in md
    assert "![latency vs world size](latency_vs_world.png)" in md
    assert 'src="breakdown.png"' in html and "<script" not in html
    assert "## Columns" in md and "efficiency_pct" in md
    assert "## Communication by op" in md
    # efficiency at most 100%; batch 1 cannot be split over data ranks: no note, no columns
    assert "† Efficiency above" not in md and "baseline_per_rank_work_s" not in md


def _superlinear_store(path):
    """Batch 4 on one device (2.0 s) and at the per-rank batch 2 (0.6 s); data w2 at 0.8 s is
    125% efficient against the first, 75% against one rank's share of the work. tiny-y has no
    batch-2 baseline; a cfg run has no data axis."""
    with ResultStore(path) as store:
        for run_id, strategy, world, workload, batch, lat in (
            ("b4", "none", 1, "tiny-x", 4, 2.0),
            ("b2", "none", 1, "tiny-x", 2, 0.6),
            ("d2", "data", 2, "tiny-x", 4, 0.8),
            ("y4", "none", 1, "tiny-y", 4, 2.0),
            ("yd2", "data", 2, "tiny-y", 4, 1.25),
            ("c2", "cfg", 2, "tiny-x", 4, 1.6),
        ):
            run = _run(run_id, strategy, world, workload=workload, batch=batch, latency_s=lat)
            store.save(RunRecord(run=run))


def test_superlinear_efficiency_and_per_rank_work_baseline(tmp_path):
    path = tmp_path / "results.db"
    _superlinear_store(path)
    df = with_speedup(load_runs(path)).set_index("run_id")
    assert df.loc["d2", "efficiency_pct"] == pytest.approx(125.0)
    assert df.loc["d2", "per_rank_batch"] == 2
    assert df.loc["d2", "baseline_per_rank_work_s"] == pytest.approx(0.6)
    assert df.loc["d2", "efficiency_per_rank_work_pct"] == pytest.approx(75.0)  # 0.6 / 0.8
    assert df.loc["yd2", "per_rank_batch"] == 2  # applies, but no batch-2 run is stored
    assert math.isnan(df.loc["yd2", "baseline_per_rank_work_s"])
    for run_id in ("c2", "b4"):  # no data axis
        assert df.loc[run_id, "per_rank_batch"] is pd.NA
        assert math.isnan(df.loc[run_id, "efficiency_per_rank_work_pct"])
    _, md_path = write_report(path, tmp_path / "r")
    md = md_path.read_text(encoding="utf-8")
    d2 = _md_row(md, "data=2", "0.8000")
    assert d2[10:14] == ["2.50", "125.0 †", "0.6000", "75.0"]
    assert _md_row(md, "data=2", "1.250")[10:14] == ["1.60", "80.0", "- ‡", "- ‡"]
    assert _md_row(md, "cfg=2")[12:14] == ["-", "-"]
    assert "† Efficiency above 100% (superlinear). It is not free speed" in md
    assert "‡ No single-device run at the per-rank batch" in md
    assert "| baseline_per_rank_work_s |" in md  # in the column glossary


def test_report_with_only_failed_runs(tmp_path):
    path = tmp_path / "results.db"
    with ResultStore(path) as store:
        store.save(RunRecord(run=_run("f1", "data", 2, status="failed", error="boom")))
    html_path, md_path = write_report(path, tmp_path / "r")
    md = md_path.read_text(encoding="utf-8")
    assert "boom" in md and "Runs: 1 (0 ok, 1 failed)" in md
    assert (tmp_path / "r" / "breakdown.png").read_bytes().startswith(PNG_MAGIC)
    assert html_path.is_file()


def test_report_counts_skipped_runs_apart_from_failures(tmp_path):
    path = tmp_path / "results.db"
    with ResultStore(path) as store:
        store.save(RunRecord(run=_run("s1", "data", 2, status="skipped", error="no CPU support")))
        store.save(RunRecord(run=_run("f1", "data", 4, status="failed", error="boom")))
    _, md_path = write_report(path, tmp_path / "r")
    md = md_path.read_text(encoding="utf-8")
    assert "Runs: 2 (0 ok, 1 skipped, 1 failed)" in md
    assert "skipped: " in md and "no CPU support" in md and "failed: " in md


def test_report_on_empty_store_and_missing_store(tmp_path):
    path = tmp_path / "results.db"
    ResultStore(path).close()
    _, md_path = write_report(path, tmp_path / "r")
    assert "Runs: 0 (0 ok, 0 failed)" in md_path.read_text(encoding="utf-8")
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "nope.db", tmp_path / "r2")


def test_default_report_dir(db, tmp_path):
    from pathlib import Path

    assert default_report_dir(db) == Path("reports") / "unit-exp"
    with ResultStore(db) as store:
        store.save(RunRecord(run=_run("other", "none", 1, experiment="b/two")))
    assert default_report_dir(db) == Path("reports") / "b_two+unit-exp"


def test_markdown_table_escapes_and_aligns():
    text = markdown_table(["a", "n"], [["x|y", "1"], ["line\nbreak", "22"]], right={1})
    assert text.splitlines() == [
        "| a          |   n |",
        "| ---------- | --: |",
        "| x\\|y       |   1 |",
        "| line break |  22 |",
    ]


def test_fmt_sig_rounding():
    got = [fmt_sig(x) for x in (2.0, 0.012345, 1234.56, 1.2e-8, 0, None, float("nan"))]
    assert got == ["2.000", "0.01235", "1235", "1.200e-08", "0", "-", "-"]


def test_bar_labels_tell_runs_apart_by_the_options_that_differ():
    from analysis.plots import _bar_labels

    rows = pd.DataFrame(
        {
            "frames": [61, 61, 61, 61],
            "height": [512] * 4,
            "width": [512] * 4,
            "strategy": ["none", "distrifusion", "distrifusion", "pipefusion"],
            "world_size": [1, 2, 2, 2],
            "degrees": ["-", "patch=2", "patch=2", "pipefusion=2"],
            "options": [
                None,
                "coalesce=block, split=frames, warmup_steps=1",
                "coalesce=block, split=height, warmup_steps=1",
                "patches=None, warmup_steps=1",
            ],
        }
    )
    labels = _bar_labels(rows)
    assert len(set(labels)) == len(labels)
    assert labels[1].endswith("(split=frames)") and labels[2].endswith("(split=height)")
    # shared defaults stay in the table, not on the bars; a lone run shows no options
    assert "coalesce" not in labels[1] and "warmup_steps" not in labels[3]
    assert labels[3] == "61x512x512 | pipefusion w2"
    hybrid = rows.iloc[[3]].assign(strategy="cfg+ulysses", degrees="cfg=2, ulysses=4", world_size=8)
    assert _bar_labels(hybrid) == ["61x512x512 | cfg+ulysses w8 [cfg=2, ulysses=4]"]
