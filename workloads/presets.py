"""Model presets: which diffusers class runs, with which architecture config, at which defaults.

Full-size presets reproduce the public architectures (random weights unless `weights=` is given).
Each `tiny-<name>` keeps its model's class and structure (cross / joint attention, text-time
embedding, learned sigma, guidance embedding) at a size that runs a CFG forward at 256x256 px in
tens of milliseconds on one CPU thread, and keeps the properties parallel strategies split on:
heads divisible by 2 and 4, at least 4 transformer blocks, GroupNorm groups divisible by 4,
UNet bands of 8 latent rows that survive every downsample.
"""

from __future__ import annotations

from typing import Any

from .preset import Preset
from .preset import frozen as _frozen
from .video_presets import VIDEO_PRESETS

# --- architecture configs (public architectures, written out here) -------------------------

_SDXL = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    # diffusers' UNet reads attention_head_dim as the head *count* (a historical naming issue)
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "norm_num_groups": 32,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    # 6 time ids x 256 + pooled text 1280
    "projection_class_embeddings_input_dim": 2816,
}

_TINY_SDXL = {
    **_SDXL,
    "sample_size": 32,
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 1,
    "transformer_layers_per_block": (1, 1, 2),
    "attention_head_dim": (4, 4, 4),
    "cross_attention_dim": 32,
    "norm_num_groups": 8,
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 6 * 8 + 32,
}

# Mid-size models for CPU benchmarks: big enough that compute dominates a step at 256-512 px on
# one thread (hundreds of ms), small enough that a sweep finishes in minutes.
_SMALL_SDXL = {
    **_SDXL,
    "sample_size": 64,
    "block_out_channels": (128, 256, 256),
    "transformer_layers_per_block": (1, 1, 2),
    "attention_head_dim": (4, 8, 8),  # head counts (see _SDXL)
    "cross_attention_dim": 256,
    "addition_time_embed_dim": 64,
    "projection_class_embeddings_input_dim": 6 * 64 + 256,
}

_PIXART = {
    "num_attention_heads": 16,
    "attention_head_dim": 72,
    "in_channels": 4,
    "out_channels": 8,
    "num_layers": 28,
    "cross_attention_dim": 1152,
    "caption_channels": 4096,
    "sample_size": 128,
    "patch_size": 2,
    "norm_type": "ada_norm_single",
    "num_embeds_ada_norm": 1000,
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "use_additional_conditions": True,
    "attention_bias": True,
    "activation_fn": "gelu-approximate",
}

_TINY_PIXART = {
    **_PIXART,
    # hidden must be divisible by 3: resolution and aspect-ratio embeddings take a third each
    "num_attention_heads": 4,
    "attention_head_dim": 24,
    "num_layers": 4,
    "cross_attention_dim": 96,
    "caption_channels": 32,
    "sample_size": 32,
    "interpolation_scale": 1,
}

_SMALL_PIXART = {
    **_PIXART,
    "num_attention_heads": 8,
    "attention_head_dim": 48,  # hidden 384, divisible by 3 (see _TINY_PIXART)
    "num_layers": 8,
    "cross_attention_dim": 384,
    "caption_channels": 256,
    "sample_size": 64,
}

_DIT = {
    "num_attention_heads": 16,
    "attention_head_dim": 72,
    "in_channels": 4,
    "out_channels": 8,
    "num_layers": 28,
    "sample_size": 64,
    "patch_size": 2,
    "norm_type": "ada_norm_zero",
    "num_embeds_ada_norm": 1000,
    "attention_bias": True,
    "activation_fn": "gelu-approximate",
}

_TINY_DIT = {
    **_DIT,
    "num_attention_heads": 4,
    "attention_head_dim": 16,
    "num_layers": 4,
    "sample_size": 32,
    "num_embeds_ada_norm": 10,
}

_SD3 = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 192,
}

_TINY_SD3 = {
    **_SD3,
    "sample_size": 32,
    "num_layers": 4,
    "attention_head_dim": 16,
    "num_attention_heads": 4,
    "joint_attention_dim": 32,
    "caption_projection_dim": 64,
    "pooled_projection_dim": 32,
    # 128 patches: latents up to 256, i.e. 2048 px
    "pos_embed_max_size": 128,
}

