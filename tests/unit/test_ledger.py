"""The ledger's records and the per-step accounting built on them, on hand-made traces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from suite.config.experiment import parse_config
from suite.distributed.comm import EVENT_DTYPE, OPS, Comm, Ledger
from suite.distributed.mesh import AXES, ParallelDims
from suite.worlds.record import assemble, comm_table, step_table
from suite.worlds.runner import STEP_DTYPE, RankResult


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
    # step 0: in flight 0.1 -> 0.9 (the all_reduce runs inside the gather's interval), the
    # summed durations 0.2 + 0.8; exposed only the all_reduce
    assert s0["comm_s"] == pytest.approx(0.8)
    assert s0["op_time_s"] == pytest.approx(1.0)
    assert s0["exposed_comm_s"] == pytest.approx(0.2)
    assert s0["compute_s"] == pytest.approx(0.8)
    assert s0["comm_bytes"] == 5000
    # step 1: the all_to_all (1.4 s) issued; exposed = its wait 0.6 + the hidden gather's 0
    assert s1["comm_s"] == s1["op_time_s"] == pytest.approx(1.4)
    assert s1["exposed_comm_s"] == pytest.approx(0.6)
    assert s1["compute_s"] == pytest.approx(1.4)


def test_comm_table_per_op_per_step():
    rows = {r["op"]: r for r in comm_table(rank_result(0, TRACE, [3.0]), n_steps=2)}
    assert rows["all_gather"]["bytes_per_step"] == 2000  # 4000 bytes over 2 steps
    assert rows["all_gather"]["exposed_s"] == pytest.approx(0.0)
    assert rows["all_reduce"]["time_s"] == rows["all_reduce"]["inflight_s"] == pytest.approx(0.1)
    assert rows["all_gather"]["inflight_s"] == pytest.approx(0.4)  # 0.8 s over 2 steps
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
    assert row["comm_s"] == pytest.approx(1.1)  # (0.8 + 1.4) / 2
    assert row["op_time_s"] == pytest.approx(1.2)
    assert row["exposed_comm_s"] == pytest.approx(0.4)
    assert row["overlap_pct"] == pytest.approx(100 * (1 - 0.4 / 1.1))
    assert row["comm_bytes_per_step"] == 3500
    assert row["peak_mem_bytes"] == 101
    assert len(record.rank_steps) == 4 and len(record.comm) == 6


def test_degree_one_axes_are_identity_and_not_logged():
    # A mesh with every axis at degree 1 needs no process group.
    from suite.distributed.mesh import ParallelMesh

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


# -- async completion times on CPU -----------------------------------------------------------
class Clock:
    """A settable clock for the ledger (instead of perf_counter)."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class StubWork:
    """An async op's work: completes when `complete()` is called (or when waited on, at
    `wait_until` on the clock), running its future's callbacks like gloo does."""

    def __init__(self, clock: Clock, wait_until: float | None = None):
        self.clock, self.wait_until = clock, wait_until
        self.completed, self.callbacks, self.polls = False, [], 0

    def get_future(self):
        return self

    def add_done_callback(self, fn):
        self.callbacks.append(fn)

    def complete(self):
        self.completed = True
        for fn in self.callbacks:
            fn(self)

    def is_completed(self) -> bool:
        self.polls += 1
        return self.completed

    def wait(self):
        if self.completed:
            self.clock.t += 0.1  # the call's own cost, not communication
        else:
            self.clock.t = self.wait_until
            self.complete()
        return True


class StubMesh:
    def global_ranks(self, axis):
        return [0, 1]

    def size(self, axis):
        return 2


def issue(done_callbacks: bool, wait_until: float | None = None):
    """A ledger on a settable clock and one async all_gather issued at t = 1 through Comm."""
    clock = Clock()
    ledger = Ledger(0, done_callbacks=done_callbacks)
    ledger.now, ledger.repeat = clock, 0
    work = StubWork(clock, wait_until)
    clock.t = 1.0
    pending = Comm(StubMesh(), ledger)._issue(
        "all_gather", "patch", 64, "l", True, lambda a: work, lambda: torch.zeros(1)
    )
    return clock, ledger, work, pending


def test_async_op_complete_before_its_wait_is_hidden_and_done_at_wait_start():
    clock, ledger, work, pending = issue(done_callbacks=False)
    assert work.callbacks == []  # no completion callback by default (GIL hand-off on CPU)
    clock.t = 2.0
    work.complete()  # the op finishes at 2.0, unseen by the ledger
    clock.t = 3.0
    ledger.step = 1
    pending.wait()
    (ev,) = ledger.events()
    assert work.polls == 1
    assert ev["t_wait_start"] == ev["t_wait_end"] == 3.0  # 0 s exposed, not the 0.1 s call
    assert ev["t_done"] == 3.0  # an upper bound of the completion (2.0): issue -> wait start
    assert ev["wait_step"] == 1
    rows = step_table(rank_result(0, ledger.events(), [3.0]))
    assert [r["exposed_comm_s"] for r in rows] == [0.0, 0.0]
    # issued in step 0 but, on this hand-made timeline, in flight in step 1's window (1 -> 3)
    assert rows[0]["op_time_s"] == rows[1]["comm_s"] == pytest.approx(2.0)


