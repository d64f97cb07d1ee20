"""Patch parallelism on video DiTs (Wan 2.1, HunyuanVideo, CogVideoX): bands of video tokens.

The model sees a flat sequence of F' x h' x w' video tokens, frame after frame, each frame's
tokens row-major. `split` chooses the axis of the bands:
- `frames`: rank r keeps latent frames [r F'/n, (r+1) F'/n), one contiguous run of tokens;
- `height`: rank r keeps token rows [r h'/n, (r+1) h'/n) of every frame: in each frame a
  contiguous run of h' w' / n tokens. (This is DistriFusion's split of an image along its
  height, done in every frame.)
Both are `patch_state.Band`s of the grid (F' rows) x (h' w' columns): `frames` cuts rows,
`height` cuts columns. Naive patch's `alternate` takes frames and height in turn, step by step,
as the image version alternates rows and columns.

The tokens are cut where the model's sequence plan cuts them (suite/parallel/token_split.py),
so every token keeps its 3-D rotary position (the rope tables follow the tokens) and the text
stays whole on every rank; the output head's band is all-gathered and put back in place.
Attention goes through the plan's processor (suite/parallel/attention.py) with a core:
- naive_patch: `LocalCore`, the band attends to itself (and the text) only;
- distrifusion: `DisplacedCore`, local queries against the video K/V of every band: this rank's
  fresh, the others' from the previous step (post-norm, post-rope, so stale K/V need no
  recomputation), exchanged by `PatchState` (async after the warm-up, blocking and fresh with
  `full_sync`). Joint attention (HunyuanVideo, CogVideoX) keeps the text K/V local: every rank
  computes the text stream itself, its video keys as stale as the others'.
Cross-attention (Wan's prompt) needs nothing: its keys are the text's, on every rank. These
models have no GroupNorm or convolution between the embedding and the head, so there are no
halos and no statistics to exchange: per step, K and V of each attention layer and the output.
"""

from __future__ import annotations

import torch
from torch import nn

from suite.parallel import Parallelized
from suite.parallel.attention import LocalCore, install, track_text_length
from suite.parallel.patch_modules import full_kv
from suite.parallel.patch_state import PatchState
from suite.parallel.plans import get_plan
from suite.parallel.token_split import install_splits, module_at

# `split` option values on video and the Band axis of the (frames x tokens per frame) grid
BAND_AXIS = {"frames": "row", "height": "column", "alternate": "alternate"}
DEFAULT_SPLIT = "frames"  # distrifusion's default on video (see checks.VIDEO_SPLITS)


class VideoPatchDenoiser(nn.Module):
    """The workload's denoiser; tells the state the token grid (frames, tokens per frame)."""

    def __init__(self, denoiser: nn.Module, state: PatchState, temporal: int, patch: int):
        super().__init__()
        self.denoiser, self.state = denoiser, state
        self.temporal, self.patch = temporal, patch

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, cond: dict) -> torch.Tensor:
        _, _, frames, h, w = sample.shape
        self.state.grid = (frames // self.temporal, (h // self.patch) * (w // self.patch))
        return self.denoiser(sample, timestep, cond)


class DisplacedCore:
    """DistriFusion's attention core: the band's queries against every band's video K/V."""

    def __init__(self, state: PatchState):
        self.state = state
        self.local = LocalCore()

    def __call__(self, q, k, v, text, text_first: bool, layer: str):
        # K and V travel together: one (2, B, S, heads, head_dim) tensor, tokens on dim 2. The
        # keys come back in rank order, not token order, which attention does not see.
        kv = full_kv(self.state, layer, torch.stack([k, v]), dim=2)
        return self.local(q, kv[0], kv[1], text, text_first, layer)


def apply_video_patch(workload, comm, options: dict, *, displaced: bool) -> Parallelized:
    """naive_patch (displaced=False) or distrifusion on a video DiT, on the 'patch' axis."""
    from workloads.video_size import temporal_patch

    preset = workload.preset
    plan = get_plan(preset.family)
    split = options.get("split") or DEFAULT_SPLIT
    state = PatchState(
        comm,
        warmup_steps=options.get("warmup_steps", 0),
        full_sync=options.get("full_sync", False),
        total_steps=len(workload.new_scheduler().timesteps),
        split=BAND_AXIS[split],
        coalesce=options.get("coalesce", "none"),
    )
    model = workload.denoiser.model
    if state.n > 1:
        text_length = track_text_length(model, plan)

        def core(layout: str):
            return DisplacedCore(state) if displaced and layout != "cross" else LocalCore()

        install(model, plan, core, text_length)
        install_splits(model, plan, lambda x, dim: state.band().take(x, dim), text_length)

        def gather(module, args, out):
            return state.band().place(state.gather_output(out, dim=1), 1)

        module_at(model, plan.gather_after).register_forward_hook(gather)
    # the preset's patch, not the plan's: Wan-shaped presets may patchify 4x4 pixels
    denoiser = VideoPatchDenoiser(
        workload.denoiser, state, temporal_patch(preset), preset.spatial_multiple
    )
    return Parallelized(
        denoiser=denoiser,
        inputs=workload.inputs,
        modules=[workload.denoiser],
        warmup_steps=options.get("warmup_steps", 0) if displaced else 0,
        on_step=state.begin_step,
        buffer_bytes=state.stale_bytes if displaced else None,
    )
