"""build(): a preset turned into a runnable workload (model, denoiser, seeded inputs, solver)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .denoiser import Denoiser
from .inputs import Inputs, make_inputs
from .limits import check_resolution
from .models import packaged_model, pretrained_model, random_model
from .presets import Preset, get_preset
from .schedulers import check_scheduler, make_scheduler
from .video_size import check_video_size


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
    frames: int = 0  # video presets: frames of the clip (0: an image)

    def new_scheduler(self) -> SchedulerMixin:
        """A fresh solver for one denoising loop."""
        return make_scheduler(self.scheduler, self.preset, self.steps, self.height, self.width)


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
    frames: int | None = None,
) -> Workload:
    """Build preset `preset` for `batch` images of height x width pixels, or for a video preset
    `batch` clips of `frames` x height x width (None: the preset's default clip length).

    Same seed -> bitwise identical parameters (per device type) and inputs in every process.
    weights: a saved model directory, a pipeline directory or a hub id; None: the preset's
    packaged trained weights (workloads/weights/) if it names some, else random init.
    """
    p = get_preset(preset)
    if p.video:
        frames = p.native_frames if frames is None else frames
        check_video_size(p, frames, height, width)
    elif frames:
        raise ValueError(f"frames={frames!r}: preset {p.name!r} is an image model")
    else:
        frames = 0
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
    inputs = make_inputs(p, height, width, batch, seed, guidance, frames).to(device, dtype)
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
        frames=frames,
    )
