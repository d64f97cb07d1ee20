"""Peak memory of a run's ranks, estimated before any process starts, and the check that refuses
runs which would not fit (`diffscale run` calls `check_runs` after the config is valid).

The estimate of one rank is parameters + activations + the method's buffers:
- parameters: counted on the meta device (the preset's architecture, or the config.json of local
  `weights`), divided where the strategy splits them (tensor: the plan's sharded layers / t;
  pipefusion: the blocks of one stage);
- activations: the peak of live intermediate tensors in one denoiser forward on the meta device
  at batch 1 (no memory, no compute), with attention counted as a fused kernel (output only, as
  CPU flash attention and CUDA SDPA run it, not the S x S scores of the math decomposition),
  then scaled to the rank's share: images per call (batch / data, x2 for the CFG branch unless
  cfg splits it) and tokens per rank (ring x ulysses x patch; PipeFusion's patches after its
  whole-image warm-up steps); plus the loop's latents and inputs;
- buffers: DistriFusion's stale full-image K/V of every self-attention layer, PipeFusion's K/V
  cache of its stage's layers.
Accuracy (README, "Experiment configs"): against CPU runs' peak_mem_bytes less the process's size
before the run, 0.7-1.3x the measured peak for tiny presets at 1024 px over five families and
eight strategies; tests/unit/test_bad_inputs.py holds it within a factor of 2.

Limits: on CPU every rank of a local world shares the host, so N x (estimate + the per-process
baseline of torch and diffusers, read from this process, plus 256 MiB of kernels and arenas a
rank adds at its first forward) must fit MemAvailable; a fake world is one process. On CUDA each rank must fit its GPU's memory less 1 GiB for the CUDA context and the
allocator (memory used by other processes is not seen). `memory_check: false` in a config's
settings (or an entry's) skips the check for those runs.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

from suite.config.experiment import RunSpec

CUDA_RESERVE_BYTES = 1 << 30  # CUDA context + allocator slack per GPU
# Measured on CPU runs of tiny presets at 1024 px (none, data, cfg, ulysses, tensor,
# distrifusion, pipefusion): their peaks above the tracked forward's come from allocator
# fragmentation, kernel workspaces and the copies strategies make around attention.
ACTIVATION_SLACK = 1.5
# What a CPU rank adds to the parent's resident size at its first forward: kernel code paged in
# and allocator arenas (about 170-200 MiB measured on tiny presets).
RUNTIME_OVERHEAD_BYTES = 256 << 20
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class Estimate:
    """Estimated peak memory of one rank of a run, bytes (its run's tensors only)."""

    params: int
    activations: int
    buffers: int

    @property
    def total(self) -> int:
        return self.params + self.activations + self.buffers


@dataclass(frozen=True)
class _Model:
    params: int  # elements
    block_params: int  # elements in the transformer blocks PipeFusion cuts into stages
    blocks: int
    sharded_params: int  # elements tensor parallelism splits


@dataclass(frozen=True)
class _Forward:
    peak: int  # bytes of live intermediates at the peak of one forward, batch 1
    self_kv: int  # bytes of K and V of every self-attention layer, one image
    inputs: int  # bytes of latents and conditioning, one image


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def _preset(name: str, weights: str | None):
    """The preset, with the architecture of local `weights` when they carry a config.json."""
    from workloads.presets import get_preset

    preset = get_preset(name)
    if weights is None:
        return preset
    for config in (
        Path(weights) / "config.json",
        Path(weights) / preset.weights_subfolder / "config.json",
    ):
        try:
            loaded = json.loads(config.read_text())
        except (OSError, ValueError):
            continue  # absent or unreadable: the rank's load says why; the preset stands in
        if isinstance(loaded, dict):
            config = {k: v for k, v in loaded.items() if not k.startswith("_")}
            return replace(preset, config=config)
    return preset  # a hub id: its architecture is read on the rank; the preset's stands in


@functools.lru_cache(maxsize=32)
def _model(name: str, weights: str | None) -> _Model:
    from suite.parallel.plans import PIPE_PLANS, PLANS, find
    from workloads.models import random_model

    preset = _preset(name, weights)
    model = random_model(preset, 0, device="meta")
    params = sum(p.numel() for p in model.parameters())
    pipe = PIPE_PLANS.get(preset.family)
    blocks = model.get_submodule(pipe.blocks) if pipe else []
    block_params = sum(p.numel() for p in blocks.parameters()) if pipe else 0
    sharded, plan = set(), PLANS.get(preset.family)
    if plan is not None:
        patterns = [a.pattern for a in plan.attention] + list(plan.column) + list(plan.row)
        patterns += [p for p, _ in plan.packed_column] + [p.pattern for p in plan.packed_row]
        for pattern in patterns:
            for _, module in find(model, pattern):
                for p in module.parameters():
                    if p.dim() > 1:  # weights, not norms
                        sharded.add(p)
        for pattern in plan.resnets:
            for _, res in find(model, pattern):
                for part in ("conv1", "conv2", "time_emb_proj"):
                    if hasattr(res, part):
                        sharded.update(getattr(res, part).parameters())
    return _Model(params, block_params, len(blocks), sum(p.numel() for p in sharded))


@functools.lru_cache(maxsize=64)
def _forward(
    name: str, weights: str | None, height: int, width: int, dtype: str, frames: int = 0
) -> _Forward:
    """One batch-1 forward on the meta device, its live intermediates tracked (bytes); video
    presets: a clip of `frames` frames."""
    import torch
    import torch.nn.functional as F
    from torch.multiprocessing.reductions import StorageWeakRef
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from workloads.denoiser import Denoiser
    from workloads.inputs import make_inputs
    from workloads.models import random_model

    class Fused(TorchFunctionMode):
        """Attention as a fused kernel: only its output is allocated."""

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is F.scaled_dot_product_attention:
                q = args[0] if args else kwargs["query"]
                v = args[2] if len(args) > 2 else kwargs["value"]
                return q.new_empty((*q.shape[:-1], v.shape[-1]))
            return func(*args, **kwargs)

    class Live(TorchDispatchMode):
        """Bytes of the storages that ops created and that are still referenced, and their max."""

        def __init__(self, existing):
            super().__init__()
            # storages made before the forward (parameters, buffers, inputs): views of them
            # (a weight's transpose) are not new memory
            self.existing = {StorageWeakRef(t.untyped_storage()) for t in existing}
            self.live: dict = {}
            self.now = self.peak = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for key in [k for k in self.live if k.expired()]:
                self.now -= self.live.pop(key)
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    key = StorageWeakRef(t.untyped_storage())
                    if key not in self.live and key not in self.existing:
                        self.live[key] = t.untyped_storage().nbytes()
                        self.now += self.live[key]
            self.peak = max(self.peak, self.now)
            return out

    preset = _preset(name, weights)
    torch_dtype = getattr(torch, dtype)
    model = random_model(preset, 0, device="meta", dtype=torch_dtype)
    kv: list[int] = []

    def record(module, args, kwargs):
        hidden = args[0] if args else kwargs.get("hidden_states")
        if hidden is not None and not getattr(module, "is_cross_attention", False):
            # (B, S, C) tokens, or a UNet2DModel feature map (B, C, H, W)
            tokens = hidden.numel() // (hidden.shape[1] if hidden.dim() == 4 else hidden.shape[-1])
            kv.append(2 * tokens * module.to_k.out_features * DTYPE_BYTES[dtype])

    for module in model.modules():
        if hasattr(module, "to_k") and hasattr(module, "processor"):
            module.register_forward_pre_hook(record, with_kwargs=True)
    # conditioning at the smallest size (its shapes do not depend on the image), latent on meta
    side = preset.vae_scale_factor * preset.spatial_multiple
    small = make_inputs(preset, side, side, 1, 0, preset.default_guidance, 1 if frames else 0)
    cond = {
        k: v.to("meta", torch_dtype if v.is_floating_point() else v.dtype)
        for k, v in small.cond.items()
    }
    grid = (height // preset.vae_scale_factor, width // preset.vae_scale_factor)
    if frames:
        grid = ((frames - 1) // preset.temporal_compression + 1, *grid)
    shape = (1, preset.latent_channels, *grid)
    latents = torch.empty(shape, device="meta", dtype=torch_dtype)
    timestep = torch.tensor(500.0, device="meta")
    live = Live([*model.parameters(), *model.buffers(), latents, timestep, *cond.values()])
    with torch.no_grad(), Fused(), live:
        Denoiser(model, preset)(latents, timestep, cond)
    inputs = latents.numel() * latents.element_size()
    inputs += sum(v.numel() * v.element_size() for v in cond.values())
    return _Forward(live.peak, sum(kv), inputs)


def estimate(spec: RunSpec) -> Estimate:
    """Peak memory of the most loaded rank of `spec`, bytes (see the module docstring)."""
    from suite.parallel.checks import resolve_patches
    from workloads.presets import get_preset

    preset = get_preset(spec.workload)
    d = dict(spec.degrees)
    parts = spec.strategy.split("+")
    elt = DTYPE_BYTES[spec.dtype]
    model = _model(spec.workload, spec.weights)
    fwd = _forward(spec.workload, spec.weights, spec.height, spec.width, spec.dtype, spec.frames)

    images = math.ceil(spec.batch / d.get("data", 1))
    branches = 2 if preset.cfg and spec.guidance > 1.0 and d.get("cfg", 1) == 1 else 1
    calls = images * branches  # images per denoiser call on this rank
    seq = d.get("ring", 1) * d.get("ulysses", 1)
    stages = d.get("pipefusion", 1)
    options = spec.options_dict
    pipe_split = 1
    if stages > 1 and int(options.get("warmup_steps", 1)) == 0:
        pipe_split = resolve_patches(options, stages)  # no whole-image step: one patch at a time
    token_div = seq * d.get("patch", 1) * pipe_split

    params = model.params
    if d.get("tensor", 1) > 1:
        params -= model.sharded_params - model.sharded_params // d["tensor"]
    stage_share = 1.0
    if stages > 1 and model.blocks:
        stage_share = math.ceil(model.blocks / stages) / model.blocks
        params -= model.block_params - int(model.block_params * stage_share)
    # activations, plus the loop's latents / solver history and the inputs it holds
    activations = math.ceil(ACTIVATION_SLACK * fwd.peak * calls / token_div)
    activations += 4 * fwd.inputs * calls
    buffers = 0
    if "distrifusion" in parts and d.get("patch", 1) > 1:
        buffers += fwd.self_kv * calls  # stale K/V of the whole image, every layer
    if "pipefusion" in parts and stages > 1:
        buffers += math.ceil(fwd.self_kv * calls * stage_share / seq)
    return Estimate(params * elt, activations, buffers)


def mem_available() -> tuple[int, str]:
    """Host memory free for new processes, bytes, and where the number comes from."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except OSError:
        pass
    pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return pages, "free physical pages"


def _process_baseline() -> int:
    """Resident bytes of this process (torch and diffusers imported): what a rank holds before
    it builds its model."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _gpu_limit(ranks: int) -> tuple[int, str]:
    import torch

    props = [
        torch.cuda.get_device_properties(i) for i in range(min(ranks, torch.cuda.device_count()))
    ]
    smallest = min(props, key=lambda p: p.total_memory)
    return smallest.total_memory - CUDA_RESERVE_BYTES, (
        f"{smallest.name} memory {fmt_bytes(smallest.total_memory)} less "
        f"{fmt_bytes(CUDA_RESERVE_BYTES)} for the CUDA context"
    )


def check_runs(runs, ranks_per_host: int | None = None) -> list[str]:
    """Sentences naming each run whose estimated memory exceeds this machine's, with the estimate,
    the limit and the override; [] when all fit. Runs with memory_check off, and analytic runs
    (on the meta device), are skipped.

    `ranks_per_host`: ranks of a real world sharing this host (default: the whole world, as a
    local spawn; torchrun: LOCAL_WORLD_SIZE).
    """
    problems = []
    baseline = None
    override = "or set settings: {memory_check: false} to run it anyway"
    for spec in runs:
        if not spec.memory_check or spec.world_mode == "analytic":  # on meta: nothing allocated
            continue
        try:
            est = estimate(spec)
        except Exception as e:  # an architecture the meta forward cannot run: say so, not crash
            problems.append(
                f"{spec.label()}: its peak memory could not be estimated "
                f"({type(e).__name__}: {e}); {override}"
            )
            continue
        parts = (
            f"{fmt_bytes(est.total)} per rank ({fmt_bytes(est.params)} parameters + "
            f"{fmt_bytes(est.activations)} activations + {fmt_bytes(est.buffers)} buffers)"
        )
        if spec.device == "cuda":
            ranks = 1 if spec.world_mode == "fake" else spec.world_size
            limit, what = _gpu_limit(ranks)
            if est.total > limit:
                problems.append(
                    f"{spec.label()}: needs about {parts}; the limit is {fmt_bytes(limit)} "
                    f"({what}); lower the resolution, the batch or the memory per rank, {override}"
                )
            continue
        if baseline is None:
            baseline = _process_baseline() + RUNTIME_OVERHEAD_BYTES
        ranks = (
            1
            if spec.world_mode == "fake"
            else min(spec.world_size, ranks_per_host or spec.world_size)
        )
        need = ranks * (est.total + baseline)
        limit, what = mem_available()
        if need > limit:
            problems.append(
                f"{spec.label()}: needs about {fmt_bytes(need)} of host memory: {ranks} rank(s) x "
                f"({parts} + {fmt_bytes(baseline)} per process for torch and diffusers); the "
                f"limit is {fmt_bytes(limit)} ({what}); lower the resolution, the batch or the "
                f"world size, {override}"
            )
    return problems
