"""Analytic worlds (world_mode analytic): the trace of every strategy matches a fake world's and
a real gloo world's collective for collective, steady-state replication is exact, FLOPs agree
with `diffscale workloads`, and stored analytic runs carry no timing.

Analytic worlds run in this process (no spawn: the meta device computes nothing); the real and
fake worlds are the session's shared ones.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import suite.worlds.analytic_run as analytic_run
from suite.distributed.comm import OPS
from suite.config.experiment import parse_config
from suite.worlds.rank_worker import emulate
from suite.distributed.mesh import AXES
from suite.measure.optrace import OP_CLASSES, TRACE_DTYPES
from suite.worlds.record import assemble, save_artifacts
from suite.store.results import ResultStore

# (strategy, degrees, workload, options): every strategy, on the tiny preset that exercises it
WORLD2 = [
    ("data", {"data": 2}, "tiny-pixart-alpha", {}),
    ("cfg", {"cfg": 2}, "tiny-pixart-alpha", {}),
    ("ulysses", {"ulysses": 2}, "tiny-flux-dev", {}),  # joint attention: text replicated
    ("ring", {"ring": 2}, "tiny-pixart-alpha", {}),
    ("tensor", {"tensor": 2}, "tiny-sdxl", {}),  # UNet: ResNet convs and attention split
    ("naive_patch", {"patch": 2}, "tiny-sdxl", {}),
    ("distrifusion", {"patch": 2}, "tiny-sdxl", {"warmup_steps": 0}),  # async, carried
    ("distrifusion", {"patch": 2}, "tiny-pixart-alpha", {"full_sync": True}),
    ("pipefusion", {"pipefusion": 2}, "tiny-pixart-alpha", {}),
]
WORLD4 = [
    ("usp", {"ulysses": 2, "ring": 2}, "tiny-pixart-alpha", {}),
    ("cfg+ulysses", {"cfg": 2, "ulysses": 2}, "tiny-pixart-alpha", {}),
    ("cfg+pipefusion", {"cfg": 2, "pipefusion": 2}, "tiny-pixart-alpha", {}),
    ("pipefusion+ulysses", {"pipefusion": 2, "ulysses": 2}, "tiny-pixart-alpha", {}),
]


def _spec(strategy, degrees, workload, options, world_mode, steps=3, **settings):
    entry = {"name": strategy, "options": options}
    if degrees:
        entry["degrees"] = degrees
    raw = {
        "experiment": "t",
        "workloads": [workload],
        "resolutions": [256],
        "settings": {
            "steps": steps,
            "batch": 2,
            "repeats": 1,
            "warmup_runs": 0,
            "world_mode": world_mode,
            **settings,
        },
        "strategies": [entry],
    }
    return parse_config(raw).runs[0]


def _collectives(results) -> list[list[tuple]]:
    """Per rank, in issue order: step, wait step, layer, op, axis, group, peer, async, bytes."""
    out = []
    for r in results:
        ev = r.events
        out.append(
            [
                (
                    int(e["step"]),
                    int(e["wait_step"]),
                    r.layers[e["layer"]],
                    OPS[e["op"]],
                    AXES[e["axis"]],
                    int(e["group_size"]),
                    int(e["group_first"]),
                    int(e["peer"]),
                    bool(e["is_async"]),
                    int(e["nbytes"]),
                )
                for e in ev
            ]
        )
    return out


def _check_parity(world, fake_world, case):
    analytic = emulate(_spec(*case, "analytic"), None)
    expected = _collectives(analytic)
    assert any(expected), "the case logs no collective: it checks nothing"
    assert _collectives(world.run(_spec(*case, "real"))) == expected
    assert _collectives(fake_world.run(_spec(*case, "fake"))) == expected
    # the boundary clock: every event and step time is a boundary index, steps in order
    for r in analytic:
        assert len(r.segments) >= r.steps["t_end"].max()
        assert (np.diff(r.steps["t_start"]) > 0).all()
        assert (r.events["t_wait_end"] == r.events["t_wait_start"])[r.events["is_async"]].all()


@pytest.mark.parametrize("case", WORLD2, ids=lambda c: f"{c[0]}-{c[2]}-{c[3]}")
def test_analytic_collectives_match_fake_and_real_worlds(world2, fake_world, case):
    _check_parity(world2, fake_world, case)


@pytest.mark.parametrize("case", WORLD4, ids=lambda c: c[0])
def test_analytic_collectives_match_fake_and_real_worlds_of_4(world4, fake_world, case):
    _check_parity(world4, fake_world, case)


def _content(results) -> list[list[tuple]]:
    """Per rank, each segment's operator rows (signature ids differ between recorders)."""
    ops, rows = results[0].ops, {}
    for r in ops:
        rows.setdefault(int(r["sig"]), []).append(tuple(r.tolist()[1:]))
    return [[tuple(sorted(rows.get(int(s), ()))) for s in r.segments] for r in results]


REPLICATED = [
    ("none", {}, "tiny-sdxl", {}),
    *WORLD2,
    ("distrifusion", {"patch": 2}, "tiny-sdxl", {}),  # block coalescing, 1 sync warm-up step
    ("naive_patch", {"patch": 2}, "tiny-pixart-alpha", {}),  # alternating bands: no steady step
    ("tensor", {"tensor": 2}, "tiny-flux-dev", {}),
    *WORLD4,
]


