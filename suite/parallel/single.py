"""`none`: the single-device baseline every other strategy is measured against."""

from __future__ import annotations

from suite.parallel import Parallelized, Strategy, register

ALL_FAMILIES = frozenset({"unet", "pixart", "dit", "sd3", "flux"})


def apply_none(workload, comm, options) -> Parallelized:
    return Parallelized(
        denoiser=workload.denoiser, inputs=workload.inputs, modules=[workload.denoiser]
    )


register(
    Strategy(
        name="none",
        axes=(),
        # unet2d (trained-tiny-unet) runs here; strategies add it once they have its plan
        families=ALL_FAMILIES | {"unet2d"},
        exact=True,
        paper="single device (baseline)",
        apply=apply_none,
    )
)
