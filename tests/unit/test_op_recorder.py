"""The analytic world's operator recorder (suite.measure.op_recorder) on small modules, exact numbers; the
analytic settings' validation; replication's check of a tail step."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from suite.config.experiment import ConfigError, parse_config
from suite.distributed.comm import EVENT_DTYPE
from suite.measure.op_recorder import OpRecorder
from suite.measure.optrace import EMPTY, OP_CLASSES, OP_DTYPE, TRACE_DTYPES
from suite.worlds.replicate import expand
from suite.worlds.runner import STEP_DTYPE

META = torch.device("meta")


def _rows(recorder: OpRecorder, sig: int) -> dict[str, list[tuple]]:
    """Per class: (count, flops, bytes, d0, d1, d2, d3, dtype) of one signature's rows."""
    out: dict[str, list[tuple]] = {}
    for r in recorder.ops()[recorder.ops()["sig"] == sig]:
        out.setdefault(OP_CLASSES[r["cls"]], []).append(
            (
                int(r["count"]),
                float(r["flops"]),
                float(r["bytes"]),
                *(int(r[f"d{i}"]) for i in range(4)),
                TRACE_DTYPES[r["dtype"]],
            )
        )
    return out


def _small_model_step(recorder: OpRecorder) -> int:
    lin = nn.Linear(8, 16, device=META)
    conv = nn.Conv2d(4, 6, 3, padding=1, device=META)
    norm = nn.GroupNorm(2, 4, device=META)
    x = torch.empty(2, 5, 8, device=META)
    img = torch.empty(2, 4, 10, 12, device=META)
    q = torch.empty(2, 3, 7, 4, device=META)
    k = torch.empty(2, 3, 9, 4, device=META)
    v = torch.empty(2, 3, 9, 5, device=META)
    recorder.start_rank()
    with recorder.recording():
        assert lin(x).shape == (2, 5, 16)
        assert conv(img).shape == (2, 6, 10, 12)
        assert norm(img).shape == img.shape
        assert F.scaled_dot_product_attention(q, k, v).shape == (2, 3, 7, 5)
        assert torch.cat([x, x], dim=1).shape == (2, 10, 8)
        x.view(10, 8).transpose(0, 1).unsqueeze(0)  # views: not operators
        torch.zeros(3, device=META)  # an allocation: not an operator
        return int(recorder.boundary())


@pytest.mark.parametrize("grad_mode", [torch.inference_mode, torch.no_grad])
def test_recorder_classifies_each_operator_with_exact_flops_bytes_and_dims(grad_mode):
    recorder = OpRecorder()
    with grad_mode():
        assert _small_model_step(recorder) == 1  # the boundary after segment 0
    (sig,) = recorder.segments
    f32 = 4  # bytes per element
    assert _rows(recorder, sig) == {
        # Linear: addmm(bias, x (10, 8), W^T (8, 16)): (batch, M, N, K), 2 FLOPs per MAC,
        # bytes of bias + x + W + out
        "matmul": [(1, 2 * 10 * 16 * 8, (16 + 80 + 128 + 160) * f32, 1, 10, 16, 8, "float32")],
        # Conv2d 4 -> 6, 3x3 on 2 x 10 x 12: implicit GEMM (groups, batch*H*W, C_out, C_in*k*k)
        "conv": [(1, 2 * 240 * 6 * 36, (960 + 216 + 6 + 1440) * f32, 1, 240, 6, 36, "float32")],
        # one fused attention: (batch*heads, S_q, S_kv, D), 2*BH*S_q*S_kv*(D + D_v) FLOPs,
        # no decomposition into bmm / softmax
        "attention": [
            (1, 2 * 6 * 7 * 9 * (4 + 5), (168 + 216 + 270 + 210) * f32, 6, 7, 9, 4, "float32")
        ],
        # GroupNorm(2 groups, 4 channels): numel and the normalized size (C/G * H * W); bytes
        # of input, weight, bias, output and the (N, G) mean and rstd
        "norm": [(1, 0.0, (960 + 4 + 4 + 960 + 4 + 4) * f32, 960, 240, 0, 0, "float32")],
        # cat: the output's elements, bytes of both inputs and the output
        "memory": [(1, 0.0, (80 + 80 + 160) * f32, 160, 0, 0, 0, "float32")],
    }


def test_identical_segments_share_a_signature_and_empty_ones_are_marked():
    recorder = OpRecorder()
    a = torch.empty(4, 4, device=META)
    recorder.start_rank()
    with torch.inference_mode(), recorder.recording():
        for _ in range(2):
            a @ a
            assert recorder.boundary() > 0
        assert recorder.boundary() == 3.0  # nothing ran in segment 2
        (a + a).sum()
        recorder.boundary()
    assert recorder.segments[:3] == [0, 0, EMPTY] and recorder.segments[3] == 1
    ops = recorder.ops()
    assert ops.dtype == OP_DTYPE and set(ops["sig"].tolist()) == {0, 1}
    assert sorted(OP_CLASSES[c] for c in ops[ops["sig"] == 1]["cls"]) == [
        "elementwise",
        "elementwise",
    ]


