"""Clip sizes a video preset accepts (frames x height x width in pixels), torch-free.

A clip of F frames encodes to (F - 1) / c + 1 latent frames (the VAEs are causal in time: the
first frame alone, then c frames per latent frame; c = 4 for every latent video preset here,
c = 1 for the pixel-space trained-tiny-video, which has no VAE and takes any F), and the
transformer patchifies p_t latent frames and p x p latent pixels into one token. So F must be
c·k + 1, its latent frames a multiple of p_t, and height and width multiples of the VAE's
scale (8, or 1 in pixel space) times p. Config
validation runs these before any process starts; build() runs them again on every rank.
"""

from __future__ import annotations

from .limits import MAX_SIDE, check_resolution
from .presets import Preset

Size = tuple[int, ...]  # (height, width) for an image, (frames, height, width) for a clip


def temporal_patch(preset: Preset) -> int:
    """Latent frames per token (1 for Wan 2.1, HunyuanVideo and CogVideoX 1.0)."""
    c = preset.config
    if preset.family == "wan":
        return int(c["patch_size"][0])
    return int(c.get("patch_size_t") or 1)


def latent_frames(preset: Preset, frames: int) -> int:
    """Latent frames of a clip of `frames` frames."""
    return (frames - 1) // preset.temporal_compression + 1


def tokens_per_frame(preset: Preset, height: int, width: int) -> int:
    """Tokens per latent frame (per temporal patch) at height x width pixels."""
    side = preset.vae_scale_factor * preset.spatial_multiple
    return (height // side) * (width // side)


def video_tokens(preset: Preset, frames: int, height: int, width: int) -> int:
    """Video tokens of one clip: the sequence that attention sees, text not counted."""
    return (
        latent_frames(preset, frames)
        // temporal_patch(preset)
        * tokens_per_frame(preset, height, width)
    )


def _rope_limit(preset: Preset) -> int:
    """Wan reads rope frequencies from a table of rope_max_seq_len positions per axis; 0: none."""
    return int(preset.config.get("rope_max_seq_len", 0)) if preset.family == "wan" else 0


def frames_rule(preset: Preset) -> str:
    """The frame counts the preset accepts, in words."""
    c, pt = preset.temporal_compression, temporal_patch(preset)
    step = c * pt
    if step == 1:  # pixel space (no VAE) and one frame per token: any clip length
        return "any number of frames >= 1 (pixel space: no temporal VAE compression)"
    first = [step * k + 1 for k in range(1, 4)]
    why = f"temporal VAE compression {c}" + (f" x temporal patch {pt}" if pt > 1 else "")
    return f"{step}k+1 frames ({why}), e.g. {', '.join(map(str, first))}, ..."


def video_rule(preset: Preset) -> str:
    """What clip sizes the preset accepts, in words."""
    multiple = preset.vae_scale_factor * preset.spatial_multiple
    limit = _rope_limit(preset)
    side = f"height and width multiples of {multiple} px" + (
        f" up to {limit * multiple}" if limit else ""
    )
    return f"frames x height x width: {frames_rule(preset)}; {side}"


def _nearest_frames(preset: Preset, frames: int) -> list[int]:
    step = preset.temporal_compression * temporal_patch(preset)
    below = max(1, (frames - 1) // step * step + 1)
    return sorted({below, below + step})


def check_video_size(preset: Preset, frames: int, height: int, width: int) -> None:
    """ValueError unless a clip of frames x height x width pixels fits the preset's VAE and
    patch grid; the message names the allowed values."""
    if not preset.video:
        raise ValueError(
            f"preset {preset.name!r} is an image model: give height x width (or one int), not "
            f"frames x height x width ({frames}x{height}x{width})"
        )
    step = preset.temporal_compression * temporal_patch(preset)
    if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
        raise ValueError(f"frames={frames!r} must be a positive integer: {frames_rule(preset)}")
    if (frames - 1) % step:
        near = " or ".join(map(str, _nearest_frames(preset, frames)))
        raise ValueError(
            f"frames={frames} is not allowed for preset {preset.name!r}: must be "
            f"{frames_rule(preset)}; nearest: {near}"
        )
    _check_sides(preset, height, width)
    limit = _rope_limit(preset)
    multiple = preset.vae_scale_factor * preset.spatial_multiple
    counts = {
        "latent frames": latent_frames(preset, frames) // temporal_patch(preset),
        "token rows": height // multiple,
        "token columns": width // multiple,
    }
    for what, count in counts.items():
        if limit and count > limit:
            raise ValueError(
                f"{frames}x{height}x{width} is not allowed for preset {preset.name!r}: {count} "
                f"{what} exceed its rope table (rope_max_seq_len {limit} positions per axis)"
            )


def _check_sides(preset: Preset, height: int, width: int) -> None:
    multiple = preset.vae_scale_factor * preset.spatial_multiple
    for field, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % multiple:
            raise ValueError(
                f"{field}={value!r} is not allowed for preset {preset.name!r}: must be a positive "
                f"multiple of {multiple} pixels (vae_scale_factor {preset.vae_scale_factor} x "
                f"patch {preset.spatial_multiple})"
            )
        if value > MAX_SIDE:
            raise ValueError(
                f"{field}={value} is not allowed for preset {preset.name!r}: at most {MAX_SIDE} "
                "pixels"
            )


def check_size(preset: Preset, size: Size) -> None:
    """ValueError unless `size` ((h, w) for an image model, (frames, h, w) for a video model)
    fits the preset."""
    if len(size) == 3:
        check_video_size(preset, *size)
        return
    if preset.video:
        f, h, w = preset.native_frames, preset.native_resolution, preset.native_width
        raise ValueError(
            f"preset {preset.name!r} is a video model: give frames x height x width (e.g. "
            f"'{f}x{h}x{w}'), not {'x'.join(map(str, size))}"
        )
    check_resolution(preset, *size)


def size_rule(preset: Preset) -> str:
    """What sizes the preset accepts, in words (images and clips alike)."""
    from .limits import resolution_rule

    return video_rule(preset) if preset.video else resolution_rule(preset)


def native_size(preset: Preset) -> Size:
    """The preset's default size: (frames, h, w) for video, (h, w) for images."""
    if preset.video:
        return preset.native_frames, preset.native_resolution, preset.native_width
    return preset.native_resolution, preset.native_resolution


def format_size(size: Size) -> str:
    """'81x480x832' or '1024x1024'."""
    return "x".join(map(str, size))
