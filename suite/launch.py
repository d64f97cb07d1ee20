"""Worlds that run `RunSpec`s: a local spawned world, or the world torchrun started.

Both expose `run(spec, progress) -> list[RankResult] | None` (the list on the rank that
records, None elsewhere) and raise `RunFailed` with the first failing rank's error.

LocalWorld spawns N processes once and feeds them run after run (each rank pays seconds to import
diffusers, so worlds are reused). A rank that raises reports its traceback; the parent then
kills the whole world at once (the others may be blocked in a collective) and the next run gets
a fresh one. A rank that hangs is killed when the run's timeout passes.

TorchrunWorld joins a world made by `torchrun` (env://, so multi-node works). After every run
the ranks meet on the rendezvous store; if any failed, every rank leaves its process group
(ranks blocked in a collective get out through the collective timeout) and a fresh group is made
under a new store prefix, so the sweep goes on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import queue
import socket
import time
import traceback
from contextlib import closing

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from suite.config import RunSpec
from suite.parallel import Unsupported
from suite.runner import RankContext, RankResult, execute


class RunFailed(RuntimeError):
    """A run did not finish; the message is the first error seen (with its rank)."""


class RunSkipped(RuntimeError):
    """The strategy cannot run here (`suite.parallel.Unsupported`); the message says why."""


_SKIP_MARK = "SKIPPED: "


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _configure_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set earlier in this process
        torch.set_num_interop_threads(1)


def _to_wire(result: RankResult) -> RankResult:
    # Plain arrays over the queue: torch's shared-memory tensor passing would tie the tensor's
    # lifetime to the worker, which may be killed right after.
    if result.latents is not None:
        result.latents = result.latents.numpy()
    return result


def _from_wire(result: RankResult) -> RankResult:
    if result.latents is not None:
        result.latents = torch.from_numpy(result.latents)
    return result


def emulate(spec: RunSpec, device: torch.device, progress=None) -> list[RankResult]:
    """A fake world: run each rank of `spec` in turn in this process.

    torch's fake process group lets every collective return at once with correctly shaped
    tensors and moves no data, so strategies and the ledger run unchanged: compute happens at
    the real per-rank shapes and every collective is logged with its size (and ~0 duration).
    Ranks with different roles (pipeline stages) are each emulated. The outputs are meaningless
    and are dropped, so a fake run is never scored for fidelity.
    """
    try:
        from torch.testing._internal.distributed.fake_pg import FakeStore
    except ImportError as e:  # private torch module: name the cause if a release moves it
        raise RuntimeError(f"world_mode fake needs torch's fake process group: {e}") from e
    results = []
    for rank in range(spec.world_size):
        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=spec.world_size)
        try:
            ctx = RankContext(rank=rank, world_size=spec.world_size, device=device)
            result = execute(spec, ctx, progress)
            result.latents = None
            results.append(result)
        finally:
            dist.destroy_process_group()
    return results


def _local_worker(
    rank, world_size, port, device_type, threads, timeout_s, tasks, results, fake=False
):
    """Body of one spawned rank: join the world, then run specs until told to stop.

    With `fake`, the one process emulates whole worlds (see `emulate`) and joins none.
    """
    try:
        _configure_threads(threads)
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
        task = tasks.get()
        if task is None:
            break
        try:
            progress = (lambda: results.put(("progress", 0, None))) if rank == 0 else None
            if isinstance(task, RunSpec) and fake:
                emulated = [_to_wire(r) for r in emulate(task, device, progress)]
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


class LocalWorld:
    """N ranks on this machine (gloo on CPU, nccl on CUDA), reused across runs."""

    def __init__(
        self,
        world_size: int,
        *,
        device: str = "cpu",
        threads_per_rank: int = 1,
        collective_timeout_s: float = 600.0,
        start_timeout_s: float = 300.0,
        fake: bool = False,
    ):
        self.fake = fake  # one process emulating whole worlds (world_mode fake)
        self.world_size = 1 if fake else world_size
        self.device = device
        self.threads_per_rank = threads_per_rank
        self.collective_timeout_s = collective_timeout_s
        self.start_timeout_s = start_timeout_s
        self._procs: list = []
        self._ctx = mp.get_context("spawn")

    @property
    def alive(self) -> bool:
        return bool(self._procs) and all(p.is_alive() for p in self._procs)

    def start(self) -> None:
        port = _free_port()
        self._tasks = [self._ctx.Queue() for _ in range(self.world_size)]
        self._results = self._ctx.Queue()
        # One intra-op thread per rank by default: threads are pinned before torch starts its
        # pools in the child, so world 2 on 2 cores is a fair scaling experiment.
        env = {
            "OMP_NUM_THREADS": str(self.threads_per_rank),
            "MKL_NUM_THREADS": str(self.threads_per_rank),
        }
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            for rank in range(self.world_size):
                p = self._ctx.Process(
                    target=_local_worker,
                    args=(
                        rank,
                        self.world_size,
                        port,
                        self.device,
                        self.threads_per_rank,
                        self.collective_timeout_s,
                        self._tasks[rank],
                        self._results,
                        self.fake,
                    ),
                    daemon=True,
                )
                p.start()
                self._procs.append(p)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        ready = set()
        deadline = time.monotonic() + self.start_timeout_s
        while len(ready) < self.world_size:
            kind, rank, payload = self._next(deadline, "starting the world")
            if kind == "error":
                self.kill()
                raise RunFailed(payload)
            ready.add(rank)

    def _next(self, deadline: float, what: str):
        while True:
            try:
                return self._results.get(timeout=0.2)
            except queue.Empty:
                dead = [(r, p.exitcode) for r, p in enumerate(self._procs) if not p.is_alive()]
                if dead:
                    # A rank may have reported its error just before exiting: prefer that text.
                    try:
                        return self._results.get(timeout=1.0)
                    except queue.Empty:
                        pass
                    self.kill()
                    r, code = dead[0]
                    raise RunFailed(f"rank {r} exited with code {code} while {what}") from None
                if time.monotonic() > deadline:
                    self.kill()
                    raise RunFailed(f"timed out while {what}; the world was killed") from None

    def run(self, spec: RunSpec, progress=None) -> list[RankResult]:
        """Run `spec` on every rank; the per-rank results, rank order."""
        results = self._dispatch(spec, spec.timeout_s, spec.label(), progress)
        if self.fake:
            results = results[0]  # the emulating process returns every rank's result
        return [_from_wire(r) for r in results]

    def call(self, fn, *args, timeout_s: float = 300.0) -> list:
        """Call `fn(ctx, *args)` on every rank (fn importable by name); results in rank order."""
        return self._dispatch((fn, args), timeout_s, getattr(fn, "__name__", "call"), None)

    def _dispatch(self, task, timeout_s: float, label: str, progress) -> list:
        if not self.alive:
            self.kill()
            self.start()
        for q in self._tasks:
            q.put(task)
        got: dict[int, object] = {}
        deadline = time.monotonic() + timeout_s
        while len(got) < self.world_size:
            kind, rank, payload = self._next(deadline, f"running {label}")
            if kind == "progress":
                if progress is not None:
                    progress()
            elif kind in ("error", "skipped"):
                self.kill()
                raise (RunFailed if kind == "error" else RunSkipped)(payload)
            else:
                got[rank] = payload
        return [got[r] for r in range(self.world_size)]

    def kill(self) -> None:
        """End every rank now."""
        for p in self._procs:
            if p.is_alive():
                p.kill()
        for p in self._procs:
            p.join(timeout=10)
        self._procs = []

    def close(self) -> None:
        """Stop the ranks politely, then make sure they are gone."""
        if self.alive:
            for q in self._tasks:
                q.put(None)
            for p in self._procs:
                p.join(timeout=20)
        self.kill()

    def __enter__(self) -> LocalWorld:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TorchrunWorld:
    """The world `torchrun` started (env:// variables), shared by every run of the sweep."""

    def __init__(
        self, *, device: str = "cpu", threads_per_rank: int = 1, collective_timeout_s: float = 600.0
    ):
        self.rank = int(os.environ["RANK"])
        self.world_size = int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        _configure_threads(threads_per_rank)
        self.device = torch.device("cuda", local_rank) if device == "cuda" else torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.timeout = dt.timedelta(seconds=collective_timeout_s)
        self.store, _, _ = next(dist.rendezvous("env://", timeout=self.timeout))
        self.generation = 0
        self._init_group()

    def _init_group(self) -> None:
        dist.init_process_group(
            "nccl" if self.device.type == "cuda" else "gloo",
            store=dist.PrefixStore(f"diffscale/gen{self.generation}", self.store),
            rank=self.rank,
            world_size=self.world_size,
            timeout=self.timeout,
        )
        self.ctx = RankContext(rank=self.rank, world_size=self.world_size, device=self.device)

    def share(self, key: str, value=None):
        """Rank 0's `value` on every rank (JSON through the store; no collective needed)."""
        key = f"diffscale/share/{key}"
        if self.rank == 0:
            self.store.set(key, json.dumps(value))
        return json.loads(self.store.get(key))

    def run(self, spec: RunSpec, progress=None) -> list[RankResult] | None:
        error = None
        try:
            result = execute(spec, self.ctx, progress if self.rank == 0 else None)
        except Unsupported as e:
            result, error = None, _SKIP_MARK + str(e)
            self.store.compare_set(f"diffscale/error/{spec.run_id}", "", error)
        except BaseException:
            result, error = None, f"rank {self.rank}: {traceback.format_exc()}"
            # first error wins; the others are mostly collective timeouts it caused
            self.store.compare_set(f"diffscale/error/{spec.run_id}", "", error)
        arrived = self.store.add(f"diffscale/arrived/{spec.run_id}", 1)
        deadline = time.monotonic() + spec.timeout_s + self.timeout.total_seconds()
        while arrived < self.world_size:
            if time.monotonic() > deadline:
                raise RunFailed(f"ranks did not all finish {spec.label()}; giving up on the world")
            time.sleep(0.05)
            arrived = self.store.add(f"diffscale/arrived/{spec.run_id}", 0)
        if self.store.check([f"diffscale/error/{spec.run_id}"]):
            first = self.store.get(f"diffscale/error/{spec.run_id}").decode()
            dist.destroy_process_group()
            self.generation += 1
            self._init_group()
            first = first or error or "unknown error"
            if first.startswith(_SKIP_MARK):
                raise RunSkipped(first[len(_SKIP_MARK) :])
            raise RunFailed(first)
        gathered = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(result, gathered, dst=0)
        return gathered if self.rank == 0 else None

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
