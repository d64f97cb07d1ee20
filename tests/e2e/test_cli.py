"""The CLI as a user drives it: sweep, store, report, export, resume, failures, torchrun."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from suite.store.schema import column_names

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, cwd, check=True, timeout=300):
    proc = subprocess.run(
        [sys.executable, "-m", "suite.commands.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_config(tmp_path: Path, **over) -> Path:
    raw = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    # the quickstart's workloads and settings with shorter loops, on two strategies: 4 runs
    raw["settings"].update(steps=2, repeats=2, warmup_runs=0)
    raw["strategies"] = [{"name": "none"}, {"name": "data", "world_sizes": [2]}]
    raw.update(over)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def read_runs(db: Path) -> pd.DataFrame:
    with sqlite3.connect(db) as con:
        return pd.read_sql("SELECT * FROM runs", con)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qs")
    config = write_config(tmp)
    proc = cli("run", str(config), "--no-progress", cwd=tmp)
    return tmp, config, proc


def test_help_explains_every_command():
    out = cli("--help", cwd=ROOT).stdout
    for command in ("run", "report", "export", "workloads"):
        assert command in out
    assert "--launcher" in cli("run", "--help", cwd=ROOT).stdout


def test_quickstart_sweep_stores_documented_columns(quickstart):
    tmp, _, proc = quickstart
    assert "4 ok, 0 failed" in proc.stdout
    runs = read_runs(tmp / "results" / "quickstart" / "results.db")
    assert list(runs.columns) == column_names("runs")
    assert set(runs["status"]) == {"ok"}
    assert sorted(runs["world_size"]) == [1, 1, 2, 2]
    assert (runs["latency_s"] > 0).all() and (runs["threads_per_rank"] == 1).all()
    data = runs[runs["strategy"] == "data"]
    assert (data["comm_bytes_per_step"] > 0).all()  # the output gather was logged
    for out_dir in runs["output_dir"]:
        assert (tmp / "results" / "quickstart" / out_dir / "latents.pt").is_file()
        assert (tmp / "results" / "quickstart" / out_dir / "trace.npz").is_file()


def test_report_and_export(quickstart):
    tmp, _, proc = quickstart
    report = tmp / "reports" / "quickstart"
    assert "report:" in proc.stdout
    for name in ("index.html", "index.md", "latency_vs_world.png", "breakdown.png"):
        assert (report / name).stat().st_size > 0, name
    assert "trained-tiny-unet" in (report / "index.md").read_text()
    out = cli("export", "results/quickstart", "--format", "parquet", cwd=tmp).stdout
    runs = pd.read_parquet(tmp / "results" / "quickstart" / "export" / "runs.parquet")
    assert len(runs) == 4 and "runs.parquet" in out


def test_rerun_skips_stored_runs(quickstart):
    tmp, config, _ = quickstart
    proc = cli("run", str(config), "--no-progress", "--no-report", cwd=tmp)
    assert "0 ok, 0 failed, 0 skipped as unsupported, 4 already stored" in proc.stdout
    assert len(read_runs(tmp / "results" / "quickstart" / "results.db")) == 4


def test_bad_config_fails_before_any_process(tmp_path):
    config = write_config(tmp_path, workloads=["tiny-nope"])
    proc = cli("run", str(config), cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "workloads[0]" in proc.stderr and "tiny-sdxl" in proc.stderr  # lists what is allowed
    # nothing was started or stored: no store, and no world's progress output
    assert not (tmp_path / "results").exists() and "runs:" not in proc.stderr


def test_failed_run_is_recorded_and_sweep_goes_on(tmp_path):
    empty = tmp_path / "empty_weights"
    empty.mkdir()
    # passes validation (a model directory), fails on the rank when the model is loaded
    (empty / "config.json").write_text("not json")
    config = write_config(
        tmp_path,
        workloads=["tiny-pixart-alpha"],
        resolutions=[256],
        strategies=[
            {"name": "none", "settings": {"weights": str(empty)}},  # loads nothing: fails
            {"name": "data", "world_sizes": [2]},
        ],
    )
    proc = cli("run", str(config), "--no-progress", "--no-report", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "1 ok, 1 failed" in proc.stdout
    runs = read_runs(tmp_path / "results" / "quickstart" / "results.db").set_index("strategy")
    assert runs.loc["none", "status"] == "failed"
    assert "empty_weights" in runs.loc["none", "error"] or "config" in runs.loc["none", "error"]
    assert runs.loc["data", "status"] == "ok"


def test_interrupted_sweep_resumes_without_loss_or_duplicates(tmp_path):
    config = write_config(tmp_path)
    db = tmp_path / "results" / "quickstart" / "results.db"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "suite.commands.cli",
            "run",
            str(config),
            "--no-progress",
            "--no-report",
        ],
        cwd=tmp_path,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    schema_less = []  # reads that found the file without its tables: creation is atomic
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # wait until some, not all, runs are stored
            if db.exists():  # read at any moment, creation included
                try:
                    if 1 <= len(read_runs(db)) < 4:
                        break
                except pd.errors.DatabaseError as e:  # "no such table": not yet, but noted
                    schema_less.append(str(e))
            time.sleep(0.2)
        else:
            pytest.fail("the sweep stored nothing in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole sweep, ranks included
        proc.wait()
    assert schema_less == []
    stored_before = set(read_runs(db)["run_id"])
    cli("run", str(config), "--no-progress", "--no-report", cwd=tmp_path)
    runs = read_runs(db)
    assert len(runs) == 4 and runs["run_id"].is_unique
    assert stored_before <= set(runs["run_id"]) and set(runs["status"]) == {"ok"}
    # every run with a baseline is scored, also one killed between its row and its scores
    scored = set(pd.read_sql("SELECT run_id FROM fidelity", sqlite3.connect(db))["run_id"])
    assert scored == set(runs.loc[runs["strategy"] != "none", "run_id"])
    # and the files of every stored run are in place, none left pending
    assert sorted(p.name for p in (db.parent / "runs").iterdir()) == sorted(runs["run_id"])


@pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun"
)
def test_torchrun_world_runs_its_world_size_and_records_failures(tmp_path):
    empty = tmp_path / "empty_weights"
    empty.mkdir()
    # passes validation (a model directory), fails on the rank when the model is loaded
    (empty / "config.json").write_text("not json")
    config = write_config(
        tmp_path,
        workloads=["tiny-pixart-alpha"],
        resolutions=[256],
        strategies=[
            {"name": "data", "world_sizes": [2], "settings": {"weights": str(empty)}},  # fails
            {"name": "data", "world_sizes": [2]},
            {"name": "none"},  # world size 1: not this world's, left for another launch
        ],
    )
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run(
        [str(torchrun), "--nproc-per-node", "2", "-m", "suite.commands.cli", "run", str(config),
         "--launcher", "torchrun", "--no-progress", "--no-report"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert "1 ok, 1 failed" in proc.stdout, proc.stdout + proc.stderr
    runs = read_runs(tmp_path / "results" / "quickstart" / "results.db")
    assert sorted(runs["status"]) == ["failed", "ok"]
    assert (runs["world_size"] == 2).all()
