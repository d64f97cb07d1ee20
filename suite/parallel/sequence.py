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
before the model) and gathered before the output head, so the denoiser keeps its contract: full
latent in, full prediction out on every rank. Everything between the two hooks is per token
except attention, which the plan's attention processors handle (suite/parallel/attention.py).
"""

from __future__ import annotations

import torch

from suite.parallel import Parallelized, Strategy, register
from suite.parallel.attention import LocalCore, SequenceCore, install, track_text_length
from suite.parallel.plans import PLANS, find, get_plan, image_tokens

SEQUENCE_FAMILIES = frozenset(f for f, p in PLANS.items() if p.sequence_parallel)


def _module(model: torch.nn.Module, path: str) -> torch.nn.Module:
    (found,) = [m for name, m in find(model, path)] or [None]
    if found is None:
        raise ValueError(f"plan names module {path!r}, which {type(model).__name__} lacks")
    return found


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

    if plan.split_inputs:

        def split_inputs(module, args, kwargs):
            for name, dim in plan.split_inputs.items():
                kwargs[name] = local(kwargs[name], dim)
            return args, kwargs

        model.register_forward_pre_hook(split_inputs, with_kwargs=True)
    if plan.split_after:
        _module(model, plan.split_after).register_forward_hook(lambda m, a, out: local(out, 1))

    def gather(module, args, out):
        # ulysses chunks are contiguous inside a ring block: gather them first, then the blocks
        out = comm.all_gather(out, "ulysses", dim=1, layer=plan.gather_after)
        return comm.all_gather(out, "ring", dim=1, layer=plan.gather_after)

    _module(model, plan.gather_after).register_forward_hook(gather)
    return Parallelized(
        denoiser=workload.denoiser, inputs=workload.inputs, modules=[workload.denoiser]
    )


def _degrees(spec) -> tuple[int, int]:
    d = dict(spec.degrees)
    return d.get("ring", 1), d.get("ulysses", 1)


def validate_sequence(spec, preset) -> list[str]:
    """Degrees that cannot split this workload, in sentences (checked before any start)."""
    problems = []
    if preset.family not in SEQUENCE_FAMILIES:
        return [f"family {preset.family} has no token sequence to split (a UNet: use patch)"]
    ring, ulysses = _degrees(spec)
    heads = preset.heads
    if heads % ulysses:
        allowed = [d for d in range(1, heads + 1) if heads % d == 0]
        problems.append(
            f"ulysses degree {ulysses} does not divide the {heads} attention heads of "
            f"{preset.name}; allowed ulysses degrees: {', '.join(map(str, allowed))}"
        )
    rows, cols = image_tokens(get_plan(preset.family), preset, spec.height, spec.width)
    if (rows * cols) % (ring * ulysses):
        problems.append(
            f"{rows}x{cols} = {rows * cols} image tokens at {spec.height}x{spec.width} px do not "
            f"split into ring x ulysses = {ring * ulysses} equal parts; the token count must be "
            "a multiple of the sequence degree"
        )
    return problems


_COMMON = dict(
    families=SEQUENCE_FAMILIES, exact=True, apply=apply_sequence, validate=validate_sequence
)

register(
    Strategy(
        name="ulysses",
        axes=("ulysses",),
        paper="DeepSpeed-Ulysses (Jacobs et al. 2023): all-to-all token <-> head sharding",
        **_COMMON,
    )
)
register(
    Strategy(
        name="ring",
        axes=("ring",),
        paper="Ring attention (Liu et al. 2023): K/V blocks passed around a ring, LSE merge",
        **_COMMON,
    )
)
register(
    Strategy(
        name="usp",
        axes=("ulysses", "ring"),  # a plain world size goes to ulysses
        paper="USP (Fang & Zhao 2024): Ulysses inside, Ring outside, on a 2-D mesh",
        **_COMMON,
    )
)