def test_memoized_ops_return_the_meta_kernels_shapes_strides_and_dtypes():
    recorder = OpRecorder()
    x = torch.empty(3, 5, device=META, dtype=torch.bfloat16).t()  # a transposed layout
    expected = [x * 2, x.to(torch.float32), torch.softmax(x, -1)]
    with torch.inference_mode(), recorder.recording():
        for _ in range(2):  # the second time from the memo
            got = [x * 2, x.to(torch.float32), torch.softmax(x, -1)]
            for g, e in zip(got, expected, strict=True):
                assert (g.shape, g.stride(), g.dtype, g.device) == (
                    e.shape,
                    e.stride(),
                    e.dtype,
                    e.device,
                )
    ints = torch.empty(4, dtype=torch.int64, device=META)
    with torch.inference_mode(), recorder.recording():
        assert (ints + 1).dtype == torch.int64 and (ints + 1.0).dtype == torch.float32


def test_host_tensors_are_not_device_operators():
    recorder = OpRecorder()
    with torch.inference_mode(), recorder.recording():
        torch.tensor([1.0, 2.0]) * 3  # a solver's scalars on the CPU
        recorder.boundary()
    assert recorder.segments == [EMPTY]


# -- settings ----------------------------------------------------------------------------------


def _config(strategy: str, **settings) -> dict:
    return {
        "experiment": "t",
        "workloads": ["tiny-pixart-alpha"],
        "resolutions": [256],
        "settings": {"world_mode": "analytic", **settings},
        "strategies": [{"name": strategy, "world_sizes": [64]}],
    }


def test_analytic_runs_take_any_world_dtype_and_device_and_time_nothing():
    (spec,) = parse_config(
        _config("ring", dtype="bfloat16", device="cuda", warmup_runs=3, repeats=5)
    ).runs
    assert (spec.world_size, spec.dtype, spec.world_mode) == (64, "bfloat16", "analytic")
    assert (spec.warmup_runs, spec.repeats) == (0, 1)  # one untimed loop, whatever was set
    assert spec.label().endswith("(analytic world)")
    from suite.commands.sweep import _world_key
    from suite.config.memory import check_runs

    assert check_runs([spec]) == []  # on meta: nothing to fit
    assert _world_key(spec) == (1, "cpu", 1, True)  # the fake worlds' emulating process


@pytest.mark.parametrize("strategy", ["diffusers_cp", "diffusers_tp", "data+diffusers_cp"])
def test_library_collectives_are_refused_in_an_analytic_world(strategy):
    raw = _config(strategy)
    if "+" in strategy:
        raw["strategies"][0] = {"name": strategy, "degrees": {"data": 2, "ulysses": 2}}
    else:
        raw["strategies"][0]["world_sizes"] = [2]
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    (problem,) = e.value.problems
    assert "settings.world_mode" in problem and "library's own collectives" in problem


# -- replication's check -----------------------------------------------------------------------


def test_expand_refuses_a_tail_step_that_differs_from_the_template():
    # steps of 2 boundaries (the step, then the gap); step 1 the template, steps 2..5 skipped,
    # resumed at 6: its segment (signature 7) differs from the template's (signature 3)
    marks = [(0, 1, 2), (1, 3, 4), (6, 5, 6), (7, 7, 8)]
    steps = np.array([(0, *m) for m in marks], dtype=STEP_DTYPE)
    segments = np.array([EMPTY, 3, EMPTY, 3, EMPTY, 7, EMPTY, 3], dtype=np.int32)
    events = np.zeros(0, dtype=EVENT_DTYPE)
    rep = types.SimpleNamespace(template=1, first=2, resume=6, period=2, skipped=4)
    assert expand(rep, events, steps, segments) is None
    segments[5] = 3  # the same as the template: the full trace of 8 steps
    full_events, full_steps, full_segments = expand(rep, events, steps, segments)
    assert full_steps["step"].tolist() == list(range(8))
    assert full_steps["t_start"].tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    assert full_segments.tolist() == [EMPTY] + [3, EMPTY] * 7 + [3]


def test_gelu_family_activations_are_recorded_with_their_kind():
    recorder = OpRecorder()
    x = torch.empty(4, 8, device=META)
    recorder.start_rank()
    with torch.inference_mode(), recorder.recording():
        F.gelu(x, approximate="tanh")
        F.silu(x)
        recorder.boundary()
    ops = recorder.ops()
    act = ops[ops["cls"] == OP_CLASSES.index("activation")]
    # numel in d0; d1 = 1 for the GELU family (its own curve on a CPU), 0 for SiLU
    assert sorted(zip(act["d0"].tolist(), act["d1"].tolist(), strict=True)) == [(32, 0), (32, 1)]
