"""Fit and test rows kept apart, and errors summarised by GPU count (analysis.paper_validation)."""

import pandas as pd
import pytest

from analysis.paper_validation import by_gpu_count, label_rows, load_split


def _row(exp, table, devices, value, ours, strategy="ulysses"):
    return {"experiment": exp, "table_or_figure": table, "metric": "latency_s", "devices": devices,
            "value": value, "ours": ours, "error_pct": 100 * (ours / value - 1),
            "error_anchored_pct": float("nan"), "workload": "w", "height": 1024, "width": 1024,
            "steps": 20, "strategy": strategy, "degrees": f'{{"ulysses": {devices}}}',
            "hardware_profile": "p"}  # fmt: skip


SPLIT = {"fit": [{"experiment": "a", "table_or_figure": "T1"}]}


def test_a_test_row_repeating_a_fit_row_is_dropped():
    comp = pd.DataFrame(
        [
            _row("a", "T1", 2, 1.0, 0.9),  # fit
            _row("b", "Fig", 2, 1.0, 0.9),  # the same number in another table: not a test row
            _row("b", "Fig", 4, 0.6, 0.66),  # test
            _row("b", "Fig", 1, 2.0, 1.8),  # single device: not a multi-device row
        ]
    )
    rows = label_rows(comp, SPLIT)
    assert list(zip(rows["experiment"], rows["split"], rows["devices"], strict=True)) == [
        ("a", "fit", 2),
        ("b", "test", 4),
    ]


def test_errors_by_gpu_count_are_signed_and_absolute():
    comp = pd.DataFrame(
        [
            _row("b", "Fig", 8, 1.0, 0.7),
            _row("b", "Fig", 8, 1.0, 1.1, "ring"),
            _row("b", "Fig", 8, 1.0, 0.8, "tensor"),
            _row("b", "Fig", 2, 1.0, 0.95),
        ]  # fmt: skip
    )
    table = by_gpu_count(label_rows(comp, SPLIT))
    eight = table[(table["split"] == "test") & (table["GPUs"] == "8")].iloc[0]
    assert eight["rows"] == 3
    assert eight["signed median %"] == pytest.approx(-20.0)
    assert eight["median |error| %"] == pytest.approx(20.0)
    both = table[(table["split"] == "all")].iloc[0]
    assert both["rows"] == 4 and both["median |error| %"] == pytest.approx(15.0)


def test_the_declared_fit_tables_exist_in_the_papers():
    from analysis.papers import load_papers

    papers = load_papers()
    tables = set(zip(papers["experiment"], papers["table_or_figure"], strict=True))
    for f in load_split()["fit"]:
        assert (f["experiment"], f["table_or_figure"]) in tables
