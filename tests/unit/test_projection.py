"""Projection: alpha-beta formulas, bus-bandwidth factors, and re-timing of hand-made traces."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.hardware import Device, Link, Profile
from analysis.projection import (
    RankTrace,
    alpha_beta_time,
    bus_bandwidth,
    group_members,
    measured_sharing,
    op_time,
    project_run,
    simulate,
    simulate_shared,
)
from suite.distributed.comm import EVENT_DTYPE, OPS
from suite.distributed.mesh import AXES
from suite.worlds.runner import STEP_DTYPE


def test_alpha_beta_formulas_on_known_numbers():
    a, bw, n = 1e-5, 1e9, 1e6  # 10 us, 1 GB/s, 1 MB
    assert alpha_beta_time("all_gather", n, 4, a, bw) == pytest.approx(3e-5 + 0.75e-3)
    assert alpha_beta_time("reduce_scatter", n, 4, a, bw) == pytest.approx(3e-5 + 0.75e-3)
    assert alpha_beta_time("all_reduce", n, 4, a, bw) == pytest.approx(6e-5 + 1.5e-3)
    assert alpha_beta_time("all_to_all", n, 2, a, bw) == pytest.approx(1e-5 + 0.5e-3)
    assert alpha_beta_time("send", n, 2, a, bw) == pytest.approx(1e-5 + 1e-3)
    assert alpha_beta_time("all_reduce", n, 1, a, bw) == 0.0


def test_busbw_factors_match_nccl_tests():
    # 1 GB in 1 s on 8 ranks
    assert bus_bandwidth("all_reduce", 1e9, 8, 1.0) == (1e9, pytest.approx(1.75e9))
    assert bus_bandwidth("all_gather", 1e9, 8, 1.0)[1] == pytest.approx(0.875e9)
    assert bus_bandwidth("reduce_scatter", 1e9, 8, 1.0)[1] == pytest.approx(0.875e9)
    assert bus_bandwidth("all_to_all", 1e9, 8, 1.0)[1] == pytest.approx(0.875e9)
    assert bus_bandwidth("broadcast", 1e9, 8, 1.0)[1] == pytest.approx(1e9)


def test_group_members_follow_the_mesh_axis_order():
    degrees = {"cfg": 2, "ulysses": 2}  # cfg outer, ulysses inner
    assert group_members(degrees, 0, "ulysses") == [0, 1]
    assert group_members(degrees, 3, "ulysses") == [2, 3]
    assert group_members(degrees, 1, "cfg") == [1, 3]
    assert group_members(degrees, 2, "patch") == [2]


def _profile(gpus_per_node=8, nodes=2) -> Profile:
    dev = Device("x", {"bf16": 100.0}, 1000.0, 80.0)
    return Profile(
        "p", dev, gpus_per_node, nodes,
        intra_node=Link("fast", 100.0, 2.0),
        inter_node=Link("nic", 10.0, 20.0, shared_by_node=True),
    )  # fmt: skip


def test_link_is_chosen_by_the_group_span():
    prof = _profile()
    inside = op_time(prof, "all_gather", 1e8, [0, 1])
    across = op_time(prof, "all_gather", 1e8, [0, 8])
    assert inside == pytest.approx(2e-6 + 0.5 * 1e8 / 100e9)
    # one NIC per node shared by its 8 GPUs: 10 GB/s / 8 per rank
    assert across == pytest.approx(20e-6 + 0.5 * 1e8 / (10e9 / 8))


def _ev(op, axis, issue, done, wait_start, wait_end, is_async, peer=-1, nbytes=1000):
    e = np.zeros(1, dtype=EVENT_DTYPE)
    e["op"], e["axis"], e["group_size"], e["group_first"], e["peer"] = (
        OPS.index(op),
        AXES.index(axis),
        2,
        0,
        peer,
    )
    e["nbytes"], e["is_async"] = nbytes, is_async
    e["t_issue"], e["t_done"], e["t_wait_start"], e["t_wait_end"] = (
        issue,
        done,
        wait_start,
        wait_end,
    )
    return e


def _steps(*bounds):
    return np.array([(0, i, a, b) for i, (a, b) in enumerate(bounds)], dtype=STEP_DTYPE)


def test_timeline_sync_async_hidden_and_async_exposed():
    # Measured (seconds): rank 0 computes 0-1, a blocking all_reduce (1-1.2), computes to 2,
    # issues an async all_gather at 2 and waits at 2.9 (already done: hidden). Rank 1 is slower
    # to the all_reduce (1.5) and waits for its gather early (2.2-2.6: exposed).
    r0 = np.concatenate(
        [
            _ev("all_reduce", "patch", 1.0, 1.2, 1.0, 1.2, False),
            _ev("all_gather", "patch", 2.0, 2.5, 2.9, 3.0, True),
        ]
    )
    r1 = np.concatenate(
        [
            _ev("all_reduce", "patch", 1.5, 1.6, 1.5, 1.6, False),
            _ev("all_gather", "patch", 2.1, 2.6, 2.2, 2.6, True),
        ]
    )
    traces = [RankTrace(0, _steps((0.0, 3.0)), r0), RankTrace(1, _steps((0.0, 3.0)), r1)]
    # every op costs 0.5 s on the target; compute runs 2x slower there
    p = simulate(traces, {"patch": 2}, lambda op, n, m, g=None: 0.5, compute_scale=2.0)
    # Hand-computed: all_reduce starts when rank 1 arrives (T=3.0), ends 3.5. Rank 0 then
    # computes 0.8 s measured -> 1.6 (T=5.1) and issues the gather; rank 1 issues at 4.5; the
    # gather ends 5.6. Rank 0 computes until its wait at 6.9 (hidden); rank 1 waits 4.7 -> 5.6
    # (0.9 exposed) and finishes at 6.4.
    assert p.latency_s == pytest.approx(6.9)
    assert p.comm_s == pytest.approx((2.0 + 1.6) / 2)  # per-rank issue-to-end sums
    assert p.exposed_comm_s == pytest.approx((1.5 + 1.4) / 2)
    assert p.compute_s == pytest.approx((6.9 + 6.4) / 2 - 1.45)


def test_point_to_point_pairs_send_with_receive():
    # rank 0 computes 1 s then sends; rank 1 posts its receive at once and blocks on it
    r0 = _ev("send", "pipefusion", 1.0, 1.0, 1.0, 1.0, False, peer=1)
    r1 = _ev("recv", "pipefusion", 0.0, 1.0, 0.0, 1.0, False, peer=0)
    traces = [RankTrace(0, _steps((0.0, 1.0)), r0), RankTrace(1, _steps((0.0, 2.0)), r1)]
    p = simulate(traces, {"pipefusion": 2}, lambda op, n, m, g=None: 0.25, compute_scale=1.0)
    # the transfer starts when the sender arrives (1.0) and takes 0.25; rank 1 then computes
    # the 1 s it measured after its receive
    assert p.latency_s == pytest.approx(2.25)


def test_unmatched_collectives_are_reported():
    from analysis.projection import ProjectionError

    r0 = _ev("all_reduce", "patch", 0.5, 0.6, 0.5, 0.6, False)
    traces = [RankTrace(0, _steps((0.0, 1.0)), r0), RankTrace(1, _steps((0.0, 1.0)), r0[:0])]
    with pytest.raises(ProjectionError, match="unmatched"):
        simulate(traces, {"patch": 2}, lambda op, n, m, g=None: 0.1, compute_scale=1.0)


def test_calibrated_curve_is_interpolated_inside_its_range_and_fit_outside():
    from analysis.hardware import Fit

    prof = _profile()
    curves = {("all_reduce", 2): ((1e3, 1e6, 1e9), (1e-4, 1e-3, 2.0))}
    prof = Profile(
        **{**prof.__dict__, "curves": curves, "fits": {("all_reduce", 2): Fit(1e-4, 1e-9)}}
    )
    assert op_time(prof, "all_reduce", 1e6, [0, 1]) == pytest.approx(1e-3)
    # halfway in log size between 1e6 and 1e9 -> geometric mean of the times
    assert op_time(prof, "all_reduce", 10**7.5, [0, 1]) == pytest.approx((1e-3 * 2.0) ** 0.5)
    assert op_time(prof, "all_reduce", 1e10, [0, 1]) == pytest.approx(1e-4 + 10.0)  # the fit


# -- core sharing on CPU profiles ------------------------------------------------------------
def test_ranks_computing_at_once_share_the_cores():
    # two ranks compute 1 s each at the same time: on one core each runs at half speed
    traces = [RankTrace(r, _steps((0.0, 1.0)), np.zeros(0, dtype=EVENT_DTYPE)) for r in (0, 1)]
    p, share = simulate_shared(traces, {"data": 2}, lambda op, n, m, g=None: 0.0, 1.0, cores=1)
    assert share == pytest.approx(2.0) and p.latency_s == pytest.approx(2.0)
    p, share = simulate_shared(traces, {"data": 2}, lambda op, n, m, g=None: 0.0, 1.0, cores=2)
    assert share == 1.0 and p.latency_s == pytest.approx(1.0)


def test_a_rank_waiting_in_a_pipeline_bubble_frees_its_core():
    # rank 0 computes 1 s then sends; rank 1 sleeps on the receive, then computes 1 s. They
    # never compute at once, so one core is not shared (every rank always busy would say 2x:
    # latency 4 s).
    r0 = _ev("send", "pipefusion", 1.0, 1.0, 1.0, 1.0, False, peer=1)
    r1 = _ev("recv", "pipefusion", 0.0, 1.0, 0.0, 1.0, False, peer=0)
    traces = [RankTrace(0, _steps((0.0, 1.0)), r0), RankTrace(1, _steps((0.0, 2.0)), r1)]
    p, share = simulate_shared(
        traces, {"pipefusion": 2}, lambda op, n, m, g=None: 0.0, 1.0, cores=1
    )
    assert share == pytest.approx(1.0, rel=1e-3)
    assert p.latency_s == pytest.approx(2.0, rel=1e-3)


def test_communication_keeps_both_sides_busy():
    # as above, but the transfer costs 1 s, during which both ranks are busy (sender and
    # receiver copy on CPU): they share the core with each other's compute
    r0 = _ev("send", "pipefusion", 1.0, 1.0, 1.0, 1.0, False, peer=1)
    r1 = _ev("recv", "pipefusion", 0.0, 1.0, 0.0, 1.0, False, peer=0)
    traces = [RankTrace(0, _steps((0.0, 1.0)), r0), RankTrace(1, _steps((0.0, 2.0)), r1)]
    p, share = simulate_shared(
        traces, {"pipefusion": 2}, lambda op, n, m, g=None: 1.0, 1.0, cores=1
    )
    # with share s: latency 2s + 1, busy 2s (compute) + 2 (both sides of the transfer), so
    # s = (2s + 2) / (2s + 1) -> 2s^2 - s - 2 = 0 -> s = (1 + sqrt(17)) / 4
    s = (1 + 17**0.5) / 4
    assert share == pytest.approx(s, rel=1e-3)
    assert p.latency_s == pytest.approx(2 * s + 1, rel=1e-3)


def test_measured_sharing_undoes_what_a_real_world_ran_under():
    # two ranks computed 0-2 s at once on one core: unshared, each needs 1 s
    from dataclasses import replace

    by_rank = {r: (_steps((0.0, 2.0)), np.zeros(0, dtype=EVENT_DTYPE)) for r in (0, 1)}
    one_core = replace(_profile(), cpu_cores=1)
    assert measured_sharing(by_rank, {"data": 2}, one_core, 1) == pytest.approx(2.0)
    assert measured_sharing(by_rank, {"data": 2}, _profile(), 1) == 1.0  # a GPU profile
    # projected back on the same machine, the run takes what it measured
    p = project_run(by_rank, {"data": 2}, one_core, one_core, "bf16", extra_scale=1 / 2.0)
    assert p.latency_s == pytest.approx(2.0)


def test_scaling_plot_has_a_panel_per_strategy_and_a_line_per_profile(tmp_path):
    import matplotlib.image
    import pandas as pd

    from analysis.projection_report import plot_scaling

    curve = [("none", 1, 8.0), ("ring", 2, 4.5), ("ring", 4, 2.6), ("tensor", 2, 5.0)]
    rows = [
        {"workload": "w", "strategy": st, "world_size": n, "hardware": hw,
         "projected_latency_s": t * scale}
        for hw, scale in (("cpu", 1.0), ("gpu", 1e-3))
        for st, n, t in curve
    ]  # fmt: skip
    path = plot_scaling(pd.DataFrame(rows), tmp_path / "p.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    height, width = matplotlib.image.imread(path).shape[:2]
    assert width > height  # two panels (ring, tensor) side by side, the legend below them


def test_validation_matches_fake_and_analytic_twins_of_real_runs(tmp_path):
    from analysis.projection_report import validation
    from suite.store.results import ResultStore

    base = {"experiment": "v", "workload": "w", "height": 256, "width": 256, "steps": 4,
            "batch": 1, "scheduler": "ddim", "guidance": 4.5, "dtype": "float32",
            "threads_per_rank": 1, "seed": 0, "options": "{}", "status": "ok"}  # fmt: skip
    runs = [  # (run_id, world_mode, strategy, degrees, world, measured latency)
        ("real-u2", "real", "ulysses", '{"ulysses": 2}', 2, 1.0),
        ("fake-u2", "fake", "ulysses", '{"ulysses": 2}', 2, 0.9),
        ("ana-u2", "analytic", "ulysses", '{"ulysses": 2}', 2, None),
        ("ana-r2", "analytic", "ring", '{"ring": 2}', 2, None),  # no real twin: left out
        ("real-t2", "real", "tensor", '{"tensor": 2}', 2, 2.0),
        ("ana-t2", "analytic", "tensor", '{"tensor": 2}', 2, None),
    ]
    rows = [{**base, "run_id": i, "world_mode": m, "strategy": s, "degrees": d,
             "world_size": n, "latency_s": lat} for i, m, s, d, n, lat in runs]  # fmt: skip
    proj = [  # projected on the source profile; an anchored and a bf16 row are not the check
        {"run_id": "fake-u2", "hardware": "cpu", "latency_s": 1.1},
        {"run_id": "ana-u2", "hardware": "cpu", "latency_s": 0.8},
        {"run_id": "ana-r2", "hardware": "cpu", "latency_s": 0.7},
        {"run_id": "ana-t2", "hardware": "cpu", "latency_s": 2.5},
        {"run_id": "ana-t2", "hardware": "gpu", "latency_s": 0.01},
        {"run_id": "ana-u2", "hardware": "cpu", "latency_s": 9.0, "anchored_to": "1 s"},
        {"run_id": "fake-u2", "hardware": "cpu", "latency_s": 9.0, "projected_dtype": "bf16"},
    ]
    db = tmp_path / "results.db"
    with ResultStore(db) as store:
        store.save_rows("runs", rows)
        store.save_rows("projection", [{"projected_dtype": "fp32", "anchored_to": None,
                                        "anchor_scale": 1.0, **r} for r in proj])  # fmt: skip
    val = validation(db, "cpu")
    got = {(r.projected_from, r.strategy): (r.projected_latency_s, r.measured_latency_s,
                                            r.error_pct) for r in val.itertuples()}  # fmt: skip
    assert got == {
        ("analytic", "tensor"): (2.5, 2.0, pytest.approx(25.0)),
        ("analytic", "ulysses"): (0.8, 1.0, pytest.approx(-20.0)),
        ("fake", "ulysses"): (1.1, 1.0, pytest.approx(10.0)),
    }


def test_compute_overlapping_an_async_op_is_slowed_by_it():
    # one rank pair: each computes 0-1, issues an async all_gather at 1, computes to 3 and waits
    # (the op, 1 s on the target, is hidden); with a 20% slowdown the 1 s of compute that ran
    # beside it takes 1.2 s
    ev = _ev("all_gather", "patch", 1.0, 2.0, 3.0, 3.0, True)
    traces = [RankTrace(r, _steps((0.0, 3.0)), ev) for r in (0, 1)]
    plain = simulate(traces, {"patch": 2}, lambda op, n, m, g=None: 1.0, compute_scale=1.0)
    slowed = simulate(
        traces, {"patch": 2}, lambda op, n, m, g=None: 1.0, compute_scale=1.0, overlap_slowdown=0.2
    )
    assert plain.latency_s == pytest.approx(3.0)
    assert slowed.latency_s == pytest.approx(3.2)
    assert slowed.exposed_comm_s == pytest.approx(0.0)
