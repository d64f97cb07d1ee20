"""Patch parallelism: `naive_patch` and `distrifusion` (Li et al., CVPR 2024).

Both split the latent into N bands, one per rank of the 'patch' axis; every rank holds the whole
model and, after `apply`, the denoiser still takes the full latent and returns the full
prediction (each rank computes its band, then one all-gather per step, counted).

naive_patch: each band is denoised on its own, no exchange (the paper's "Naive Patch": fast,
with seams). UNet: the model runs on the band as an image of its own. Token models (DiT family):
tokens are cut after the patch embedding (true positions) and attention sees the band's tokens
only. `split`: row bands, column bands, or alternating per step (the paper's choice).

distrifusion (displaced patch parallelism): row bands; steps 0..warmup_steps synchronous (the
reference code's counting: the first step plus `warmup_steps`), then every layer works with its
neighbours' activations from the previous step while this step's are gathered asynchronously
(suite.parallel.patch_state). UNet: halo rows for convs with kernel > 1, full-image K/V for
self-attention, GroupNorm statistics per `gn_mode`; token models: K/V only, no halo.
`full_sync` makes every exchange blocking and fresh ("Sync. PP"): the single-device output.
For the CFG batch split, compose with `cfg` on an outer axis: this strategy uses only 'patch'
and works for any batch.

Video DiTs (Wan, HunyuanVideo, CogVideoX): bands of the video token sequence along latent
frames or token rows (`split: frames | height`), see patch_video.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from suite.parallel import Parallelized
from suite.parallel.checks import UNET_FAMILIES, token_patch
from suite.parallel.patch_flux import FluxPatchProcessor
from suite.parallel.patch_modules import (
    HaloConv,
    InputConv,
    LoopCached,
    PatchGroupNorm,
    RopeBand,
    RowGather,
    TokenBand,
    TokenGather,
    exchange_self_attention,
)
from suite.parallel.patch_state import PatchState
from suite.parallel.patch_video import apply_video_patch

# -- per-family plans (data; to move into suite/parallel/plans.py) -------------------------


@dataclass(frozen=True)
class PatchPlan:
    """Where a family's diffusers model is cut into bands (module names inside the model)."""

    embed: str  # UNet: input conv, fed the full latent; token models: the patch embedding
    head: str  # output module whose band output is gathered (UNet: height; tokens: sequence)
    # attention modules over image tokens, by last name component or by the name of the
    # container holding them (UNet2DModel's `attentions.0` has no name of its own)
    self_attn: tuple[str, ...]
    cross_attn: tuple[str, ...] = ()  # attention to the prompt only: K/V cached per loop
    embed_input: bool = False  # cut the embedding's input tokens (a per-token linear)
    rope: str | None = None  # rotary embedding fed [text ids; image ids] (Flux)
    flux_attention: bool = False  # joint attention through FluxPatchProcessor


PLANS: dict[str, PatchPlan] = {
    "unet": PatchPlan("conv_in", "conv_out", ("attn1",), ("attn2",)),
    # class-conditional UNet2DModel: self-attention on the feature map, no text
    "unet2d": PatchPlan("conv_in", "conv_out", ("attentions",)),
    "pixart": PatchPlan("pos_embed", "proj_out", ("attn1",), ("attn2",)),
    "dit": PatchPlan("pos_embed", "proj_out_2", ("attn1",)),
    # joint attention: text K/V come from add_k_proj / add_v_proj, replicated on every rank
    "sd3": PatchPlan("pos_embed", "proj_out", ("attn",)),
    "flux": PatchPlan(
        "x_embedder", "proj_out", ("attn",), embed_input=True, rope="pos_embed", flux_attention=True
    ),
}


# -- the denoiser ------------------------------------------------------------------------------


