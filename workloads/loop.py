"""The reference single-device denoising loop (the baseline every parallel run is scored against)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .build import Workload
from .inputs import Inputs


def initial_latents(scheduler: SchedulerMixin, latents: torch.Tensor) -> torch.Tensor:
    """Unit noise scaled to the solver's first sigma (flow-matching solvers have none: 1)."""
    return latents * getattr(scheduler, "init_noise_sigma", 1.0)


def scale_input(scheduler: SchedulerMixin, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Latents as the model expects them at t (Euler divides by sqrt(sigma^2 + 1); flow-matching
    solvers have no scale_model_input)."""
    scale = getattr(scheduler, "scale_model_input", None)
    return latents if scale is None else scale(latents, t)


def combine_cfg(pred: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance on a prediction whose batch is [uncond; cond]."""
    uncond, cond = pred.chunk(2)
    return uncond + guidance * (cond - uncond)


@torch.no_grad()
def denoise(
    workload: Workload,
    denoiser: Callable | None = None,
    inputs: Inputs | None = None,
    *,
    before_step: Callable[[int], None] | None = None,
    after_step: Callable[[int], None] | None = None,
    finalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
    fast_forward: Callable[[int], int] | None = None,
) -> torch.Tensor:
    """Run workload.steps solver steps; returns the final latents (B, C, h, w).

    The one denoising loop of the project: the harness drives it through the hooks
    (`before_step(i)` / `after_step(i)` around each step, `finalize` on the last step's latents,
    e.g. a parallel strategy's gather, timed as part of that step).

    `fast_forward(i)`, asked before step i, returns the step to run next: i, or j > i when the
    caller stands in for steps i..j-1 (an analytic world replicating its steady state). Those
    steps do not run; the solver alone steps over them, on stand-in predictions, so that its
    state at step j is what running them would have left.
    """
    denoiser = workload.denoiser if denoiser is None else denoiser
    inputs = workload.inputs if inputs is None else inputs
    scheduler = workload.new_scheduler()
    cfg = inputs.uncond is not None
    cond = inputs.model_cond()
    latents = initial_latents(scheduler, inputs.latents)
    last = len(scheduler.timesteps) - 1
    resume = 0
    for i, t in enumerate(scheduler.timesteps):
        if i < resume or (fast_forward is not None and (resume := fast_forward(i)) > i):
            stand_in = torch.empty_like(latents)
            latents = scheduler.step(stand_in, t, latents, return_dict=False)[0]
            continue
        if before_step is not None:
            before_step(i)
        x = torch.cat([latents, latents]) if cfg else latents
        pred = denoiser(scale_input(scheduler, x, t), t, cond)
        if cfg:
            pred = combine_cfg(pred, workload.guidance)
        latents = scheduler.step(pred, t, latents, return_dict=False)[0]
        if i == last and finalize is not None:
            latents = finalize(latents)
        if after_step is not None:
            after_step(i)
    return latents
