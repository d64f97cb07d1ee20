"""A run's final latents as images: decode, save as PNG beside latents.pt, load back.

How latents become RGB (the source is written to images/SOURCE.txt and shown in reports):
- pixel-space presets (vae_scale_factor 1, 3 channels): the latent is the image in [-1, 1];
- a workload whose `weights` name a local pipeline directory with a `vae/` folder: VAE decode;
- otherwise a fixed latent-to-RGB projection (PROJECTION below): no network, the same map for
  every run, so differences between runs show, though the colours mean nothing.
Video latents (B, C, F', h, w) follow the same rule: pixel space; a pipeline directory's `vae/`
(the model's causal 3-D VAE, F' latent frames -> 4 (F' - 1) + 1 frames at full size); else the
projection of each latent frame. They are saved as one PNG per frame, clip after clip, with the
layout in images/VIDEO.json so that scores can be per frame.
Fidelity is always computed on the saved 8-bit PNGs, as the papers score saved images.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

IMAGES = "images"
SOURCE_FILE = "SOURCE.txt"
VIDEO_FILE = "VIDEO.json"  # {"clips": B, "frames": F} of a video run's images

# Short labels (stored in SOURCE.txt and the fidelity table's backbone column) and what they mean.
PIXEL_SPACE = "pixel space"
PROJECTION = "latent projection"
VAE = "VAE decode"
VIDEO_VAE = "video VAE decode"
SOURCES: dict[str, str] = {
    PIXEL_SPACE: "pixel space: the model denoises RGB directly, the final latent is the image",
    PROJECTION: "latent projection: no VAE weights, so a fixed latent-to-RGB map (no network) "
    "makes the images: latent channel c of C gets hue angle 2*pi*c/C, rgb = clip(0.5 + 0.25 W z, "
    "0, 1) with W[k, c] = sqrt(2/C) cos(2*pi*c/C - 2*pi*k/3), at latent resolution; colours mean "
    "nothing, but differences between runs show",
    VAE: "VAE decode: the pipeline's AutoencoderKL (latents / scaling_factor + shift_factor)",
    VIDEO_VAE: "video VAE decode: the pipeline's 3-D VAE (AutoencoderKLWan, "
    "AutoencoderKLHunyuanVideo or AutoencoderKLCogVideoX) on the latents its pipeline hands it, "
    "every frame of the clip",
}


def projection_matrix(channels: int) -> torch.Tensor:
    """(3, C) hue-wheel projection: each latent channel is a colour direction of unit power."""
    c = torch.arange(channels, dtype=torch.float64)
    k = torch.arange(3, dtype=torch.float64)[:, None]
    w = math.sqrt(2.0 / channels) * torch.cos(2 * math.pi * c / channels - 2 * math.pi * k / 3)
    return w.float()


def project_latents(latents: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) latents -> (N, 3, h, w) RGB in [0, 1] by the fixed projection."""
    w = projection_matrix(latents.shape[1]).to(latents.device)
    rgb = torch.einsum("kc,nchw->nkhw", w, latents.float())
    return (0.5 + 0.25 * rgb).clamp(0, 1)


def _vae_dir(weights: str | None) -> Path | None:
    if not weights:
        return None
    path = Path(weights).expanduser()
    return path if (path / "vae" / "config.json").is_file() else None


