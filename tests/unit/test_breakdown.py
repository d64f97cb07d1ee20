"""Breakdown tables on a small hand-made store whose every number is worked out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import breakdown
from analysis.report import write_report
from suite.distributed.comm import EVENT_DTYPE, OPS
from suite.distributed.mesh import AXES
from suite.store.results import ResultStore, RunRecord
from suite.worlds.runner import STEP_DTYPE

# distrifusion w2, 2 timed loops x 2 steps: (step_s, comm_s, exposed_comm_s) per rank,
# repeat, step. Rank 0 hides a quarter of its communication, rank 1 nearly all of it.
STEPS = {
    (0, 0, 0): (0.2, 0.1, 0.05),
    (0, 0, 1): (0.2, 0.1, 0.1),
    (0, 1, 0): (0.2, 0.1, 0.05),
    (0, 1, 1): (0.2, 0.1, 0.1),
    (1, 0, 0): (0.3, 0.1, 0.0),
    (1, 0, 1): (0.3, 0.1, 0.02),
    (1, 1, 0): (0.3, 0.1, 0.0),
    (1, 1, 1): (0.3, 0.1, 0.0),
}
# (rank, op, axis): calls_per_step, bytes_per_step, time_s, inflight_s, exposed_s; rank 0's
# rows come from a store older than inflight_s (None)
COMM = {
    (0, "all_gather", "patch"): (10, 800.0, 0.08, None, 0.06),
    (0, "all_reduce", "patch"): (2, 200.0, 0.02, None, 0.015),
    (1, "all_gather", "patch"): (10, 800.0, 0.08, 0.05, 0.004),
    (1, "all_reduce", "patch"): (2, 200.0, 0.02, 0.02, 0.001),
}
# Rank 0's raw ledger events: (layer, op, nbytes, async, t_issue, t_done, wait start, wait end).
# The two attention gathers are in flight together from 0.12 to 0.2.
EVENTS0 = [
    ("down_blocks.0.resnets.0.conv1", "all_gather", 400, True, 0.0, 0.04, 0.01, 0.03),
    ("down_blocks.0.resnets.0.norm1", "all_reduce", 100, False, 0.05, 0.06, 0.05, 0.06),
    ("transformer_blocks.0.attn1", "all_gather", 200, True, 0.1, 0.2, 0.15, 0.2),
    ("transformer_blocks.0.attn2", "all_gather", 100, True, 0.12, 0.22, 0.2, 0.22),
    ("output", "all_gather", 300, False, 0.3, 0.32, 0.3, 0.32),
]
# Timed step windows (repeat, step, t_start, t_end): 4 steps per rank, the events in loop 0.
STEPS0 = [(0, 0, 0.0, 0.1), (0, 1, 0.1, 0.35), (1, 0, 1.0, 1.2), (1, 1, 1.2, 1.4)]
STEPS1 = [(0, 0, 0.0, 0.3), (0, 1, 0.3, 0.6), (1, 0, 1.0, 1.3), (1, 1, 1.3, 1.6)]


def _run(run_id: str, strategy: str, world: int, latency: float, **extra) -> dict:
    return {
        "run_id": run_id,
        "experiment": "bd",
        "workload": "tiny-x",
        "height": 64,
        "width": 64,
        "steps": 2,
        "strategy": strategy,
        "degrees": {"patch": world} if world > 1 else {},
        "options": {},
        "world_size": world,
        "repeats": 2,
        "latency_s": latency,
        "status": "ok",
        "output_dir": f"runs/{run_id}",
        **extra,
    }


def _events(rows: list[tuple], layers: list[str]) -> np.ndarray:
    ev = np.zeros(len(rows), dtype=EVENT_DTYPE)
    for e, (layer, op, nbytes, is_async, t0, t1, w0, w1) in zip(ev, rows, strict=True):
        e["layer"], e["op"], e["axis"] = layers.index(layer), OPS.index(op), AXES.index("patch")
        e["group_size"], e["nbytes"], e["is_async"] = 2, nbytes, is_async
        e["t_issue"], e["t_done"], e["t_wait_start"], e["t_wait_end"] = t0, t1, w0, w1
    return ev


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("bd")
    db = ResultStore(root / "results.db")
    base_steps = [
        {"rank": 0, "repeat": rep, "step": s, "step_s": 0.25, "comm_s": 0.0}
        | {"exposed_comm_s": 0.0, "compute_s": 0.25, "comm_bytes": 0.0}
        for rep in (0, 1)
        for s in (0, 1)
    ]
    db.save(RunRecord(run=_run("base", "none", 1, 0.5), rank_steps=base_steps))
    steps = [
        {"rank": r, "repeat": rep, "step": s, "step_s": st, "comm_s": c, "exposed_comm_s": x}
        | {"compute_s": st - x, "comm_bytes": 1000.0}
        for (r, rep, s), (st, c, x) in STEPS.items()
    ]
    comm = [
        {"rank": r, "op": op, "axis": axis, "calls_per_step": n, "bytes_per_step": b}
        | {"time_s": t, "inflight_s": f, "exposed_s": x}
        for (r, op, axis), (n, b, t, f, x) in COMM.items()
    ]
    run = _run("df", "distrifusion", 2, 0.8, comm_s=0.1, exposed_comm_s=0.04, overlap_pct=60.0)
    db.save(RunRecord(run=run | {"comm_bytes_per_step": 1000.0}, rank_steps=steps, comm=comm))
    # a failed run is never part of a breakdown
    db.save(RunRecord(run=_run("bad", "ulysses", 2, None, status="failed")))
    layers0 = [e[0] for e in EVENTS0]
    trace = {
        "events_rank0": _events(EVENTS0, layers0),
        "layers_rank0": np.array(layers0, dtype=str),
        "steps_rank0": np.array(STEPS0, dtype=STEP_DTYPE),
        "events_rank1": _events(
            [("proj_out", "all_gather", 50, False, 0, 0.01, 0, 0.01)], ["proj_out"]
        ),
        "layers_rank1": np.array(["proj_out"], dtype=str),
        "steps_rank1": np.array(STEPS1, dtype=STEP_DTYPE),
    }
    (root / "runs" / "df").mkdir(parents=True)
    np.savez_compressed(root / "runs" / "df" / "trace.npz", **trace)
    yield db
    db.close()


def test_layer_types():
    cases = {
        "down_blocks.0.resnets.0.conv1": "conv",
        "down_blocks.0.downsamplers.0.conv": "conv",
        "down_blocks.1.attentions.0.norm": "norm",
        "mid_block.resnets.0.norm1": "norm",
        "transformer_blocks.3.attn1": "attn",
        "transformer_blocks.0.attn1.to_out.0": "attn",
        "transformer_blocks.0.ff.net.2": "linear",
        "proj_out": "output",
        "proj_out_2": "output",
        "output": "output",
        "cfg": "cfg",
        "pipefusion.stage1": "pipeline",
        "coalesced:down_blocks.1": "coalesced",
        "": "unknown",
        "blocks.7": "unknown",
    }
    assert {p: breakdown.layer_type(p) for p in cases} == cases


def test_rank_breakdown_exact(store):
    df = breakdown.rank_breakdown(store).set_index(["run_id", "rank"])
    assert set(df.index) == {("base", 0), ("df", 0), ("df", 1)}
    r0, r1 = df.loc[("df", 0)], df.loc[("df", 1)]
    assert r0["n_steps"] == 4
    assert r0[["step_s", "compute_s", "comm_s", "exposed_comm_s"]].tolist() == pytest.approx(
        [0.2, 0.125, 0.1, 0.075]
    )
    assert r0["overlapped_comm_s"] == pytest.approx(0.025)
    assert r0["overlap_pct"] == pytest.approx(25.0)
    assert r0["compute_pct"] == pytest.approx(62.5)
    assert r0["exposed_comm_pct"] == pytest.approx(37.5)
    assert r1["exposed_comm_s"] == pytest.approx(0.005)
    assert r1["overlap_pct"] == pytest.approx(95.0)
    assert r1["comm_bytes_per_step"] == 1000.0
    base = df.loc[("base", 0)]
    assert base["comm_s"] == 0 and np.isnan(base["overlap_pct"])  # no comm: no overlap to speak of


def test_step_breakdown(store):
    df = breakdown.step_breakdown(store)
    row = df[(df["run_id"] == "df") & (df["rank"] == 0) & (df["repeat"] == 0) & (df["step"] == 0)]
    assert row["overlapped_comm_s"].item() == pytest.approx(0.05)
    assert row["overlap_pct"].item() == pytest.approx(50.0)


def test_ideal_latency_is_the_compute_critical_path(store):
    df = breakdown.ideal_latency(store).set_index("run_id")
    assert set(df.index) == {"base", "df"}
    # loop 0: rank 0 computes 0.15 + 0.1, rank 1 0.3 + 0.28 -> 0.58; loop 1: 0.25 vs 0.6
    assert df.loc["df", "ideal_latency_s"] == pytest.approx(np.median([0.58, 0.6]))
    assert df.loc["df", "comm_overhead_s"] == pytest.approx(0.8 - 0.59)
    assert df.loc["df", "comm_overhead_pct"] == pytest.approx(100 * 0.21 / 0.8)
    assert df.loc["base", "ideal_latency_s"] == pytest.approx(0.5)
    assert df.loc["base", "comm_overhead_s"] == pytest.approx(0.0)


def test_comm_breakdown_by_op_and_axis(store):
    ops = breakdown.comm_breakdown(store).set_index(["rank", "op"])
    ag = ops.loc[(0, "all_gather")]
    assert np.isnan(ag["inflight_s"])  # an older row: the overlap falls back to time_s
    assert ag["overlapped_s"] == pytest.approx(0.02)
    assert ag["overlap_pct"] == pytest.approx(25.0)
    ag1 = ops.loc[(1, "all_gather")]  # overlap of the time in flight, 0.05 s of 0.08 summed
    assert ag1["overlapped_s"] == pytest.approx(0.046)
    assert ag1["overlap_pct"] == pytest.approx(92.0)
    assert ag["bytes_pct"] == pytest.approx(80.0)
    assert ag["algbw_gb_s"] == pytest.approx(800 / 0.08 / 1e9)
    axis = breakdown.comm_breakdown(store, by=("axis",)).set_index(["rank", "axis"])
    patch = axis.loc[(0, "patch")]
    assert patch[["calls_per_step", "bytes_per_step", "time_s", "exposed_s"]].tolist() == (
        pytest.approx([12, 1000.0, 0.1, 0.075])
    )
    assert patch["overlap_pct"] == pytest.approx(25.0)
    assert patch["bytes_pct"] == pytest.approx(100.0)
    # coarser than (op, axis): the stored per-op unions add up
    assert axis.loc[(1, "patch"), "inflight_s"] == pytest.approx(0.07)
    with pytest.raises(ValueError, match="choose from"):
        breakdown.comm_breakdown(store, by=("layer",))


def test_layer_breakdown_per_step(store):
    df = breakdown.layer_breakdown(store).set_index(["rank", "layer_type"])
    assert set(df.index) == {(0, "conv"), (0, "norm"), (0, "attn"), (0, "output"), (1, "output")}
    # 4 timed steps per rank: rank 0's conv gather moved 400 bytes in 40 ms, blocked 20 ms
    conv = df.loc[(0, "conv")]
    assert conv[["calls_per_step", "bytes_per_step", "time_s", "exposed_s"]].tolist() == (
        pytest.approx([0.25, 100.0, 0.01, 0.005])
    )
    assert conv["inflight_s"] == pytest.approx(0.01)
    assert conv["overlap_pct"] == pytest.approx(50.0)
    assert conv["bytes_pct"] == pytest.approx(400 / 11)  # of 1100 bytes
    # the attention gathers overlap: in flight 0.1 -> 0.22 (0.12 s of 0.2 summed), blocked
    # 0.15 -> 0.22; per step (4 steps) 0.03 in flight, 0.0175 blocked
    attn = df.loc[(0, "attn")]
    assert attn[["time_s", "inflight_s", "exposed_s", "overlapped_s"]].tolist() == (
        pytest.approx([0.05, 0.03, 0.0175, 0.0125])
    )
    # per axis, the exact union over every op of rank 0 (vs the per-op sums of the comm table)
    axis = breakdown.layer_breakdown(store, by=("axis",)).set_index(["rank", "axis"])
    patch = axis.loc[(0, "patch")]
    assert patch[["time_s", "inflight_s", "exposed_s"]].tolist() == (
        pytest.approx([0.27 / 4, 0.19 / 4, 0.12 / 4])
    )
    assert df.loc[(0, "norm"), "overlap_pct"] == pytest.approx(0.0)  # blocking: all exposed
    assert df.loc[(1, "output"), "bytes_per_step"] == pytest.approx(12.5)
    by_layer = breakdown.layer_breakdown(store, by=("layer", "op"))
    assert "down_blocks.0.resnets.0.conv1" in set(by_layer["layer"])


def test_trace_events_missing_file_is_empty(store):
    assert breakdown.trace_events(store, "base").empty


def test_report_has_breakdown_section(store, tmp_path):
    _, md = write_report(store.path, tmp_path)
    text = md.read_text()
    for heading in ("## Breakdown", "Latency vs no-communication ideal", "Per rank"):
        assert heading in text
    assert "Per mesh axis" in text and "Per layer type" in text and "inflight_s" in text
    # the distrifusion row of the ideal table: latency 0.8, ideal 0.59, overhead 26.25%
    row = next(line for line in text.splitlines() if "| distrifusion" in line and "0.59" in line)
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    assert cells[3:5] == ["0.8000", "0.5900"]
    assert cells[5] in ("26.2", "26.3")  # 26.25, rounded either way by binary floats
    for png in ("rank_breakdown.png", "overlap.png"):
        assert (tmp_path / png).read_bytes().startswith(b"\x89PNG")


def test_empty_store(tmp_path):
    db = ResultStore(tmp_path / "results.db")
    assert breakdown.rank_breakdown(db).empty
    assert breakdown.layer_breakdown(db).empty
    assert isinstance(breakdown.ideal_latency(db), pd.DataFrame)
    db.close()


# -- the per-step accounting the breakdown rests on (suite.worlds.record) ---------------------------
# One rank, two timed steps with a gap between them: step 0 [0, 1], step 1 [1.2, 2.2].
# (op, step, wait_step, async, t_issue, t_done, wait start, wait end):
#  A: async gather, waited while in flight (0.3 -> 0.5: 0.2 s exposed);
#  B: async all_reduce in flight inside A's interval, found complete by a poll at 0.4, its
#     wait at 0.6 settled at once (0 s long);
#  C: a blocking all_reduce (its whole 0.1 s exposed);
#  D: async gather issued at 0.9 in step 0, in flight across the gap, waited in step 1;
#  E: async all_to_all found complete (1.45) before its 0 s wait at 1.8;
#  F: async send whose done stamp (a completion callback, 1.95) precedes its wait's return
#     (2.0): the blocked interval still counts as in flight.
HAND = [
    ("all_gather", 0, 0, True, 0.1, 0.5, 0.3, 0.5),
    ("all_reduce", 0, 0, True, 0.2, 0.4, 0.6, 0.6),
    ("all_reduce", 0, 0, False, 0.7, 0.8, 0.7, 0.8),
    ("all_gather", 0, 1, True, 0.9, 1.6, 1.5, 1.6),
    ("all_to_all", 1, 1, True, 1.3, 1.45, 1.8, 1.8),
    ("send", 1, 1, True, 1.9, 1.95, 1.92, 2.0),
]


def _hand_result():
    from suite.worlds.runner import RankResult

    ev = np.zeros(len(HAND), dtype=EVENT_DTYPE)
    for e, (op, step, wait_step, is_async, t0, t1, w0, w1) in zip(ev, HAND, strict=True):
        e["step"], e["wait_step"], e["op"], e["axis"] = step, wait_step, OPS.index(op), 0
        e["group_size"], e["nbytes"], e["is_async"] = 2, 100, is_async
        e["t_issue"], e["t_done"], e["t_wait_start"], e["t_wait_end"] = t0, t1, w0, w1
    steps = np.array([(0, 0, 0.0, 1.0), (0, 1, 1.2, 2.2)], dtype=STEP_DTYPE)
    return RankResult(
        rank=0, host="h", device_name="cpu", loop_s=[2.2], steps=steps, events=ev,
        layers=[""], peak_mem_bytes=1, param_bytes=1, warmup_steps=0,
    )  # fmt: skip


def test_step_comm_is_time_in_flight_and_adds_up():
    from suite.worlds.record import step_table

    s0, s1 = step_table(_hand_result())
    # step 0: in flight A u B [0.1, 0.5], C [0.7, 0.8], D [0.9, 1.0]; blocked A's wait and C;
    # the summed durations (A 0.4 + B 0.2 + C 0.1 + D 0.7) exceed the 1 s step
    assert s0["comm_s"] == pytest.approx(0.6, abs=1e-12)
    assert s0["exposed_comm_s"] == pytest.approx(0.3, abs=1e-12)
    assert s0["compute_s"] == pytest.approx(0.7, abs=1e-12)
    assert s0["op_time_s"] == pytest.approx(1.4, abs=1e-12)
    # step 1: D [1.2, 1.6] (not the gap), E inside it, F [1.9, 2.0]; blocked D's and F's waits
    assert s1["comm_s"] == pytest.approx(0.5, abs=1e-12)
    assert s1["exposed_comm_s"] == pytest.approx(0.18, abs=1e-12)
    assert s1["compute_s"] == pytest.approx(0.82, abs=1e-12)
    assert s1["op_time_s"] == pytest.approx(0.2, abs=1e-12)
    for s in (s0, s1):
        assert 0 <= s["exposed_comm_s"] <= s["comm_s"] <= s["step_s"]
        assert s["comm_s"] - s["exposed_comm_s"] <= s["compute_s"]


def test_comm_table_unions_per_op_and_run_row():
    from suite.config.experiment import parse_config
    from suite.worlds.record import assemble, comm_table

    rows = {r["op"]: r for r in comm_table(_hand_result(), n_steps=2)}
    got = {op: [r["time_s"], r["inflight_s"], r["exposed_s"]] for op, r in rows.items()}
    assert got == {
        "all_gather": pytest.approx([0.55, 0.45, 0.15], abs=1e-12),  # D: 0.1 + 0.4 in steps
        "all_reduce": pytest.approx([0.15, 0.15, 0.05], abs=1e-12),
        "all_to_all": pytest.approx([0.075, 0.075, 0.0], abs=1e-12),
        "send": pytest.approx([0.025, 0.05, 0.04], abs=1e-12),  # in flight until the wait ends
    }
    spec = parse_config(
        {
            "experiment": "t",
            "workloads": ["tiny-pixart-alpha"],
            "resolutions": [256],
            "settings": {"steps": 2, "repeats": 1, "batch": 2},
            "strategies": [{"name": "data", "world_sizes": [2]}],
        }
    ).runs[0]
    row = assemble(spec, [_hand_result()], "runs/x").run
    assert [row["comm_s"], row["exposed_comm_s"], row["op_time_s"]] == pytest.approx(
        [0.55, 0.24, 0.8], abs=1e-12
    )
    assert row["overlap_pct"] == pytest.approx(100 * (1 - 0.24 / 0.55))
