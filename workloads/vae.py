"""The VAE that turns a preset's final latent into pixels: its architecture, written out here.

The denoising loop is what diffscale times; a pipeline call also decodes the latent (PipeFusion
and xDiT time the whole call when asked for images). The projection prices that decode with the
operator model from its operators recorded on the meta device (`analysis.stages`).

Every latent-diffusion preset here decodes with the Stable Diffusion VAE architecture
(diffusers' AutoencoderKL: 4 levels of 128 / 256 / 512 / 512 channels, 2 ResNet blocks per
level (3 in the decoder), 32 GroupNorm groups, one single-head attention block in the middle);
SDXL's VAE (stabilityai/sdxl-vae) and PixArt-alpha's (sd-vae-ft-ema) share it and differ only in
weights and `scaling_factor`. Flux and SD3 use 16 latent channels (the same levels otherwise).
"""

from __future__ import annotations

from types import MappingProxyType

import torch

from .presets import Preset, get_preset

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


def vae_config(preset: Preset | str) -> MappingProxyType:
    """The AutoencoderKL config that decodes `preset`'s latents (ValueError for pixel-space
    presets, which have no VAE)."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    if p.pixel_space or p.vae_scale_factor == 1:
        raise ValueError(f"preset {p.name} denoises pixels directly: it has no VAE")
    key = "sd3" if p.latent_channels == 16 else "sd"
    config = VAE_CONFIGS[key]
    if int(config["latent_channels"]) != p.latent_channels:
        raise ValueError(f"no VAE for {p.latent_channels} latent channels ({p.name})")
    return config


def meta_vae(preset: Preset | str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The preset's AutoencoderKL on the meta device (shapes only), in `dtype`."""
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL.from_config(dict(vae_config(preset)))
    return torch.nn.Module.to(vae, dtype).eval()
