"""The `Preset` record: one model's diffusers class, architecture config and run defaults.

Its own module so that the image presets (`workloads.presets`) and the video presets
(`workloads.video_presets`) both build on it without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# unet2d: diffusers UNet2DModel, class-conditional, no text (the trained-tiny-unet preset)
# video families (workloads/video_presets.py): latents (B, C, frames, h, w)
VIDEO_FAMILIES = ("wan", "hunyuanvideo", "cogvideox")
FAMILIES = ("unet", "pixart", "dit", "sd3", "flux", "unet2d", *VIDEO_FAMILIES)


@dataclass(frozen=True)
class Preset:
    """One model: its diffusers class, architecture config and default run settings."""

    name: str
    family: str  # one of FAMILIES; selects the call convention and noise schedule
    model_class: str  # diffusers class name
    config: Mapping[str, Any] = field(hash=False)  # passed to cls.from_config
    latent_channels: int
    vae_scale_factor: int  # pixels per latent pixel
    spatial_multiple: int  # latent height / width must be multiples of this
    heads: int  # attention heads per attention layer (min over layers for the UNet)
    layers: int  # transformer blocks (DiTs) / transformer layers in total (UNet)
    text_len: int  # conditioning tokens (0: class-conditional)
    text_dim: int
    pooled_dim: int  # 0: no pooled embedding
    cfg: bool  # guidance > 1 runs an unconditional branch (batch doubled)
    default_scheduler: str
    default_steps: int
    default_guidance: float
    weights_subfolder: str  # "unet" or "transformer" inside a pipeline directory
    tiny: bool
    description: str
    native_resolution: int  # pixels, square: the resolution the model was trained at
    # packaged trained weights: a file in workloads/weights/ that build() loads ("" = random)
    weights_file: str = ""
    # overrides of the family's training noise schedule (e.g. prediction_type) for every solver
    scheduler_config: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    # video presets: frames per latent frame of the VAE (0: an image model), the default clip's
    # frames and width (native_resolution is then its height)
    temporal_compression: int = 0
    native_frames: int = 0
    native_width: int = 0
    # a text-conditioned model trained on class labels (trained-tiny-video): its prompts are the
    # fixed embeddings of workloads.inputs.class_prompts, row num_classes the null prompt
    prompt_classes: int = 0

    @property
    def video(self) -> bool:
        """True for a video model: its size is frames x height x width."""
        return self.temporal_compression > 0

    @property
    def num_classes(self) -> int:
        """Class count of a class-conditional model (0 otherwise); label num_classes is null."""
        if self.family == "dit":
            return int(self.config.get("num_embeds_ada_norm", 0))
        if self.family == "unet2d":
            # UNet2DModel's class embedding table holds the null label as its last row
            return int(self.config.get("num_class_embeds", 1)) - 1
        return self.prompt_classes

    @property
    def pixel_space(self) -> bool:
        """True when the model denoises pixels directly (its latent is the RGB image)."""
        return self.vae_scale_factor == 1 and self.latent_channels == 3

    @property
    def flow_matching(self) -> bool:
        """True when the model predicts a rectified-flow velocity (SD3, Flux)."""
        return self.family in ("sd3", "flux", "wan", "hunyuanvideo")


def frozen(config: dict[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(config)