@torch.no_grad()
def vae_decode(latents: torch.Tensor, vae_dir: Path, device: str = "cpu") -> torch.Tensor:
    """Decode (N, C, h, w) latents with the pipeline's AutoencoderKL; RGB in [0, 1]."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir, subfolder="vae").to(device).eval()
    scale = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0  # SD3 / Flux latents are shifted
    out = []
    for z in latents.float().split(4):  # a few at a time: decoder activations are large
        x = vae.decode(z.to(device) / scale + shift, return_dict=False)[0]
        out.append(((x.float().cpu() + 1) / 2).clamp(0, 1))
    return torch.cat(out)


@torch.no_grad()
def video_vae_decode(
    preset, latents: torch.Tensor, vae_dir: Path, device: str = "cpu"
) -> torch.Tensor:
    """Decode (B, C, F', h, w) video latents with the pipeline's own 3-D VAE, one clip at a time
    (its activations are large); (B, 3, F, H, W) RGB in [0, 1]."""
    import diffusers

    from workloads.vae import unscale_video_latents, vae_config

    cls, _ = vae_config(preset)
    vae = getattr(diffusers, cls).from_pretrained(vae_dir, subfolder="vae").to(device).eval()
    clips = []
    for z in latents.float().split(1):
        z = unscale_video_latents(preset.family, z.to(device), vae.config)
        x = vae.decode(z.to(vae.dtype), return_dict=False)[0]
        clips.append(((x.float().cpu() + 1) / 2).clamp(0, 1))
    return torch.cat(clips)


def decode(
    preset, latents: torch.Tensor, weights: str | None = None, device: str = "cpu"
) -> tuple[torch.Tensor, str]:
    """(images (N, 3, H, W) in [0, 1], how they were made) for a preset's final latents.

    Video latents (B, C, F', h, w) give B clips of frames, clip after clip: decoded by the
    pipeline's video VAE when `weights` has one (4 (F' - 1) + 1 frames each), else one image per
    latent frame by the image rule (pixel space, or the projection)."""
    if latents.ndim == 5:
        vae_dir = None if preset.pixel_space else _vae_dir(weights)
        if vae_dir is not None:
            video = video_vae_decode(preset, latents, vae_dir, device)
            return video.transpose(1, 2).flatten(0, 1), VIDEO_VAE
        frames = latents.transpose(1, 2).flatten(0, 1)  # (B * F, C, h, w), clip after clip
        if preset.pixel_space:
            return ((frames.float() + 1) / 2).clamp(0, 1), PIXEL_SPACE
        return project_latents(frames), PROJECTION
    if preset.pixel_space:
        return ((latents.float() + 1) / 2).clamp(0, 1), PIXEL_SPACE
    vae_dir = _vae_dir(weights)
    if vae_dir is not None:
        return vae_decode(latents, vae_dir, device), VAE
    return project_latents(latents), PROJECTION


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) uint8, rounded to nearest."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_images(images: torch.Tensor, folder: Path, source: str) -> list[Path]:
    """Write images as folder/00000.png ... and the decode source as folder/SOURCE.txt."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, arr in enumerate(to_uint8(images)):
        path = folder / f"{i:05d}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    (folder / SOURCE_FILE).write_text(source + "\n")
    return paths


def image_files(folder: Path) -> list[Path]:
    """Image files of a folder (png / jpg / jpeg / webp / bmp), sorted by name."""
    exts = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in exts)


def load_images(folder: Path, limit: int | None = None) -> torch.Tensor:
    """A folder's images as (N, 3, H, W) float in [0, 1] (RGB; all must share one size)."""
    from PIL import Image

    files = image_files(folder)[:limit]
    if not files:
        raise FileNotFoundError(f"no images in {folder}")
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise ValueError(f"images in {folder} differ in size: {sorted(sizes)}")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def image_source(folder: Path) -> str:
    """How a run's images were made (SOURCE.txt), or 'image files' for a plain folder."""
    path = Path(folder) / SOURCE_FILE
    return path.read_text().strip() if path.is_file() else "image files"


def write_run_images(spec, run_dir: Path, latents: torch.Tensor | None = None) -> Path:
    """Decode a run's latents (given, or run_dir/latents.pt) to run_dir/images/; returns it."""
    import workloads

    if latents is None:
        latents = torch.load(run_dir / "latents.pt", weights_only=True)
    preset = workloads.get_preset(spec.workload)
    device = "cuda" if spec.device == "cuda" and torch.cuda.is_available() else "cpu"
    images, source = decode(preset, latents, getattr(spec, "weights", None), device)
    folder = run_dir / IMAGES
    save_images(images, folder, source)
    if latents.ndim == 5:  # a VAE decode gives more frames than latent frames
        clips = latents.shape[0]
        save_video_layout(folder, clips=clips, frames=images.shape[0] // clips)
    return folder


def save_video_layout(folder: Path, clips: int, frames: int) -> None:
    """Record that a folder's images are `clips` videos of `frames` frames, clip after clip."""
    (Path(folder) / VIDEO_FILE).write_text(json.dumps({"clips": clips, "frames": frames}) + "\n")


def video_layout(folder: Path) -> tuple[int, int] | None:
    """(clips, frames per clip) of a video run's image folder; None for images."""
    path = Path(folder) / VIDEO_FILE
    if not path.is_file():
        return None
    layout = json.loads(path.read_text())
    return int(layout["clips"]), int(layout["frames"])
