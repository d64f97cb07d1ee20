"""Output-preserving strategies: validation before any process starts, composition, plans."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from suite import parallel
from suite.config.experiment import ConfigError, parse_config
from suite.parallel import Parallelized, Strategy
from suite.parallel.plans import PLANS, find


def _parse(strategy: str, workload: str, degrees: dict, px=256, **settings):
    raw = {
        "experiment": "v",
        "workloads": [workload],
        "resolutions": [px],
        "settings": {"steps": 2, **settings},
        "strategies": [{"name": strategy, "degrees": degrees}],
    }
    return parse_config(raw)


@pytest.mark.parametrize(
    "strategy, workload, degrees, px, settings, message",
    [
        ("ulysses", "tiny-pixart-alpha", {"ulysses": 3}, 256, {},
         r"ulysses degree 3 does not divide the 4 attention heads of tiny-pixart-alpha; "
         r"allowed ulysses degrees: 1, 2, 4"),
        ("ulysses", "tiny-dit-xl-2", {"ulysses": 8}, 256, {}, r"ulysses degree 8 does not divide"),
        ("ring", "tiny-pixart-alpha", {"ring": 2}, 272, {},
         r"17x17 = 289 image tokens at 272x272 px do not split into ring x ulysses = 2"),
        ("usp", "tiny-sd3-medium", {"ring": 2, "ulysses": 8}, 256, {},
         r"ulysses degree 8 does not divide the 4 attention heads"),
        ("tensor", "tiny-flux-dev", {"tensor": 8}, 256, {},
         r"tensor degree 8 does not divide the attention head count\(s\) \[4\] of "
         r"tiny-flux-dev; .*allowed tensor degrees: 1, 2, 4$"),
        ("tensor", "tiny-pixart-alpha", {"tensor": 3}, 256, {},
         r"tensor degree 3 does not divide the attention head count\(s\) \[4\]"),
        # UNets split unevenly, but every rank needs a head of each layer and a GroupNorm group
        ("tensor", "tiny-sdxl", {"tensor": 5}, 256, {},
         r"tensor degree 5 exceeds what tiny-sdxl can split: every rank needs at least one head "
         r"of each attention layer \(head counts \[4\]\) and one of the 8 GroupNorm groups .*"
         r"allowed tensor degrees: 1 to 4$"),
        # SDXL attends at 10 and 20 heads (its first level, 5 heads, has no attention)
        ("tensor", "sdxl", {"tensor": 16}, 1024, {},
         r"tensor degree 16 exceeds what sdxl can split: .*\(head counts \[10, 20\]\) and one "
         r"of the 32 GroupNorm groups .*allowed tensor degrees: 1 to 10$"),
        ("cfg", "tiny-flux-dev", {"cfg": 2}, 256, {},
         r"tiny-flux-dev runs no unconditional branch \(preset cfg=False"),
        ("cfg", "tiny-pixart-alpha", {"cfg": 2}, 256, {"guidance": 1.0},
         r"guidance 1.0 runs no unconditional branch; cfg parallelism needs guidance > 1"),
        ("cfg", "tiny-dit-xl-2", {"cfg": 4}, 256, {}, r"cfg degree 4; it must be 2"),
        ("cfg+ulysses", "tiny-flux-dev", {"cfg": 2, "ulysses": 2}, 256, {},
         r"tiny-flux-dev runs no unconditional branch"),
        ("cfg+ulysses", "tiny-pixart-alpha", {"cfg": 2, "ulysses": 8}, 256, {},
         r"ulysses degree 8 does not divide"),
        ("ulysses", "tiny-sdxl", {"ulysses": 2}, 256, {},
         r"strategy 'ulysses' does not support workload 'tiny-sdxl' \(family unet\)"),
        ("cfg+ulysses", "tiny-pixart-alpha", {"tensor": 2}, 256, {},
         r"axis \['tensor'\] is not used by strategy 'cfg\+ulysses'"),
        ("diffusers_cp", "tiny-flux-dev", {"ulysses": 16}, 256, {},
         r"8 text tokens do not split into ring x ulysses = 16 equal parts"),
    ],
)  # fmt: skip
def test_impossible_degrees_are_rejected_before_start(
    strategy, workload, degrees, px, settings, message
):
    with pytest.raises(ConfigError, match=message):
        _parse(strategy, workload, degrees, px, **settings)


@pytest.mark.parametrize(
    "workload, degree",
    [
        # DistriFusion's TP baseline: 2, 4, 8 devices. The levels that attend have 10 and 20
        # heads (the 5 of the first level never attend): 4 and 8 split them unevenly
        ("sdxl", 2), ("sdxl", 4), ("sdxl", 8),
        ("small-sdxl", 3), ("small-sdxl", 8),  # 8 heads, 32 groups
        ("tiny-sdxl", 3), ("tiny-sdxl", 4),  # 4 heads, 8 groups
    ],
)  # fmt: skip
def test_unet_tensor_degrees_up_to_the_smallest_head_count_are_accepted(workload, degree):
    (spec,) = _parse("tensor", workload, {"tensor": degree}, 1024).runs
    assert dict(spec.degrees) == {"tensor": degree}


def test_degrees_must_multiply_to_the_world_size():
    raw = {
        "experiment": "v",
        "workloads": ["tiny-pixart-alpha"],
        "resolutions": [256],
        "strategies": [
            {"name": "cfg+ulysses", "degrees": {"cfg": 2, "ulysses": 2}, "world_sizes": [2]}
        ],
    }
    with pytest.raises(ConfigError, match=r"product 4 but world_sizes is \[2\]"):
        parse_config(raw)


def test_valid_hybrids_parse_with_a_canonical_name():
    (spec,) = _parse("ulysses+cfg", "tiny-sd3-medium", {"cfg": 2, "ulysses": 2}).runs
    assert spec.strategy == "cfg+ulysses" and spec.world_size == 4
    (spec,) = _parse("ulysses+ring", "tiny-flux-dev", {"ring": 2, "ulysses": 2}).runs
    assert spec.strategy == "ring+ulysses"
    (spec,) = _parse("cfg+tensor", "tiny-sdxl", {"cfg": 2, "tensor": 2}).runs
    assert dict(spec.degrees) == {"cfg": 2, "tensor": 2}


@pytest.mark.parametrize(
    "name, message",
    [
        ("cfg+nope", r"unknown strategy 'nope'"),
        ("none+cfg", r"\['none'\] run\(s\) on one device and cannot be composed"),
        ("cfg+cfg", r"names a part twice"),
        ("data+data", r"names a part twice"),
    ],
)
def test_bad_hybrid_names(name, message):
    with pytest.raises(ValueError, match=message):
        parallel.get(name)


def test_hybrid_is_the_union_and_intersection_of_its_parts():
    s = parallel.get("tensor+cfg")
    assert s.name == "cfg+tensor" and s.axes == ("cfg", "tensor")
    assert s.families == parallel.get("cfg").families & parallel.get("tensor").families
    sequence = {"pixart", "dit", "sd3", "flux", "wan", "hunyuanvideo", "cogvideox"}
    assert parallel.get("cfg+ulysses").families == frozenset(sequence)


def test_composition_order_inputs_denoisers_and_gathers():
    """Outer parts first: each sees the inputs the outer ones left; denoisers nest outer around
    inner; gathers run innermost first."""
    calls = []

    def part(name, axis):
        def apply(workload, comm, options):
            calls.append((name, workload.inputs))
            inner = workload.denoiser

            def denoiser(x, t, c):
                return f"{name}({inner(x, t, c)})"

            return Parallelized(
                denoiser=denoiser,
                inputs=workload.inputs + [name],
                gather=lambda lat: f"{name}<{lat}>",
            )

        return Strategy(name, (axis,), frozenset({"dit"}), True, name, apply)

    @dataclasses.dataclass
    class Workload:
        denoiser: object
        inputs: list

    wl = Workload(denoiser=lambda x, t, c: "model", inputs=[])
    outer, inner = part("outer", "cfg"), part("inner", "tensor")
    par = parallel._apply_composed([outer, inner], wl, None, {})
    assert calls == [("outer", []), ("inner", ["outer"])]
    assert par.inputs == ["outer", "inner"]
    assert par.denoiser(None, None, None) == "outer(inner(model))"
    assert par.gather("z") == "outer<inner<z>>"


@pytest.mark.parametrize("family", sorted(PLANS))
def test_every_plan_pattern_names_modules_of_its_model(family):
    """A typo in a plan would silently leave modules unsplit: every pattern must match."""
    from workloads.models import random_model
    from workloads.presets import get_preset

    name = {"unet": "tiny-sdxl", "pixart": "tiny-pixart-alpha", "dit": "tiny-dit-xl-2",
            "sd3": "tiny-sd3-medium", "flux": "tiny-flux-dev", "wan": "tiny-wan2.1-t2v-1.3b",
            "hunyuanvideo": "tiny-hunyuanvideo", "cogvideox": "tiny-cogvideox-5b"}[family]  # fmt: skip
    model = random_model(get_preset(name), 0, device="meta")
    plan = PLANS[family]
    patterns = [a.pattern for a in plan.attention] + list(plan.column) + list(plan.row)
    patterns += [p for p, _ in plan.packed_column] + [p.pattern for p in plan.packed_row]
    patterns += list(plan.resnets)
    patterns += [p for p in (plan.split_after, plan.gather_after, plan.split_before) if p]
    patterns += list(plan.split_outputs)
    for pattern in patterns:
        assert find(model, pattern), f"{family}: {pattern} matches nothing"
    if family == "unet":
        # 11 transformer layers x (attn1, attn2), 11 ResNet blocks (tiny-sdxl, see test_exact)
        assert sum(len(find(model, a.pattern)) for a in plan.attention) == 22
        assert sum(len(find(model, p)) for p in plan.resnets) == 11


def test_plan_patterns_match_one_path_segment_per_star():
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList([torch.nn.Module()])
    model.blocks[0].attn = torch.nn.Linear(1, 1)
    model.single_blocks = torch.nn.ModuleList([torch.nn.Linear(1, 1)])
    assert [p for p, _ in find(model, "blocks.*.attn")] == ["blocks.0.attn"]
    assert [p for p, _ in find(model, "blocks.*")] == ["blocks.0"]
