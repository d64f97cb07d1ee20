"""--profile traces, the ledger's Chrome-trace timeline, ledger-off runs and the NVML fallback.

Profiling and the ledger switch are environment settings read by each rank; the shared world
gets them through `world.call(profiling.configure, ...)` and is always reset afterwards.
"""

from __future__ import annotations

import collections
import gzip
import json
import os

import numpy as np
import pytest
import torch

from suite.measure import profiling
from suite.commands.cli import build_parser
from suite.config.experiment import parse_config
from suite.worlds.record import assemble, save_artifacts
from suite.worlds.runner import STEP_DTYPE

RESET = {profiling.PROFILE_ENV: None, profiling.LEDGER_ENV: None}


def _spec(strategy: str, degrees: dict, workload: str, steps: int, repeats: int, **options):
    raw = {
        "experiment": "prof",
        "workloads": [workload],
        "resolutions": [256],
        "settings": {"steps": steps, "batch": 1, "repeats": repeats, "warmup_runs": 0},
        "strategies": [{"name": strategy, "degrees": degrees, "options": options}],
    }
    return parse_config(raw).runs[0]


def _run_with(world, settings: dict, spec):
    world.call(profiling.configure, settings)
    try:
        return world.run(spec)
    finally:
        world.call(profiling.configure, RESET)


@pytest.fixture(scope="module")
def profiled(world2, tmp_path_factory):
    # DistriFusion on a UNet: blocking gathers in its synchronous first steps, async ones after.
    spec = _spec("distrifusion", {"patch": 2}, "tiny-sdxl", steps=4, repeats=2, warmup_steps=1)
    results = _run_with(world2, {profiling.PROFILE_ENV: "1"}, spec)
    run_dir = tmp_path_factory.mktemp("prof") / "runs" / spec.run_id
    save_artifacts(results, run_dir)
    return spec, results, run_dir


def _load(path):
    with gzip.open(path, "rt") as f:
        return json.load(f)


def test_profiling_does_not_change_the_run_identity():
    spec = _spec("ulysses", {"ulysses": 2}, "tiny-pixart-alpha", 2, 1)
    os.environ[profiling.PROFILE_ENV] = "1"
    try:
        assert _spec("ulysses", {"ulysses": 2}, "tiny-pixart-alpha", 2, 1).run_id == spec.run_id
    finally:
        del os.environ[profiling.PROFILE_ENV]


def test_cli_has_profile_flag():
    args = build_parser().parse_args(["run", "x.yaml", "--profile"])
    assert args.profile
    assert not build_parser().parse_args(["run", "x.yaml"]).profile


def test_torch_profiler_trace_per_rank(profiled):
    _, _, run_dir = profiled
    for rank in (0, 1):
        trace = _load(run_dir / f"rank{rank}_trace.json.gz")
        names = {e.get("name", "") for e in trace["traceEvents"] if e.get("ph") == "X"}
        assert any(n.startswith("gloo:all_gather") for n in names), sorted(names)[:20]
        assert any(n.startswith("aten::") for n in names)


def _properly_nested(slices: list[dict]) -> bool:
    """Complete events of one thread nest like a call stack (what Perfetto requires)."""
    stack: list[float] = []
    for e in sorted(slices, key=lambda e: (e["ts"], -e["dur"])):
        end = e["ts"] + e["dur"]
        while stack and stack[-1] <= e["ts"]:
            stack.pop()
        if stack and end > stack[-1]:
            return False
        stack.append(end)
    return True


