"""Run an experiment's grid: resume, reuse worlds, record each run as it finishes.

Each run is stored in its own transaction the moment it ends, ok or failed, so an interrupted
sweep loses at most the run in flight. Re-running skips runs stored ok; failed runs are tried
again unless `skip_failed`. A sweep holds its results directory's lock throughout
(`sweep_store`), writes a run's files beside their final place until the row commits, and scores
at its start and end the runs an interrupted sweep left unscored.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from suite.config.experiment import ExperimentConfig, FidelitySettings, RunSpec
from suite.store.results import (
    DirectoryLock,
    DuplicateRunError,
    ResultStore,
    StoreError,
    pending_run_dir,
    place_run_dir,
)
from suite.worlds.launch import LocalWorld, RunFailed, RunSkipped, TorchrunWorld, headline
from suite.worlds.record import assemble, failed_record, save_artifacts

EMULATORS_ENV = "DIFFSCALE_EMULATORS"


@dataclass
class SweepSummary:
    db_path: Path
    ok: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run label, first error line)
    skipped: list[str] = field(default_factory=list)  # already stored, not run again
    unsupported: list[tuple[str, str]] = field(default_factory=list)  # (run label, reason)


def default_out_dir(experiment: str) -> Path:
    return Path("results") / experiment


def _world_key(spec: RunSpec) -> tuple:
    if spec.world_mode == "analytic":  # on meta, the device unused: CPU fake worlds' process
        return (analytic_emulators(), "cpu", spec.threads_per_rank, True)
    if spec.world_mode == "fake":  # one emulating process serves every fake world size
        return (1, spec.device, spec.threads_per_rank, True)
    return (spec.world_size, spec.device, spec.threads_per_rank, False)


def analytic_emulators() -> int:
    """Processes emulating an analytic world's ranks side by side, $DIFFSCALE_EMULATORS (default
    1). Each holds torch and diffusers (about 1 GB) and warms up its own memo of meta kernels:
    worth it only where cores are idle (on a busy 2-core machine two were slower than one)."""
    raw = os.environ.get(EMULATORS_ENV, "1")
    if not (raw.strip().isdigit() and 1 <= int(raw) <= 64):
        raise SystemExit(
            f"{EMULATORS_ENV}={raw!r}: give the number of processes that emulate an analytic "
            "world's ranks side by side, an integer from 1 to 64"
        )
    return int(raw)


def _pending(config: ExperimentConfig, store: ResultStore, skip_failed: bool) -> list[RunSpec]:
    done = store.done_run_ids()
    if skip_failed:
        failed = store.table("runs")
        done |= set(failed.loc[failed["status"] == "failed", "run_id"])
    return [s for s in config.runs if s.run_id not in done]


def _attempt(world, spec: RunSpec, progress=None):
    """(results, error, skip reason) of one run; exactly one of them is set."""
    try:
        return world.run(spec, progress), None, None
    except RunSkipped as e:
        return None, None, str(e)
    except RunFailed as e:
        return None, str(e), None


def _record(store: ResultStore, spec: RunSpec, outcome, summary: SweepSummary, fidelity=None):
    results, error, skip = outcome
    run_dir = Path("runs") / spec.run_id
    if skip is not None:
        _save(store, failed_record(spec, skip, status="skipped"))
        summary.unsupported.append((spec.label(), skip))
    elif error is None:
        # The files go to runs/.pending-<run_id> and appear under runs/<run_id> only once the
        # row has committed, so the two never disagree (a crash in between: recover_run_dirs).
        pending = pending_run_dir(store.root, spec.run_id)
        save_artifacts(results, pending, spec)
        if not _save(store, assemble(spec, results, str(run_dir))):
            shutil.rmtree(pending)
            summary.skipped.append(spec.label())
            return
        place_run_dir(store.root, spec.run_id, run_dir)
        summary.ok.append(spec.label())
        _score(store, spec, fidelity)  # reads the files in their final place
    else:
        _save(store, failed_record(spec, error))
        summary.failed.append((spec.label(), headline(error)))  # e.g. a rank's death by SIGKILL


def _save(store: ResultStore, record) -> bool:
    """Store one run; False (with a warning, no traceback) when it is already stored ok.

    The directory lock keeps two sweeps from meeting here; a writer that skips the lock (a
    script on the API, a second torchrun launch) must not crash the sweep either.
    """
    try:
        store.save(record)
    except DuplicateRunError:
        print(
            f"warning: run {record.run['run_id']} is already stored ok (written by another "
            "process meanwhile); this try is discarded, the stored run kept",
            file=sys.stderr,
        )
        return False
    return True


def _options(fidelity: FidelitySettings | None):
    from suite.fidelity.score import FidelityOptions

    fidelity = fidelity or FidelitySettings()
    return FidelityOptions(reference=fidelity.reference, weights_dir=fidelity.weights_dir)


def _score_missing(store: ResultStore, fidelity: FidelitySettings | None) -> None:
    """Score every stored ok run lacking the fidelity rows it can have (a sweep killed between a
    run's row and its scores left them out); notes on stderr; never raises."""
    from suite.fidelity.score import score_missing

    for note in score_missing(store, _options(fidelity)):
        print(f"fidelity: {note}", file=sys.stderr)


@contextmanager
def sweep_store(out_dir: Path, fidelity: FidelitySettings | None = None) -> Iterator[ResultStore]:
    """The store of a sweep, held from before any process starts to the end.

    Takes the directory lock (StoreBusyError, naming the holder, if another writer has it),
    opens or creates DIR/results.db (an empty file an older crash left is replaced; anything
    else unusable raises StoreError), settles the run directories an interrupted sweep left,
    and scores the runs it left unscored; the last again at the end.
    """
    with DirectoryLock(out_dir), ResultStore(out_dir / "results.db", replace_empty=True) as store:
        for note in store.recover_run_dirs():
            print(f"recovered: {note}", file=sys.stderr)
        _score_missing(store, fidelity)
        yield store
        _score_missing(store, fidelity)


def _score(store: ResultStore, spec: RunSpec, fidelity) -> None:
    """Fidelity vs the baseline when it is in this store (suite.fidelity.score); never raises."""
    from suite.fidelity.score import score_after_record

    score_after_record(store, spec, _options(fidelity))


def run_local(
    config: ExperimentConfig, out_dir: Path, *, skip_failed: bool = False, progress: bool = True
) -> SweepSummary:
    """Run every pending run of `config` in local spawned worlds."""
    if any(s.world_mode == "analytic" for s in config.runs):
        analytic_emulators()  # a bad $DIFFSCALE_EMULATORS stops the sweep before it starts
    with sweep_store(out_dir, config.fidelity) as store:
        summary = SweepSummary(db_path=store.path)
        todo = _pending(config, store, skip_failed)
        summary.skipped = [s.label() for s in config.runs if s not in todo]
        # Runs that share a world layout run back to back in one world; otherwise config order.
        first_seen: dict[tuple, int] = {}
        for s in todo:
            first_seen.setdefault(_world_key(s), len(first_seen))
        todo.sort(key=lambda s: first_seen[_world_key(s)])  # stable: config order within a world
        total_steps = sum(  # an emulating process reports the steps of every rank
            (s.warmup_runs + s.repeats) * s.steps * (1 if s.world_mode == "real" else s.world_size)
            for s in todo
        )
        runs_bar = tqdm(
            total=len(todo), desc="runs", unit="run", disable=not progress, file=sys.stderr
        )
        steps_bar = tqdm(
            total=total_steps, desc="steps", unit="step", disable=not progress, file=sys.stderr
        )
        try:
            for key, group in itertools.groupby(todo, key=_world_key):
                world_size, device, threads, fake = key
                with LocalWorld(
                    world_size,
                    device=device,
                    threads_per_rank=threads,
                    fake=fake,
                    collective_timeout_s=max(s.timeout_s for s in config.runs),
                ) as world:
                    for spec in group:
                        runs_bar.set_postfix_str(spec.label(), refresh=True)
                        outcome = _attempt(world, spec, progress=lambda: steps_bar.update(1))
                        _record(store, spec, outcome, summary, config.fidelity)
                        runs_bar.update(1)
        finally:
            runs_bar.close()
            steps_bar.close()
    return summary


def run_torchrun(
    config: ExperimentConfig, out_dir: Path, *, skip_failed: bool = False, progress: bool = True
) -> SweepSummary | None:
    """Inside `torchrun`: run the pending runs whose world size is this world's.

    Rank 0 owns the store (its file system holds the results) and tells the other ranks which
    runs to do; every rank returns, rank 0 with the summary.
    """
    import os

    world_size = int(os.environ["WORLD_SIZE"])
    mine = [s for s in config.runs if s.world_size == world_size and s.world_mode == "real"]
    devices = {s.device for s in mine} or {"cpu"}
    threads = {s.threads_per_rank for s in mine} or {1}
    if len(devices) > 1 or len(threads) > 1:
        raise SystemExit("under torchrun, runs of one world must share device and threads_per_rank")
    world = TorchrunWorld(
        device=devices.pop(),
        threads_per_rank=threads.pop(),
        collective_timeout_s=max((s.timeout_s for s in mine), default=600.0),
    )
    held = ExitStack()  # rank 0: the sweep's store, lock included
    store, shared = None, None
    if world.rank == 0:
        try:
            store = held.enter_context(sweep_store(out_dir, config.fidelity))
            shared = [s.run_id for s in _pending(config, store, skip_failed)]
        except StoreError as e:  # every rank stops with it, instead of waiting for rank 0
            shared = {"error": str(e), "exit_code": e.exit_code}
            held.__exit__(type(e), e, e.__traceback__)  # closes what was opened, scores nothing
    shared = world.share("todo", shared)
    if isinstance(shared, dict):
        world.close()
        error = StoreError(shared["error"])
        error.exit_code = shared["exit_code"]
        raise error
    summary = SweepSummary(db_path=store.path) if store else None
    todo_ids = set(shared)
    todo = [s for s in mine if s.run_id in todo_ids]
    if summary is not None:
        summary.skipped = [s.label() for s in config.runs if s.run_id not in todo_ids]
    with held:  # rank 0: at the end scores what is left, closes the store, releases the lock
        bar = tqdm(
            total=len(todo),
            desc="runs",
            unit="run",
            disable=not (progress and store),
            file=sys.stderr,
        )
        try:
            for spec in todo:
                outcome = _attempt(world, spec)
                if store is not None:
                    _record(store, spec, outcome, summary, config.fidelity)
                bar.update(1)
        finally:
            bar.close()
            world.close()
    return summary
