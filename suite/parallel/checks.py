"""Every strategy's validation: combinations it cannot run, as sentences, before any process
starts. Torch-free (config validation imports this in milliseconds); the strategy modules keep
only what runs on a rank (`apply_*`) and read the shared helpers here.

Each `validate_*` takes the RunSpec and the workload Preset and returns error sentences.
"""

from __future__ import annotations

from suite.parallel.plans import PIPE_PLANS, PLANS, SEQUENCE_FAMILIES, get_plan, image_tokens

UNET_FAMILIES = frozenset({"unet", "unet2d"})  # convolutional: bands of latent rows, halos
COALESCE_MODES = ("none", "block", "step")  # distrifusion: async all-gathers batched
GN_MODES = ("separate", "stale", "corrected", "sync")  # distrifusion's GroupNorm statistics
# naive_patch's bands: images by rows, columns or both in turn; video (patch_video.py) along
# latent frames, token rows (height) or both in turn
SPLITS = ("row", "column", "alternate", "frames", "height")
IMAGE_SPLITS, VIDEO_SPLITS = ("row", "column", "alternate"), ("frames", "height", "alternate")
# distrifusion's: images by rows only; video by frames (the default there) or height
DISTRI_SPLITS = ("row", "frames", "height")


# -- video models ------------------------------------------------------------------------------

# Strategies that cannot run a video family, and why: told before any process starts. (The
# wrappers of diffusers' own parallelism are not listed: whether the library has a plan for a
# model class depends on its version, so the library answers at run time and the run is stored
# as skipped with its reason, as for the image models.)
_JOINT_PIPE = (
    "PipeFusion pipelines blocks whose text input is fixed (Wan's cross-attention); {model}'s "
    "blocks update the text stream from every video token by joint attention, so running the "
    "video in patches would change what the text sees (as for SD3 and Flux); pipefusion runs "
    "on Wan"
)
VIDEO_UNSUPPORTED_FAMILY = {
    ("pipefusion", "hunyuanvideo"): _JOINT_PIPE.format(model="HunyuanVideo"),
    ("pipefusion", "cogvideox"): _JOINT_PIPE.format(model="CogVideoX"),
}


def video_unsupported(name: str, family: str | None = None) -> str | None:
    """Why strategy `name` (parts joined by '+') cannot run a video preset of `family`; None if
    it can."""
    parts = [p.strip() for p in name.split("+")] if isinstance(name, str) else []
    why = {p: VIDEO_UNSUPPORTED_FAMILY.get((p, family)) for p in parts}
    reasons = [f"{p}: {text}" for p, text in why.items() if text]
    if not reasons:
        return None
    return reasons[0].split(": ", 1)[1] if len(parts) == 1 else "; ".join(reasons)


# -- data, cfg -------------------------------------------------------------------------------


def validate_data(spec, preset) -> list[str]:
    degree = dict(spec.degrees).get("data", 1)
    if spec.batch % degree:
        return [
            f"batch {spec.batch} does not split over data degree {degree}; "
            "the batch must be a multiple of the data degree"
        ]
    return []


def validate_cfg(spec, preset) -> list[str]:
    degree = dict(spec.degrees).get("cfg", 1)
    problems = []
    if degree != 2:
        problems.append(f"cfg degree {degree}; it must be 2 (one rank per guidance branch)")
    if not preset.cfg:
        problems.append(
            f"{preset.name} runs no unconditional branch (preset cfg=False, e.g. "
            "guidance-distilled); cfg parallelism needs a model with classifier-free guidance"
        )
    elif spec.guidance <= 1.0:
        problems.append(
            f"guidance {spec.guidance} runs no unconditional branch; cfg parallelism needs "
            "guidance > 1"
        )
    return problems


# -- patch: naive_patch, distrifusion ----------------------------------------------------------


def token_patch(preset) -> int:
    """Latent rows (and columns) per token of a token model (Flux packs 2x2 latent pixels)."""
    patch = int(preset.config.get("patch_size", 1))
    return 2 * patch if preset.family == "flux" else patch


def unet_downsample(preset) -> int:
    """Total downsampling factor of a UNet: each band must stay whole through it."""
    return 2 ** (len(preset.config["block_out_channels"]) - 1)


