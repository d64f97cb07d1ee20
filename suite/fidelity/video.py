"""Video fidelity: per-frame PSNR / SSIM / LPIPS, how the error moves in time, and FVD.

A video run's images are B clips of F frames, clip after clip (images/VIDEO.json), and frame t
of clip b is paired with frame t of clip b of the baseline (same seeds). With D_t = run frame t
- baseline frame t (per pixel and channel, signed, 8-bit values scaled to [0, 1]):

- psnr_frame, ssim_frame, lpips_frame (the row's `frame` = t): the image metric of frame t,
  mean over clips; the run's psnr / ssim / lpips rows are their mean over frames.
- psnr_frame_std: population standard deviation over frames of the per-frame PSNR, per clip,
  mean over clips [dB] (0 when every frame is equally close, identical videos included).
- flicker: mean |D_t - D_(t-1)| over clips, t >= 1 and pixels, divided by mean |D_t| over
  clips, t and pixels; 0 when the videos are identical. 0: the same error in every frame
  (stable, e.g. a constant offset); sqrt(2) ~ 1.41: errors independent from frame to frame
  (Gaussian, equal size); 2: an error that changes sign every frame (flickering). Relative to
  the error's size, so it says how the error moves, not how large it is (psnr says that).
- fvd: Frechet distance between I3D features (400 logits) of the run's clips and the
  baseline's: each frame resized (bilinear) so its shorter side is 224, centre-cropped to 224,
  scaled to [-1, 1], as StyleGAN-V computes FVD. Without the I3D weights it is stored missing
  with the reason; with fewer than 2 clips a side it cannot be computed (also stored missing).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from suite.fidelity import backbones as fb
from suite.fidelity import metrics as fm

FVD_SIZE = 224  # I3D's input frames
FVD_MIN_CLIPS = 2  # a covariance needs two clips a side
PER_FRAME = ("psnr_frame", "ssim_frame", "lpips_frame")
TEMPORAL = ("psnr_frame_std", "flicker")
VIDEO_METRICS = (*PER_FRAME, *TEMPORAL, "fvd")


def as_videos(images: torch.Tensor, clips: int, frames: int) -> torch.Tensor:
    """(clips * frames, 3, H, W) images, clip after clip -> (clips, frames, 3, H, W)."""
    if images.shape[0] != clips * frames:
        raise ValueError(f"{images.shape[0]} images are not {clips} clips x {frames} frames")
    return images.reshape(clips, frames, *images.shape[1:])


def _check(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim != 5 or a.shape[2] != 3:
        raise ValueError(f"need two (B, F, 3, H, W) videos of one shape; got {a.shape}, {b.shape}")


def per_frame(metric: str, a: torch.Tensor, b: torch.Tensor, net: Any = None) -> torch.Tensor:
    """(B, F) per-frame psnr / ssim / lpips of two (B, F, 3, H, W) videos in [0, 1]."""
    _check(a, b)
    fn = {"psnr": fm.psnr, "ssim": fm.ssim, "lpips": lambda x, y: fm.lpips(x, y, net)}[metric]
    return fn(a.flatten(0, 1), b.flatten(0, 1)).reshape(a.shape[:2])


def psnr_frame_std(a: torch.Tensor, b: torch.Tensor) -> float:
    """Std over frames of per-frame PSNR (population, per clip), mean over clips [dB]."""
    return _std_over_frames(per_frame("psnr", a, b))


def _std_over_frames(values: torch.Tensor) -> float:
    return float(values.double().std(dim=1, correction=0).mean())


def flicker(a: torch.Tensor, b: torch.Tensor) -> float:
    """mean |D_t - D_(t-1)| / mean |D_t| of the difference D = a - b of two (B, F, 3, H, W)
    videos (see the module docstring); 0 for identical videos. Needs F >= 2."""
    _check(a, b)
    if a.shape[1] < 2:
        raise ValueError(f"flicker needs at least 2 frames; got {a.shape[1]}")
    d = a.double() - b.double()
    size = d.abs().mean()
    if size == 0:
        return 0.0
    return float((d[:, 1:] - d[:, :-1]).abs().mean() / size)


def fvd_input(videos: torch.Tensor, size: int = FVD_SIZE) -> torch.Tensor:
    """(B, F, 3, H, W) in [0, 1] -> (B, 3, F, size, size) in [-1, 1]: shorter side resized to
    `size` (bilinear), centre crop, as StyleGAN-V prepares clips for its I3D."""
    b, f, c, h, w = videos.shape
    scale = size / min(h, w)
    hw = (max(size, math.ceil(h * scale)), max(size, math.ceil(w * scale)))
    x = F.interpolate(videos.flatten(0, 1).float(), size=hw, mode="bilinear", align_corners=False)
    top, left = (hw[0] - size) // 2, (hw[1] - size) // 2
    x = x[:, :, top : top + size, left : left + size]
    return (x.reshape(b, f, c, size, size).permute(0, 2, 1, 3, 4) * 2 - 1).contiguous()


@torch.no_grad()
def fvd_features(videos: torch.Tensor, extractor: Any, batch: int = 4) -> np.ndarray:
    """(B, D) features of (B, F, 3, H, W) videos in [0, 1] through `extractor` (I3DFeatures, or
    any callable on (N, 3, F, 224, 224) in [-1, 1])."""
    out = [extractor(fvd_input(v)).reshape(v.shape[0], -1) for v in videos.split(batch)]
    return torch.cat(out).double().numpy()


def fvd(run: torch.Tensor, base: torch.Tensor, extractor: Any) -> float:
    """FVD of two clip sets (B >= 2 each): Frechet distance of their feature statistics."""
    f_run, f_base = fvd_features(run, extractor), fvd_features(base, extractor)
    return fm.fid_from_features(f_run, f_base)


# -- rows of the fidelity table ---------------------------------------------------------------


def _row(metric: str, value: float | None, backbone: str, n: int, frame: int | None = None):
    return {
        "metric": metric,
        "value": None if value is None else float(value),
        "backbone": backbone,
        "n_images": int(n),
        "frame": frame,
        "reference": "original",
    }


def _fvd_row(run: torch.Tensor, base: torch.Tensor, backbones: Any, label: str) -> dict:
    clips = run.shape[0]
    try:
        name, extractor = backbones.get("fvd")
    except fb.MissingWeights as e:
        return _row("fvd", None, f"missing: {e}", clips)
    if clips < FVD_MIN_CLIPS:
        why = f"missing: FVD needs >= {FVD_MIN_CLIPS} clips per side, the run has {clips}; {name}"
        return _row("fvd", None, why, clips)
    try:
        f_run, f_base = fvd_features(run, extractor), fvd_features(base, extractor)
    except RuntimeError as e:  # e.g. I3D's temporal pooling on clips of very few frames
        reason = " ".join(str(e).split())[:160]
        why = f"missing: {name} failed on clips of {run.shape[1]} frames ({reason})"
        return _row("fvd", None, why, clips)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fm.FewImagesWarning)  # noted in the backbone instead
        few = fm.warn_few_images(clips, f_run.shape[1])
    backbone = f"{name}; clips: {label}" + ("; FEW CLIPS" if few else "")
    return _row("fvd", fm.fid_from_features(f_run, f_base), backbone, clips)


def video_rows(
    run: torch.Tensor,
    base: torch.Tensor,
    backbones: Any,
    label: str,
    per_image: dict[str, torch.Tensor] | None = None,
) -> list[dict]:
    """Per-frame, temporal and FVD rows ('original') of two (B, F, 3, H, W) videos.

    `backbones` is a suite.fidelity.score.Backbones (its lpips and fvd networks), `label` the
    image source; `per_image` holds (B * F,) psnr / ssim / lpips values already computed on the
    flattened frames (those absent are computed here; lpips only if its network loads)."""
    _check(run, base)
    clips, frames = run.shape[:2]
    pixels = f"none (pixels); images: {label}"
    values = {m: v.reshape(clips, frames) for m, v in (per_image or {}).items()}
    for metric in ("psnr", "ssim"):
        if metric not in values:
            values[metric] = per_frame(metric, run, base)
    name = None
    try:
        name, net = backbones.get("lpips")
        if "lpips" not in values:
            values["lpips"] = per_frame("lpips", run, base, net)
    except fb.MissingWeights:
        pass  # the run's lpips row already says why
    rows = []
    for metric, v in values.items():
        source = pixels if metric != "lpips" else f"{name}; images: {label}"
        rows += [_row(f"{metric}_frame", v[:, t].mean(), source, clips, t) for t in range(frames)]
    if frames >= 2:
        rows.append(_row("psnr_frame_std", _std_over_frames(values["psnr"]), pixels, clips))
        rows.append(_row("flicker", flicker(run, base), pixels, clips))
    return [*rows, _fvd_row(run, base, backbones, label)]
