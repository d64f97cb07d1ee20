"""Batch-level strategies: `data` (independent images per rank) and `cfg` (one CFG branch per
rank).

Data parallelism: each rank denoises a contiguous shard of the batch of seeds/prompts with the
whole model; nothing is exchanged during denoising, and the final latents are all-gathered once
at the end, so the output equals the single-device output exactly.

CFG parallelism: classifier-free guidance runs the model on [unconditional; conditional] inputs
every step. With cfg=2, axis-rank 0 runs the unconditional branch and axis-rank 1 the conditional
one on the same latents; one all-gather of the branch predictions per step gives both ranks
both, and each combines them and takes the same solver step, so their latents stay identical.
Strategies composed inside cfg (e.g. cfg+ulysses) see a workload of B images without a CFG
branch.
"""

from __future__ import annotations

import torch

from suite.parallel import Parallelized


def apply_data(workload, comm, options) -> Parallelized:
    mesh = comm.mesh
    inputs = workload.inputs.shard(mesh.rank("data"), mesh.size("data"))

    def gather(latents):
        return comm.all_gather(latents, "data", dim=0, layer="output")

    return Parallelized(
        denoiser=workload.denoiser, inputs=inputs, gather=gather, modules=[workload.denoiser]
    )


def apply_cfg(workload, comm, options) -> Parallelized:
    """This rank's CFG branch; the denoiser returns the guided prediction on every rank."""
    from workloads.inputs import Inputs
    from workloads.loop import combine_cfg

    mesh, inputs = comm.mesh, workload.inputs
    if mesh.size("cfg") != 2 or inputs.uncond is None:
        raise ValueError("cfg needs a cfg degree of 2 and a workload with a CFG branch")
    branch = inputs.uncond if mesh.rank("cfg") == 0 else inputs.cond
    guidance = workload.guidance

    def denoiser(sample: torch.Tensor, timestep: torch.Tensor, cond: dict) -> torch.Tensor:
        pred = workload.denoiser(sample, timestep, cond)
        # [uncond; cond], the batch order of the single-device loop, then its combination
        both = comm.all_gather(pred, "cfg", dim=0, layer="cfg")
        return combine_cfg(both, guidance)

    return Parallelized(
        denoiser=denoiser,
        inputs=Inputs(inputs.latents, branch, None),
        modules=[workload.denoiser],
    )
