"""What one rank does for one run: build, parallelize, warm up, time the denoising loops.

Timing: each timed loop starts after a harness barrier (outside the ledger: it is not the
strategy's communication) and each rank measures its own loop; the run's latency for a loop is
the slowest rank's. Steps are timed at their ends, after a device synchronize on CUDA; the VAE
is not part of the loop (as in the papers).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from suite import parallel
from suite.config.experiment import RunSpec
from suite.distributed.comm import Comm, Ledger
from suite.distributed.mesh import ParallelDims, ParallelMesh
from suite.measure import profiling

STEP_DTYPE = np.dtype(
    [("repeat", np.int32), ("step", np.int32), ("t_start", np.float64), ("t_end", np.float64)]
)


@dataclass
class RankContext:
    """A rank's place in an initialized world; meshes are built once per degree layout."""

    rank: int
    world_size: int
    device: torch.device
    _meshes: dict[ParallelDims, ParallelMesh] = field(default_factory=dict)

    def mesh(self, dims: ParallelDims) -> ParallelMesh:
        if dims not in self._meshes:
            self._meshes[dims] = ParallelMesh(dims, self.device.type)
        return self._meshes[dims]


@dataclass
class RankResult:
    """Everything rank r measured in one run; rank 0 also carries the final latents."""

    rank: int
    host: str
    device_name: str
    loop_s: list[float]  # wall time of each timed loop on this rank
    steps: np.ndarray  # STEP_DTYPE, timed loops only
    events: np.ndarray  # suite.distributed.comm.EVENT_DTYPE, timed loops only
    layers: list[str]
    peak_mem_bytes: int
    param_bytes: int
    warmup_steps: int
    latents: torch.Tensor | None = None
    buffer_bytes: int = 0  # activation buffers the strategy keeps (e.g. stale K/V), bytes
    trace_gz: bytes | None = None  # torch.profiler Chrome trace (gzip) when profiling was asked
    nvml: np.ndarray | None = None  # suite.measure.profiling.NVML_DTYPE samples; empty without NVML
    # analytic worlds (suite.worlds.analytic_run): times above are boundary indices (suite.measure.optrace),
    # segment b's signature id, and the OP_DTYPE rows of every signature (shared by the ranks)
    segments: np.ndarray | None = None
    ops: np.ndarray | None = None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return "cpu: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


class _PeakMemory:
    """Peak memory of this rank: CUDA max allocated, or the process's peak RSS on CPU.

    On CPU the kernel's high-water mark is reset through /proc/self/clear_refs, so the number
    covers this run only (it includes the interpreter and libraries, a constant per process).
    """

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass  # not Linux: the peak then covers the whole process life

    def read(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _param_bytes(modules: list[torch.nn.Module]) -> int:
    seen, total = set(), 0
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel() * p.element_size()
    return total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def denoise(
    par: parallel.Parallelized,
    workload,
    ledger: Ledger,
    device: torch.device,
    marks: list | None = None,
    on_step=None,
    fast_forward=None,
) -> torch.Tensor:
    """One denoising loop of the parallelized workload; returns the gathered final latents.

    `marks` collects (step, t_start, t_end) per step; the strategy's final gather is timed
    as part of the last step, since the output is not ready before it. `fast_forward`: the
    loop's hook for steps an analytic world replicates (workloads.denoise).
    """
    import workloads

    ref_event, ref_time = None, 0.0
    if device.type == "cuda":  # anchor the ledger's CUDA events to the host clock
        ref_event = torch.cuda.Event(enable_timing=True)
        ref_event.record()
        torch.cuda.synchronize(device)
        ref_time = time.perf_counter()
    t_start = 0.0

    def before_step(i: int) -> None:
        nonlocal t_start
        ledger.step = i
        t_start = ledger.now()  # perf_counter; an analytic world's boundary clock
        if par.on_step is not None:
            par.on_step(i)

    def after_step(i: int) -> None:
        _sync(device)
        ledger.poll()  # async ops that finished during the step get their done time here
        if ref_event is not None:
            ledger.resolve(ref_event, ref_time)
        if marks is not None:
            marks.append((i, t_start, ledger.now()))
        if on_step is not None:
            on_step()

    loop = par.loop if par.loop is not None else workloads.denoise
    hooks = {} if fast_forward is None else {"fast_forward": fast_forward}
    return loop(
        workload,
        par.denoiser,
        par.inputs,
        before_step=before_step,
        after_step=after_step,
        finalize=par.gather,
        **hooks,
    )


def execute(spec: RunSpec, ctx: RankContext, progress=None) -> RankResult:
    """Run `spec` on this rank of an initialized world.

    `progress` (rank 0 only) is called once per completed step of every loop.
    """
    import workloads

    dtype = getattr(torch, spec.dtype)
    workload = workloads.build(
        spec.workload,
        height=spec.height,
        width=spec.width,
        steps=spec.steps,
        batch=spec.batch,
        seed=spec.seed,
        dtype=dtype,
        device=ctx.device,
        scheduler=spec.scheduler,
        guidance=spec.guidance,
        weights=spec.weights,
        frames=spec.frames or None,
    )
    ledger = Ledger(
        ctx.rank,
        cuda=ctx.device.type == "cuda",
        enabled=profiling.ledger_requested(),
        done_callbacks=profiling.profile_requested(),  # exact async t_done when profiling
    )
    comm = Comm(ctx.mesh(spec.dims), ledger)
    par = parallel.apply(spec.strategy, workload, comm, spec.options_dict)
    memory = _PeakMemory(ctx.device)
    memory.reset()

    with torch.inference_mode():
        for r in range(spec.warmup_runs):
            ledger.repeat = -1 - r
            denoise(par, workload, ledger, ctx.device, on_step=progress)
        ledger.clear()  # only timed loops are kept

        loop_s, marks, latents = [], [], None
        with profiling.Capture(ctx.device) as capture:  # profiler / NVML only when asked / there
            for r in range(spec.repeats):
                ledger.repeat = r
                per_loop: list = []
                _barrier(ctx)
                t0 = time.perf_counter()
                latents = denoise(par, workload, ledger, ctx.device, per_loop, on_step=progress)
                loop_s.append(time.perf_counter() - t0)
                marks.extend((r, *m) for m in per_loop)

    steps = np.array(marks, dtype=STEP_DTYPE)
    return RankResult(
        rank=ctx.rank,
        host=socket.gethostname(),
        device_name=device_name(ctx.device),
        loop_s=loop_s,
        steps=steps,
        events=ledger.events(),
        layers=list(ledger.layers),
        peak_mem_bytes=memory.read(),
        param_bytes=_param_bytes(par.modules),
        warmup_steps=par.warmup_steps,
        buffer_bytes=par.buffer_bytes() if par.buffer_bytes is not None else 0,
        latents=latents.detach().float().cpu() if ctx.rank == 0 else None,
        trace_gz=capture.trace_gz,
        nvml=capture.nvml,
    )


def _barrier(ctx: RankContext) -> None:
    if ctx.world_size > 1:
        if ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()
