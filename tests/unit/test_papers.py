"""papers/*.csv: the published rows load, validate, and hold the numbers the papers print.

The expected values below are written here independently of the CSVs (from the papers' figures
and tables as read for this test), so a wrong transcription in a CSV fails a test: a few rows per
table, each looked up by its own coordinates.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis.papers import (
    COLUMNS,
    FIDELITY_METRICS,
    METRIC_UNITS,
    PAPERS_DIR,
    PapersError,
    load_papers,
    paper_experiments,
    parse_json,
)


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return load_papers()


def _value(rows: pd.DataFrame, **where) -> float:
    """The one value at these coordinates (a JSON column compared as a parsed dict)."""
    mask = pd.Series(True, index=rows.index)
    for col, want in where.items():
        if col in ("degrees", "options"):
            mask &= rows[col].map(parse_json) == want
        else:
            mask &= rows[col] == want
    hit = rows[mask]
    assert len(hit) == 1, f"{len(hit)} rows match {where}"
    return float(hit["value"].iloc[0])


# tables (each name is unique across the papers)
T1, T1_25 = "Table 1 (50 steps)", "Table 1 (25 steps)"
F6, F6_CFG = "Figure 6", "Figure 6 (text: CFG batch splitting)"
GN, WARMUP = "Ablation: GroupNorm synchronization", "Ablation: warm-up steps"
PCIE, NVL = "4xA100 PCIe latency (PixArt-alpha)", "8xA100 NVLink latency (PixArt-alpha)"
LINKS = "PCIe vs NVLink scaling (A100, PixArt-alpha)"
L40, FID = "8xL40 PixArt-alpha 4096px comparison", "FID (PixArt-alpha 256px, COCO 2014)"
DEV = "Flux.1-dev scaling on two 8xL40 nodes (Ethernet)"
SCHNELL_A100, SCHNELL_L40 = "Flux.1-schnell scaling on 8xA100", "Flux.1-schnell scaling on 8xL40"
LAT = "latency_s"

# (table_or_figure, coordinates, value): a few per table
EXPECTED = [
    (T1, dict(devices=8, method="DistriFusion", metric=LAT), 1.77),
    (T1, dict(devices=2, method="Naive Patch", metric=LAT), 2.83),
    (T1, dict(devices=1, method="Original", metric=LAT), 5.02),
    (T1, dict(devices=4, method="Naive Patch", metric="fid", reference="ground_truth"), 125),
    (T1, dict(devices=8, method="DistriFusion", metric="lpips", reference="original"), 0.211),
    (T1, dict(devices=8, method="Naive Patch", metric="psnr", reference="original"), 7.70),
    (T1_25, dict(devices=8, method="DistriFusion", metric=LAT), 0.93),
    (T1_25, dict(devices=1, method="Original", metric=LAT), 2.52),
    (F6, dict(height=3840, devices=8, metric=LAT), 22.9),
    (F6, dict(height=2048, devices=4, metric=LAT), 7.60),
    (F6, dict(height=3840, devices=1, metric=LAT), 140),
    (F6_CFG, dict(devices=8, metric="speedup"), 6.6),
    (GN, dict(options={"gn_mode": "sync"}, metric=LAT), 1.85),
    (GN, dict(options={"gn_mode": "separate"}, metric="lpips"), 0.317),
    (WARMUP, dict(options={"warmup_steps": 0}), 0.404),
    (PCIE, dict(height=8192, method="PipeFusion"), 880.2),
    (PCIE, dict(height=8192, method="TP"), 966),
    (PCIE, dict(height=2048, method="DistriFusion"), 9.622),
    (NVL, dict(height=4096, method="TP"), 36.33),
    (NVL, dict(height=1024, method="1 GPU"), 2.085),
    (LINKS, dict(row_label="DistriFusion (PCIe)", devices=4, height=1024), 2.331),
    (LINKS, dict(row_label="PipeFusion (NVLink)", devices=8, height=1024), 0.969),
    (L40, dict(method="PipeFusion", metric=LAT), 32.1),
    (L40, dict(method="best sequence-parallel setting", metric="comm_share_pct"), 17.9),
    (FID, dict(row_label="PipeFusion-2", reference="original"), 1.67),
    (FID, dict(row_label="DistriFusion-8", reference="ground_truth"), 41.81),
    (DEV, dict(height=2048, devices=16), 27.99),
    (DEV, dict(height=2048, devices=8), 18.68),
    (DEV, dict(height=2048, devices=1), 105.7),
    (SCHNELL_A100, dict(devices=8), 0.93),
    (SCHNELL_L40, dict(devices=1), 3.18),
    (SCHNELL_L40, dict(devices=8), 1.53),
]


@pytest.mark.parametrize("table, where, expected", EXPECTED)
def test_published_value(rows, table, where, expected):
    assert _value(rows, table_or_figure=table, **where) == pytest.approx(expected)


def test_every_paper_and_table_is_there(rows):
    assert {p.stem for p in PAPERS_DIR.glob("*.csv")} == {"distrifusion", "pipefusion", "xdit"}
    tables = rows.groupby("paper")["table_or_figure"].nunique().to_dict()
    assert tables == {"distrifusion": 6, "pipefusion": 5, "xdit": 3}
    # the multi-node point: 16 GPUs slower than 8 at 2048 px
    flux = rows[(rows.paper == "xdit") & (rows.workload == "flux-dev") & (rows.height == 2048)]
    latency = dict(zip(flux.devices, flux.value, strict=True))
    assert latency[16] > latency[8]


def test_every_row_has_provenance(rows):
    assert list(rows.columns) == list(COLUMNS)
    assert (rows.source.str.strip() != "").all()
    assert rows.checked.isin(["yes", "no"]).all()
    checked = rows.checked == "yes"
    assert (rows.checked_against[checked].str.strip() != "").all()
    assert (rows.checked_against[~checked] == "").all()
    assert rows.arxiv_version.str.fullmatch(r"v\d+|unknown").all()


def test_values_units_and_references(rows):
    assert rows.metric.isin(list(METRIC_UNITS)).all()
    assert (rows.unit == rows.metric.map(METRIC_UNITS)).all()
    fidelity = rows.metric.isin(FIDELITY_METRICS)
    assert rows.reference[fidelity].isin(["original", "ground_truth"]).all()
    assert (rows.reference[~fidelity] == "").all()
    reported = rows.status == "reported"
    assert rows.value[reported].map(math.isfinite).all()
    oom = rows[~reported]
    # DistriFusion ran out of memory at 8192 px on the 4xA100 PCIe machine, the only such cell
    assert list(zip(oom.paper, oom.method, oom.height, strict=True)) == [
        ("pipefusion", "DistriFusion", 8192)
    ]
    assert oom.value.isna().all()


def test_degrees_multiply_to_devices(rows):
    for degrees, devices in zip(rows.degrees, rows.devices, strict=True):
        parsed = parse_json(degrees)
        if parsed is not None:
            assert math.prod(parsed.values()) == devices, (degrees, devices)


def test_speedups_agree_with_latencies(rows):
    """A printed speedup is the table's 1-device latency over its latency (1 decimal printed)."""
    checked = 0
    for _, s in rows[rows.metric == "speedup"].iterrows():
        same = rows[
            (rows.paper == s.paper)
            & (rows.table_or_figure == s.table_or_figure)
            & (rows.height == s.height)
            & (rows.steps == s.steps)
            & (rows.metric == "latency_s")
        ]
        base = same[same.devices == 1]
        mine = same[(same.devices == s.devices) & (same.method == s.method)]
        if len(base) == 1 and len(mine) == 1:
            ratio = base.value.iloc[0] / mine.value.iloc[0]
            # printed with one decimal; the latencies with three significant digits
            assert ratio == pytest.approx(s.value, abs=0.06), (s.row_label, s.column_label)
            checked += 1
    assert checked >= 15