_FLUX = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}

_TINY_FLUX = {
    **_FLUX,
    "num_layers": 2,
    "num_single_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 4,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
    # rope axes (text / row / column) must sum to the head dim
    "axes_dims_rope": (4, 6, 6),
}

# FLUX.1-schnell: FLUX.1-dev's architecture without the guidance embedding (timestep-distilled
# for 1-4 steps, no guidance input); black-forest-labs/flux src/flux/util.py gives both models
# the same params but guidance_embed=False for flux-schnell.
_FLUX_SCHNELL = {**_FLUX, "guidance_embeds": False}
_TINY_FLUX_SCHNELL = {**_TINY_FLUX, "guidance_embeds": False}
# schnell samples its sigma grid unshifted (black-forest-labs/flux src/flux/cli.py:
# get_schedule(..., shift=(name != "flux-schnell"))): no resolution-dependent shift, shift 1
_FLUX_SCHNELL_SCHEDULE = _frozen({"use_dynamic_shifting": False, "shift": 1.0})


# Trained tiny models (workloads/train_tiny.py): pixel space 32x32 RGB, 4 shape classes
# (workloads/shapes.py), v-prediction on the DiT family's linear noise schedule. Sizes keep both
# bf16 weight files under 10 MB together and a training run within minutes of 2 CPU cores.
_TRAINED_UNET = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    # attention at 16x16 and 8x8 (and the mid block): patch methods exchange K/V there
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (32, 64, 128),
    "layers_per_block": 1,
    "attention_head_dim": 16,  # UNet2DModel reads it as the head size: 4 and 8 heads
    "norm_num_groups": 16,
    "num_class_embeds": 5,  # 4 classes + the null label (index 4) for classifier-free guidance
}

_TRAINED_DIT = {
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "in_channels": 3,
    "out_channels": 3,  # no learned sigma: the deterministic solvers do not use it
    "num_layers": 6,
    "sample_size": 32,
    "patch_size": 2,
    "norm_type": "ada_norm_zero",
    # diffusers' label embedding adds the null class itself: index 4 is the null label
    "num_embeds_ada_norm": 4,
    "attention_bias": True,
    "activation_fn": "gelu-approximate",
}

# Same schedule the models were trained with; "trailing" starts sampling at t = 999, the
# noise level training saw, whatever the number of solver steps.
_TRAINED_SCHEDULE = _frozen({"prediction_type": "v_prediction", "timestep_spacing": "trailing"})

_TRAINED_COMMON: dict[str, Any] = {
    "latent_channels": 3,
    "vae_scale_factor": 1,
    "text_len": 0,
    "text_dim": 0,
    "pooled_dim": 0,
    "cfg": True,
    "default_scheduler": "ddim",
    "default_steps": 20,
    "default_guidance": 3.0,
    "tiny": True,
    "native_resolution": 32,
    "scheduler_config": _TRAINED_SCHEDULE,
}

# --- presets -------------------------------------------------------------------------------

_FULL_STEPS = 20
_TINY_STEPS = 4

_FAMILY_COMMON: dict[str, dict[str, Any]] = {
    "unet": {
        "model_class": "UNet2DConditionModel",
        "latent_channels": 4,
        "default_scheduler": "euler",
        "default_guidance": 5.0,
        "cfg": True,
        "weights_subfolder": "unet",
    },
    "pixart": {
        "model_class": "PixArtTransformer2DModel",
        "latent_channels": 4,
        "spatial_multiple": 2,
        "pooled_dim": 0,
        "default_scheduler": "dpm-solver++",
        "default_guidance": 4.5,
        "cfg": True,
        "weights_subfolder": "transformer",
    },
    "dit": {
        "model_class": "DiTTransformer2DModel",
        "latent_channels": 4,
        "spatial_multiple": 2,
        "text_len": 0,
        "text_dim": 0,
        "pooled_dim": 0,
        "default_scheduler": "ddim",
        "default_guidance": 4.0,
        "cfg": True,
        "weights_subfolder": "transformer",
    },
    "sd3": {
        "model_class": "SD3Transformer2DModel",
        "latent_channels": 16,
        "spatial_multiple": 2,
        "default_scheduler": "flow-match-euler",
        "default_guidance": 7.0,
        "cfg": True,
        "weights_subfolder": "transformer",
    },
    "flux": {
        "model_class": "FluxTransformer2DModel",
        "latent_channels": 16,
        # 2x2 latent pixels are packed into one token
        "spatial_multiple": 2,
        "default_scheduler": "flow-match-euler",
        "default_guidance": 3.5,
        # guidance-distilled: the scale enters the guidance embedding, no unconditional pass
        "cfg": False,
        "weights_subfolder": "transformer",
    },
}


