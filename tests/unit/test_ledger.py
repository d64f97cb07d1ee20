"""The ledger's records and the per-step accounting built on them, on hand-made traces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from suite.comm import EVENT_DTYPE, OPS, Comm, Ledger
from suite.config import parse_config
from suite.mesh import AXES, ParallelDims
from suite.record import assemble, comm_table, step_table
from suite.runner import STEP_DTYPE, RankResult


def event(op, axis, step, wait_step, nbytes, issue, done, wait_start, wait_end, is_async):
    ev = np.zeros(1, dtype=EVENT_DTYPE)
    ev["repeat"], ev["step"], ev["wait_step"] = 0, step, wait_step
    ev["op"], ev["axis"], ev["group_size"] = OPS.index(op), AXES.index(axis), 2
    ev["nbytes"], ev["is_async"] = nbytes, is_async
    ev["t_issue"], ev["t_done"] = issue, done
    ev["t_wait_start"], ev["t_wait_end"] = wait_start, wait_end
    return ev


def rank_result(rank: int, events: np.ndarray, loop_s: list[float]) -> RankResult:
    steps = np.array([(0, 0, 0.0, 1.0), (0, 1, 1.0, 3.0)], dtype=STEP_DTYPE)
    return RankResult(
        rank=rank, host="h", device_name="cpu", loop_s=loop_s, steps=steps, events=events,
        layers=[""], peak_mem_bytes=100 + rank, param_bytes=10, warmup_steps=0,
    )  # fmt: skip


# Step 0 lasts 1 s, step 1 lasts 2 s. Three ops:
#  - a blocking all_reduce in step 0: 0.2 s, fully exposed;
#  - an async all_gather issued in step 0 (0.1 -> 0.9), waited in step 1 but already done
#    (wait 1.5 -> 1.5): fully hidden;
#  - an async all_to_all issued in step 1 (1.2 -> 2.6), waited from 2.0 to 2.6: 0.6 s exposed.
TRACE = np.concatenate(
    [
        event("all_reduce", "tensor", 0, 0, 1000, 0.5, 0.7, 0.5, 0.7, False),
        event("all_gather", "patch", 0, 1, 4000, 0.1, 0.9, 1.5, 1.5, True),
        event("all_to_all", "ulysses", 1, 1, 2000, 1.2, 2.6, 2.0, 2.6, True),
    ]
)


def test_step_table_splits_compute_exposed_and_overlapped():
    rows = step_table(rank_result(0, TRACE, [3.0]))
    s0, s1 = rows
    # step 0: comm issued = 0.2 (all_reduce) + 0.8 (all_gather); exposed only the all_reduce
    assert s0["comm_s"] == pytest.approx(1.0)
    assert s0["exposed_comm_s"] == pytest.approx(0.2)
    assert s0["compute_s"] == pytest.approx(0.8)
    assert s0["comm_bytes"] == 5000
    # step 1: the all_to_all (1.4 s) issued; exposed = its wait 0.6 + the hidden gather's 0
    assert s1["comm_s"] == pytest.approx(1.4)
    assert s1["exposed_comm_s"] == pytest.approx(0.6)
    assert s1["compute_s"] == pytest.approx(1.4)


def test_comm_table_per_op_per_step():
    rows = {r["op"]: r for r in comm_table(rank_result(0, TRACE, [3.0]), n_steps=2)}
    assert rows["all_gather"]["bytes_per_step"] == 2000  # 4000 bytes over 2 steps
    assert rows["all_gather"]["exposed_s"] == pytest.approx(0.0)
    assert rows["all_reduce"]["time_s"] == pytest.approx(0.1)
    assert rows["all_to_all"]["axis"] == "ulysses"
    assert rows["all_to_all"]["calls_per_step"] == 0.5


def test_assemble_run_row():
    spec = parse_config(
        {
            "experiment": "t",
            "workloads": ["tiny-pixart-alpha"],
            "resolutions": [256],
            "settings": {"steps": 2, "repeats": 1, "batch": 2},
            "strategies": [{"name": "data", "world_sizes": [2]}],
        }
    ).runs[0]
    record = assemble(spec, [rank_result(0, TRACE, [3.0]), rank_result(1, TRACE, [3.5])], "runs/x")
    row = record.run
    assert row["latency_s"] == 3.5  # slowest rank
    assert row["step_s"] == pytest.approx(1.5)
    assert row["comm_s"] == pytest.approx(1.2)
    assert row["exposed_comm_s"] == pytest.approx(0.4)
    assert row["overlap_pct"] == pytest.approx(100 * (1 - 0.4 / 1.2))
    assert row["comm_bytes_per_step"] == 3500
    assert row["peak_mem_bytes"] == 101
    assert len(record.rank_steps) == 4 and len(record.comm) == 6


def test_degree_one_axes_are_identity_and_not_logged():
    # A mesh with every axis at degree 1 needs no process group.
    from suite.mesh import ParallelMesh

    ledger = Ledger(0)
    comm = Comm(ParallelMesh(ParallelDims(), "cpu"), ledger)
    x = torch.arange(6.0).reshape(2, 3)
    assert comm.all_gather(x, "patch", dim=1) is x
    assert comm.all_reduce(x, "tensor") is x
    assert comm.all_to_all(x, "ulysses", scatter_dim=0, gather_dim=1) is x
    assert comm.all_gather(x, "patch", async_op=True).wait() is x
    assert len(ledger) == 0


def test_ledger_grows_past_capacity_and_interns_layers():
    ledger = Ledger(0, capacity=2)
    for i in range(5):
        idx = ledger.open("all_reduce", "tensor", 2, 8, f"layer{i % 2}", False)
        ledger.close_blocking(idx)
    ev = ledger.events()
    assert len(ev) == 5 and ledger.layers == ["layer0", "layer1"]
    assert (ev["t_wait_start"] == ev["t_issue"]).all() and (ev["t_wait_end"] == ev["t_done"]).all()
    assert (ev["nbytes"] == 8).all()
