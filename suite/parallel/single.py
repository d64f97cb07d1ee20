"""`none`: the single-device baseline every other strategy is measured against."""

from __future__ import annotations

from suite.parallel import Parallelized


def apply_none(workload, comm, options) -> Parallelized:
    return Parallelized(
        denoiser=workload.denoiser, inputs=workload.inputs, modules=[workload.denoiser]
    )
