"""Operator model, analytic-trace projection, dtype-true projection, anchoring, sensitivity and
the catalog curves: exact numbers on hand-made traces and tiny profiles (no process group)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from analysis import opmodel
from analysis.hardware import HARDWARE_DIR, Device, Link, Profile, devices, load_profile
from analysis.opmodel import Curve, OpCurves, parse_curves, price
from analysis.projection import project_analytic, project_store, shares
from suite.distributed.comm import EVENT_DTYPE, OPS
from suite.distributed.mesh import AXES
from suite.measure.optrace import EMPTY, OP_CLASSES, OP_DTYPE, TRACE_DTYPES
from suite.worlds.runner import STEP_DTYPE

# A tiny device: fp32 GEMMs reach 0.5 TFLOP/s at 1e6 FLOPs and 1 TFLOP/s from 1e9 on; bf16 twice
# that; copies 1 GB/s at 1 kB and 10 GB/s from 1 MB on. Link: 10 us, 1 GB/s.
CURVES = {
    "launch": {"us": 0.0, "async": False},
    "matmul": {
        "fp32": [{"flops": 1e6, "tflops": 0.5}, {"flops": 1e9, "tflops": 1.0}],
        "bf16": [{"flops": 1e6, "tflops": 1.0}, {"flops": 1e9, "tflops": 2.0}],
    },
    "memory": [{"bytes": 1e3, "gb_s": 1.0}, {"bytes": 1e6, "gb_s": 10.0}],
}


def _profile(curves=CURVES, gpus=2, **kw) -> Profile:
    dev = Device("tiny", {"fp32": 1.0, "bf16": 2.0}, 10.0, 1.0)
    link = Link("l", 1.0, 10.0)
    return Profile("tiny", dev, gpus, 1, link, None, opcurves=parse_curves(curves), **kw)


def _ops(*rows) -> np.ndarray:
    """rows: (sig, class, dtype, count, flops, bytes[, d2, d3])"""
    out = np.zeros(len(rows), dtype=OP_DTYPE)
    for i, (sig, cls, dt, count, flops, nbytes, *dims) in enumerate(rows):
        out[i]["sig"], out[i]["cls"] = sig, OP_CLASSES.index(cls)
        out[i]["dtype"], out[i]["count"] = TRACE_DTYPES.index(dt), count
        out[i]["flops"], out[i]["bytes"] = flops, nbytes
        if dims:
            out[i]["d2"], out[i]["d3"] = dims
    return out


# -- the operator model -------------------------------------------------------------------------
def test_curve_is_linear_in_log_size_and_clamped():
    c = Curve((1e6, 1e9), (0.5, 1.0))
    assert c(10**7.5) == pytest.approx(0.75)  # halfway in log size
    assert c(1e3) == 0.5 and c(1e12) == 1.0  # clamped at both ends


def test_op_time_is_the_roofline_max_plus_launch():
    curves = {**CURVES, "launch": {"us": 2.0, "async": False}}
    prof = _profile(curves)
    ops = _ops(
        (0, "matmul", "float32", 3, 10**7.5, 1e3),  # 0.75 TFLOP/s: 42.16 us > 1 us of bytes
        (1, "elementwise", "float32", 1, 100.0, 1e6),  # memory-bound: 1e6 B at 10 GB/s
        (2, "matmul", "float32", 1, 1e12, 1e3),  # clamped to 1 TFLOP/s: 1 s
    )
    p = price(prof, ops)
    gemm = 10**7.5 / 0.75e12
    assert p.time_s[0] == pytest.approx(3 * (gemm + 2e-6))
    assert p.compute_bound_s[0] == pytest.approx(3 * gemm) and p.memory_bound_s[0] == 0
    assert p.launch_s[0] == pytest.approx(6e-6)
    # elementwise FLOPs run at the device's vector (fp32) peak: 1e-10 s, far below the bytes
    assert p.time_s[1] == pytest.approx(1e-4 + 2e-6)
    assert p.memory_bound_s[1] == pytest.approx(1e-4) and p.compute_bound_s[1] == 0
    assert p.time_s[2] == pytest.approx(1.0 + 2e-6)
    np.testing.assert_allclose(p.compute_bound_s + p.memory_bound_s + p.launch_s, p.time_s)


def test_gelu_family_activations_price_on_their_own_curve():
    gelu = [{"bytes": 1e3, "gb_s": 0.5}, {"bytes": 1e9, "gb_s": 0.5}]
    silu = [{"bytes": 1e3, "gb_s": 2.0}, {"bytes": 1e9, "gb_s": 2.0}]
    ops = _ops((0, "activation", "float32", 1, 0.0, 1e6), (1, "activation", "float32", 1, 0.0, 1e6))
    ops["d1"] = [1, 0]  # kind 1: GELU family (recorded by suite.measure.op_recorder), 0: SiLU-like
    p = price(_profile({**CURVES, "activation": silu, "gelu": gelu}), ops)
    assert p.time_s[0] == pytest.approx(1e6 / 0.5e9) and p.time_s[1] == pytest.approx(1e6 / 2e9)
    # without a `gelu` curve both take the activation curve; without either, elementwise, then
    # the copy curve (CURVES has only that one)
    p = price(_profile({**CURVES, "activation": silu}), ops)
    assert p.time_s[0] == pytest.approx(p.time_s[1]) == pytest.approx(1e6 / 2e9)
    p = price(_profile(CURVES), ops)
    assert p.time_s[0] == pytest.approx(1e6 / 10e9)  # the copy curve: 10 GB/s at 1 MB


def test_async_launch_overlaps_kernels():
    prof = _profile({**CURVES, "launch": {"us": 5.0, "async": True}})
    ops = _ops((0, "matmul", "float32", 1, 1e6, 1.0), (1, "matmul", "float32", 1, 1e9, 1.0))
    p = price(prof, ops)
    assert p.time_s[0] == pytest.approx(5e-6)  # 2 us kernel hidden behind a 5 us launch
    assert p.launch_s[0] == pytest.approx(3e-6)  # the part of the launch left exposed
    assert p.time_s[1] == pytest.approx(1e-3) and p.launch_s[1] == 0


def test_attention_by_sequence_length_and_head_dim():
    curves = {
        **CURVES,
        "attention": {
            "fp32": {
                64: [{"s_kv": 1024, "tflops": 0.2}, {"s_kv": 4096, "tflops": 0.4}],
                128: [{"s_kv": 1024, "tflops": 0.4}, {"s_kv": 4096, "tflops": 0.8}],
            }
        },
    }
    prof = _profile(curves)
    # S_kv 2048 is halfway in log between 1024 and 4096; head dim 90.5 halfway between 64, 128
    rate = opmodel.compute_rate(prof, "attention", "fp32", [1.0], [2048], [64 * 2**0.5])
    assert rate[0] == pytest.approx(0.45e12)
    rate = opmodel.compute_rate(prof, "attention", "fp32", [1.0], [2048], [256])  # clamped
    assert rate[0] == pytest.approx(0.6e12)
    # no attention curve for bf16: matmul's, by FLOPs
    assert opmodel.compute_rate(prof, "attention", "bf16", [1e9], [2048], [64])[0] == 2e12


def test_attention_runs_at_the_kernels_head_dim_tile():
    curves = {
        **CURVES,
        "attention": {
            "fp32": {64: [{"s_kv": 1024, "tflops": 0.2}], 128: [{"s_kv": 1024, "tflops": 0.4}]}
        },
        "attention_kernel": {"head_dim_tiles": [64, 96, 128], "dtypes": ["fp32"]},
    }
    prof = _profile(curves)
    tiles = opmodel.attention_tile(prof.opcurves, "fp32", [40, 64, 72, 96, 100, 200])
    assert tiles.tolist() == [64, 64, 96, 96, 128, 200]  # above the largest tile: unpadded
    assert opmodel.attention_tile(prof.opcurves, "bf16", [72]).tolist() == [72]  # not listed
    # head dim 72 runs the 96 kernel: 96/72 the FLOPs at the rate of head dim 96, which is
    # log(96/64) / log(2) = 0.585 of the way (in log head dim) from 0.2 to 0.4 TFLOP/s
    flops = 2 * 8 * 1024 * 1024 * (72 + 72)
    ops = _ops((0, "attention", "float32", 1, flops, 1.0, 1024, 72))
    rate96 = 0.2 + 0.2 * math.log(96 / 64) / math.log(2)
    assert price(prof, ops).time_s[0] == pytest.approx(flops * 96 / 72 / (rate96 * 1e12))
    # without the kernel block, 72 is priced at its own interpolated rate
    plain = _profile({k: v for k, v in curves.items() if k != "attention_kernel"})
    rate72 = 0.2 + 0.2 * math.log(72 / 64) / math.log(2)
    assert price(plain, ops).time_s[0] == pytest.approx(flops / (rate72 * 1e12))


def test_dtype_conversion_rescales_bytes_and_prices_the_new_dtype():
    ops = _ops((0, "matmul", "float32", 1, 1e9, 4e3), (0, "memory", "other", 1, 0.0, 8e3))
    converted, keys = opmodel.convert_dtype(ops, "bf16")
    assert converted["bytes"].tolist() == [2e3, 8e3]  # fp32 -> bf16 halves; 'other' stays
    assert list(keys) == ["bf16", "fp32"]
    assert TRACE_DTYPES[converted["dtype"][0]] == "bfloat16"
    # the GEMM at bf16's 2 TFLOP/s (its 2 kB far below); the copy of 8 kB at the
    # copy curve's rate there (log10(8e3) is log10(8) / 3 of the way from 1 kB to 1 MB)
    copy = 8e3 / ((1 + 9 * math.log10(8) / 3) * 1e9)
    assert price(_profile(), ops, "bf16").time_s[0] == pytest.approx(0.5e-3 + copy)


def test_a_profile_without_curves_uses_its_peaks():
    prof = Profile("p", Device("d", {"bf16": 100.0}, 1000.0, 80.0), 8, 1, Link("l", 1, 1), None)
    ops = _ops((0, "matmul", "bfloat16", 1, 1e12, 1e9))
    assert price(prof, ops).time_s[0] == pytest.approx(max(1e12 / 100e12, 1e9 / 1000e9))
    assert opmodel.dtypes(prof) == ["bf16"]
    with pytest.raises(ValueError, match="cannot run fp16; it runs: bf16"):
        opmodel.check_dtype(prof, "fp16")
    with pytest.raises(ValueError, match="allowed: fp32, tf32, fp16, bf16"):
        opmodel.dtype_key("fp8")


# -- analytic traces: retime + simulate ----------------------------------------------------------
SIG_OPS = _ops(
    (0, "matmul", "float32", 1, 1e9, 1e3),  # 1 ms on the tiny profile in fp32
    (1, "matmul", "float32", 1, 2e9, 1e3),  # 2 ms
)


def _event(op, axis, issue, done, nbytes=1e6, peer=-1, repeat=0):
    e = np.zeros(1, dtype=EVENT_DTYPE)
    e["repeat"], e["op"], e["axis"], e["group_size"], e["peer"] = (
        repeat, OPS.index(op), AXES.index(axis), 2, peer
    )  # fmt: skip
    e["nbytes"], e["is_async"] = nbytes, False
    e["t_issue"], e["t_done"], e["t_wait_start"], e["t_wait_end"] = issue, done, issue, done
    return e


def _steps(*bounds):
    return np.array([(0, i, a, b) for i, (a, b) in enumerate(bounds)], dtype=STEP_DTYPE)


def _two_rank_trace() -> dict:
    """Rank 0 computes sig 0 (1 ms), joins a blocking all_reduce, computes sig 1 (2 ms); rank 1
    the other way round. Boundary clock: the all_reduce from boundary 1 to 2 (an empty segment)."""
    return {
        "ops": SIG_OPS,
        "segments_rank0": np.array([0, EMPTY, 1], dtype=np.int32),
        "segments_rank1": np.array([1, EMPTY, 0], dtype=np.int32),
        "events_rank0": _event("all_reduce", "patch", 1, 2),
        "events_rank1": _event("all_reduce", "patch", 1, 2),
        "steps_rank0": _steps((0, 3)),
        "steps_rank1": _steps((0, 3)),
    }


def test_two_rank_analytic_trace_projects_exactly():
    p, split = project_analytic(_two_rank_trace(), 2, {"patch": 2}, _profile())
    # all_reduce: 2(p-1) alpha + 2(p-1)/p n/B = 20 us + 1 ms. It starts when rank 1 arrives
    # (2 ms) and ends at 3.02 ms; rank 0 then computes 2 ms -> 5.02, rank 1 1 ms -> 4.02.
    assert p.latency_s == pytest.approx(5.02e-3)
    assert p.critical_rank == 0 and p.critical_exposed_s == pytest.approx(2.02e-3)
    assert p.exposed_comm_s == pytest.approx((2.02e-3 + 1.02e-3) / 2)
    assert split == pytest.approx((3e-3, 0.0, 0.0))  # rank 0: 3 ms, all compute-bound
    s = shares(p, split)
    assert s["link_pct"] == pytest.approx(100 * 2.02 / 5.02)
    assert s["compute_bound_pct"] == pytest.approx(100 * 3 / 5.02)
    assert s["memory_bound_pct"] == 0 and s["launch_pct"] == 0
    assert sum(s.values()) == pytest.approx(100)


def test_dtype_true_analytic_projection_halves_bytes_and_prices_bf16():
    p, _ = project_analytic(
        _two_rank_trace(), 2, {"patch": 2}, _profile(), dtype="bf16", byte_scale=0.5
    )
    # bf16: 0.5 and 1 ms segments; the all_reduce moves 0.5 MB: 20 us + 0.5 ms, from 1 ms (rank
    # 1 arrives) to 1.52; rank 0 computes 1 ms more -> 2.52 ms
    assert p.latency_s == pytest.approx(2.52e-3)


def test_compute_scale_multiplies_every_segment():
    p, _ = project_analytic(_two_rank_trace(), 2, {"patch": 2}, _profile(), compute_scale=2.0)
    # rank 0 arrives at 2 ms, rank 1 at 4; the op ends 5.02; rank 0 computes 4 ms more
    assert p.latency_s == pytest.approx(9.02e-3)


# -- stores: analytic and measured runs, anchoring, CLI errors -----------------------------------
RUN = {"experiment": "t", "workload": "tiny-pixart-alpha", "height": 256, "width": 256,
       "steps": 1, "batch": 1, "scheduler": "ddim", "guidance": 1.0, "dtype": "float32",
       "threads_per_rank": 1, "options": "{}", "status": "ok", "seed": 0}  # fmt: skip


def _store(tmp_path, with_real=True) -> tuple:
    from suite.store.results import ResultStore

    db = tmp_path / "results.db"
    single = {
        "ops": SIG_OPS,
        "segments_rank0": np.array([0, 1], dtype=np.int32),
        "events_rank0": np.zeros(0, dtype=EVENT_DTYPE),
        "steps_rank0": _steps((0, 2)),
    }
    runs = [
        ("a2", "analytic", "patch", 2, _two_rank_trace(), math.nan),
        ("a1", "analytic", "none", 1, single, math.nan),
    ]
    if with_real:  # measured on "the target": 4.5 ms
        real = {"steps_rank0": _steps((0.0, 4.5e-3)), "events_rank0": single["events_rank0"]}
        runs.append(("r1", "real", "none", 1, real, 4.5e-3))
    rows = []
    for run_id, mode, strategy, world, trace, latency in runs:
        (tmp_path / run_id).mkdir()
        np.savez(tmp_path / run_id / "trace.npz", **trace)
        degrees = json.dumps({"patch": 2} if world == 2 else {})
        rows.append({**RUN, "run_id": run_id, "world_mode": mode, "strategy": strategy,
                     "world_size": world, "degrees": degrees, "output_dir": run_id,
                     "latency_s": latency})  # fmt: skip
    with ResultStore(db) as store:
        store.save_rows("runs", rows)
    profile = {
        "name": "tiny",
        "measured": True,
        "device": {"name": "tiny", "achieved": True, "fp32_tflops": 1.0},
        "gpus_per_node": 2,
        "intra_node_link": {"name": "l", "latency_us": 10.0, "bandwidth_gb_s": 1.0},
        "opcurves": {k: v for k, v in CURVES.items() if k != "matmul"}
        | {"matmul": {"fp32": CURVES["matmul"]["fp32"]}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(profile))
    return db, str(path)


def test_project_store_prices_analytic_runs_and_reports_what_bounds_them(tmp_path):
    db, prof = _store(tmp_path)
    rows = {r["run_id"]: r for r in project_store(db, [prof], source=prof)}
    assert rows["a2"]["latency_s"] == pytest.approx(5.02e-3)
    assert rows["a1"]["latency_s"] == pytest.approx(3e-3)
    assert rows["a2"]["compute_model"] == "operator model (analytic trace)"
    assert rows["a2"]["link_pct"] == pytest.approx(100 * 2.02 / 5.02)
    assert rows["a2"]["anchored_to"] is None and rows["a2"]["anchor_scale"] == 1.0
    # the real run is measured: its analytic twin (a1, same configuration) gives the ratio
    # of target to source time of the same work, 1 on its own profile
    assert rows["r1"]["latency_s"] == pytest.approx(4.5e-3)
    assert rows["r1"]["compute_model"] == "operator-model ratio 1 (analytic run a1)"
    assert rows["r1"]["compute_bound_pct"] == pytest.approx(100)


def test_anchor_reproduces_the_anchor_latency_exactly(tmp_path):
    db, prof = _store(tmp_path)
    rows = {r["run_id"]: r for r in project_store(db, [prof], source=prof, anchor=6e-3)}
    assert rows["a1"]["latency_s"] == 6e-3  # the single-device analytic run, exactly
    assert rows["a1"]["anchor_scale"] == pytest.approx(2.0)
    assert rows["a2"]["latency_s"] == pytest.approx(9.02e-3)  # compute x 2, the link unchanged
    assert rows["a2"]["anchored_to"] == "0.006 s"
    # a stored single-device run measured on the target: its latency, 4.5 ms
    rows = {r["run_id"]: r for r in project_store(db, [prof], source=prof, anchor="r1")}
    assert rows["a1"]["latency_s"] == pytest.approx(4.5e-3, rel=1e-12)
    assert rows["a1"]["anchored_to"] == "run r1 (0.0045 s)"
    from suite.store.results import ResultStore

    with ResultStore(db, read_only=True) as store:
        table = store.table("projection")
    # each anchor is a variant of its own: both sit in the table, three runs each
    assert len(table) == 6 and set(table["anchored_to"]) == {"0.006 s", "run r1 (0.0045 s)"}
    project_store(db, [prof], source=prof, anchor="r1")  # the same variant again: replaced
    project_store(db, [prof], source=prof)  # and the unanchored one beside them
    with ResultStore(db, read_only=True) as store:
        table = store.table("projection")
    assert len(table) == 9 and table["anchored_to"].isna().sum() == 3


def test_measured_run_without_a_twin_uses_the_matmul_curves(tmp_path):
    db, prof = _store(tmp_path)
    from suite.store.results import ResultStore

    with ResultStore(db) as store:  # no analytic twin left for r1
        store.save_rows("runs", [], replace_where={"run_id": "a1"})
    rows = {r["run_id"]: r for r in project_store(db, [prof], source=prof)}
    assert rows["r1"]["compute_model"].startswith("matmul-curve ratio 1 at ")
    assert "GFLOP per GEMM (no analytic trace of this run)" in rows["r1"]["compute_model"]
    assert math.isnan(rows["r1"]["compute_bound_pct"]) and rows["r1"]["link_pct"] == 0


def test_dtype_true_projection_of_analytic_and_measured_runs(tmp_path):
    db, prof = _store(tmp_path)
    data = yaml.safe_load(Path(prof).read_text())
    data["opcurves"]["matmul"]["bf16"] = CURVES["matmul"]["bf16"]  # the target runs bf16 too
    bf16 = tmp_path / "tiny-bf16.yaml"
    bf16.write_text(yaml.safe_dump(data))
    rows = {r["run_id"]: r for r in project_store(db, [str(bf16)], source=prof, dtype="bf16")}
    assert rows["a2"]["latency_s"] == pytest.approx(2.52e-3)  # half the bytes, bf16 compute
    assert rows["a2"]["projected_dtype"] == "bf16"
    # the measured fp32 run: its 4.5 ms x (bf16 / fp32 time of its analytic twin) = 0.5
    assert rows["r1"]["latency_s"] == pytest.approx(2.25e-3)
    assert rows["r1"]["compute_model"] == "operator-model ratio 0.5 (analytic run a1)"


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        (["--dtype", "fp8"], "--dtype 'fp8': dtype 'fp8' is unknown; allowed: fp32, tf32"),
        (["--dtype", "bf16"], "--dtype 'bf16': profile tiny cannot run bf16; it runs: fp32"),
        (["--anchor", "-1"], "--anchor '-1': not a positive finite latency"),
        (["--anchor", "no such/run"], "--anchor 'no such/run': neither a number nor a run id"),
        (["--anchor", "nope"], "--anchor nope: no ok run with that id in the store"),
        (["--anchor", "a2"], "--anchor a2: run has world_size 2"),
        (["--anchor", "a1"], "--anchor a1: run has no measured latency (analytic world)"),
        (["--anchor", "1", "--hardware", "{p},8xA100-80GB-NVLink"], "give exactly one --hardware"),
    ],
)
def test_project_cli_refuses_bad_dtype_and_anchor(tmp_path, capsys, extra, expect):
    from suite.commands.cli import main

    db, prof = _store(tmp_path)
    argv = ["project", str(tmp_path), "--source", prof, "--out", str(tmp_path / "r")]
    extra = [x.replace("{p}", prof) for x in extra]
    if "--hardware" not in extra:
        argv += ["--hardware", prof]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err


def test_project_cli_anchors_and_labels_the_report(tmp_path, capsys):
    from suite.commands.cli import main

    db, prof = _store(tmp_path)
    out = tmp_path / "r"
    assert main(["project", str(tmp_path), "--hardware", prof, "--source", prof,
                 "--anchor", "0.006", "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "anchored to 0.006 s" in printed and "[operator model (analytic trace)]" in printed
    page = (out / "projection.md").read_text()
    assert "Anchored: `tiny` to 0.006 s (compute x 2)" in page
    assert "tiny, fp32, anchored" in page and "link_pct" in page


# -- the catalog and calibrated profiles ---------------------------------------------------------
def _points(node, path=""):
    """Every curve point (a mapping with a size key) in a curves YAML, with where it sits."""
    if isinstance(node, dict):
        if {"flops", "s_kv", "bytes"} & set(node):
            yield path, node
        else:
            for k, v in node.items():
                yield from _points(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _points(v, f"{path}[{i}]")


@pytest.mark.parametrize("name", sorted(devices()))
def test_catalog_curves_load_for_every_device_and_dtype(name):
    dev = devices()[name]
    prof = Profile(name, dev, 8, 1, Link("l", 1, 1), None)
    from analysis.hardware import device_curves

    prof = Profile(**{**prof.__dict__, "opcurves": device_curves(name)})
    assert prof.opcurves is not None, f"configs/hardware/opcurves/{name}.yaml is missing"
    assert prof.opcurves.launch_async and prof.opcurves.launch_s > 0
    for key in dev.tflops:  # every dtype the datasheet lists
        for cls in opmodel.COMPUTE_CLASSES:
            assert cls == "attention" or (cls, key) in prof.opcurves.compute, (cls, key)
            rate = opmodel.compute_rate(prof, cls, key, [1e6, 1e9, 1e12], [512, 4096, 16384], 128)
            # achieved never above the dense peak (fp32 conv runs on TF32 tensor cores)
            peak = dev.tflops["tf32" if (cls, key) == ("conv", "fp32") else key]
            assert np.all(rate > 0) and np.all(rate <= peak * 1e12), (cls, key)
    for cls in opmodel.MEMORY_CLASSES:
        bw = opmodel.memory_rate(prof, cls, [1e3, 1e6, 1e9])
        assert np.all(bw > 0) and np.all(bw <= dev.mem_bandwidth_gb_s * 1e9), cls


@pytest.mark.parametrize("path", sorted((HARDWARE_DIR / "opcurves").glob("*.yaml")), ids=str)
def test_every_curve_point_has_a_source_or_an_estimate(path):
    data = yaml.safe_load(path.read_text())
    points = list(_points(data))
    assert len(points) > 30
    for where, p in points:
        note = p.get("source") or p.get("estimate")
        assert isinstance(note, str) and len(note) > 20, f"{path.name}{where}: {p}"
        assert not ("source" in p and "estimate" in p), f"{path.name}{where}"
    launch_line = next(ln for ln in path.read_text().splitlines() if ln.strip().startswith("us:"))
    assert "ESTIMATE" in launch_line or "source" in launch_line.lower()


def test_a_calibrated_profile_carries_its_curves(tmp_path):
    from suite.commands.calibrate import ComputeRates, write_profile

    curves = {**CURVES, "measured": {"device": "cpu", "dtypes": ["fp32", "bf16"]}}
    rows = [{"op": "all_gather", "group_size": 2, "nbytes": n, "rank": 0, "time_s": 1e-4 + n / 1e9}
            for n in (1024, 1 << 20)]  # fmt: skip
    path = tmp_path / "cal.yaml"
    write_profile(path, "cal", rows, ComputeRates(0.09, 0.07, 0.065, "x", curves), 1, "cpu: t")
    prof = load_profile(path)
    assert opmodel.dtypes(prof) == ["fp32", "bf16"]
    assert prof.device.throughput("bf16") == 2.0  # the best bf16 GEMM of the curves
    assert prof.device.throughput("float32") == pytest.approx(0.065)  # the model step, as before
    assert opmodel.matmul_rate(prof, "fp32", 10**7.5) == pytest.approx(0.75e12)


def test_local_cpu_profile_prices_what_it_measured():
    prof = load_profile("local-cpu")
    if prof.opcurves is None:
        pytest.skip("local-cpu has no operator curves (calibrated before they existed)")
    assert "fp32" in opmodel.dtypes(prof)
    assert not prof.opcurves.launch_async  # a CPU pays the call overhead before each kernel
    assert isinstance(OpCurves, type)


def test_execution_modes_price_host_time_per_call():
    from analysis.execution import Execution

    # one segment: a 1 s GEMM then 1000 tiny copies (1 kB at 1 GB/s: 1 us each)
    curves = {**CURVES, "launch": {"us": 5.0, "async": True}}
    ops = _ops((0, "matmul", "float32", 1, 1e12, 1e3), (0, "memory", "float32", 1000, 0.0, 1e3))
    kernels = 1.0 + 1000 * 1e-6
    per_op = price(_profile(curves), ops)  # no execution mode: each call max(kernel, launch)
    assert per_op.time_s[0] == pytest.approx(1.0 + 1000 * 5e-6)
    # eager: the host issues 1001 calls at 5 + 995 us each (~1.0 s) while the GPU runs 1.001 s
    # of kernels: they queue, and the segment takes the longer of the two
    eager = _profile(curves, execution=Execution("eager", op_host_s=995e-6))
    assert price(eager, ops).time_s[0] == pytest.approx(max(kernels, 1001 * 1000e-6))
    slow_host = _profile(curves, execution=Execution("eager", op_host_s=1995e-6))
    assert price(slow_host, ops).time_s[0] == pytest.approx(1001 * 2000e-6)
    assert price(slow_host, ops).launch_s[0] == pytest.approx(1001 * 2000e-6 - kernels)
    # CUDA graphs: no host time, a 1 us gap after each kernel
    graphs = _profile(curves, execution=Execution("cuda_graphs", kernel_gap_s=1e-6))
    assert price(graphs, ops).time_s[0] == pytest.approx(kernels + 1001 * 1e-6)


def test_each_collective_call_costs_its_host_time_in_eager_mode():
    from analysis.projection import RankTrace, simulate

    ev = np.zeros(1, dtype=EVENT_DTYPE)
    ev["op"], ev["axis"], ev["group_size"], ev["peer"] = (
        OPS.index("all_reduce"),
        AXES.index("tensor"),
        2,
        -1,
    )
    ev["nbytes"], ev["t_issue"], ev["t_done"], ev["t_wait_start"], ev["t_wait_end"] = 8, 1, 1, 1, 1
    steps = np.array([(0, 0, 0.0, 2.0)], dtype=STEP_DTYPE)
    traces = [RankTrace(r, steps, ev) for r in (0, 1)]
    base = simulate(traces, {"tensor": 2}, lambda *a: 0.0, 1.0)
    eager = simulate(traces, {"tensor": 2}, lambda *a: 0.0, 1.0, call_host_s=1e-3)
    assert eager.latency_s - base.latency_s == pytest.approx(1e-3)
