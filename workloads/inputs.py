"""Seeded model inputs: initial latents and the conditioning a text encoder would have produced.

There are no text encoders here: embeddings are seeded N(0, 1) tensors of the encoder's output
shape, which is what the denoiser's cost and communication depend on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .presets import Preset

# Conditioning that is the same for both CFG branches (sizes, guidance, the text mask), not drawn
# per prompt.
_SHARED_KEYS = ("time_ids", "resolution", "aspect_ratio", "guidance", "encoder_attention_mask")

_POOLED_KEY = {
    "unet": "text_embeds",
    "sd3": "pooled_projections",
    "flux": "pooled_projections",
    "hunyuanvideo": "pooled_projections",
}


@dataclass
class Inputs:
    """Initial noise and per-sample conditioning; every tensor has the batch dim first."""

    latents: torch.Tensor  # (B, C, h, w) or video (B, C, frames, h, w), N(0, 1), unscaled
    cond: dict[str, torch.Tensor]
    uncond: dict[str, torch.Tensor] | None = None  # None: no CFG branch runs

    @property
    def batch(self) -> int:
        """Images in the batch (B), before any CFG doubling."""
        return self.latents.shape[0]

    def shard(self, index: int, count: int) -> Inputs:
        """The index-th of count contiguous batch shards (for data parallelism)."""
        if count < 1 or self.batch % count:
            raise ValueError(f"shard count={count} must be >= 1 and divide the batch {self.batch}")
        if not 0 <= index < count:
            raise ValueError(f"shard index={index} must be in [0, {count})")
        size = self.batch // count
        part = slice(index * size, (index + 1) * size)

        def cut(d: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
            return None if d is None else {k: v[part] for k, v in d.items()}

        return Inputs(self.latents[part], cut(self.cond), cut(self.uncond))

    def model_cond(self) -> dict[str, torch.Tensor]:
        """Conditioning for one model call: unconditional rows first, then conditional."""
        if self.uncond is None:
            return dict(self.cond)
        return {k: torch.cat([self.uncond[k], self.cond[k]]) for k in self.cond}

    def to(self, device: str | torch.device, dtype: torch.dtype) -> Inputs:
        """Move to device; floating tensors cast to dtype, integer ones (labels) kept."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, dtype) if t.is_floating_point() else t.to(device)

        def move_all(d: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
            return None if d is None else {k: move(v) for k, v in d.items()}

        return Inputs(move(self.latents), move_all(self.cond), move_all(self.uncond))


def make_inputs(
    preset: Preset,
    height: int,
    width: int,
    batch: int,
    seed: int,
    guidance: float,
    frames: int = 0,
) -> Inputs:
    """Seeded float32 CPU inputs for `batch` images of height x width pixels (clips of `frames`
    frames for a video preset: latents (B, C, latent frames, h, w)).

    Drawn on CPU from one generator, so every rank of a world (any device) gets the same values.
    The unconditional branch (negative prompt) is present when the preset uses CFG and
    guidance > 1.
    """
    gen = torch.Generator("cpu").manual_seed(seed)
    h, w = height // preset.vae_scale_factor, width // preset.vae_scale_factor
    grid = (h, w)
    if preset.video:
        grid = ((frames - 1) // preset.temporal_compression + 1, h, w)
    latents = torch.randn(batch, preset.latent_channels, *grid, generator=gen)
    use_cfg = preset.cfg and guidance > 1.0
    cond = _conditioning(preset, height, width, batch, guidance, gen, null=False)
    uncond = (
        _conditioning(preset, height, width, batch, guidance, gen, null=True) if use_cfg else None
    )
    return Inputs(latents, cond, uncond)


def _conditioning(
    preset: Preset,
    height: int,
    width: int,
    batch: int,
    guidance: float,
    gen: torch.Generator,
    null: bool,
) -> dict[str, torch.Tensor]:
    cond: dict[str, torch.Tensor] = {}
    if preset.family in ("dit", "unet2d"):
        # the label embedding reserves index num_classes for the null (dropped) class
        n = preset.num_classes
        labels = torch.randint(0, n, (batch,), generator=gen)
        cond["class_labels"] = torch.full_like(labels, n) if null else labels
        return cond
    if preset.prompt_classes:
        n = preset.prompt_classes
        labels = torch.randint(0, n, (batch,), generator=gen)
        labels = torch.full_like(labels, n) if null else labels
        cond["encoder_hidden_states"] = class_prompts(preset)[labels]
        return cond
    cond["encoder_hidden_states"] = torch.randn(
        batch, preset.text_len, preset.text_dim, generator=gen
    )
    if preset.pooled_dim:
        cond[_POOLED_KEY[preset.family]] = torch.randn(batch, preset.pooled_dim, generator=gen)
    if preset.family == "unet":
        # SDXL micro-conditioning in pixels: original size, crop top-left, target size
        cond["time_ids"] = torch.tensor([[height, width, 0, 0, height, width]]).float()
    elif preset.family == "pixart":
        cond["resolution"] = torch.tensor([[height, width]]).float()
        cond["aspect_ratio"] = torch.tensor([[height / width]]).float()
    elif preset.family == "flux" and preset.config.get("guidance_embeds", False):
        # guidance-distilled (dev): the scale is a model input; schnell has no such embedding
        cond["guidance"] = torch.tensor([guidance]).float()
    elif preset.family == "hunyuanvideo":
        cond["guidance"] = torch.tensor([guidance]).float()  # guidance-distilled, as flux-dev
        # prompts fill the text length: no padding, so joint attention needs no mask
        cond["encoder_attention_mask"] = torch.ones(1, preset.text_len)
    for key in _SHARED_KEYS:
        if key in cond:
            cond[key] = cond[key].expand(batch, *cond[key].shape[1:]).clone()
    return cond


_PROMPT_SEED = 0xC1A55  # the prompt table is part of the model: never change it after training


def class_prompts(preset: Preset) -> torch.Tensor:
    """(classes + 1, text_len, text_dim) float32 prompt embeddings of a class-labelled text
    model (Preset.prompt_classes): row c stands for the prompt of class c, the last row for the
    empty (negative) prompt. Fixed N(0, 1) draws, the same in training and in every run, as a
    frozen text encoder's outputs would be."""
    gen = torch.Generator("cpu").manual_seed(_PROMPT_SEED)
    shape = (preset.prompt_classes + 1, preset.text_len, preset.text_dim)
    return torch.randn(shape, generator=gen)
