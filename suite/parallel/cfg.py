"""Batch-level strategies: `data` (independent images per rank).

Data parallelism: each rank denoises a contiguous shard of the batch of seeds/prompts with the
whole model; nothing is exchanged during denoising, and the final latents are all-gathered once
at the end, so the output equals the single-device output exactly.
"""

from __future__ import annotations

from suite.parallel import Parallelized, Strategy, register
from suite.parallel.single import ALL_FAMILIES


def apply_data(workload, comm, options) -> Parallelized:
    mesh = comm.mesh
    inputs = workload.inputs.shard(mesh.rank("data"), mesh.size("data"))

    def gather(latents):
        return comm.all_gather(latents, "data", dim=0, layer="output")

    return Parallelized(
        denoiser=workload.denoiser, inputs=inputs, gather=gather, modules=[workload.denoiser]
    )


def _validate_data(spec, preset) -> list[str]:
    degree = dict(spec.degrees).get("data", 1)
    if spec.batch % degree:
        return [
            f"batch {spec.batch} does not split over data degree {degree}; "
            "the batch must be a multiple of the data degree"
        ]
    return []


register(
    Strategy(
        name="data",
        axes=("data",),
        families=ALL_FAMILIES,
        exact=True,
        paper="data parallelism (independent images per device)",
        apply=apply_data,
        validate=_validate_data,
    )
)