@pytest.mark.parametrize("case", REPLICATED, ids=lambda c: f"{c[0]}-{c[2]}-{c[3]}")
def test_replication_gives_the_trace_of_full_emulation(monkeypatch, case):
    spec = _spec(*case, "analytic", steps=9)
    full = emulate(spec, None, replicate=False)
    shortened = []
    real_expand = analytic_run.expand

    def expand(rep, *trace):
        full_trace = real_expand(rep, *trace)
        if full_trace is not None and rep.skipped:
            shortened.append(rep.skipped)
        return full_trace

    monkeypatch.setattr(analytic_run, "expand", expand)
    steps = []
    replicated = emulate(spec, None, progress=lambda: steps.append(1))
    assert len(steps) == spec.steps * spec.world_size  # skipped steps are reported too
    if case[2] != "tiny-pixart-alpha" or case[0] != "naive_patch":
        # every rank replicated (the alternating bands of naive_patch on a DiT never repeat
        # from one step to the next: emulated in full)
        assert len(shortened) == spec.world_size, "a rank found no steady step"
    assert _content(replicated) == _content(full)
    for a, b in zip(full, replicated, strict=True):
        assert a.layers == b.layers
        np.testing.assert_array_equal(a.steps, b.steps)
        np.testing.assert_array_equal(a.events, b.events)


def test_ranks_emulated_by_several_processes_share_one_op_table():
    from suite.measure.op_recorder import merge_tables

    spec = _spec("usp", {"ulysses": 2, "ring": 2}, "tiny-pixart-alpha", {}, "analytic")
    whole = emulate(spec, None)
    parts = [emulate(spec, None, ranks=range(w, spec.world_size, 2)) for w in range(2)]
    merge_tables(parts)
    merged = sorted((r for part in parts for r in part), key=lambda r: r.rank)
    assert all(r.ops is merged[0].ops for r in merged)
    assert merged[0].ops["sig"].max() + 1 == len(set(merged[0].ops["sig"].tolist()))
    assert _content(merged) == _content(whole)


def _per_step_flops(result, step: int) -> float:
    """matmul + conv + attention FLOPs of one step of a rank."""
    ops, mark = result.ops, result.steps[result.steps["step"] == step][0]
    counted = [OP_CLASSES.index(c) for c in ("matmul", "conv", "attention")]
    total = 0.0
    for sig in result.segments[int(mark["t_start"]) : int(mark["t_end"])]:
        rows = ops[(ops["sig"] == sig) & np.isin(ops["cls"], counted)]
        total += float((rows["count"] * rows["flops"]).sum())
    return total


@pytest.mark.parametrize(
    "workload", ["tiny-sdxl", "tiny-pixart-alpha", "tiny-flux-dev", "tiny-sd3-medium"]
)
def test_flops_per_step_equal_the_workloads_count(workload):
    import workloads

    (result,) = emulate(_spec("none", {}, workload, {}, "analytic", steps=2, batch=1), None)
    (row,) = workloads.describe_presets(256, 256, [workload])
    # the same formulas (torch.utils.flop_counter's) over the same operators: equal to rounding
    assert _per_step_flops(result, 1) == pytest.approx(row["gflops_per_step"] * 1e9, rel=1e-12)


def test_bf16_runs_on_a_cpu_host_and_halves_the_bytes():
    case = ("ulysses", {"ulysses": 2}, "tiny-pixart-alpha", {})
    fp32 = emulate(_spec(*case, "analytic"), None)
    bf16 = emulate(_spec(*case, "analytic", dtype="bfloat16"), None)
    for a, b in zip(fp32, bf16, strict=True):
        np.testing.assert_array_equal(a.events["nbytes"], 2 * b.events["nbytes"])
        assert a.param_bytes == 2 * b.param_bytes
    matmul = bf16[0].ops[bf16[0].ops["cls"] == OP_CLASSES.index("matmul")]
    assert len(matmul) and (matmul["dtype"] == TRACE_DTYPES.index("bfloat16")).all()


def test_stored_analytic_run_has_counts_and_no_timing(fake_world, tmp_path):
    # through the sweep's emulating process (LocalWorld(fake=True) serves analytic worlds too)
    spec = _spec("distrifusion", {"patch": 2}, "tiny-sdxl", {}, "analytic", steps=4)
    results = fake_world.run(spec)
    assert [r.rank for r in results] == [0, 1]
    run_dir = tmp_path / "runs" / spec.run_id
    save_artifacts(results, run_dir, spec)
    with ResultStore(tmp_path / "results.db") as store:
        store.save(assemble(spec, results, str(run_dir)))
        run = store.table("runs").iloc[0]
        steps, comm = store.table("rank_steps"), store.table("comm")
    assert run["world_mode"] == "analytic" and run["status"] == "ok"
    for column in (
        "latency_s",
        "latency_min_s",
        "latency_max_s",
        "step_s",
        "compute_s",
        "comm_s",
        "op_time_s",
        "exposed_comm_s",
        "overlap_pct",
        "peak_mem_bytes",
    ):
        assert pd.isna(run[column]), column
    assert run["comm_bytes_per_step"] > 0 and run["param_bytes_per_rank"] > 0
    assert run["buffer_bytes_per_rank"] > 0  # DistriFusion's stale activations, on meta
    assert steps[["step_s", "comm_s", "exposed_comm_s", "compute_s"]].isna().all().all()
    assert (steps["comm_bytes"] > 0).all()
    assert comm[["time_s", "inflight_s", "exposed_s"]].isna().all().all()
    assert (comm["calls_per_step"] > 0).all()
    trace = np.load(run_dir / "trace.npz")
    assert {"ops", "segments_rank0", "segments_rank1"} <= set(trace.files)
    assert trace["segments_rank0"].max() < trace["ops"]["sig"].max() + 1
