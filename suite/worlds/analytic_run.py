"""What one rank of an analytic world does (`world_mode: analytic`; `suite.worlds.rank_worker.emulate` runs
the ranks one after another in one process, over torch's fake process group).

The workload is built on the meta device: no memory, no compute, no data. The strategy is
applied as in any world and its denoising loop runs unchanged; `suite.distributed.comm` logs every
collective without launching it, and `suite.measure.op_recorder.OpRecorder` records the rank's operators
into compute segments between the ledger's boundary-clock times (`suite.measure.optrace`). Nothing is
timed: one loop, no warm-up, no barrier, no device synchronization. Steady steps are replicated
rather than emulated (suite.worlds.replicate), an exact shortcut.
"""

from __future__ import annotations

import numpy as np
import torch

from suite import parallel
from suite.config.experiment import RunSpec
from suite.distributed.comm import Comm, Ledger
from suite.measure.op_recorder import OpRecorder
from suite.worlds.replicate import Replicator, expand
from suite.worlds.runner import STEP_DTYPE, RankContext, RankResult, _param_bytes, denoise

META = torch.device("meta")
DEVICE_NAME = "meta (analytic world: nothing executed)"


def execute_analytic(
    spec: RunSpec, ctx: RankContext, recorder: OpRecorder, progress=None, replicate: bool = True
) -> RankResult:
    """Emulate rank `ctx.rank` of `spec` on meta; its trace on the recorder's boundary clock.

    `progress` is called once per step of the loop, when the rank is done. With `replicate`,
    steady steps are replicated instead of emulated (suite.worlds.replicate); where the check of a
    replication fails, the rank is emulated again in full.
    """
    result = _emulate(spec, ctx, recorder, replicate) if replicate else None
    if result is None:
        result = _emulate(spec, ctx, recorder, False)
    for _ in range(len(result.steps) if progress is not None else 0):
        progress()
    return result


def _emulate(spec, ctx, recorder, replicate: bool) -> RankResult | None:
    """One try; None when a replication's check failed."""
    import workloads

    workload = workloads.build(
        spec.workload,
        height=spec.height,
        width=spec.width,
        steps=spec.steps,
        batch=spec.batch,
        seed=spec.seed,
        dtype=getattr(torch, spec.dtype),
        device=META,
        scheduler=spec.scheduler,
        guidance=spec.guidance,
        weights=spec.weights,
        frames=spec.frames or None,
    )
    recorder.start_rank()
    ledger = Ledger(ctx.rank, clock=recorder.boundary)
    comm = Comm(ctx.mesh(spec.dims), ledger, analytic=True)
    par = parallel.apply(spec.strategy, workload, comm, spec.options_dict)
    ledger.repeat = 0
    marks: list = []
    steps = len(workload.new_scheduler().timesteps)
    rep = None
    if replicate:
        rep = Replicator(recorder, ledger.events, marks, steps, par.warmup_steps)
    with torch.inference_mode(), recorder.recording():
        denoise(par, workload, ledger, META, marks, fast_forward=rep)
    trace = (
        ledger.events(),
        np.array([(0, *m) for m in marks], dtype=STEP_DTYPE),
        recorder.segment_array(),
    )
    if rep is not None:
        trace = expand(rep, *trace)
        if trace is None:
            return None
    events, step_marks, segments = trace
    return RankResult(
        rank=ctx.rank,
        host="",
        device_name=DEVICE_NAME,
        loop_s=[],
        steps=step_marks,
        events=events,
        layers=list(ledger.layers),
        peak_mem_bytes=0,
        param_bytes=_param_bytes(par.modules),
        warmup_steps=par.warmup_steps,
        buffer_bytes=par.buffer_bytes() if par.buffer_bytes is not None else 0,
        segments=segments,
    )
