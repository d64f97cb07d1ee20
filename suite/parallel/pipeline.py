"""`pipefusion`: patch-level pipeline parallelism for DiTs (Wang et al. 2024, "PipeFusion").

The transformer's L blocks are cut into N contiguous stages, one per rank of the `pipefusion`
axis; each rank builds the model and frees every block outside its stage (parameters about P/N
plus the shared conditioning embeddings; the patch embedding lives on stage 0 and the output
head on stage N-1). The latent is cut into M bands of rows (patches); each stage runs the
patches one after another and sends the activations on point to point, asynchronously; the
last stage returns each patch's prediction to stage 0, which steps that patch's solver.
Attention reads a full-sequence K/V buffer per layer (fresh for the patches already done this
step, one step stale for the rest) after `warmup_steps` synchronous whole-image steps.

Only stage-boundary activations travel: per step each middle stage receives and sends the
whole image's activations once (2 x batch x tokens x hidden x element bytes), independent of L.

Model surgery: pipeline_stage.py; the patch-wise loop: pipeline_loop.py; bubble accounting:
pipeline_bubble.py. Families: pixart and dit (blocks whose only stream is the image). SD3 and
Flux are rejected: their joint-attention blocks update the text stream from all image tokens in
every block, which patch-wise processing changes; xDiT's handling of that is not implemented.
"""

from __future__ import annotations

from suite.parallel import Option, Parallelized, Strategy, register
from suite.parallel.pipeline_loop import PipeLoop
from suite.parallel.pipeline_stage import PIPE_PLANS, build_stage, hidden_size
from suite.parallel.plans import get_plan, image_tokens

OPTIONS = {
    # M: patches (bands of latent rows) per image; None means M = N, the paper's recommendation
    "patches": Option(default=None, kind=int, minimum=1),
    # synchronous whole-image steps before the pipeline starts (xDiT's default: 1)
    "warmup_steps": Option(default=1, kind=int, minimum=0),
}


def resolve_patches(options: dict, stages: int) -> int:
    """M for N = `stages`: the option, or N when it is unset."""
    patches = options.get("patches")
    return stages if patches is None else int(patches)


def apply_pipefusion(workload, comm, options) -> Parallelized:
    family = workload.preset.family
    if family not in PIPE_PLANS:
        raise ValueError(f"pipefusion supports families {sorted(PIPE_PLANS)}, not {family!r}")
    mesh = comm.mesh
    stages, index = mesh.size("pipefusion"), mesh.rank("pipefusion")
    patches = resolve_patches(options, stages)
    model = workload.denoiser.model
    shards = mesh.size("ring") * mesh.size("ulysses")  # a sequence split inside each stage
    stage = build_stage(model, family, index, stages, patches, shards)
    loop = PipeLoop(
        comm=comm,
        stage=stage,
        warmup_steps=int(options["warmup_steps"]),
        hidden=hidden_size(model),
        token_patch=get_plan(family).token_patch,
        shards=shards,
    )
    return Parallelized(
        denoiser=workload.denoiser,
        inputs=workload.inputs,
        modules=[workload.denoiser],
        warmup_steps=int(options["warmup_steps"]),
        buffer_bytes=stage.kv_bytes,
        loop=loop,
    )


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
    if rows % patches:
        errors.append(
            f"height {spec.height} px gives {rows} token rows, which do not split into "
            f"{patches} equal patches; choose patches (M) dividing {rows}"
        )
    shards = degrees.get("ring", 1) * degrees.get("ulysses", 1)
    if not rows % patches and (rows // patches * cols) % shards:
        errors.append(
            f"a patch holds {rows // patches * cols} tokens, which do not split over ring x "
            f"ulysses = {shards} ranks; choose patches (M) so that tokens per patch divide"
        )
    return errors


register(
    Strategy(
        name="pipefusion",
        axes=("pipefusion",),
        families=frozenset(PIPE_PLANS),
        exact=False,
        paper="PipeFusion: Patch-level Pipeline Parallelism for DiT Inference (Wang et al. 2024)",
        apply=apply_pipefusion,
        options=OPTIONS,
        validate=validate_pipefusion,
    )
)
