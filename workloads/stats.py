"""Parameter and FLOP counts of a preset, computed on the meta device (no memory, no compute)."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .build import check_resolution
from .denoiser import Denoiser
from .inputs import make_inputs
from .models import random_model
from .presets import PRESETS, get_preset

aten = torch.ops.aten


def _sdpa_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    """Q @ K^T plus P @ V, 2 FLOPs per multiply-add (softmax not counted, as for other ops)."""
    b, h, s_q, d = q_shape
    s_k, d_v = k_shape[-2], v_shape[-1]
    return 2 * b * h * s_q * s_k * (d + d_v)


def flop_counter() -> FlopCounterMode:
    """A FlopCounterMode that also counts CPU attention.

    torch counts the CUDA SDPA kernels and, on meta, the math decomposition (two bmm); the CPU
    flash kernel has no formula and would count as 0 FLOPs.
    """
    return FlopCounterMode(
        display=False,
        custom_mapping={aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops},
    )


@dataclass(frozen=True)
class ModelStats:
    """Size and cost of one denoiser forward at batch 1 (no CFG doubling)."""

    params: int
    param_bytes: int  # at the given dtype
    flops_per_forward: float  # FLOP (2 per multiply-add)


def model_stats(
    preset: str, height: int, width: int, dtype: torch.dtype = torch.float32
) -> ModelStats:
    """Parameters and forward FLOPs of `preset` at height x width pixels, counted on meta."""
    params, flops = _meta_counts(preset, int(height), int(width))
    return ModelStats(params, params * dtype.itemsize, flops)


# FLOPs do not depend on dtype, so one cached meta forward serves every dtype.
@functools.lru_cache(maxsize=256)
def _meta_counts(preset: str, height: int, width: int) -> tuple[int, float]:
    p = get_preset(preset)
    check_resolution(p, height, width)
    model = random_model(p, seed=0, device="meta")
    params = sum(t.numel() for t in model.parameters())
    inputs = make_inputs(p, height, width, 1, 0, p.default_guidance).to("meta", torch.float32)
    timestep = torch.tensor(500.0, device="meta")
    with torch.no_grad(), flop_counter() as counter:
        Denoiser(model, p)(inputs.latents, timestep, inputs.cond)
    return params, float(counter.get_total_flops())


def describe_presets(
    height: int | None = None, width: int | None = None, names: Iterable[str] | None = None
) -> list[dict]:
    """One row per preset (all, or those in `names`); GFLOP per denoising step at height x width
    pixels (each preset's native resolution when None), doubled where CFG runs a second branch."""
    rows = []
    for p in PRESETS.values() if names is None else map(get_preset, names):
        h = height or width or p.native_resolution
        w = width or height or p.native_resolution
        stats = model_stats(p.name, h, w)
        rows.append(
            {
                "name": p.name,
                "family": p.family,
                "model_class": p.model_class,
                "params_M": stats.params / 1e6,
                "gflops_per_step": stats.flops_per_forward * (2 if p.cfg else 1) / 1e9,
                "height": h,
                "width": w,
                "native_resolution": p.native_resolution,
                "scheduler": p.default_scheduler,
                "steps": p.default_steps,
                "guidance": p.default_guidance,
                "cfg": p.cfg,
                "description": p.description,
            }
        )
    return rows
