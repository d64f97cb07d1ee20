"""What a preset accepts, as data and checks that import neither torch nor diffusers: image sizes,
solvers and step counts. Config validation (suite.config.experiment) runs these before any process starts,
in milliseconds; build() and make_scheduler() run them again on every rank.
"""

from __future__ import annotations

from .preset import Preset

SCHEDULERS: tuple[str, ...] = (
    "ddim",
    "dpm-solver++",
    "euler",
    "flow-match-euler",
    "cogvideox-ddim",
)
FLOW_SCHEDULERS: tuple[str, ...] = ("flow-match-euler",)
# CogVideoX: v-prediction on a zero-terminal-SNR schedule. Its own DDIM, and the deterministic
# DPM-Solver++ on the same schedule (CogVideoX's DPM scheduler draws fresh noise every step, so
# no parallel run could match the single device's; see workloads/schedulers.py)
COGVIDEOX_SCHEDULERS: tuple[str, ...] = ("cogvideox-ddim", "dpm-solver++")

# Length of every family's training noise schedule (the solvers' num_train_timesteps).
NUM_TRAIN_TIMESTEPS = 1000

# Largest image side checked at all (pixels): beyond it latent and attention sizes overflow
# int64 element counts; the memory check (suite.config.memory) refuses far smaller images anyway.
MAX_SIDE = 1 << 20


def allowed_schedulers(preset: Preset) -> tuple[str, ...]:
    """Solvers that match the preset's prediction type (velocity vs noise)."""
    if preset.flow_matching:
        return FLOW_SCHEDULERS
    if preset.family == "cogvideox":
        return COGVIDEOX_SCHEDULERS
    return tuple(s for s in SCHEDULERS if s not in FLOW_SCHEDULERS and s != "cogvideox-ddim")


def check_scheduler(name: str, preset: Preset) -> None:
    """ValueError unless `name` is a known solver that fits the preset."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler={name!r} is unknown; allowed: {', '.join(SCHEDULERS)}")
    allowed = allowed_schedulers(preset)
    if name not in allowed:
        kind = "flow-matching" if preset.flow_matching else "noise-prediction"
        if preset.family == "cogvideox":
            kind = "zero-terminal-SNR v-prediction"
        raise ValueError(
            f"scheduler={name!r} does not fit preset {preset.name!r} ({kind} model); "
            f"allowed for it: {', '.join(allowed)}"
        )


def max_steps(name: str) -> int | None:
    """Most denoising steps solver `name` can take (None: no limit).

    The discrete-time solvers pick steps among the num_train_timesteps training timesteps: DDIM
    raises beyond them, DPM-Solver++ and Euler silently repeat timesteps. Flow matching takes
    continuous sigmas, any number of them.
    """
    return None if name in FLOW_SCHEDULERS else NUM_TRAIN_TIMESTEPS


def check_steps(steps: int, name: str) -> None:
    """ValueError unless `steps` is within what solver `name` supports."""
    limit = max_steps(name)
    if limit is not None and steps > limit:
        raise ValueError(
            f"steps={steps} exceeds the limit of scheduler {name!r}: at most {limit} (its "
            "num_train_timesteps)"
        )


def _max_pixels(preset: Preset) -> int:
    """Largest side SD3-style models accept (they crop a fixed positional table); 0: none."""
    max_patches = preset.config.get("pos_embed_max_size")
    return max_patches * preset.config["patch_size"] * preset.vae_scale_factor if max_patches else 0


def resolution_rule(preset: Preset) -> str:
    """What image sizes the preset accepts, in words (e.g. 'multiples of 16 px up to 3072')."""
    multiple = preset.vae_scale_factor * preset.spatial_multiple
    limit = _max_pixels(preset)
    rule = f"multiples of {multiple} px" + (f" up to {limit}" if limit else "")
    return rule + (", square" if preset.family == "dit" else "")


def check_resolution(preset: Preset, height: int, width: int) -> None:
    """ValueError unless height x width pixels fit the preset's latent and patch grid (pixels)."""
    multiple = preset.vae_scale_factor * preset.spatial_multiple
    # SD3 crops a fixed table of positional embeddings: larger latents have no positions
    max_patches = preset.config.get("pos_embed_max_size")
    limit = _max_pixels(preset)
    for field, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % multiple:
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
        if value > MAX_SIDE:
            raise ValueError(
                f"{field}={value} is not allowed for preset {preset.name!r}: at most {MAX_SIDE} "
                "pixels"
            )
    if preset.family == "dit" and height != width:
        # DiTTransformer2DModel un-patchifies assuming a square token grid
        raise ValueError(
            f"width={width} is not allowed for preset {preset.name!r}: must equal height={height} "
            f"(diffusers' DiT supports square images only)"
        )