def test_ledger_trace_is_a_nested_chrome_trace(profiled):
    spec, results, run_dir = profiled
    trace = _load(run_dir / "ledger_trace.json.gz")
    events = trace["traceEvents"]
    assert trace["displayTimeUnit"] == "ms"
    assert all({"ph", "pid", "name"} <= set(e) for e in events)
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert names == {0: "rank 0", 1: "rank 1"}
    threads = collections.defaultdict(list)
    for e in events:
        if e["ph"] == "X":
            assert e["dur"] >= 0
            threads[(e["pid"], e["tid"])].append(e)
    assert all(_properly_nested(s) for s in threads.values())
    for r in results:
        mine = [e for e in events if e["ph"] == "X" and e["pid"] == r.rank]
        steps = [e for e in mine if e["cat"] == "step"]
        comm = [e for e in mine if e["cat"] == "comm"]
        assert len(steps) == spec.repeats * spec.steps
        assert len(comm) == len(r.events) > 0
        assert sum(e["args"]["bytes"] for e in comm) == int(r.events["nbytes"].sum())
        assert {e["args"]["op"] for e in comm} <= {"all_gather", "all_reduce"}
        assert all(e["args"]["axis"] == "patch" and e["args"]["layer"] for e in comm)
        assert any(e["args"]["async"] for e in comm) and not all(e["args"]["async"] for e in comm)
        # every wait on the host thread lies inside a step
        host_waits = [e for e in mine if e["cat"] == "wait" and e["tid"] == 0]
        assert len(host_waits) == len(comm)
        assert all(
            any(s["ts"] <= w["ts"] and w["ts"] + w["dur"] <= s["ts"] + s["dur"] for s in steps)
            for w in host_waits
        )


def test_nothing_sampled_without_nvml(profiled):
    _, results, run_dir = profiled
    assert all(r.nvml is not None and len(r.nvml) == 0 for r in results)
    assert not (run_dir / "nvml.csv").exists()


def test_ledger_off_logs_nothing_and_still_records(world2):
    spec = _spec("ulysses", {"ulysses": 2}, "tiny-pixart-alpha", steps=2, repeats=1)
    results = _run_with(world2, {profiling.LEDGER_ENV: "off"}, spec)
    assert all(len(r.events) == 0 and r.trace_gz is None for r in results)
    row = assemble(spec, results, "runs/x").run
    assert row["latency_s"] > 0 and row["comm_s"] == 0 and row["overlap_pct"] is None
    # CPU: no NVML samples, so the nvml_* columns are empty, not zero and not an error
    assert [row[k] for k in row if k.startswith("nvml_")] == [None] * 4


def test_nvml_sampler_degrades_to_empty():
    for device in (torch.device("cpu"), torch.device("cuda", 0)):
        sampler = profiling.NvmlSampler(device, interval_s=0.01)
        sampler.start()  # no GPU / no driver here: no thread, no error
        samples = sampler.stop()
        if torch.cuda.is_available() and device.type == "cuda":
            continue  # a real GPU may well be sampled
        assert samples.dtype == profiling.NVML_DTYPE and len(samples) == 0
    assert set(profiling.nvml_summary({0: samples}).values()) == {None}


def test_nvml_summary_and_csv(tmp_path):
    s = np.array(
        [(10.0, 2e9, 50.0, 100.0), (11.0, 3e9, 70.0, 300.0), (12.0, 1e9, np.nan, 200.0)],
        dtype=profiling.NVML_DTYPE,
    )
    got = profiling.nvml_summary({0: s, 1: np.zeros(0, dtype=profiling.NVML_DTYPE)})
    assert got["nvml_mem_used_max_bytes"] == 3e9
    assert got["nvml_util_mean_pct"] == pytest.approx(60.0)  # NaN samples skipped
    assert got["nvml_power_mean_w"] == pytest.approx(200.0)
    assert got["nvml_energy_j"] == pytest.approx(200.0 + 250.0)  # trapezoids of 1 s each
    no_power = s.copy()
    no_power["power_w"] = np.nan
    assert profiling.nvml_summary({0: no_power})["nvml_energy_j"] is None  # not 0 J

    class Rank:
        rank, trace_gz, nvml = 0, None, s
        steps = np.array([(0, 0, 10.0, 11.0)], dtype=STEP_DTYPE)

    profiling.save_traces([Rank()], tmp_path)
    lines = (tmp_path / "nvml.csv").read_text().splitlines()
    assert lines[0] == "rank,t_s,mem_used_bytes,util_pct,power_w"
    assert lines[1] == "0,0.0000,2e+09,50,100"
    assert lines[3].endswith(",,200")  # a missing counter is an empty cell
