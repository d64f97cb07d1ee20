"""Sequence parallelism for DiTs: `ulysses`, `ring` and `usp` (ulysses x ring).

- Ulysses (DeepSpeed-Ulysses, Jacobs et al. 2023): each rank holds N/n image tokens with all
  heads; an all-to-all before attention gives every rank all N tokens of H/n heads, another after
  it returns to the token split. Not overlappable; bytes per attention layer and rank
  4 * B * (N/n) * hidden * dtype (Q, K, V, O buffers).
- Ring (Liu et al. 2023): each rank keeps its queries; the K/V blocks travel the ring in n-1 hops
  of async send/recv, each hop overlapped with the attention of the block in hand; partial outputs
  are merged by their log-sum-exp. Per layer each rank sends (n-1) * 2 * B * (N/n) * hidden * dtype.
- USP (Fang & Zhao 2024): Ulysses inside (innermost axis, fastest links), Ring outside.

The token sequence is split after the patch embedding (or, for Flux, the packed tokens are split
before the model; for Wan, at the first block's input) and gathered before the output head, so
the denoiser keeps its contract: full latent in, full prediction out on every rank. Everything
between the two hooks is per token except attention, which the plan's attention processors
handle (suite/parallel/attention.py). Rotary tables built from the full latent (video models)
are split with the tokens; CogVideoX's patch embedding emits [text; video] and only the video
part is split.
"""

from __future__ import annotations

import torch

from suite.parallel import Parallelized
from suite.parallel.attention import LocalCore, SequenceCore, install, track_text_length
from suite.parallel.plans import get_plan
from suite.parallel.token_split import install_splits, module_at


def apply_sequence(workload, comm, options) -> Parallelized:
    """Split the image tokens over the 'ring' x 'ulysses' axes (either may be 1)."""
    plan = get_plan(workload.preset.family)
    if not plan.sequence_parallel:
        raise ValueError(f"family {plan.family!r} has no token sequence to split")
    mesh = comm.mesh
    ring, ulysses = mesh.size("ring"), mesh.size("ulysses")
    parts, index = ring * ulysses, mesh.rank("ring") * ulysses + mesh.rank("ulysses")
    model = workload.denoiser.model

    def local(x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's contiguous part of a token tensor."""
        if x.shape[dim] % parts:
            raise ValueError(f"{x.shape[dim]} tokens do not split into {parts} equal parts")
        return x.chunk(parts, dim=dim)[index]

    text_length = track_text_length(model, plan)
    # cross-attention needs nothing: local queries, and the text keys are on every rank
    install(
        model,
        plan,
        lambda layout: LocalCore() if layout == "cross" else SequenceCore(comm),
        text_length,
    )

    install_splits(model, plan, local, text_length)

    def gather(module, args, out):
        # ulysses chunks are contiguous inside a ring block: gather them first, then the blocks
        out = comm.all_gather(out, "ulysses", dim=1, layer=plan.gather_after)
        return comm.all_gather(out, "ring", dim=1, layer=plan.gather_after)

    module_at(model, plan.gather_after).register_forward_hook(gather)
    return Parallelized(
        denoiser=workload.denoiser, inputs=workload.inputs, modules=[workload.denoiser]
    )