def _preset(name: str, family: str, config: dict[str, Any], tiny: bool, **fields: Any) -> Preset:
    return Preset(
        name=name,
        family=family,
        config=_frozen(config),
        vae_scale_factor=8,
        tiny=tiny,
        **{
            "default_steps": _TINY_STEPS if tiny else _FULL_STEPS,
            **_FAMILY_COMMON[family],
            **fields,
        },
    )


_ALL = (
    _preset(
        "sdxl",
        "unet",
        _SDXL,
        False,
        spatial_multiple=4,  # two downsamples
        heads=10,  # level 1 has no attention; levels 2-3: 10 and 20 heads of 64
        layers=70,  # 1*0 + 2*2 + 2*10 down, 10 mid, 3*10 + 3*2 + 3*0 up
        text_len=77,
        text_dim=2048,
        pooled_dim=1280,
        native_resolution=1024,
        description="SDXL-base UNet (2.6 B): text-time embedding, cross-attention to 77x2048 text",
    ),
    _preset(
        "tiny-sdxl",
        "unet",
        _TINY_SDXL,
        True,
        spatial_multiple=4,
        heads=4,
        layers=11,  # 0 + 1 + 2 down, 2 mid, 2*2 + 2*1 + 0 up
        text_len=8,
        text_dim=32,
        pooled_dim=32,
        native_resolution=256,
        description="SDXL-shaped UNet, 3 levels (32/64/64 ch), 4 heads: CPU tests",
    ),
    _preset(
        "small-sdxl",
        "unet",
        _SMALL_SDXL,
        False,
        spatial_multiple=4,
        heads=8,
        layers=17,  # 0 + 2*1 + 2*2 down, 2 mid, 3*2 + 3*1 + 0 up
        text_len=77,
        text_dim=256,
        pooled_dim=256,
        native_resolution=512,
        description="SDXL-shaped UNet, 3 levels (128/256/256 ch), 8 heads: CPU benchmarks",
    ),
    _preset(
        "pixart-alpha",
        "pixart",
        _PIXART,
        False,
        heads=16,
        layers=28,
        text_len=120,
        text_dim=4096,
        native_resolution=1024,
        description="PixArt-alpha XL/2 1024 (0.6 B): adaLN-single DiT, cross-attention to T5 120x4096",
    ),
    _preset(
        "tiny-pixart-alpha",
        "pixart",
        _TINY_PIXART,
        True,
        heads=4,
        layers=4,
        text_len=8,
        text_dim=32,
        native_resolution=256,
        description="PixArt-shaped DiT, 4 blocks, hidden 96, 4 heads: CPU tests",
    ),
    _preset(
        "small-pixart-alpha",
        "pixart",
        _SMALL_PIXART,
        False,
        heads=8,
        layers=8,
        text_len=120,
        text_dim=256,
        native_resolution=512,
        description="PixArt-shaped DiT, 8 blocks, hidden 384, 8 heads: CPU benchmarks",
    ),
    _preset(
        "dit-xl-2",
        "dit",
        _DIT,
        False,
        heads=16,
        layers=28,
        native_resolution=512,
        description="DiT-XL/2 512 (0.7 B): class-conditional (1000 classes), adaLN-zero, learned sigma",
    ),
    _preset(
        "tiny-dit-xl-2",
        "dit",
        _TINY_DIT,
        True,
        heads=4,
        layers=4,
        native_resolution=256,
        description="DiT-shaped, 4 blocks, hidden 64, 4 heads, 10 classes: CPU tests",
    ),
    _preset(
        "sd3-medium",
        "sd3",
        _SD3,
        False,
        heads=24,
        layers=24,
        text_len=333,  # 77 CLIP + 256 T5 tokens
        text_dim=4096,
        pooled_dim=2048,
        native_resolution=1024,
        description="SD3-medium MMDiT (2.0 B): joint attention over 333 text + image tokens",
    ),
    _preset(
        "tiny-sd3-medium",
        "sd3",
        _TINY_SD3,
        True,
        heads=4,
        layers=4,
        text_len=8,
        text_dim=32,
        pooled_dim=32,
        native_resolution=256,
        description="SD3-shaped MMDiT, 4 blocks, hidden 64, 4 heads: CPU tests",
    ),
    _preset(
        "flux-dev",
        "flux",
        _FLUX,
        False,
        heads=24,
        layers=57,  # 19 double-stream + 38 single-stream blocks
        text_len=512,
        text_dim=4096,
        pooled_dim=768,
        native_resolution=1024,
        description="FLUX.1-dev (11.9 B): 19 double + 38 single blocks, rope, guidance-distilled",
    ),
    _preset(
        "tiny-flux-dev",
        "flux",
        _TINY_FLUX,
        True,
        heads=4,
        layers=4,
        text_len=8,
        text_dim=32,
        pooled_dim=32,
        native_resolution=256,
        description="Flux-shaped, 2 double + 2 single blocks, hidden 64, 4 heads: CPU tests",
    ),
    _preset(
        "flux-schnell",
        "flux",
        _FLUX_SCHNELL,
        False,
        heads=24,
        layers=57,  # 19 double-stream + 38 single-stream blocks
        # T5 tokens: 256 for schnell, 512 for dev (black-forest-labs/flux src/flux/cli.py:
        # load_t5(max_length=256 if name == "flux-schnell" else 512))
        text_len=256,
        text_dim=4096,
        pooled_dim=768,
        native_resolution=1024,
        default_steps=4,  # timestep-distilled: 1-4 steps (xDiT benchmarks it with 4)
        default_guidance=0.0,  # no guidance input (diffusers' FluxPipeline examples pass 0.0)
        scheduler_config=_FLUX_SCHNELL_SCHEDULE,
        description="FLUX.1-schnell (11.9 B): flux-dev's blocks without guidance embedding, 4 steps",
    ),
    _preset(
        "tiny-flux-schnell",
        "flux",
        _TINY_FLUX_SCHNELL,
        True,
        heads=4,
        layers=4,
        text_len=8,
        text_dim=32,
        pooled_dim=32,
        native_resolution=256,
        default_guidance=0.0,
        scheduler_config=_FLUX_SCHNELL_SCHEDULE,
        description="Flux-schnell-shaped (no guidance embedding), 2 double + 2 single blocks: CPU tests",
    ),
    Preset(
        name="trained-tiny-unet",
        family="unet2d",
        model_class="UNet2DModel",
        config=_frozen(_TRAINED_UNET),
        spatial_multiple=4,  # two downsamples
        heads=4,  # min over layers: 64 ch / 16 at 16x16 (8 heads at 8x8)
        # no transformer layers: its 7 attention layers (1 + 1 down, 1 mid, 2 + 2 up) are plain
        # diffusers Attention modules on the feature map
        layers=0,
        weights_subfolder="unet",
        weights_file="trained-tiny-unet.safetensors",
        description="Trained class-conditional UNet2DModel (32/64/128 ch, attention at 16 and 8 "
        "px), pixel space 32x32, 4 shape classes: real images offline",
        **_TRAINED_COMMON,
    ),
    Preset(
        name="trained-tiny-dit",
        family="dit",
        model_class="DiTTransformer2DModel",
        config=_frozen(_TRAINED_DIT),
        spatial_multiple=2,  # patch size
        heads=4,
        layers=6,
        weights_subfolder="transformer",
        weights_file="trained-tiny-dit.safetensors",
        description="Trained class-conditional DiT (6 blocks, hidden 128, patch 2), pixel space "
        "32x32, 4 shape classes: real images offline",
        **_TRAINED_COMMON,
    ),
)

PRESETS: dict[str, Preset] = {p.name: p for p in (*_ALL, *VIDEO_PRESETS)}


def get_preset(name: str) -> Preset:
    """The preset called `name`; ValueError listing the known presets otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(PRESETS)
        raise ValueError(f"workload preset={name!r} is unknown; known presets: {known}") from None