def test_every_experiment_is_a_paper_config(rows):
    experiments = paper_experiments()
    assert set(rows.experiment) <= experiments
    # every paper config reproduces at least one published row
    assert experiments <= set(rows.experiment)


def test_hardware_profiles_exist(rows):
    from analysis.hardware import available_profiles

    named = set(rows.hardware_profile) - {""}
    assert named <= set(available_profiles())
    assert "2x8xL40-25GbE" in named  # xDiT's two L40 nodes over Ethernet


def test_invalid_rows_are_all_reported(tmp_path):
    good = pd.read_csv(PAPERS_DIR / "xdit.csv", dtype=str, keep_default_na=False)
    bad = good.head(3).copy()
    bad.loc[0, "metric"] = "throughput"
    bad.loc[1, "value"] = "fast"
    bad.loc[2, "source"] = ""
    bad.to_csv(tmp_path / "xdit.csv", index=False)
    with pytest.raises(PapersError) as err:
        load_papers(tmp_path)
    problems = err.value.problems
    assert len(problems) == 3, problems
    assert "xdit.csv:2: metric: 'throughput'" in problems[0] and "latency_s" in problems[0]
    assert "xdit.csv:3: value: 'fast'" in problems[1]
    assert "xdit.csv:4: source: empty" in problems[2]


def test_degrees_and_experiment_are_checked(tmp_path):
    good = pd.read_csv(PAPERS_DIR / "xdit.csv", dtype=str, keep_default_na=False)
    bad = good.iloc[[1, 2]].copy()
    bad.iloc[0, bad.columns.get_loc("degrees")] = '{"ulysses": 3}'
    bad.iloc[1, bad.columns.get_loc("experiment")] = "nope"
    bad.to_csv(tmp_path / "xdit.csv", index=False)
    with pytest.raises(PapersError) as err:
        load_papers(tmp_path)
    text = str(err.value)
    assert "product 3 but devices is 2" in text
    assert "experiment: 'nope' is not a configs/papers experiment" in text
    # without a config directory the experiment is not checked
    with pytest.raises(PapersError, match="product 3"):
        load_papers(tmp_path, config_dir=None)


def test_timed_says_what_a_latency_covers(rows, tmp_path):
    timed = rows.groupby("paper")["timed"].agg(lambda s: set(s) - {""})
    # DistriFusion and PipeFusion's legacy code time prompt encoding + loop (output_type latent);
    # xDiT's examples the whole call with the VAE decode
    assert timed["distrifusion"] == {"loop+text"} and timed["xdit"] == {"pipeline"}
    assert (rows[rows.metric.isin(["psnr", "lpips", "fid"])]["timed"] == "").all()
    good = pd.read_csv(PAPERS_DIR / "distrifusion.csv", dtype=str, keep_default_na=False)
    bad = pd.concat([good[good.metric == "latency_s"].head(1), good[good.metric == "fid"].head(1)])
    bad.iloc[0, bad.columns.get_loc("timed")] = ""
    bad.iloc[1, bad.columns.get_loc("timed")] = "loop"
    bad.to_csv(tmp_path / "distrifusion.csv", index=False)
    with pytest.raises(PapersError) as err:
        load_papers(tmp_path, config_dir=None)
    assert "timed: '' for latency_s; allowed: loop, loop+text, pipeline" in str(err.value)
    assert "timed: 'loop'; a fidelity metric times nothing" in str(err.value)