class PatchDenoiser(nn.Module):
    """The workload's denoiser with the model's modules wrapped; tells the state the grid."""

    def __init__(self, denoiser: nn.Module, state: PatchState, patch: int) -> None:
        super().__init__()
        self.denoiser, self.state, self.patch = denoiser, state, patch

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, cond: dict) -> torch.Tensor:
        self.state.grid = (sample.shape[2] // self.patch, sample.shape[3] // self.patch)
        return self.denoiser(sample, timestep, cond)


class NaiveUNetDenoiser(PatchDenoiser):
    """naive_patch on a UNet: the model denoises this rank's band as if it were the image."""

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, cond: dict) -> torch.Tensor:
        s = self.state
        s.grid = sample.shape[2:]
        dim = 2 if s.band().axis == "row" else 3
        size = sample.shape[dim] // s.n
        out = self.denoiser(sample.narrow(dim, s.rank * size, size), timestep, cond)
        return s.gather_output(out, dim)


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _wrap_tokens(model: nn.Module, plan: PatchPlan, state: PatchState) -> None:
    """Cut a token model into bands after its embedding and gather before its output."""
    _replace(model, plan.embed, TokenBand(model.get_submodule(plan.embed), state, plan.embed_input))
    _replace(model, plan.head, TokenGather(model.get_submodule(plan.head), state))
    if plan.rope is not None:
        _replace(model, plan.rope, RopeBand(model.get_submodule(plan.rope), state))


def _wrap_distrifusion(model: nn.Module, plan: PatchPlan, state: PatchState, gn_mode: str):
    unet = plan.embed == "conv_in"
    if not unet:
        _wrap_tokens(model, plan, state)
    for name, module in list(model.named_modules()):
        parts = name.split(".")
        leaf, parent = parts[-1], parts[-2] if len(parts) > 1 else ""
        if (leaf in plan.self_attn or parent in plan.self_attn) and hasattr(module, "to_k"):
            if plan.flux_attention:
                module.set_processor(FluxPatchProcessor(state, name))
            else:
                exchange_self_attention(module, state, name)
        elif leaf in plan.cross_attn and hasattr(module, "to_k"):
            module.to_k, module.to_v = (
                LoopCached(module.to_k, state),
                LoopCached(module.to_v, state),
            )
        elif unet and isinstance(module, nn.GroupNorm):
            _replace(model, name, PatchGroupNorm(module, state, name, gn_mode))
        elif unet and isinstance(module, nn.Conv2d) and module.kernel_size[0] > 1:
            if name == plan.embed:
                _replace(model, name, InputConv(module, state, name))
            elif name == plan.head:
                _replace(model, name, RowGather(HaloConv(module, state, name), state))
            else:
                _replace(model, name, HaloConv(module, state, name))


def _steps(workload) -> int:
    return len(workload.new_scheduler().timesteps)


def apply_distrifusion(workload, comm, options) -> Parallelized:
    """DistriFusion on the 'patch' axis: the model's modules wrapped in place."""
    if workload.preset.video:  # bands of video tokens (patch_video.py)
        return apply_video_patch(workload, comm, options, displaced=True)
    plan = PLANS[workload.preset.family]
    state = PatchState(
        comm,
        warmup_steps=options["warmup_steps"],
        full_sync=options["full_sync"],
        total_steps=_steps(workload),
        coalesce=options["coalesce"],
    )
    if state.n > 1:
        _wrap_distrifusion(workload.model, plan, state, options["gn_mode"])
    patch = 1 if workload.preset.family in UNET_FAMILIES else token_patch(workload.preset)
    return Parallelized(
        denoiser=PatchDenoiser(workload.denoiser, state, patch),
        inputs=workload.inputs,
        modules=[workload.denoiser],
        warmup_steps=options["warmup_steps"],
        on_step=state.begin_step,
        buffer_bytes=state.stale_bytes,
    )


def apply_naive_patch(workload, comm, options) -> Parallelized:
    """Naive patch parallelism: bands denoised independently, outputs gathered every step."""
    if workload.preset.video:
        return apply_video_patch(workload, comm, options, displaced=False)
    state = PatchState(comm, split=options["split"], total_steps=_steps(workload))
    family = workload.preset.family
    if family in UNET_FAMILIES:
        denoiser = NaiveUNetDenoiser(workload.denoiser, state, 1)
    else:
        if state.n > 1:
            _wrap_tokens(workload.model, PLANS[family], state)
        denoiser = PatchDenoiser(workload.denoiser, state, token_patch(workload.preset))
    return Parallelized(
        denoiser=denoiser,
        inputs=workload.inputs,
        modules=[workload.denoiser],
        on_step=state.begin_step,
    )