def test_a_later_ledger_event_or_step_end_stamps_completion_before_the_wait():
    clock, ledger, work, pending = issue(done_callbacks=False)
    other = StubWork(clock)
    clock.t = 2.0
    work.complete()  # finishes at 2.0
    clock.t = 2.5  # the next collective's issue polls the ops in flight
    later = Comm(StubMesh(), ledger)._issue(
        "all_gather", "patch", 64, "m", True, lambda a: other, lambda: torch.zeros(1)
    )
    clock.t = 2.8
    ledger.poll()  # a step end: `other` is still running, nothing changes
    clock.t = 3.0
    ledger.step = 1
    pending.wait()
    clock.t = 3.5
    other.complete()
    ledger.poll()  # the runner's poll at the end of step 1
    clock.t = 4.0
    later.wait()
    first, second = ledger.events()
    assert first["t_done"] == 2.5  # the first poll after completion: issue -> 2.5, not -> 3.0
    assert first["t_wait_start"] == first["t_wait_end"] == 3.0  # hidden: 0 s exposed
    assert second["t_done"] == 3.5 and second["t_wait_start"] == second["t_wait_end"] == 4.0
    assert ledger._inflight == []  # nothing left to poll


def test_async_op_still_running_at_its_wait_is_done_at_the_wait_end():
    clock, ledger, work, pending = issue(done_callbacks=False, wait_until=5.0)
    clock.t = 3.0
    pending.wait()
    (ev,) = ledger.events()
    assert (ev["t_wait_start"], ev["t_wait_end"], ev["t_done"]) == (3.0, 5.0, 5.0)


def test_with_done_callbacks_the_callback_times_completion():
    clock, ledger, work, pending = issue(done_callbacks=True)
    assert len(work.callbacks) == 1
    clock.t = 2.0
    work.complete()
    clock.t = 3.0
    pending.wait()
    (ev,) = ledger.events()
    assert work.polls == 1  # polled too, at the wait: the callback's earlier stamp wins
    assert ev["t_done"] == 2.0  # exact, from the callback
    assert ev["t_wait_start"] == ev["t_wait_end"] == 3.0  # found complete: 0 s exposed


def test_a_callback_trailing_the_wait_never_moves_done_past_the_wait_end():
    clock, ledger, work, pending = issue(done_callbacks=True, wait_until=5.0)
    callbacks, work.callbacks = work.callbacks, []  # the backend's thread runs them late
    clock.t = 3.0
    pending.wait()
    clock.t = 5.5
    for fn in callbacks:
        fn(work)
    (ev,) = ledger.events()
    assert (ev["t_wait_start"], ev["t_wait_end"], ev["t_done"]) == (3.0, 5.0, 5.0)


def test_events_round_trip_every_field_across_growth_and_clear():
    clock = Clock()
    ledger = Ledger(0, capacity=1)
    ledger.now = clock
    ledger.open("send", "pipefusion", 2, 5, "stale", True, 0, 1)
    ledger.clear()  # a reused slot starts afresh
    ledger.repeat, ledger.step = 3, 4
    clock.t = 1.0
    a = ledger.open("send", "pipefusion", 4, 123, "blocks.1", True, group_first=2, peer=3)
    b = ledger.open("all_reduce", "tensor", 2, 64, "blocks.0", False)
    clock.t = 2.0
    ledger.close_blocking(b)
    ledger.step = 5
    clock.t = 2.5
    ledger.begin_wait(a)
    clock.t = 3.0
    ledger.end_wait(a)
    ev = ledger.events()
    assert (
        ev.dtype == EVENT_DTYPE
        and len(ev) == 2
        and ledger.layers == ["stale", "blocks.1", "blocks.0"]
    )
    ea, eb = ev
    assert (ea["repeat"], ea["step"], ea["wait_step"], ea["layer"]) == (3, 4, 5, 1)
    assert (OPS[ea["op"]], AXES[ea["axis"]]) == ("send", "pipefusion")
    assert (ea["group_size"], ea["group_first"], ea["peer"], ea["nbytes"]) == (4, 2, 3, 123)
    assert ea["is_async"] and not eb["is_async"]
    assert (ea["t_issue"], ea["t_wait_start"], ea["t_wait_end"], ea["t_done"]) == (1, 2.5, 3, 3)
    assert (eb["t_issue"], eb["t_done"], eb["t_wait_start"], eb["t_wait_end"]) == (1, 2, 1, 2)
    assert (eb["wait_step"], eb["peer"], OPS[eb["op"]]) == (4, -1, "all_reduce")
