"""Turn the per-rank results of one run into the stored rows (runs, comm, rank_steps).

An analytic run (world_mode analytic) measured nothing: its timing and memory columns are empty
and its trace.npz also holds the operator trace (`segments_rank{r}`, `ops`: suite.measure.optrace).

Per-step numbers follow ARCHITECTURE.md's timing semantics, measured on each rank's timeline so
that the breakdown adds up:
- comm_s: the time within the step's window [t_start, t_end] during which at least one
  collective was in flight, i.e. the measure of the union of the ops' in-flight intervals
  clipped to the window. An op is in flight from its issue to its done time, and also while the
  rank is blocked on it (with completion callbacks the done stamp can precede the wait's return
  by microseconds). An op spanning steps counts in each step it was in flight in.
- exposed_comm_s: the measure of the union of the blocked intervals [t_wait_start, t_wait_end]
  clipped to the window (a blocking op's whole duration, an async op's wait; a wait that found
  the op complete is 0 s long).
Every blocked interval lies inside its op's in-flight interval and inside the step, so
0 <= exposed_comm_s <= comm_s <= step_s, compute_s = step_s - exposed_comm_s >= 0 and the
overlapped part, comm_s - exposed_comm_s, is at most compute_s: by construction.
op_time_s keeps the per-op durations summed over the ops issued in the step (the pre-union
comm_s): under polling each duration is an upper bound, and ops in flight together each count
in full, so it can exceed the step. The run-level columns are means over timed steps and over
ranks; latency is per timed loop the slowest rank's wall time, median over loops.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import socket
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import torch

from suite.config.experiment import RunSpec
from suite.distributed.comm import OPS
from suite.distributed.mesh import AXES
from suite.measure.intervals import covered_s, inflight_intervals
from suite.measure.profiling import nvml_summary, save_traces
from suite.store.results import RunRecord
from suite.worlds.runner import RankResult

REPO = Path(__file__).resolve().parent.parent


@cache
def git_commit() -> str:
    """The checkout's commit, '+dirty' when tracked files differ from it; 'unknown' outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        if head.returncode:
            return "unknown"
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD"], cwd=REPO, capture_output=True, timeout=10
        ).returncode
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@cache
def versions() -> str:
    import diffusers

    from suite import __version__

    return json.dumps(
        {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "numpy": np.__version__,
            "diffscale": __version__,
        },
        sort_keys=True,
    )


def _spec_columns(spec: RunSpec) -> dict:
    import workloads

    return {
        "run_id": spec.run_id,
        "experiment": spec.experiment,
        "config_hash": spec.config_hash,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "versions": versions(),
        "backend": spec.backend,
        "world_mode": spec.world_mode,
        "threads_per_rank": spec.threads_per_rank,
        "workload": spec.workload,
        "model": workloads.get_preset(spec.workload).model_class,
        "height": spec.height,
        "width": spec.width,
        "frames": spec.frames or None,
        "steps": spec.steps,
        "scheduler": spec.scheduler,
        "guidance": spec.guidance,
        "batch": spec.batch,
        "seed": spec.seed,
        "dtype": spec.dtype,
        "strategy": spec.strategy,
        "degrees": json.dumps(dict(spec.degrees)),
        "options": json.dumps(dict(spec.options), default=str),
        "world_size": spec.world_size,
        "warmup_runs": spec.warmup_runs,
        "repeats": spec.repeats,
    }


def failed_record(
    spec: RunSpec, error: str, output_dir: str = "", status: str = "failed"
) -> RunRecord:
    """The row of a run that did not finish (or was skipped); its error text is kept."""
    row = _spec_columns(spec) | {
        "host": socket.gethostname(),
        "device": spec.device,
        "status": status,
        "error": error,
        "output_dir": output_dir,
    }
    return RunRecord(run=row)


def _windows(result: RankResult) -> tuple[np.ndarray, np.ndarray]:
    return result.steps["t_start"].astype(float), result.steps["t_end"].astype(float)


