"""The VAE that turns a preset's final latent into pixels: its architecture, written out here.

The denoising loop is what diffscale times; a pipeline call also decodes the latent (PipeFusion
and xDiT time the whole call when asked for images). The projection prices that decode with the
operator model from its operators recorded on the meta device (`analysis.stages`).

Every latent-diffusion preset here decodes with the Stable Diffusion VAE architecture
(diffusers' AutoencoderKL: 4 levels of 128 / 256 / 512 / 512 channels, 2 ResNet blocks per
level (3 in the decoder), 32 GroupNorm groups, one single-head attention block in the middle);
SDXL's VAE (stabilityai/sdxl-vae) and PixArt-alpha's (sd-vae-ft-ema) share it and differ only in
weights and `scaling_factor`. Flux and SD3 use 16 latent channels (the same levels otherwise).

The video models decode with their own causal 3-D VAEs (8x in space, 4x in time: F' latent frames
give 4 (F' - 1) + 1 frames), with the configs of their published `vae/config.json`: Wan 2.1's
AutoencoderKLWan, HunyuanVideo's AutoencoderKLHunyuanVideo, CogVideoX's AutoencoderKLCogVideoX.
Each pipeline un-normalizes the latent its own way before the decode (`unscale_video_latents`).
"""

from __future__ import annotations

from types import MappingProxyType

import torch

from .preset import Preset
from .presets import get_preset

# diffusers AutoencoderKL config of stabilityai/sdxl-vae and of the SD 1.x / PixArt VAE
_SD_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,  # SDXL's; 0.18215 for SD 1.x / PixArt (does not change the cost)
}
# Flux / SD3: 16 latent channels, no quant convs
_SD3_VAE = {**_SD_VAE, "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False}

VAE_CONFIGS = MappingProxyType({"sd": MappingProxyType(_SD_VAE), "sd3": MappingProxyType(_SD3_VAE)})

# Wan-AI/Wan2.1-T2V-{1.3B,14B}-Diffusers vae/config.json, the same VAE for both (lists: the class
# concatenates them); its latent statistics are diffusers' defaults, the published ones
_WAN_VAE = {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
            "attn_scales": [], "temperal_downsample": [False, True, True]}  # fmt: skip
# hunyuanvideo-community/HunyuanVideo vae/config.json
_HUNYUAN_VAE = {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2,
                "latent_channels": 16, "norm_num_groups": 32, "scaling_factor": 0.476986,
                "spatial_compression_ratio": 8, "temporal_compression_ratio": 4,
                "mid_block_add_attention": True}  # fmt: skip
# THUDM/CogVideoX-5b vae/config.json: the 2B's architecture, scaling_factor 0.7 (the 2B's 1.15258)
_COGVIDEOX_VAE = {"block_out_channels": (128, 256, 256, 512), "layers_per_block": 3,
                  "latent_channels": 16, "norm_num_groups": 32, "temporal_compression_ratio": 4,
                  "scaling_factor": 0.7, "use_quant_conv": False, "use_post_quant_conv": False}  # fmt: skip

# family -> (diffusers class, config)
VIDEO_VAES = MappingProxyType(
    {
        "wan": ("AutoencoderKLWan", MappingProxyType(_WAN_VAE)),
        "hunyuanvideo": ("AutoencoderKLHunyuanVideo", MappingProxyType(_HUNYUAN_VAE)),
        "cogvideox": ("AutoencoderKLCogVideoX", MappingProxyType(_COGVIDEOX_VAE)),
    }
)


def vae_config(preset: Preset | str) -> tuple[str, MappingProxyType]:
    """(diffusers class name, config) of the VAE that decodes `preset`'s latents (ValueError for
    pixel-space presets, which have no VAE)."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    if p.pixel_space or p.vae_scale_factor == 1:
        raise ValueError(f"preset {p.name} denoises pixels directly: it has no VAE")
    if p.video:
        return VIDEO_VAES[p.family]
    key = "sd3" if p.latent_channels == 16 else "sd"
    config = VAE_CONFIGS[key]
    if int(config["latent_channels"]) != p.latent_channels:
        raise ValueError(f"no VAE for {p.latent_channels} latent channels ({p.name})")
    return "AutoencoderKL", config


def meta_vae(preset: Preset | str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The preset's VAE on the meta device (shapes only), in `dtype`."""
    import diffusers

    cls, config = vae_config(preset)
    with torch.device("meta"):
        vae = getattr(diffusers, cls).from_config(dict(config))
    return torch.nn.Module.to(vae, dtype).eval()


def unscale_video_latents(family: str, latents: torch.Tensor, config) -> torch.Tensor:
    """What each video pipeline hands its VAE's decode: the denoised latent (B, C, F', h, w)
    un-normalized with the VAE config's statistics (WanPipeline: z * std + mean per channel;
    HunyuanVideoPipeline and CogVideoXPipeline: z / scaling_factor)."""
    if family == "wan":
        shape = (1, latents.shape[1], 1, 1, 1)
        mean = torch.tensor(config["latents_mean"], dtype=latents.dtype).view(shape)
        std = torch.tensor(config["latents_std"], dtype=latents.dtype).view(shape)
        return latents * std.to(latents.device) + mean.to(latents.device)
    if family in ("hunyuanvideo", "cogvideox"):
        return latents / config["scaling_factor"]
    raise ValueError(f"no video VAE for family {family!r}; known: {', '.join(VIDEO_VAES)}")
