"""build(): a preset turned into a runnable workload (model, denoiser, seeded inputs, solver)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .denoiser import Denoiser
from .inputs import Inputs, make_inputs
from .models import packaged_model, pretrained_model, random_model
from .presets import Preset, get_preset
from .schedulers import check_scheduler, make_scheduler


@dataclass
class Workload:
    """Everything one rank needs to run the denoising loop of a preset."""

    preset: Preset
    model: torch.nn.Module  # the diffusers model, as built (strategies may wrap denoiser.model)
    denoiser: Denoiser
    inputs: Inputs  # on the workload's device and dtype
    scheduler: str
    guidance: float
    height: int  # pixels
    width: int  # pixels
    steps: int

    def new_scheduler(self) -> SchedulerMixin:
        """A fresh solver for one denoising loop."""
        return make_scheduler(self.scheduler, self.preset, self.steps, self.height, self.width)


def check_resolution(preset: Preset, height: int, width: int) -> None:
    """ValueError unless height x width pixels fit the preset's latent and patch grid (pixels)."""
    multiple = preset.vae_scale_factor * preset.spatial_multiple
    # SD3 crops a fixed table of positional embeddings: larger latents have no positions
    max_patches = preset.config.get("pos_embed_max_size")
    limit = (
        max_patches * preset.config["patch_size"] * preset.vae_scale_factor if max_patches else 0
    )
    for field, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value <= 0 or value % multiple:
            raise ValueError(
                f"{field}={value!r} is not allowed for preset {preset.name!r}: must be a positive "
                f"multiple of {multiple} pixels (vae_scale_factor {preset.vae_scale_factor} x "
                f"spatial_multiple {preset.spatial_multiple})"
            )
        if limit and value > limit:
            raise ValueError(
                f"{field}={value} is not allowed for preset {preset.name!r}: at most {limit} "
                f"pixels (pos_embed_max_size {max_patches} patches)"
            )
    if preset.family == "dit" and height != width:
        # DiTTransformer2DModel un-patchifies assuming a square token grid
        raise ValueError(
            f"width={width} is not allowed for preset {preset.name!r}: must equal height={height} "
            f"(diffusers' DiT supports square images only)"
        )


def build(
    preset: str,
    *,
    height: int,
    width: int,
    steps: int | None = None,
    batch: int = 1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    scheduler: str | None = None,
    guidance: float | None = None,
    weights: str | None = None,
) -> Workload:
    """Build preset `preset` for `batch` images of height x width pixels.

    Same seed -> bitwise identical parameters (per device type) and inputs in every process.
    weights: a saved model directory, a pipeline directory or a hub id; None: the preset's
    packaged trained weights (workloads/weights/) if it names some, else random init.
    """
    p = get_preset(preset)
    check_resolution(p, height, width)
    steps = p.default_steps if steps is None else steps
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch={batch!r} must be an integer >= 1")
    scheduler = p.default_scheduler if scheduler is None else scheduler
    check_scheduler(scheduler, p)
    guidance = p.default_guidance if guidance is None else float(guidance)
    if guidance < 0:
        raise ValueError(f"guidance={guidance} must be >= 0 (<= 1 disables the CFG branch)")

    # on meta only shapes matter: no weights file is read (counts work before training)
    if weights is None and p.weights_file and torch.device(device).type != "meta":
        model = packaged_model(p, device, dtype)
    elif weights is None:
        model = random_model(p, seed, device, dtype)
    else:
        model = pretrained_model(p, weights, device, dtype)
    model.eval().requires_grad_(False)
    inputs = make_inputs(p, height, width, batch, seed, guidance).to(device, dtype)
    return Workload(
        preset=p,
        model=model,
        denoiser=Denoiser(model, p),
        inputs=inputs,
        scheduler=scheduler,
        guidance=guidance,
        height=height,
        width=width,
        steps=steps,
    )
