"""Analytic worlds on the tiny video presets (Wan 2.1 1.3B / 14B, HunyuanVideo, CogVideoX): every
rank's collectives equal a fake world's one for one (and a real gloo world's for Wan), and the
FLOPs per step of `none` equal `diffscale workloads`' count for the clip.

Clips of 9x64x64 px (3 latent frames of 4x4 patches: 48 video tokens), 2 steps, batch 1, as
tests/dist/test_video_exact.py. Cases, checks and fixtures follow tests/dist/test_analytic.py.
"""

from __future__ import annotations

import pytest

from suite.config.experiment import parse_config
from suite.worlds.rank_worker import emulate
from tests.dist.test_analytic import _collectives, _per_step_flops

SIZE = "9x64x64"
PRESETS = ["tiny-wan2.1-t2v-1.3b", "tiny-wan2.1-t2v-14b", "tiny-hunyuanvideo", "tiny-cogvideox-5b"]
# HunyuanVideo's sequence plans check that its text mask is all ones, a data read that an
# analytic world (meta tensors) skips: its cases run like the others
CASES = [
    pytest.param((strategy, {strategy: 2}, preset), id=f"{strategy}-{preset}")
    for preset in PRESETS
    for strategy in ("ulysses", "ring", "tensor")
]


def _spec(strategy, degrees, workload, world_mode, steps=2):
    entry = {"name": strategy}
    if degrees:
        entry["degrees"] = degrees
    raw = {
        "experiment": "t",
        "workloads": [workload],
        "resolutions": [SIZE],
        "settings": {
            "steps": steps,
            "batch": 1,
            "repeats": 1,
            "warmup_runs": 0,
            "world_mode": world_mode,
        },
        "strategies": [entry],
    }
    (spec,) = parse_config(raw).runs
    return spec


@pytest.mark.parametrize("case", CASES)
def test_analytic_video_collectives_match_a_fake_world(fake_world, case):
    analytic = emulate(_spec(*case, "analytic"), None)
    expected = _collectives(analytic)
    assert all(expected), "a rank logs no collective: the case checks nothing"
    assert _collectives(fake_world.run(_spec(*case, "fake"))) == expected
    assert [r.rank for r in analytic] == [0, 1]


def test_analytic_video_collectives_match_a_real_world(world2):
    # one real gloo world for the Wan plan (split at blocks.0 with its rope table)
    case = ("ulysses", {"ulysses": 2}, "tiny-wan2.1-t2v-1.3b")
    expected = _collectives(emulate(_spec(*case, "analytic"), None))
    assert _collectives(world2.run(_spec(*case, "real"))) == expected


@pytest.mark.parametrize("workload", PRESETS)
def test_video_flops_per_step_equal_the_workloads_count(workload):
    import workloads

    (result,) = emulate(_spec("none", {}, workload, "analytic"), None)
    frames, h, w = map(int, SIZE.split("x"))
    (row,) = workloads.describe_presets(h, w, [workload], frames)
    # the same formulas (torch.utils.flop_counter's) over the same operators: equal to rounding
    assert _per_step_flops(result, 1) == pytest.approx(row["gflops_per_step"] * 1e9, rel=1e-12)
    assert result.events.size == 0  # one device: no collective
