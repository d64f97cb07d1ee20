"""The result schema: one definition of every stored table and column.

The SQLite store creates its tables from here, the exporters and the report read the column
order from here, and the README's column reference is checked against it by a test. Columns are
unit-suffixed (`_s` seconds, `_bytes` bytes, `_pct` percent).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str  # TEXT | INTEGER | REAL
    doc: str


RUNS: tuple[Column, ...] = (
    Column("run_id", "TEXT", "unique id of the run: hash of experiment and run configuration"),
    Column("experiment", "TEXT", "experiment name from the config file"),
    Column("config_hash", "TEXT", "hash of the run's resolved configuration (resume key)"),
    Column("created_at", "TEXT", "UTC time the run finished, ISO 8601"),
    Column(
        "git_commit", "TEXT", "commit of the diffscale checkout that ran it ('+dirty' if modified)"
    ),
    Column("versions", "TEXT", "JSON: python, torch, diffusers, diffscale versions"),
    Column("host", "TEXT", "host name of rank 0"),
    Column(
        "device", "TEXT", "device description, e.g. 'cpu: <model name>' or the CUDA device name"
    ),
    Column("backend", "TEXT", "torch.distributed backend: gloo / nccl"),
    Column(
        "world_mode",
        "TEXT",
        "real (processes exchange data) / fake (one process emulates a rank) / analytic (ranks "
        "emulated on the meta device: nothing timed, operators recorded)",
    ),
    Column("threads_per_rank", "INTEGER", "intra-op CPU threads per rank"),
    Column("workload", "TEXT", "preset name"),
    Column("model", "TEXT", "diffusers model class"),
    Column("height", "INTEGER", "image height in pixels"),
    Column("width", "INTEGER", "image width in pixels"),
    Column("frames", "INTEGER", "frames per clip of a video workload (empty for images)"),
    Column("steps", "INTEGER", "denoising steps per image"),
    Column("scheduler", "TEXT", "scheduler name"),
    Column("guidance", "REAL", "classifier-free guidance scale (1 = no CFG branch)"),
    Column("batch", "INTEGER", "images per denoising loop (whole run, all ranks)"),
    Column("seed", "INTEGER", "seed of latents and conditioning"),
    Column("dtype", "TEXT", "compute dtype"),
    Column("strategy", "TEXT", "parallel strategy; '+'-joined for hybrids"),
    Column("degrees", "TEXT", "JSON: degree per mesh axis"),
    Column("options", "TEXT", "JSON: strategy options"),
    Column("world_size", "INTEGER", "ranks in the world"),
    Column("warmup_runs", "INTEGER", "untimed denoising loops run before the timed ones"),
    Column(
        "warmup_steps", "INTEGER", "synchronous warm-up steps of the strategy (0 if it has none)"
    ),
    Column("repeats", "INTEGER", "timed denoising loops"),
    Column("latency_s", "REAL", "median over timed loops of the loop's wall time (slowest rank)"),
    Column("latency_min_s", "REAL", "fastest timed loop"),
    Column("latency_max_s", "REAL", "slowest timed loop"),
    Column("step_s", "REAL", "mean wall time of one denoising step, mean over ranks"),
    Column("compute_s", "REAL", "step_s - exposed_comm_s"),
    Column(
        "comm_s",
        "REAL",
        "mean per step of the time at least one collective was in flight (union of the ops' "
        "intervals within the step), mean over ranks",
    ),
    Column(
        "op_time_s",
        "REAL",
        "mean per step of the summed durations of the collectives issued in the step, mean over "
        "ranks: ops in flight together each count in full, so it can exceed step_s (empty in "
        "runs stored before it existed, whose comm_s holds this sum)",
    ),
    Column(
        "exposed_comm_s",
        "REAL",
        "mean per step of the time blocked on communication (union of the blocked intervals "
        "within the step)",
    ),
    Column("overlap_pct", "REAL", "100 * (1 - exposed_comm_s / comm_s); empty without comm"),
    Column("comm_bytes_per_step", "REAL", "payload bytes per step per rank, mean over ranks"),
    Column("peak_mem_bytes", "INTEGER", "max over ranks: CUDA max allocated, or CPU peak RSS"),
    Column("param_bytes_per_rank", "INTEGER", "max over ranks of parameter bytes held"),
    Column(
        "buffer_bytes_per_rank",
        "INTEGER",
        "max over ranks of the activation buffers a strategy keeps between steps (DistriFusion's "
        "stale halos, K/V and GroupNorm statistics; PipeFusion's K/V cache); 0 if none",
    ),
    # NVML (NVIDIA GPUs): sampled at 10 Hz during the timed loops; empty on CPU or without NVML
    Column(
        "nvml_mem_used_max_bytes",
        "REAL",
        "max over ranks and samples of GPU memory used (NVML: every process on the GPU)",
    ),
    Column("nvml_util_mean_pct", "REAL", "GPU utilization, mean over ranks of each GPU's mean"),
    Column("nvml_power_mean_w", "REAL", "GPU power draw, mean over ranks of each GPU's mean"),
    Column("nvml_energy_j", "REAL", "GPU energy over the timed loops, summed over GPUs"),
    Column("status", "TEXT", "ok / failed / skipped (the method cannot run here; error says why)"),
    Column("error", "TEXT", "error of a failed run (first failing rank), or why it was skipped"),
    Column(
        "output_dir", "TEXT", "directory with the run's latents and traces, relative to the store"
    ),
)

COMM: tuple[Column, ...] = (
    Column("run_id", "TEXT", "run the row belongs to"),
    Column("rank", "INTEGER", "global rank"),
    Column(
        "op",
        "TEXT",
        "all_gather / all_reduce / all_to_all / reduce_scatter / send / recv / broadcast",
    ),
    Column("axis", "TEXT", "mesh axis the group spans"),
    Column("calls_per_step", "REAL", "calls per timed step"),
    Column("bytes_per_step", "REAL", "payload bytes per timed step (nccl-tests 'size' convention)"),
    Column(
        "time_s",
        "REAL",
        "summed durations of the op's calls per timed step (issue to done; an upper bound under "
        "polling): calls in flight together each count in full, so it can exceed the step",
    ),
    Column(
        "inflight_s",
        "REAL",
        "time per timed step at least one call of the op on the axis was in flight (union of "
        "the calls' intervals within the steps); empty in runs stored before it existed",
    ),
    Column(
        "exposed_s",
        "REAL",
        "time blocked on the op per timed step (union of the blocked intervals within the steps)",
    ),
)

RANK_STEPS: tuple[Column, ...] = (
    Column("run_id", "TEXT", "run the row belongs to"),
    Column("rank", "INTEGER", "global rank"),
    Column("repeat", "INTEGER", "timed loop index"),
    Column("step", "INTEGER", "denoising step index"),
    Column("step_s", "REAL", "wall time of the step"),
    Column(
        "comm_s",
        "REAL",
        "time in the step at least one collective was in flight (union of the ops' intervals "
        "clipped to the step; an op spanning steps counts in each)",
    ),
    Column(
        "op_time_s",
        "REAL",
        "summed durations of the collectives issued in the step (can exceed step_s when ops "
        "overlap); empty in runs stored before it existed, whose comm_s holds this sum",
    ),
    Column(
        "exposed_comm_s",
        "REAL",
        "time blocked on communication in the step (union of the blocked intervals clipped to "
        "the step)",
    ),
    Column("compute_s", "REAL", "step_s - exposed_comm_s"),
    Column("comm_bytes", "REAL", "payload bytes of collectives issued in the step"),
    Column("peak_mem_bytes", "INTEGER", "rank's peak memory over the run (repeated per row)"),
)

FIDELITY: tuple[Column, ...] = (
    Column("run_id", "TEXT", "scored run"),
    Column("baseline_run_id", "TEXT", "single-device run it is compared with"),
    Column("reference", "TEXT", "original (vs baseline outputs) / ground_truth"),
    Column(
        "metric",
        "TEXT",
        "psnr / ssim / lpips / fid / fid_torchmetrics; videos also psnr_frame / ssim_frame / "
        "lpips_frame (one row per frame), psnr_frame_std, flicker, fvd",
    ),
    Column("value", "REAL", "metric value; empty when missing"),
    Column("backbone", "TEXT", "network behind the metric, or why it is missing"),
    Column("n_images", "INTEGER", "images the value rests on (clips for video metrics)"),
    Column(
        "frame",
        "INTEGER",
        "frame index in the clip of a per-frame video metric (*_frame); empty otherwise",
    ),
)

PROJECTION: tuple[Column, ...] = (
    Column("run_id", "TEXT", "projected run"),
    Column("hardware", "TEXT", "hardware profile name (projected, never measured)"),
    Column("latency_s", "REAL", "projected latency"),
    Column("compute_s", "REAL", "projected compute per step"),
    Column(
        "comm_s",
        "REAL",
        "projected time per step at least one collective is in flight (a union, as measured)",
    ),
    Column("exposed_comm_s", "REAL", "projected exposed communication per step"),
    Column(
        "projected_dtype",
        "TEXT",
        "dtype compute and collective payloads were priced in on the target (the run's unless "
        "project --dtype)",
    ),
    Column(
        "compute_model",
        "TEXT",
        "how compute was re-timed: the operator model on an analytic trace, or measured compute "
        "scaled by an operator-model ratio (analytic twin run named) or a matmul-curve ratio",
    ),
    Column(
        "anchored_to",
        "TEXT",
        "anchor of the target's compute (a latency or a measured single-device run); empty: "
        "unanchored",
    ),
    Column("anchor_scale", "REAL", "factor applied to the target's compute time (1: unanchored)"),
    Column(
        "execution",
        "TEXT",
        "how the target runs the model (GPU profiles): eager, cuda_graphs or compile "
        "(configs/hardware/execution.yaml); empty for a CPU profile. With hardware, "
        "projected_dtype and anchored_to it keys a projection: variants sit side by side",
    ),
    Column(
        "compute_bound_pct",
        "REAL",
        "share of the critical path (slowest rank) in compute-bound operators; empty without an "
        "operator trace",
    ),
    Column(
        "memory_bound_pct",
        "REAL",
        "share of the critical path in memory-bound operators; empty without an operator trace",
    ),
    Column(
        "launch_pct",
        "REAL",
        "share of the critical path in per-call launch overhead not hidden behind kernels",
    ),
    Column(
        "link_pct",
        "REAL",
        "share of the critical path blocked on communication (exposed, waits on peers included)",
    ),
)

TABLES: dict[str, tuple[Column, ...]] = {
    "runs": RUNS,
    "comm": COMM,
    "rank_steps": RANK_STEPS,
    "fidelity": FIDELITY,
    "projection": PROJECTION,
}


def column_names(table: str) -> list[str]:
    """Column names of `table`, in stored order."""
    return [c.name for c in TABLES[table]]
