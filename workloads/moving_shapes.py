"""Procedurally generated, class-labelled clips: one coloured shape moving over a plain background.

The training set of the `trained-tiny-video` preset (workloads/train_tiny_video.py) and its
ground truth for fidelity. A clip is a pure function of the generator's state: nothing is
downloaded or stored. Per clip the shape translates at a constant velocity (start and end
centres both inside the frame) and rotates at a constant angular velocity; size and colours stay
fixed, so everything that changes from frame to frame is motion. Shapes are drawn by
`workloads.shapes` (4x supersampled, anti-aliased) on rotated coordinates.
"""

from __future__ import annotations

import math

import torch

from .shapes import _SUPERSAMPLE, _masks

# indices into workloads.shapes' mask stack (circle, square, triangle): a rotating circle is a
# translating one, which keeps one class whose frames differ only by translation
VIDEO_CLASSES: tuple[str, ...] = ("circle", "square", "triangle")

MAX_TURN = math.pi / 12  # radians per frame, either direction (a quarter turn over 6 frames)


def moving_shapes_batch(
    n: int,
    frames: int = 8,
    size: int = 32,
    *,
    generator: torch.Generator,
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` clips (n, 3, frames, size, size) in [0, 1] and their int64 labels (VIDEO_CLASSES).

    Drawn per clip from `generator`: radius (0.18-0.30 of the side), start and end centres
    (uniform where the shape's circumscribed circle fits), start angle, turn per frame (up to
    MAX_TURN either way), background (channels in [0, 0.45]) and foreground (in [0.55, 1])."""
    g = generator
    if labels is None:
        labels = torch.randint(0, len(VIDEO_CLASSES), (n,), generator=g)
    r = 0.18 + 0.12 * torch.rand(n, 1, generator=g)
    reach = 1.2 * r  # a rotated square's corner: 0.82 r * sqrt(2) ~ 1.16 r
    start = reach + (1 - 2 * reach) * torch.rand(n, 2, generator=g)
    end = reach + (1 - 2 * reach) * torch.rand(n, 2, generator=g)
    angle0 = 2 * math.pi * torch.rand(n, 1, generator=g)
    turn = MAX_TURN * (2 * torch.rand(n, 1, generator=g) - 1)
    bg = 0.45 * torch.rand(n, 3, 1, 1, 1, generator=g)
    fg = 0.55 + 0.45 * torch.rand(n, 3, 1, 1, 1, generator=g)

    f = torch.arange(frames, dtype=torch.float32)
    progress = f / max(1, frames - 1)  # (frames,)
    centre = start[:, None] + (end - start)[:, None] * progress[None, :, None]  # (n, F, 2)
    theta = (angle0 + turn * f).reshape(-1, 1, 1)  # (n F, 1, 1)
    cx = centre[..., 0].reshape(-1, 1, 1)
    cy = centre[..., 1].reshape(-1, 1, 1)
    s = size * _SUPERSAMPLE
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / s
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    # pixel positions in the shape's own (rotated) frame, around its centre
    dx, dy = x - cx, y - cy
    cos, sin = torch.cos(theta), torch.sin(theta)
    rx, ry = cx + cos * dx + sin * dy, cy - sin * dx + cos * dy
    per_frame = labels.repeat_interleave(frames)
    radius = r.repeat_interleave(frames, dim=0).reshape(-1, 1, 1)
    mask = _masks(per_frame, cx, cy, radius, rx, ry).float()  # (n F, s, s)
    cover = torch.nn.functional.avg_pool2d(mask[:, None], _SUPERSAMPLE)  # (n F, 1, size, size)
    cover = cover.reshape(n, frames, size, size)[:, None]  # (n, 1, F, size, size)
    return bg + (fg - bg) * cover, labels


def reference_clips(n: int, frames: int = 8, size: int = 32, seed: int = 1234) -> torch.Tensor:
    """`n` held-out clips (n, 3, frames, size, size) in [0, 1], balanced over classes."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(VIDEO_CLASSES)
    return moving_shapes_batch(n, frames, size, generator=gen, labels=labels)[0]
