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
pipeline_bubble.py. Families: pixart, dit and wan (blocks whose only stream is the image or
video; Wan's patches are runs of whole token rows of its frame-major video sequence, see
pipeline_stage.py). SD3, Flux, HunyuanVideo and CogVideoX are rejected: their joint-attention
blocks update the text stream from all image tokens in every block, which patch-wise processing
changes; xDiT's handling of that is not implemented.
"""

from __future__ import annotations

from suite.parallel import Parallelized
from suite.parallel.checks import resolve_patches
from suite.parallel.pipeline_loop import PipeLoop
from suite.parallel.pipeline_stage import PIPE_PLANS, build_stage, hidden_size
from suite.parallel.plans import get_plan


def apply_pipefusion(workload, comm, options) -> Parallelized:
    family = workload.preset.family
    if family not in PIPE_PLANS:
        raise ValueError(f"pipefusion supports families {sorted(PIPE_PLANS)}, not {family!r}")
    mesh = comm.mesh
    stages, index = mesh.size("pipefusion"), mesh.rank("pipefusion")
    patches = resolve_patches(options, stages)
    model = workload.denoiser.model
    shards = mesh.size("ring") * mesh.size("ulysses")  # a sequence split inside each stage
    # latent pixels per token side: a video preset's own patch (Wan-shaped presets may
    # patchify 4x4 pixels), else the family plan's
    preset = workload.preset
    token_patch = preset.spatial_multiple if preset.video else get_plan(family).token_patch
    stage = build_stage(model, family, index, stages, patches, shards, token_patch)
    loop = PipeLoop(
        comm=comm,
        stage=stage,
        warmup_steps=int(options["warmup_steps"]),
        hidden=hidden_size(model),
        token_patch=token_patch,
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