def step_table(result: RankResult) -> list[dict]:
    """Per (repeat, step) times of one rank: step, comm in flight, exposed comm, compute, the
    summed op durations (op_time_s) and bytes (see the module docstring); an analytic rank's
    times are empty (its clock counts boundaries, not seconds)."""
    if result.segments is not None:
        return [row | dict.fromkeys(_TIMES) for row in _untimed_steps(result)]
    ev, rows = result.events, []
    lo, hi = _windows(result)
    blocked = covered_s(ev["t_wait_start"], ev["t_wait_end"], lo, hi)
    # blocked intervals lie inside the in-flight ones: max() only absorbs float rounding
    inflight = np.maximum(covered_s(*inflight_intervals(ev), lo, hi), blocked)
    duration = ev["t_done"] - ev["t_issue"]
    for i, (repeat, step, t_start, t_end) in enumerate(result.steps.tolist()):
        issued = (ev["repeat"] == repeat) & (ev["step"] == step)
        step_s = t_end - t_start
        exposed = float(blocked[i])
        rows.append(
            {
                "rank": result.rank,
                "repeat": repeat,
                "step": step,
                "step_s": step_s,
                "comm_s": float(inflight[i]),
                "op_time_s": float(duration[issued].sum()),
                "exposed_comm_s": exposed,
                "compute_s": step_s - exposed,
                "comm_bytes": float(ev["nbytes"][issued].sum()),
                "peak_mem_bytes": result.peak_mem_bytes,
            }
        )
    return rows


_TIMES = ("step_s", "comm_s", "op_time_s", "exposed_comm_s", "compute_s", "peak_mem_bytes")


def _untimed_steps(result: RankResult) -> list[dict]:
    ev = result.events
    return [
        {
            "rank": result.rank,
            "repeat": repeat,
            "step": step,
            "comm_bytes": float(
                ev["nbytes"][(ev["repeat"] == repeat) & (ev["step"] == step)].sum()
            ),
        }
        for repeat, step in result.steps[["repeat", "step"]].tolist()
    ]


def comm_table(result: RankResult, n_steps: int) -> list[dict]:
    """Per (op, axis) totals of one rank, per timed step: time_s sums the calls' durations (an
    upper bound that double counts concurrent calls), inflight_s and exposed_s are unions over
    the calls, clipped to the timed steps (as the step table's comm_s and exposed_comm_s); in
    an analytic rank only calls and bytes."""
    if result.segments is not None:
        ev = result.events
        keys = sorted(set(zip(ev["op"].tolist(), ev["axis"].tolist(), strict=True)))
        return [
            {
                "rank": result.rank,
                "op": OPS[op_id],
                "axis": AXES[axis_id],
                "calls_per_step": int(sel.sum()) / n_steps,
                "bytes_per_step": float(ev["nbytes"][sel].sum()) / n_steps,
                "time_s": None,
                "inflight_s": None,
                "exposed_s": None,
            }
            for op_id, axis_id in keys
            for sel in [(ev["op"] == op_id) & (ev["axis"] == axis_id)]
        ]
    ev, rows = result.events, []
    lo, hi = _windows(result)
    duration = ev["t_done"] - ev["t_issue"]
    for op_id, axis_id in sorted(set(zip(ev["op"].tolist(), ev["axis"].tolist(), strict=True))):
        sel = (ev["op"] == op_id) & (ev["axis"] == axis_id)
        sub = ev[sel]
        exposed = float(covered_s(sub["t_wait_start"], sub["t_wait_end"], lo, hi).sum())
        inflight = max(float(covered_s(*inflight_intervals(sub), lo, hi).sum()), exposed)
        rows.append(
            {
                "rank": result.rank,
                "op": OPS[op_id],
                "axis": AXES[axis_id],
                "calls_per_step": int(sel.sum()) / n_steps,
                "bytes_per_step": float(ev["nbytes"][sel].sum()) / n_steps,
                "time_s": float(duration[sel].sum()) / n_steps,
                "inflight_s": inflight / n_steps,
                "exposed_s": exposed / n_steps,
            }
        )
    return rows


