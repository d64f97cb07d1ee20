"""Worlds that run `RunSpec`s: a local spawned world, or the world torchrun started.

Both expose `run(spec, progress) -> list[RankResult] | None` (the list on the rank that
records, None elsewhere) and raise `RunFailed` with the first failing rank's error.

LocalWorld spawns N processes once and feeds them run after run (each rank pays seconds to import
diffusers, so worlds are reused). A rank that raises reports its traceback; the parent then
kills the whole world at once (the others may be blocked in a collective) and the next run gets
a fresh one. A rank that hangs is killed when the run's timeout passes. A rank killed by a signal
(the OOM killer's SIGKILL) is named with its signal before whatever its peers then reported.
Ranks die with the parent however it ends (SIGKILL included), and only the parent gets Ctrl-C.

TorchrunWorld joins a world made by `torchrun` (env://, so multi-node works). After every run
the ranks meet on the rendezvous store; if any failed, every rank leaves its process group
(ranks blocked in a collective get out through the collective timeout) and a fresh group is made
under a new store prefix, so the sweep goes on.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import signal
import socket
import time
import traceback
from contextlib import closing

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from suite.config.experiment import RunSpec
from suite.parallel import Unsupported
from suite.worlds.rank_process import (  # noqa: F401 - headline is this module's API too
    headline,
    peak_rss_bytes,
    rank_main,
    signal_name,
    total_memory_bytes,
)
from suite.worlds.rank_worker import configure_threads, from_wire
from suite.worlds.runner import RankContext, RankResult, execute


class RunFailed(RuntimeError):
    """A run did not finish; the message is the first error seen (with its rank)."""


class RunSkipped(RuntimeError):
    """The strategy cannot run here (`suite.parallel.Unsupported`); the message says why."""


_SKIP_MARK = "SKIPPED: "
_REAP_WAIT_S = 1.0  # how long an error waits for a dying peer's exit status


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        # fake: processes emulating worlds instead of ranks of one (world_mode fake: one;
        # analytic: $DIFFSCALE_EMULATORS, each taking every world_size-th rank of a run)
        self.fake = fake
        self.world_size = world_size
        self.device = device
        self.threads_per_rank = threads_per_rank
        self.collective_timeout_s = collective_timeout_s
        self.start_timeout_s = start_timeout_s
        self._procs: list = []
        self._ctx = mp.get_context("spawn")
        self._peak_rss: dict[int, int] = {}  # rank -> peak resident bytes seen during the task
        self._next_sample = 0.0

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
        # Children inherit the signal mask: SIGINT stays blocked in a rank until it ignores it
        # (`suite.worlds.rank_worker.serve_runs`), so Ctrl-C during its seconds of imports reaches only the parent.
        sigmask = hasattr(signal, "pthread_sigmask")
        if sigmask:
            old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            for rank in range(self.world_size):
                p = self._ctx.Process(
                    target=rank_main,
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
                        os.getpid(),
                    ),
                    daemon=True,
                )
                p.start()
                self._procs.append(p)
        finally:
            if sigmask:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        ready = set()
        deadline = time.monotonic() + self.start_timeout_s
        try:
            while len(ready) < self.world_size:
                kind, rank, payload = self._next(deadline, "starting the world")
                if kind == "error":
                    raise RunFailed(payload)
                ready.add(rank)
        except (
            BaseException
        ):  # failed, or Ctrl-C / SIGTERM (suite.commands.cli): no half-started world
            self.kill()
            raise

    def _next(self, deadline: float, what: str):
        """The next message from a rank; an error's text names a rank that died of a signal first."""
        while True:
            self._watch_memory()
            try:
                kind, rank, payload = self._results.get(timeout=0.2)
            except queue.Empty:
                pass
            else:
                if kind == "error":  # a peer's error may be the echo of a rank's death
                    payload = self._blame_death(what, payload, rank, _REAP_WAIT_S)
                return kind, rank, payload
            dead = [(r, p.exitcode) for r, p in enumerate(self._procs) if not p.is_alive()]
            if dead:
                # A rank may have reported its error just before exiting: prefer that text,
                # unless a rank was killed (its peers then only report the broken connection).
                try:
                    late = self._results.get(timeout=1.0)
                except queue.Empty:
                    late = None
                if late is not None and late[0] == "error":
                    return "error", late[1], self._blame_death(what, late[2], late[1], 0.0)
                message = self._blame_death(what, None, None, 0.0)
                if message is None and late is not None:
                    return late
                self.kill()
                r, code = dead[0]
                raise RunFailed(message or f"rank {r} exited with code {code} while {what}")
            if time.monotonic() > deadline:
                self.kill()
                raise RunFailed(f"timed out while {what}; the world was killed") from None

    def _blame_death(
        self, what: str, peer_error: str | None, peer: int | None, wait_s: float
    ) -> str | None:
        """`peer_error` (from rank `peer`), preceded by a sentence naming another rank that was
        killed by a signal or exited with a code > 0 without a word, if one did.

        Waits up to `wait_s` for a dying rank to be reaped: its peers may see their connections
        reset (and report that) a moment before its exit status is known.
        """
        deadline = time.monotonic() + wait_s
        while True:
            codes = [p.exitcode for p in self._procs]
            # the rank that reported the error is not blamed for dying afterwards
            dead = sorted((c > 0, r, c) for r, c in enumerate(codes) if c and r != peer)
            if dead or None not in codes or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if not dead:
            return peer_error
        _, r, code = dead[0]  # a signal before an exit code, then the lowest rank
        if code > 0:
            sentence = f"rank {r} exited with code {code} while {what}"
        else:
            sentence = f"rank {r} was killed by signal {signal_name(-code)} while {what}"
        if code == -signal.SIGKILL:
            sentence += (
                ": most likely by the kernel's OOM killer (look for 'Killed process' in `dmesg` "
                "or `journalctl -k`)"
            )
            peak, total = self._peak_rss.get(r), total_memory_bytes()
            if peak:
                of = f" of the machine's {total / 1e9:.1f} GB" if total else ""
                sentence += f"; its resident memory was last seen at {peak / 1e9:.2f} GB{of}"
        sentence += "."
        if peer_error:
            sentence += f"\nWhat the other ranks then reported (a consequence):\n{peer_error}"
        return sentence

    def _watch_memory(self) -> None:
        """Sample each rank's peak resident memory (twice a second), to explain an OOM kill."""
        now = time.monotonic()
        if now < self._next_sample:
            return
        self._next_sample = now + 0.5
        for r, p in enumerate(self._procs):
            rss = peak_rss_bytes(p.pid)
            if rss:
                self._peak_rss[r] = max(self._peak_rss.get(r, 0), rss)

    def run(self, spec: RunSpec, progress=None) -> list[RankResult]:
        """Run `spec` on every rank; the per-rank results, rank order."""
        results = self._dispatch(spec, spec.timeout_s, spec.label(), progress)
        if self.fake:  # the emulating processes return their ranks' results
            if spec.world_mode == "analytic" and len(results) > 1:
                from suite.measure.op_recorder import merge_tables

                merge_tables(results)  # one operator table for the ranks of every process
            results = sorted((r for part in results for r in part), key=lambda r: r.rank)
        return [from_wire(r) for r in results]

    def call(self, fn, *args, timeout_s: float = 300.0) -> list:
        """Call `fn(ctx, *args)` on every rank (fn importable by name); results in rank order."""
        return self._dispatch((fn, args), timeout_s, getattr(fn, "__name__", "call"), None)

    def _dispatch(self, task, timeout_s: float, label: str, progress) -> list:
        if not self.alive:
            self.kill()
            self.start()
        self._peak_rss = {}
        for q in self._tasks:
            q.put(task)
        got: dict[int, object] = {}
        deadline = time.monotonic() + timeout_s
        try:
            while len(got) < self.world_size:
                kind, rank, payload = self._next(deadline, f"running {label}")
                if kind == "progress":
                    if progress is not None:
                        progress()
                elif kind in ("error", "skipped"):
                    raise (RunFailed if kind == "error" else RunSkipped)(payload)
                else:
                    got[rank] = payload
        except (
            BaseException
        ):  # failed, or Ctrl-C / SIGTERM (suite.commands.cli): ranks may be mid-task
            self.kill()
            raise
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

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:  # interrupted or failing: no polite 20 s join of ranks that may be mid-task
            self.kill()


class TorchrunWorld:
    """The world `torchrun` started (env:// variables), shared by every run of the sweep."""

    def __init__(
        self, *, device: str = "cpu", threads_per_rank: int = 1, collective_timeout_s: float = 600.0
    ):
        self.rank = int(os.environ["RANK"])
        self.world_size = int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        configure_threads(threads_per_rank)
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
