"""A spawned rank's loop, and the emulation of fake and analytic worlds in one process.

`serve_runs` is the body of a rank that `suite.worlds.launch.LocalWorld` spawned (entered through
the torch-free `suite.worlds.rank_process.rank_main`): join the world, then run the specs it is
sent until told to stop. `emulate` runs every rank of a fake or analytic world in turn, in this
process.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import queue
import signal
import traceback

import torch
import torch.distributed as dist

from suite.config.experiment import RunSpec
from suite.parallel import Unsupported
from suite.worlds.runner import RankContext, RankResult, execute

_PARENT_POLL_S = 1.0  # how often an idle rank checks that its parent still exists


def configure_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set earlier in this process
        torch.set_num_interop_threads(1)


def _to_wire(result: RankResult) -> RankResult:
    # Plain arrays over the queue: torch's shared-memory tensor passing would tie the tensor's
    # lifetime to the worker, which may be killed right after.
    if result.latents is not None:
        result.latents = result.latents.numpy()
    return result


def from_wire(result: RankResult) -> RankResult:
    if result.latents is not None:
        result.latents = torch.from_numpy(result.latents)
    return result


def emulate(
    spec: RunSpec,
    device: torch.device | None,
    progress=None,
    replicate: bool = True,
    ranks: range | None = None,
) -> list[RankResult]:
    """A fake world: run each rank of `spec` in turn in this process.

    torch's fake process group lets every collective return at once with correctly shaped
    tensors and moves no data, so strategies and the ledger run unchanged: compute happens at
    the real per-rank shapes and every collective is logged with its size (and ~0 duration).
    Ranks with different roles (pipeline stages) are each emulated. The outputs are meaningless
    and are dropped, so a fake run is never scored for fidelity.

    An analytic world (`spec.world_mode == "analytic"`) emulates the ranks the same way on the
    meta device, with no compute at all (suite.worlds.analytic_run); `device` is then not used, and
    `replicate` False emulates every step instead of replicating the steady ones.

    `ranks`: the ranks to emulate here (default all; several processes may share a world).
    """
    try:
        from torch.testing._internal.distributed.fake_pg import FakeStore
    except ImportError as e:  # private torch module: name the cause if a release moves it
        raise RuntimeError(
            f"world_mode {spec.world_mode} needs torch's fake process group: {e}"
        ) from e
    recorder = None
    if spec.world_mode == "analytic":
        from suite.measure.op_recorder import OpRecorder
        from suite.worlds.analytic_run import META, execute_analytic

        recorder, device = OpRecorder(), META  # one recorder: signatures shared by the ranks
    results = []
    for rank in range(spec.world_size) if ranks is None else ranks:
        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=spec.world_size)
        try:
            ctx = RankContext(rank=rank, world_size=spec.world_size, device=device)
            if recorder is not None:
                result = execute_analytic(spec, ctx, recorder, progress, replicate)
            else:
                result = execute(spec, ctx, progress)
            result.latents = None
            results.append(result)
        finally:
            dist.destroy_process_group()
    if recorder is not None:
        ops = recorder.ops()
        for result in results:
            result.ops = ops
    return results


def serve_runs(
    rank,
    world_size,
    port,
    device_type,
    threads,
    timeout_s,
    tasks,
    results,
    fake=False,
    parent_pid=None,
):
    """Body of one spawned rank: join the world, then run specs until told to stop. Entered
    through `rank_process.rank_main`, which bound the rank to `parent_pid` before this module
    (and torch) loaded.

    With `fake`, the process emulates worlds (see `emulate`) and joins none: all their ranks, or
    with `world_size` > 1 emulating processes (analytic worlds) every world_size-th rank.
    """
    parent_pid = os.getppid() if parent_pid is None else parent_pid
    # Ctrl-C reaches the whole process group, but the parent owns the world: it kills the ranks.
    # SIGINT was blocked at spawn (LocalWorld.start), so none arrived during the imports.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        configure_threads(threads)
        device = torch.device(device_type, rank) if device_type == "cuda" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not fake:
            dist.init_process_group(
                "nccl" if device.type == "cuda" else "gloo",
                init_method=f"tcp://127.0.0.1:{port}",
                rank=rank,
                world_size=world_size,
                timeout=dt.timedelta(seconds=timeout_s),
            )
        ctx = RankContext(rank=rank, world_size=world_size, device=device)
        results.put(("ready", rank, None))
    except BaseException:
        results.put(
            ("error", rank, f"rank {rank} could not join the world:\n{traceback.format_exc()}")
        )
        return
    while True:
        try:
            task = tasks.get(timeout=_PARENT_POLL_S)
        except queue.Empty:
            if os.getppid() != parent_pid:  # orphaned: no task will come, and nobody joins us
                os._exit(1)
            continue
        if task is None:
            break
        try:
            reports = rank == 0 or fake  # emulating processes share the world's steps
            progress = (lambda: results.put(("progress", 0, None))) if reports else None
            if isinstance(task, RunSpec) and fake:
                mine = range(rank, task.world_size, world_size)
                emulated = [_to_wire(r) for r in emulate(task, device, progress, ranks=mine)]
                results.put(("ok", rank, emulated))
            elif isinstance(task, RunSpec):
                results.put(("ok", rank, _to_wire(execute(task, ctx, progress))))
            else:  # (function, args): a check or a measurement run on every rank
                fn, args = task
                results.put(("ok", rank, fn(ctx, *args)))
        except Unsupported as e:
            results.put(("skipped", rank, str(e)))
            return  # peers may be waiting in a collective: the parent tears the world down
        except BaseException:
            results.put(("error", rank, f"rank {rank}: {traceback.format_exc()}"))
            return  # this world is now unusable; the parent tears it down
    if dist.is_initialized():
        dist.destroy_process_group()
