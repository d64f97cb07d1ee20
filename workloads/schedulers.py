"""Deterministic diffusers solvers, configured with each family's training noise schedule."""

from __future__ import annotations

from typing import Any

import numpy as np
from diffusers import (
    CogVideoXDDIMScheduler,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .limits import (  # noqa: F401 - solver names and limits live in the torch-free module
    FLOW_SCHEDULERS,
    NUM_TRAIN_TIMESTEPS,
    SCHEDULERS,
    allowed_schedulers,
    check_scheduler,
    check_steps,
)
from .presets import Preset

# Solver-specific settings; all deterministic (DDIM's eta defaults to 0 in step()).
_SOLVERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "ddim": (DDIMScheduler, {"clip_sample": False}),
    "dpm-solver++": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "lower_order_final": True},
    ),
    "euler": (EulerDiscreteScheduler, {}),
    "flow-match-euler": (FlowMatchEulerDiscreteScheduler, {}),
    # THUDM/CogVideoX-5b scheduler_config.json; snr_shift_scale 1.0 leaves the schedule unshifted
    # (CogVideoX-2b's is 3.0), which is why DPM-Solver++ on the same schedule is the same model.
    # CogVideoX's own DPM scheduler is not offered: its step draws fresh noise every step.
    "cogvideox-ddim": (
        CogVideoXDDIMScheduler,
        {"clip_sample": False, "set_alpha_to_one": True, "steps_offset": 0, "snr_shift_scale": 1.0},
    ),
}

# Training noise schedule per family, as in the public scheduler configs.
_NOISE: dict[str, dict[str, Any]] = {
    "unet": {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "timestep_spacing": "leading",
        "steps_offset": 1,
        "prediction_type": "epsilon",
    },
    "pixart": {
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "timestep_spacing": "linspace",
        "prediction_type": "epsilon",
    },
    "dit": {
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "prediction_type": "epsilon",
    },
    # pixel-space UNet2DModel (trained-tiny-unet): trained on the DiT family's schedule
    "unet2d": {
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "prediction_type": "epsilon",
    },
    "sd3": {"shift": 3.0},
    # Wan 2.1's generate.py: sample_shift 5.0 for text-to-video
    "wan": {"shift": 5.0},
    # diffusers' HunyuanVideo scheduler config (hunyuanvideo-community/HunyuanVideo)
    "hunyuanvideo": {"shift": 7.0},
    "cogvideox": {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "timestep_spacing": "trailing",
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
    },
    # Flux shifts by image size: mu interpolates linearly in the packed image sequence length
    "flux": {
        "shift": 3.0,
        "use_dynamic_shifting": True,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 256,
        "max_image_seq_len": 4096,
    },
}


def flux_mu(image_seq_len: int) -> float:
    """Flux's dynamic time shift for a packed image of image_seq_len tokens."""
    cfg = _NOISE["flux"]
    slope = (cfg["max_shift"] - cfg["base_shift"]) / (
        cfg["max_image_seq_len"] - cfg["base_image_seq_len"]
    )
    return cfg["base_shift"] + slope * (image_seq_len - cfg["base_image_seq_len"])


def make_scheduler(
    name: str, preset: Preset, steps: int, height: int, width: int
) -> SchedulerMixin:
    """A fresh solver with set_timesteps(steps) done, for an image of height x width pixels.

    Fresh on every call so multistep state never leaks from one denoising loop to the next.
    """
    check_scheduler(name, preset)
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    check_steps(steps, name)
    cls, solver = _SOLVERS[name]
    noise = {**_NOISE[preset.family], **preset.scheduler_config}  # a preset may retrain it
    scheduler = cls.from_config({"num_train_timesteps": NUM_TRAIN_TIMESTEPS, **noise, **solver})
    if preset.family == "flux":
        tokens = (height // preset.vae_scale_factor // 2) * (width // preset.vae_scale_factor // 2)
        # the Flux pipeline's sigma grid: linear from 1 to 1/steps, then shifted by mu
        sigmas = np.linspace(1.0, 1.0 / steps, steps).tolist()
        scheduler.set_timesteps(sigmas=sigmas, mu=flux_mu(tokens))
    else:
        scheduler.set_timesteps(steps)
    return scheduler
