"""`none`: the single-device baseline every other strategy is measured against."""

from __future__ import annotations

from suite.parallel import Parallelized, Strategy, register
from workloads.presets import FAMILIES

ALL_FAMILIES = frozenset(FAMILIES)


def apply_none(workload, comm, options) -> Parallelized:
    return Parallelized(
        denoiser=workload.denoiser, inputs=workload.inputs, modules=[workload.denoiser]
    )


register(
    Strategy(
        name="none",
        axes=(),
        families=ALL_FAMILIES,
        exact=True,
        paper="single device (baseline)",
        apply=apply_none,
    )
)
