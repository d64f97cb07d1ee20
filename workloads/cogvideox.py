"""CogVideoX's call convention: frames before channels, and 3-D rotary positions that the
pipeline (not the model) computes from the latent grid.

The rope table is what diffusers' CogVideoXPipeline._prepare_rotary_positional_embeddings builds
for CogVideoX 1.0 (no temporal patch): the token grid resized and centre-cropped onto the
model's base grid (sample_height x sample_width latent pixels / patch), one row per video token
in (frame, row, column) order, image tokens only (the text is not rotated).
"""

from __future__ import annotations

import functools

import torch
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from torch import Tensor

from .presets import Preset


def _crop_region(grid: tuple[int, int], base_w: int, base_h: int):
    """The pipeline's get_resize_crop_region_for_grid: the grid fitted into the base grid."""
    h, w = grid
    if h / w > base_h / base_w:
        resize_h, resize_w = base_h, int(round(base_h / h * w))
    else:
        resize_w, resize_h = base_w, int(round(base_w / w * h))
    top, left = int(round((base_h - resize_h) / 2.0)), int(round((base_w - resize_w) / 2.0))
    return (top, left), (top + resize_h, left + resize_w)


@functools.lru_cache(maxsize=16)
def rotary_table(
    preset: Preset, frames: int, rows: int, cols: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """(cos, sin), each (frames * rows * cols, head_dim), for a grid of video tokens."""
    c = preset.config
    p = c["patch_size"]
    if c.get("patch_size_t"):
        raise NotImplementedError("CogVideoX 1.5 (temporal patches) is not a preset here")
    base_w, base_h = c["sample_width"] // p, c["sample_height"] // p
    return get_3d_rotary_pos_embed(
        embed_dim=c["attention_head_dim"],
        crops_coords=_crop_region((rows, cols), base_w, base_h),
        grid_size=(rows, cols),
        temporal_size=frames,
        device=device,
    )


def cogvideox_kwargs(preset: Preset, x: Tensor, t: Tensor, cond: dict) -> dict:
    """Model kwargs for latent x (B, C, F, h, w): the model takes (B, F, C, h, w)."""
    p = preset.config["patch_size"]
    frames, h, w = x.shape[2:]
    rope = None
    if preset.config.get("use_rotary_positional_embeddings"):
        # cached per grid and device; computed outside the model, as the pipeline does
        rope = rotary_table(preset, frames, h // p, w // p, x.device)
    return dict(
        hidden_states=x.transpose(1, 2),
        encoder_hidden_states=cond["encoder_hidden_states"],
        timestep=t,
        image_rotary_emb=rope,
    )