def _check_bands(spec, preset, axes: tuple[str, ...]) -> list[str]:
    """Errors unless the patch degree cuts the latent (UNet) or token grid into whole bands."""
    n = dict(spec.degrees).get("patch", 1)
    vae = preset.vae_scale_factor
    size = {"row": spec.height // vae, "column": spec.width // vae}
    if preset.family in UNET_FAMILIES:
        unit, multiple = "latent", unet_downsample(preset)
        why = f"the UNet downsamples by {multiple}, so each band must be a multiple of {multiple}"
    else:
        unit, multiple, patch = "token", 1, token_patch(preset)
        size = {k: v // patch for k, v in size.items()}
        why = f"tokens are {patch}x{patch} latent pixels"
    errors = []
    for axis in axes:
        total, name = size[axis], "rows" if axis == "row" else "columns"
        if total % (n * multiple):
            allowed = [d for d in range(1, total + 1) if total % (d * multiple) == 0]
            errors.append(
                f"patch degree {n} does not split the {total} {unit} {name} of "
                f"{spec.height}x{spec.width} px into equal bands ({why}); "
                f"allowed patch degrees here: {', '.join(map(str, allowed))}"
            )
    return errors


def _check_video_bands(spec, preset, split: str, allowed: tuple[str, ...]) -> list[str]:
    """Errors unless `split` names video axes and the patch degree cuts each into equal bands."""
    from workloads.video_size import latent_frames, temporal_patch

    if split not in allowed:
        return [
            f"option 'split' is {split!r}, which {preset.name} (a video model) does not "
            f"have; allowed on video: {', '.join(map(repr, allowed))}"
        ]
    n = dict(spec.degrees).get("patch", 1)
    rows = video_token_rows(preset, spec.height)
    sizes = {
        "frames": (latent_frames(preset, spec.frames) // temporal_patch(preset), "latent frames"),
        "height": (rows, "token rows per frame"),
    }
    clip = f"{spec.frames}x{spec.height}x{spec.width}"
    errors = []
    for axis in ("frames", "height") if split == "alternate" else (split,):
        total, unit = sizes[axis]
        if total % n:
            allowed_n = [d for d in range(1, total + 1) if total % d == 0]
            errors.append(
                f"patch degree {n} does not split the {total} {unit} of the {clip} clip into "
                f"equal bands (split: {split}); allowed patch degrees here: "
                f"{', '.join(map(str, allowed_n))}"
            )
    return errors


def video_token_rows(preset, height: int) -> int:
    """Token rows per frame of a video preset (its spatial patch is `spatial_multiple`)."""
    return height // (preset.vae_scale_factor * preset.spatial_multiple)


def _image_split(split: str, preset, allowed: tuple[str, ...]) -> list[str]:
    if split in allowed:
        return []
    return [
        f"option 'split' is {split!r}, which applies to video models only; allowed on "
        f"{preset.name} (an image model): {', '.join(map(repr, allowed))}"
    ]


def validate_naive_patch(spec, preset) -> list[str]:
    split = spec.options_dict.get("split", "alternate")
    if preset.video:
        return _check_video_bands(spec, preset, split, VIDEO_SPLITS)
    if bad := _image_split(split, preset, IMAGE_SPLITS):
        return bad
    return _check_bands(spec, preset, ("row", "column") if split == "alternate" else (split,))


def validate_distrifusion(spec, preset) -> list[str]:
    split = spec.options_dict.get("split")  # unset: rows on images, frames on video
    if preset.video:
        return _check_video_bands(spec, preset, split or "frames", ("frames", "height"))
    if bad := _image_split(split or "row", preset, ("row",)):
        return bad
    return _check_bands(spec, preset, ("row",))


# -- pipefusion --------------------------------------------------------------------------------


def resolve_patches(options: dict, stages: int) -> int:
    """PipeFusion's M for N = `stages`: the `patches` option, or N when it is unset."""
    patches = options.get("patches")
    return stages if patches is None else int(patches)


def validate_pipefusion(spec, preset) -> list[str]:
    """Combinations PipeFusion cannot run, as sentences (checked before any process starts)."""
    if preset.family not in PIPE_PLANS:
        return [
            f"pipefusion supports families {', '.join(sorted(PIPE_PLANS))}, not "
            f"{preset.family} ({preset.name}): joint-attention blocks are not pipelined"
        ]
    degrees = dict(spec.degrees)
    stages = degrees.get("pipefusion", 1)
    patches = resolve_patches(spec.options_dict, stages)
    errors = []
    inside = [a for a in ("tensor", "patch") if degrees.get(a, 1) > 1]
    if inside:
        errors.append(
            f"pipefusion composes with data, cfg, ring and ulysses; not with {', '.join(inside)}"
        )
    if patches < stages:
        errors.append(
            f"patches (M) is {patches} but the pipefusion degree (N) is {stages}; PipeFusion "
            "needs M >= N so that every stage has a patch to work on"
        )
    if stages > preset.layers:
        errors.append(
            f"pipefusion degree {stages} exceeds the {preset.layers} transformer blocks of "
            f"{preset.name}; every stage needs at least one block"
        )
    rows, cols = image_tokens(get_plan(preset.family), preset, spec.height, spec.width)
    where = f"height {spec.height} px gives {rows} token rows"
    if preset.video:
        side = preset.vae_scale_factor * preset.spatial_multiple
        rows, cols = spec.height // side, spec.width // side
        # a patch is a run of whole token rows of the frame-major sequence (it may span frames)
        from workloads.video_size import latent_frames, temporal_patch

        frames = latent_frames(preset, spec.frames) // temporal_patch(preset)
        where = (
            f"the {spec.frames}x{spec.height}x{spec.width} clip has {frames} latent frames x "
            f"{rows} = {frames * rows} token rows"
        )
        rows *= frames
    if rows % patches:
        allowed = [d for d in range(stages, rows + 1) if rows % d == 0]
        errors.append(
            f"{where}, which do not split into {patches} equal patches; choose patches (M) "
            f"dividing {rows} (M >= {stages}: {', '.join(map(str, allowed)) or 'none'})"
        )
    shards = degrees.get("ring", 1) * degrees.get("ulysses", 1)
    if not rows % patches and (rows // patches * cols) % shards:
        errors.append(
            f"a patch holds {rows // patches * cols} tokens, which do not split over ring x "
            f"ulysses = {shards} ranks; choose patches (M) so that tokens per patch divide"
        )
    return errors


# -- sequence: ulysses, ring, usp ----------------------------------------------------------------


def validate_sequence(spec, preset) -> list[str]:
    """Degrees that cannot split this workload, in sentences (checked before any start)."""
    problems = []
    if preset.family not in SEQUENCE_FAMILIES:
        return [f"family {preset.family} has no token sequence to split (a UNet: use patch)"]
    d = dict(spec.degrees)
    ring, ulysses = d.get("ring", 1), d.get("ulysses", 1)
    heads, tensor = preset.heads, d.get("tensor", 1)
    if heads % ulysses:
        allowed = [k for k in range(1, heads + 1) if heads % k == 0]
        problems.append(
            f"ulysses degree {ulysses} does not divide the {heads} attention heads of "
            f"{preset.name}; allowed ulysses degrees: {', '.join(map(str, allowed))}"
        )
    elif heads % tensor == 0 and (heads // tensor) % ulysses:
        # tensor parallelism leaves each rank heads / tensor heads, which ulysses splits again
        problems.append(
            f"ulysses degree {ulysses} does not divide the {heads // tensor} heads a rank holds "
            f"under tensor degree {tensor} ({heads} heads of {preset.name}); ulysses x tensor "
            "must divide the head count"
        )
    count, what, where, unit = _token_grid(spec, preset)
    if count % (ring * ulysses):
        problems.append(
            f"{what} = {count} {unit} tokens at {where} do not split into ring x ulysses = "
            f"{ring * ulysses} equal parts; the token count must be a multiple of the sequence "
            "degree"
        )
    return problems


def _token_grid(spec, preset) -> tuple[int, str, str, str]:
    """(tokens, their grid 'FxRxC' or 'RxC', the size they come from, 'video' | 'image')."""
    rows, cols = image_tokens(get_plan(preset.family), preset, spec.height, spec.width)
    if not preset.video:
        return rows * cols, f"{rows}x{cols}", f"{spec.height}x{spec.width} px", "image"
    from workloads.video_size import latent_frames, temporal_patch

    frames = latent_frames(preset, spec.frames) // temporal_patch(preset)
    where = f"{spec.frames}x{spec.height}x{spec.width}"
    return frames * rows * cols, f"{frames}x{rows}x{cols}", where, "video"


# -- tensor --------------------------------------------------------------------------------------


def head_counts(preset) -> list[int]:
    """Head counts of every attention layer (the UNet's differ per level)."""
    if preset.family == "unet":
        # diffusers' UNet reads attention_head_dim as the head count (see workloads.presets)
        cfg = preset.config
        heads = cfg.get("num_attention_heads") or cfg["attention_head_dim"]
        if not isinstance(heads, tuple | list):
            return [heads]
        # only levels that attend count (SDXL's first level, 5 heads, has no attention); the
        # mid block attends at the last level's head count
        down, up = cfg["down_block_types"], cfg["up_block_types"]
        levels = {
            i for i in range(len(heads)) if "Attn" in down[i] or "Attn" in up[len(heads) - 1 - i]
        }
        levels.add(len(heads) - 1)
        return sorted({heads[i] for i in levels})
    return [preset.heads]


def validate_tensor(spec, preset) -> list[str]:
    """Degrees that cannot shard this model, in sentences.

    UNet (DistriFusion's baseline on SDXL, whose layers attend with 10 and 20 heads): heads and
    GroupNorm groups may split unevenly, so any degree up to the smallest of them works. The
    other families split evenly: their fused layers (Flux's single-stream proj_out) assume equal
    shares, and no paper's baseline needs more.
    """
    n = dict(spec.degrees).get("tensor", 1)
    if preset.family not in PLANS:
        return [f"family {preset.family} has no tensor-parallel plan"]
    heads = head_counts(preset)
    if preset.family != "unet":
        bad = [h for h in heads if h % n]
        if not bad:
            return []
        allowed = [d for d in range(1, min(heads) + 1) if all(h % d == 0 for h in heads)]
        return [
            f"tensor degree {n} does not divide the attention head count(s) {bad} of "
            f"{preset.name}; the degree must divide every layer's head count {heads}; "
            f"allowed tensor degrees: {', '.join(map(str, allowed))}"
        ]
    groups = preset.config["norm_num_groups"]
    limit = min(*heads, groups)
    if n <= limit:
        return []
    return [
        f"tensor degree {n} exceeds what {preset.name} can split: every rank needs at least one "
        f"head of each attention layer (head counts {heads}) and one of the {groups} GroupNorm "
        f"groups of each ResNet block; allowed tensor degrees: 1 to {limit}"
    ]


# -- diffusers_cp, diffusers_tp ----------------------------------------------------------------


def validate_diffusers_cp(spec, preset) -> list[str]:
    """The library splits image (and text) or video tokens over ring x ulysses and heads over
    ulysses."""
    d = dict(spec.degrees)
    ring, ulysses = d.get("ring", 1), d.get("ulysses", 1)
    problems = []
    if preset.heads % ulysses:
        problems.append(
            f"ulysses degree {ulysses} does not divide the {preset.heads} attention heads of "
            f"{preset.name}"
        )
    count, _, _, unit = _token_grid(spec, preset)
    # images: the library splits the text too (Flux); video: Wan's plan keeps the text whole
    counts = [(unit, count)] + ([] if preset.video else [("text", preset.text_len)])
    for what, n in counts:
        if n % (ring * ulysses):
            problems.append(
                f"{n} {what} tokens do not split into ring x ulysses = {ring * ulysses} "
                "equal parts (the library splits them)"
            )
    return problems


def validate_diffusers_tp(spec, preset) -> list[str]:
    n = dict(spec.degrees).get("tensor", 1)
    if preset.heads % n:
        return [f"tensor degree {n} does not divide the {preset.heads} heads of {preset.name}"]
    return []
