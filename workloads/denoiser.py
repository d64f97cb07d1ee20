"""One call convention over every model family: latent + timestep + conditioning -> prediction.

Each family differs only in how its inputs are named and shaped; that difference is the table
_KWARGS below (plus Flux's 2x2 packing), so the denoising loop and every parallel strategy see
one signature.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .preset import Preset

Cond = dict[str, Tensor]


def pack_latents(x: Tensor) -> Tensor:
    """(N, C, h, w) -> (N, h/2 * w/2, 4C): Flux's tokens are 2x2 latent patches, row-major."""
    n, c, h, w = x.shape
    x = x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: Tensor, h: int, w: int) -> Tensor:
    """Inverse of pack_latents for a latent of h x w."""
    n, _, d = tokens.shape
    x = tokens.view(n, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(n, d // 4, h, w)


def flux_image_ids(h: int, w: int, device: torch.device) -> Tensor:
    """(h/2 * w/2, 3) rope positions of packed latent tokens: (0, row, column)."""
    rows = torch.arange(h // 2, device=device, dtype=torch.float32)
    cols = torch.arange(w // 2, device=device, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)
    return torch.cat([torch.zeros_like(grid[:, :1]), grid], dim=1)


def _unet(x: Tensor, t: Tensor, c: Cond) -> dict:
    added = {"text_embeds": c["text_embeds"], "time_ids": c["time_ids"]}
    return dict(
        sample=x,
        timestep=t,
        encoder_hidden_states=c["encoder_hidden_states"],
        added_cond_kwargs=added,
    )


def _pixart(x: Tensor, t: Tensor, c: Cond) -> dict:
    added = {"resolution": c["resolution"], "aspect_ratio": c["aspect_ratio"]}
    return dict(
        hidden_states=x,
        timestep=t,
        encoder_hidden_states=c["encoder_hidden_states"],
        added_cond_kwargs=added,
    )


def _dit(x: Tensor, t: Tensor, c: Cond) -> dict:
    return dict(hidden_states=x, timestep=t, class_labels=c["class_labels"])


def _unet2d(x: Tensor, t: Tensor, c: Cond) -> dict:
    return dict(sample=x, timestep=t, class_labels=c["class_labels"])


def _sd3(x: Tensor, t: Tensor, c: Cond) -> dict:
    return dict(
        hidden_states=x,
        timestep=t,
        encoder_hidden_states=c["encoder_hidden_states"],
        pooled_projections=c["pooled_projections"],
    )


def _flux(x: Tensor, t: Tensor, c: Cond) -> dict:
    text = c["encoder_hidden_states"]
    return dict(
        hidden_states=pack_latents(x),
        # the model multiplies timestep and guidance by 1000 itself
        timestep=t.to(x.dtype) / 1000,
        guidance=c.get("guidance"),  # None for flux-schnell (no guidance embedding)
        encoder_hidden_states=text,
        pooled_projections=c["pooled_projections"],
        img_ids=flux_image_ids(x.shape[2], x.shape[3], x.device),
        txt_ids=torch.zeros(text.shape[1], 3, device=x.device),
    )


def _wan(x: Tensor, t: Tensor, c: Cond) -> dict:
    return dict(hidden_states=x, timestep=t, encoder_hidden_states=c["encoder_hidden_states"])


def _hunyuanvideo(x: Tensor, t: Tensor, c: Cond) -> dict:
    return dict(
        hidden_states=x,
        timestep=t.to(x.dtype),
        encoder_hidden_states=c["encoder_hidden_states"],
        encoder_attention_mask=c["encoder_attention_mask"],
        pooled_projections=c["pooled_projections"],
        # unlike Flux, the model does not scale the guidance itself (the pipeline passes x1000)
        guidance=c["guidance"] * 1000.0,
    )


_KWARGS: dict[str, Callable[[Tensor, Tensor, Cond], dict]] = {
    "unet": _unet,
    "pixart": _pixart,
    "dit": _dit,
    "sd3": _sd3,
    "flux": _flux,
    "unet2d": _unet2d,
    "wan": _wan,
    "hunyuanvideo": _hunyuanvideo,
}


class Denoiser(torch.nn.Module):
    """Wraps a diffusers model behind forward(sample, timestep, cond) -> prediction.

    Parallel strategies replace or wrap `self.model`; forward always looks it up at call time.
    """

    def __init__(self, model: torch.nn.Module, preset: Preset) -> None:
        super().__init__()
        self.model = model
        self.preset = preset

    def model_kwargs(self, sample: Tensor, timestep: Tensor, cond: Cond) -> dict:
        """Keyword arguments of the diffusers model call for this family."""
        t = timestep.to(sample.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(sample.shape[0])
        if self.preset.family == "cogvideox":
            from .cogvideox import cogvideox_kwargs

            return cogvideox_kwargs(self.preset, sample, t, cond)
        return _KWARGS[self.preset.family](sample, t, cond)

    def model_output(self, out: Tensor, sample: Tensor) -> Tensor:
        """The model's raw output as a (N, C, h, w) prediction like `sample`."""
        if self.preset.family == "flux":
            out = unpack_latents(out, sample.shape[2], sample.shape[3])
        elif self.preset.family == "cogvideox":
            out = out.transpose(1, 2)  # (B, F, C, h, w) -> (B, C, F, h, w)
        # learned-sigma models append C variance channels the deterministic solvers do not use
        return out[:, : sample.shape[1]]

    def forward(self, sample: Tensor, timestep: Tensor, cond: Cond) -> Tensor:
        """Prediction (N, C, h, w) for latent `sample` (N, C, h, w) at `timestep` (0-d or (N,));
        video: (N, C, frames, h, w) in and out."""
        out = self.model(**self.model_kwargs(sample, timestep, cond), return_dict=False)[0]
        return self.model_output(out, sample)
