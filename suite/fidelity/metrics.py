"""Fidelity metrics: what a parallel method does to the images, as DistriFusion and PipeFusion
measure it ("w.r.t. original model outputs" and "w.r.t. ground truth").

All metrics read 8-bit RGB images in [0, 1] (the run's saved PNGs, see suite.fidelity.images):
- psnr: per image 10 log10(1 / MSE) with data range 1, mean over images [dB]. Identical images
  have infinite PSNR; it is capped at PSNR_CAP_DB so tables and plots stay finite.
- ssim: torchmetrics SSIM (Gaussian window 11, sigma 1.5, data range 1), mean over images.
- lpips: AlexNet LPIPS v0.1 as torchmetrics computes it (inputs in [0, 1], normalize=True),
  mean over images; lower is closer.
- fid: clean-fid "clean" mode (PIL bicubic resize to 299, TorchScript Inception-v3, Frechet
  distance of the 2048-d pool features); fid_torchmetrics: torchmetrics' FID as a cross-check.
  Either rests on few images in a benchmark run: FID_MIN_IMAGES warns below the feature dimension.
Paired metrics (psnr, ssim, lpips) compare image i of a run with image i of its baseline, which
has the same seeds; vs ground truth only the unpaired FIDs are computed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

PSNR_CAP_DB = 100.0  # identical images (MSE 0) score this instead of +inf
PAIRED = ("psnr", "ssim", "lpips")
FIDS = ("fid", "fid_torchmetrics")
METRICS = (*PAIRED, *FIDS)


class FewImagesWarning(UserWarning):
    """FID computed on fewer images than its feature dimension: biased and noisy."""


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 3:
        raise ValueError(
            f"need two (N, 3, H, W) image batches of one shape; got {a.shape}, {b.shape}"
        )


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) per-image PSNR [dB] of images in [0, 1], capped at PSNR_CAP_DB."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _check_pair(a, b)
    per_image = peak_signal_noise_ratio(
        a.double(), b.double(), data_range=1.0, reduction="none", dim=(1, 2, 3)
    )
    return per_image.nan_to_num(posinf=PSNR_CAP_DB).clamp(max=PSNR_CAP_DB).float()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) per-image SSIM of images in [0, 1] (1 = identical)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(a, b)
    return structural_similarity_index_measure(
        a.double(), b.double(), data_range=1.0, reduction="none"
    ).float()


@torch.no_grad()
def lpips(a: torch.Tensor, b: torch.Tensor, net: torch.nn.Module) -> torch.Tensor:
    """(N,) per-image LPIPS of images in [0, 1] through `net` (an _LPIPS-like module taking
    (in0, in1, normalize=True))."""
    _check_pair(a, b)
    out = [
        net(x, y, normalize=True).reshape(-1) for x, y in zip(a.split(16), b.split(16), strict=True)
    ]
    return torch.cat(out).float()


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)): clean-fid's implementation (scipy sqrtm,
    eps on the diagonal for a singular product)."""
    from cleanfid.fid import frechet_distance as clean_frechet

    return float(clean_frechet(mu1, np.atleast_2d(sigma1), mu2, np.atleast_2d(sigma2)))


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """Frechet distance of two (N, D) feature sets (N >= 2 each)."""
    if len(f1) < 2 or len(f2) < 2:
        raise ValueError(f"FID needs at least 2 images per side; got {len(f1)} and {len(f2)}")
    return frechet_distance(*feature_stats(f1), *feature_stats(f2))


def warn_few_images(n: int, dim: int) -> str | None:
    """The warning text (also issued as FewImagesWarning) when n images are too few for dim."""
    if n >= dim:
        return None
    text = (
        f"FID rests on {n} images, fewer than its {dim} feature dimensions: the covariance is "
        f"rank-deficient, so the value is biased and noisy; compare it only with FIDs on as "
        f"many images, or use >= {dim} (the papers use thousands)"
    )
    warnings.warn(text, FewImagesWarning, stacklevel=2)
    return text


@torch.no_grad()
def clean_features(files: list[Path], extractor: Callable, batch_size: int = 32) -> np.ndarray:
    """(N, D) features of image files the clean-fid "clean" way: PIL bicubic resize of the
    8-bit image to 299x299, values in [0, 255], then `extractor`."""
    from cleanfid.fid import get_files_features

    return get_files_features(
        [str(f) for f in files],
        model=extractor,
        num_workers=0,
        batch_size=batch_size,
        device=torch.device("cpu"),
        mode="clean",
        verbose=False,
    )


@torch.no_grad()
def torchmetrics_fid_value(metric, real: torch.Tensor, fake: torch.Tensor) -> float:
    """torchmetrics FrechetInceptionDistance of two image batches in [0, 1] (metric reset)."""
    metric.reset()
    for x in real.split(32):
        metric.update(x, real=True)
    for x in fake.split(32):
        metric.update(x, real=False)
    return float(metric.compute())
