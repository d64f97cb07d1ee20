"""What runs: model presets, schedulers and seeded inputs. Knows nothing about parallelism."""

from .build import Workload, build, check_resolution
from .denoiser import Denoiser
from .inputs import Inputs
from .loop import combine_cfg, denoise, initial_latents, scale_input
from .presets import PRESETS, Preset, get_preset
from .schedulers import SCHEDULERS, make_scheduler
from .stats import ModelStats, describe_presets, model_stats

__all__ = [
    "PRESETS",
    "SCHEDULERS",
    "Denoiser",
    "Inputs",
    "ModelStats",
    "Preset",
    "Workload",
    "build",
    "combine_cfg",
    "denoise",
    "check_resolution",
    "describe_presets",
    "get_preset",
    "initial_latents",
    "make_scheduler",
    "model_stats",
    "scale_input",
]
