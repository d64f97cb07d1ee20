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
from .video_size import check_video_size, latent_frames, temporal_patch, tokens_per_frame

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
    preset: str,
    height: int,
    width: int,
    dtype: torch.dtype = torch.float32,
    frames: int | None = None,
) -> ModelStats:
    """Parameters and forward FLOPs of `preset` at height x width pixels (video: clips of
    `frames` frames, None: the preset's default), counted on meta."""
    p = get_preset(preset)
    frames = (p.native_frames if frames is None else int(frames)) if p.video else 0
    params, flops = _meta_counts(preset, int(height), int(width), frames)
    return ModelStats(params, params * dtype.itemsize, flops)


# FLOPs do not depend on dtype, so one cached meta forward serves every dtype.
@functools.lru_cache(maxsize=256)
def _meta_counts(preset: str, height: int, width: int, frames: int = 0) -> tuple[int, float]:
    p = get_preset(preset)
    if p.video:
        check_video_size(p, frames, height, width)
    else:
        check_resolution(p, height, width)
    model = random_model(p, seed=0, device="meta")
    params = sum(t.numel() for t in model.parameters())
    inputs = make_inputs(p, height, width, 1, 0, p.default_guidance, frames)
    inputs = inputs.to("meta", torch.float32)
    timestep = torch.tensor(500.0, device="meta")
    with torch.no_grad(), flop_counter() as counter:
        Denoiser(model, p)(inputs.latents, timestep, inputs.cond)
    return params, float(counter.get_total_flops())


def describe_presets(
    height: int | None = None,
    width: int | None = None,
    names: Iterable[str] | None = None,
    frames: int | None = None,
) -> list[dict]:
    """One row per preset (all, or those in `names`); GFLOP per denoising step at height x width
    pixels (each preset's native size when None; video presets: clips of `frames` frames),
    doubled where CFG runs a second branch. Video rows give the tokens per latent frame and the
    latent frames (their product is the video sequence); image rows leave them None."""
    rows = []
    for p in PRESETS.values() if names is None else map(get_preset, names):
        if p.video:
            h = height or p.native_resolution
            w = width or p.native_width
            f = frames or p.native_frames
        else:
            h = height or width or p.native_resolution
            w = width or height or p.native_resolution
            f = None
        stats = model_stats(p.name, h, w, frames=f)
        rows.append(
            {
                "name": p.name,
                "family": p.family,
                "model_class": p.model_class,
                "params_M": stats.params / 1e6,
                "gflops_per_step": stats.flops_per_forward * (2 if p.cfg else 1) / 1e9,
                "frames": f,
                "height": h,
                "width": w,
                "latent_frames": latent_frames(p, f) // temporal_patch(p) if f else None,
                "tokens_per_frame": tokens_per_frame(p, h, w) if f else None,
                "native_resolution": p.native_resolution,
                "scheduler": p.default_scheduler,
                "steps": p.default_steps,
                "guidance": p.default_guidance,
                "cfg": p.cfg,
                "description": p.description,
            }
        )
    return rows