def assemble(spec: RunSpec, results: list[RankResult], output_dir: str) -> RunRecord:
    """The stored record of a finished run from every rank's result."""
    results = sorted(results, key=lambda r: r.rank)
    n_steps = spec.repeats * spec.steps
    steps = [row | {"run_id": spec.run_id} for r in results for row in step_table(r)]
    comm = [row | {"run_id": spec.run_id} for r in results for row in comm_table(r, n_steps)]

    def mean_over_ranks(key: str) -> float:
        per_rank = [np.mean([s[key] for s in steps if s["rank"] == r.rank]) for r in results]
        return float(np.mean(per_rank))

    if spec.world_mode == "analytic":
        return _assemble_analytic(spec, results, output_dir, steps, comm, mean_over_ranks)
    loops = np.max(np.array([r.loop_s for r in results]), axis=0)  # slowest rank per loop
    comm_s, exposed = mean_over_ranks("comm_s"), mean_over_ranks("exposed_comm_s")
    row = _spec_columns(spec) | {
        "host": results[0].host,
        "device": results[0].device_name,
        "warmup_steps": results[0].warmup_steps,
        "latency_s": float(np.median(loops)),
        "latency_min_s": float(loops.min()),
        "latency_max_s": float(loops.max()),
        "step_s": mean_over_ranks("step_s"),
        "compute_s": mean_over_ranks("compute_s"),
        "comm_s": comm_s,
        "op_time_s": mean_over_ranks("op_time_s"),
        "exposed_comm_s": exposed,
        "overlap_pct": 100.0 * (1.0 - exposed / comm_s) if comm_s > 0 else None,
        "comm_bytes_per_step": mean_over_ranks("comm_bytes"),
        "peak_mem_bytes": max(r.peak_mem_bytes for r in results),
        "param_bytes_per_rank": max(r.param_bytes for r in results),
        "buffer_bytes_per_rank": max(r.buffer_bytes for r in results),
        **nvml_summary({r.rank: r.nvml for r in results if r.nvml is not None}),
        "status": "ok",
        "error": None,
        "output_dir": output_dir,
    }
    return RunRecord(run=row, comm=comm, rank_steps=steps)


def _assemble_analytic(spec, results, output_dir, steps, comm, mean_over_ranks) -> RunRecord:
    """An analytic run: nothing was measured, so every timing and memory column is empty; the
    bytes and calls of its collectives, its parameters and buffers are what it counted.
    `diffscale project` turns its operator trace into latencies on a hardware profile."""
    row = _spec_columns(spec) | {
        "host": socket.gethostname(),
        "device": results[0].device_name,
        "warmup_steps": results[0].warmup_steps,
        "comm_bytes_per_step": mean_over_ranks("comm_bytes"),
        "param_bytes_per_rank": max(r.param_bytes for r in results),
        "buffer_bytes_per_rank": max(r.buffer_bytes for r in results),
        "status": "ok",
        "error": None,
        "output_dir": output_dir,
    }
    return RunRecord(run=row, comm=comm, rank_steps=steps)


def _save_images(spec: RunSpec, run_dir: Path, latents: torch.Tensor) -> None:
    from suite.fidelity.images import write_run_images

    try:
        write_run_images(spec, run_dir, latents)
    except Exception as e:  # noqa: BLE001 - images are a by-product: never lose the run for them
        print(
            f"warning: images of {spec.run_id} not saved: {type(e).__name__}: {e}", file=sys.stderr
        )


def save_artifacts(results: list[RankResult], run_dir: Path, spec: RunSpec | None = None) -> None:
    """Final latents (rank 0), their decoded images (with `spec`, as run_dir/images/*.png) and
    every rank's raw step marks and ledger events.

    A sweep passes a fresh runs/.pending-<run_id> (suite.store.results.pending_run_dir) and moves it to
    runs/<run_id> once the run's row has committed, so no file there outlives or predates it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for r in results:
        if r.latents is not None:
            torch.save(r.latents, run_dir / "latents.pt")
            if spec is not None:
                _save_images(spec, run_dir, r.latents)
    arrays = {}
    for r in results:
        arrays[f"events_rank{r.rank}"] = r.events
        arrays[f"steps_rank{r.rank}"] = r.steps
        arrays[f"layers_rank{r.rank}"] = np.array(r.layers, dtype=str)
        arrays[f"buffer_bytes_rank{r.rank}"] = np.array(r.buffer_bytes, dtype=np.int64)
        if r.segments is not None:  # an analytic rank: its operator trace (suite.measure.optrace)
            arrays[f"segments_rank{r.rank}"] = r.segments
            arrays["ops"] = r.ops
    np.savez_compressed(run_dir / "trace.npz", **arrays)
    save_traces(results, run_dir)  # profiler / ledger Chrome traces and NVML samples, if any
