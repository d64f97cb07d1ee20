"""A procedurally generated, class-labelled image set: one coloured shape on a plain background.

Used to train the `trained-tiny-*` presets (workloads/train_tiny.py) and as their ground-truth
reference for fidelity. Every image is a pure function of (seed, index range), drawn on the fly:
nothing is downloaded or stored. Shapes are anti-aliased by 4x supersampling so edges are
smooth enough for a small model to learn and sharp enough that seams and blur show.
"""

from __future__ import annotations

import torch

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross")

_SUPERSAMPLE = 4


def _masks(label: torch.Tensor, cx, cy, r, x, y) -> torch.Tensor:
    """(N, S, S) boolean masks of each image's shape on the supersampled grid x, y in [0, 1]."""
    dx, dy = x - cx, y - cy
    circle = dx.square() + dy.square() <= r.square()
    square = torch.maximum(dx.abs(), dy.abs()) <= 0.82 * r
    # upward triangle: apex at cy - r, base at cy + 0.75 r, half-width r at the base
    depth = (dy + r) / (1.75 * r)
    triangle = (dy <= 0.75 * r) & (dx.abs() <= depth * r) & (depth >= 0)
    arm = 0.32 * r
    cross = ((dx.abs() <= arm) & (dy.abs() <= r)) | ((dy.abs() <= arm) & (dx.abs() <= r))
    shapes = torch.stack([circle, square, triangle, cross])  # (4, N, S, S)
    return shapes[label, torch.arange(label.shape[0])]


def shapes_batch(
    n: int, size: int = 32, *, generator: torch.Generator, labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` images (n, 3, size, size) in [0, 1] and their int64 class labels (indices of CLASSES).

    Centre, radius (0.2-0.34 of the side), background colour (each channel in [0, 0.45]) and
    foreground colour (each channel in [0.55, 1]) are drawn per image from `generator`.
    """
    g = generator
    if labels is None:
        labels = torch.randint(0, len(CLASSES), (n,), generator=g)
    r = 0.20 + 0.14 * torch.rand(n, 1, 1, generator=g)
    cx = r + (1 - 2 * r) * torch.rand(n, 1, 1, generator=g)
    cy = r + (1 - 2 * r) * torch.rand(n, 1, 1, generator=g)
    bg = 0.45 * torch.rand(n, 3, 1, 1, generator=g)
    fg = 0.55 + 0.45 * torch.rand(n, 3, 1, 1, generator=g)
    s = size * _SUPERSAMPLE
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / s
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    mask = _masks(labels, cx, cy, r, x, y).float()  # (n, s, s)
    # area-average the supersampled mask: anti-aliased coverage in [0, 1] per pixel
    cover = torch.nn.functional.avg_pool2d(mask[:, None], _SUPERSAMPLE)
    return bg + (fg - bg) * cover, labels


def reference_images(n: int, size: int = 32, seed: int = 1234) -> torch.Tensor:
    """`n` held-out images (n, 3, size, size) in [0, 1], balanced over classes (ground truth)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(CLASSES)
    return shapes_batch(n, size, generator=gen, labels=labels)[0]


def write_reference(folder: str, n: int, size: int = 32, seed: int = 1234) -> None:
    """Save `n` held-out shape images as PNGs: a ground-truth folder for fidelity's FID."""
    from pathlib import Path

    from PIL import Image

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    images = reference_images(n, size, seed)
    arrays = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, arr in enumerate(arrays):
        Image.fromarray(arr).save(out / f"{i:05d}.png")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write a ground-truth folder of shape images.")
    parser.add_argument("folder")
    parser.add_argument("--n", type=int, default=2048, help="images (FID wants >= 2048)")
    parser.add_argument("--size", type=int, default=32, help="pixels per side")
    args = parser.parse_args()
    write_reference(args.folder, args.n, args.size)
