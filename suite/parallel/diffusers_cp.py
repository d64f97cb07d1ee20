"""diffusers' own parallelism as strategies, to measure a library's implementation beside ours.

- `diffusers_cp`: `ContextParallelConfig(ulysses_degree, ring_degree)` + `enable_parallelism`, on
  models whose class carries a `_cp_plan` (in diffusers 0.42: Flux among ours; PixArt, DiT and
  SD3 have none, and their processors call SDPA directly, so the library cannot split them).
  The library's plan splits the text tokens too (ours keeps them replicated).
- `diffusers_tp`: `TensorParallelConfig`, on models with a `_tp_plan` (Flux).

Where the library cannot run a configuration it raises, and we store the run as skipped with the
library's own message (`Unsupported`): no plan for the model class; ring attention on CPU (the
only CPU attention backend, 'native', cannot return the log-sum-exp that ring merging needs);
tensor parallelism on CPU (the library supports accelerators only).

Ledger: the library's collectives (functional all-to-all / all-gather on its own process groups)
do not go through `suite.distributed.comm`, so these runs have no comm events: their latency is measured
like any other, their comm and overlap columns stay empty.
"""

from __future__ import annotations

import contextlib

import torch

from suite.distributed.mesh import library_mesh
from suite.parallel import Parallelized, Unsupported


@contextlib.contextmanager
def _one_accelerator():
    """diffusers places rank r on device r % torch.accelerator.device_count(), which is 0 on a
    CPU-only machine: report one device while it sets up (CPU ranks share 'cpu:0')."""
    if torch.accelerator.device_count() > 0:
        yield
        return
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original


def _library() -> str:
    import diffusers

    return f"diffusers {diffusers.__version__}"


def _enable(model: torch.nn.Module, config) -> None:
    """`enable_parallelism`; the library's refusals become Unsupported with its message."""
    try:
        with _one_accelerator():
            model.enable_parallelism(config=config)
    except (ValueError, NotImplementedError) as e:
        raise Unsupported(f"{_library()} cannot parallelize {type(model).__name__}: {e}") from e


def _check_ring_backend(device: torch.device) -> None:
    """Ring attention merges partial outputs by their log-sum-exp: ask the library's active
    attention backend for one, on a tiny input, and pass on its refusal."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    name, backend = _AttentionBackendRegistry.get_active_backend()
    x = torch.zeros(1, 2, 1, 8, device=device)
    try:
        backend(x, x, x, return_lse=True)
    except (ValueError, NotImplementedError, RuntimeError) as e:
        raise Unsupported(
            f"{_library()} ring attention needs the log-sum-exp of its attention backend; the "
            f"active backend {getattr(name, 'value', name)!r} on {device.type} says: {e}"
        ) from e


def _only_axes(comm, allowed: set[str], name: str) -> None:
    extra = set(comm.mesh.dims.active()) - allowed
    if extra:
        raise ValueError(
            f"{name} builds its own mesh over the whole world; it does not compose "
            f"with other axes ({sorted(extra)})"
        )


def apply_diffusers_cp(workload, comm, options) -> Parallelized:
    """The library's context parallelism over the 'ring' x 'ulysses' axes."""
    from diffusers import ContextParallelConfig

    _only_axes(comm, {"ring", "ulysses"}, "diffusers_cp")
    model = workload.denoiser.model
    if getattr(model, "_cp_plan", None) is None:
        raise Unsupported(
            f"{_library()} has no context-parallel plan (_cp_plan) for {type(model).__name__}"
        )
    ring, ulysses = comm.mesh.size("ring"), comm.mesh.size("ulysses")
    device = workload.inputs.latents.device
    if ring > 1:
        _check_ring_backend(device)
    mesh = library_mesh(device.type, (ring, ulysses), ("ring", "ulysses"))
    _enable(model, ContextParallelConfig(ring_degree=ring, ulysses_degree=ulysses, mesh=mesh))
    return Parallelized(
        denoiser=workload.denoiser, inputs=workload.inputs, modules=[workload.denoiser]
    )


def apply_diffusers_tp(workload, comm, options) -> Parallelized:
    """The library's tensor parallelism over the 'tensor' axis."""
    from diffusers.models._modeling_parallel import TensorParallelConfig

    _only_axes(comm, {"tensor"}, "diffusers_tp")
    model = workload.denoiser.model
    if getattr(model, "_tp_plan", None) is None:
        raise Unsupported(
            f"{_library()} has no tensor-parallel plan (_tp_plan) for {type(model).__name__}"
        )
    n = comm.mesh.size("tensor")
    mesh = library_mesh(workload.inputs.latents.device.type, (n,), ("tp",))
    _enable(model, TensorParallelConfig(tp_degree=n, mesh=mesh))
    return Parallelized(
        denoiser=workload.denoiser, inputs=workload.inputs, modules=[workload.denoiser]
    )
