"""Where a run's time went: compute, exposed and overlapped communication, per rank, per op and
mesh axis, per layer type, and the no-communication ideal latency (DistriFusion, Table 2).

Every function takes a store (path of results.db or an open ResultStore) and returns a tidy
DataFrame keyed by run_id and, where it applies, rank. Times are seconds per timed denoising
step unless the column says otherwise; bytes follow the ledger's nccl-tests "size" convention.
The per-step and per-op numbers come from the stored rank_steps and comm tables; the per-layer
view reads each run's runs/<run_id>/trace.npz (the ledger's raw events), and skips runs
without one.

Definitions (ARCHITECTURE.md, Timing semantics; suite.worlds.record computes them): comm_s is the time
a rank had at least one collective in flight (the union of the ops' intervals within the step),
exposed_comm_s the time it was blocked on communication (the union of its waits within the
step), so exposed_comm_s <= comm_s <= step_s; overlapped_comm_s = comm_s - exposed_comm_s is
communication hidden behind compute and never exceeds compute_s = step_s - exposed_comm_s;
overlap_pct = 100 * (1 - exposed_comm_s / comm_s), NaN without communication. op_time_s sums
the ops' durations instead (concurrent ops each counted): an upper bound, not part of the
breakdown. Per op / axis / layer, inflight_s is the union over that group's calls and time_s
their summed durations. Runs stored before the union columns existed (op_time_s, inflight_s
empty) hold the summed durations in comm_s; their per-op overlap falls back to time_s.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.tables import load_runs, open_store, read_table
from suite.distributed.comm import OPS
from suite.distributed.mesh import AXES
from suite.measure.intervals import covered_s, inflight_intervals
from suite.store.results import ResultStore

# Columns that say which run a row belongs to, merged into every per-run table.
RUN_KEYS = [
    "run_id",
    "workload",
    "frames",  # a video clip's (empty for images): labels keep clip lengths apart
    "height",
    "width",
    "steps",
    "strategy",
    "degrees",
    "options",
    "world_size",
]
LAYER_TYPES = (
    "attn",
    "conv",
    "norm",
    "linear",
    "output",
    "cfg",
    "pipeline",
    "coalesced",  # DistriFusion's batched gathers: a block's halos, K/V and statistics together
    "unknown",
)

# The module paths strategies log as `layer`, by type: top-level output heads first (whole
# path), then each path component from the innermost out, the first rule that matches wins.
_OUTPUT = re.compile(r"^(output|proj_out(_\d+)?|conv_out|norm_out)$")
_COMPONENT_RULES = (
    ("attn", re.compile(r"attn|attention|^to_[qkv]$|^to_out$")),
    ("norm", re.compile(r"norm")),
    ("conv", re.compile(r"conv|sampler")),
    ("linear", re.compile(r"^(ff|ff_context|mlp|fc\d*|linear\d*|proj\w*)$")),
)


def layer_type(path: str) -> str:
    """Type of the module at `path`: attn, conv, norm, linear, output, cfg, pipeline, coalesced
    or unknown.

    E.g. 'down_blocks.0.resnets.0.conv1' -> conv, 'transformer_blocks.3.attn1' -> attn,
    'mid_block.attentions.0.norm' -> norm, 'proj_out' (the model's head) -> output.
    """
    if not path:
        return "unknown"
    if _OUTPUT.match(path):
        return "output"
    if path == "cfg":
        return "cfg"
    if path.startswith("pipefusion."):
        return "pipeline"
    if path.startswith("coalesced:"):
        return "coalesced"
    for part in reversed(path.split(".")):
        for kind, rule in _COMPONENT_RULES:
            if rule.search(part):
                return kind
    return "unknown"


@contextmanager
def _store(db: str | Path | ResultStore) -> Iterator[ResultStore]:
    if isinstance(db, ResultStore):
        yield db
        return
    with open_store(db) as store:
        yield store


def _ok_runs(db: str | Path | ResultStore) -> pd.DataFrame:
    runs = load_runs(db)
    return runs[(runs["status"] == "ok").fillna(False)].reset_index(drop=True)


def _pct(part: pd.Series, whole: pd.Series) -> pd.Series:
    """100 * part / whole, NaN where whole is 0 or missing."""
    whole = whole.astype(float).where(whole.astype(float) > 0)
    return 100.0 * part.astype(float) / whole


def _overlap(comm_s: pd.Series, exposed_s: pd.Series) -> pd.Series:
    return 100.0 - _pct(exposed_s, comm_s)


def step_breakdown(db: str | Path | ResultStore) -> pd.DataFrame:
    """One row per run, rank, timed loop and step.

    Columns: run_id, rank, repeat, step, step_s, compute_s, comm_s, exposed_comm_s,
    overlapped_comm_s, overlap_pct, op_time_s, comm_bytes. An op in flight across a step
    boundary (DistriFusion's displaced exchanges) counts in each step for the time it was in
    flight there, and its wait in the step that waited, so every step adds up on its own:
    compute_s + exposed_comm_s = step_s and 0 <= overlapped_comm_s <= compute_s.
    """
    df = read_table(db, "rank_steps")
    df["overlapped_comm_s"] = df["comm_s"] - df["exposed_comm_s"]
    df["overlap_pct"] = _overlap(df["comm_s"], df["exposed_comm_s"])
    cols = ["run_id", "rank", "repeat", "step", "step_s", "compute_s", "comm_s"]
    cols += ["exposed_comm_s", "overlapped_comm_s", "overlap_pct", "op_time_s", "comm_bytes"]
    return df[cols]


def rank_breakdown(db: str | Path | ResultStore) -> pd.DataFrame:
    """Per ok run and rank: means per timed step.

    Columns: RUN_KEYS, rank, n_steps (timed steps), step_s, compute_s, comm_s, exposed_comm_s,
    overlapped_comm_s, overlap_pct, compute_pct and exposed_comm_pct (shares of step_s),
    op_time_s (summed op durations, not part of the breakdown), comm_bytes_per_step.
    """
    steps = step_breakdown(db)
    runs = _ok_runs(db)[RUN_KEYS]
    means = ["step_s", "compute_s", "comm_s", "exposed_comm_s", "op_time_s", "comm_bytes"]
    g = steps[steps["run_id"].isin(runs["run_id"])].groupby(["run_id", "rank"], sort=True)
    out = g[means].mean().rename(columns={"comm_bytes": "comm_bytes_per_step"})
    out.insert(0, "n_steps", g.size())
    out = out.reset_index()
    out["overlapped_comm_s"] = out["comm_s"] - out["exposed_comm_s"]
    out["overlap_pct"] = _overlap(out["comm_s"], out["exposed_comm_s"])
    out["compute_pct"] = _pct(out["compute_s"], out["step_s"])
    out["exposed_comm_pct"] = _pct(out["exposed_comm_s"], out["step_s"])
    out = runs.merge(out, on="run_id", how="inner")
    cols = [*RUN_KEYS, "rank", "n_steps", "step_s", "compute_s", "comm_s", "exposed_comm_s"]
    cols += ["overlapped_comm_s", "overlap_pct", "compute_pct", "exposed_comm_pct", "op_time_s"]
    return out[[*cols, "comm_bytes_per_step"]]


_COMM_SUMS = ["calls_per_step", "bytes_per_step", "time_s", "inflight_s", "exposed_s"]


def _comm_derived(out: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Add overlapped_s (inflight_s - exposed_s), overlap_pct, bytes_pct (share of the rank's
    bytes) and algbw_gb_s (bytes over the summed op durations, as nccl-tests' per-op algbw).
    Rows without inflight_s (stored before it existed) fall back to time_s."""
    busy = out["inflight_s"].fillna(out["time_s"])
    out["overlapped_s"] = busy - out["exposed_s"]
    out["overlap_pct"] = _overlap(busy, out["exposed_s"])
    rank_bytes = out.groupby(keys)["bytes_per_step"].transform("sum")
    out["bytes_pct"] = _pct(out["bytes_per_step"], rank_bytes)
    with np.errstate(divide="ignore", invalid="ignore"):
        bw = out["bytes_per_step"].to_numpy(float) / out["time_s"].to_numpy(float)
    out["algbw_gb_s"] = np.where(np.isfinite(bw), bw / 1e9, np.nan)  # nccl-tests algbw
    return out


def comm_breakdown(
    db: str | Path | ResultStore, by: Sequence[str] = ("op", "axis")
) -> pd.DataFrame:
    """Bytes and time per op and / or mesh axis, per ok run and rank, per timed step.

    `by`: ("op", "axis") (the stored granularity), ("axis",) or ("op",). Columns: RUN_KEYS,
    rank, *by, calls_per_step, bytes_per_step, time_s (summed op durations), inflight_s (time
    with a call in flight), exposed_s, overlapped_s = inflight_s - exposed_s, overlap_pct,
    bytes_pct (share of the rank's bytes per step), algbw_gb_s (bytes / time_s / 1e9).
    Grouped coarser than (op, axis), inflight_s adds the stored per-(op, axis) unions, so time
    two ops of the group were both in flight counts twice; `layer_breakdown(by=("axis",))`
    takes the exact union from the run's trace.
    """
    by = list(by)
    if not by or set(by) - {"op", "axis"}:
        raise ValueError(f"comm_breakdown by={by!r}: choose from 'op' and 'axis'.")
    comm = read_table(db, "comm")
    runs = _ok_runs(db)[RUN_KEYS]
    comm = comm[comm["run_id"].isin(runs["run_id"])]
    # min_count: a group without inflight_s (older rows) stays empty instead of summing to 0
    g = comm.groupby(["run_id", "rank", *by], sort=True)[_COMM_SUMS]
    out = g.sum(min_count=1).reset_index()
    out = _comm_derived(out, ["run_id", "rank"])
    out = runs.merge(out, on="run_id", how="inner")
    derived = ["overlapped_s", "overlap_pct", "bytes_pct", "algbw_gb_s"]
    return out[[*RUN_KEYS, "rank", *by, *_COMM_SUMS, *derived]]


def trace_events(db: str | Path | ResultStore, run_id: str) -> pd.DataFrame:
    """The ledger's raw events of one run (runs/<run_id>/trace.npz), one row per collective.

    Columns: rank, repeat, step, wait_step, layer, layer_type, op, axis, group_size, is_async,
    nbytes, t_issue, t_done, t_wait_start, t_wait_end (perf_counter seconds; in an analytic
    run boundary indices, suite.measure.optrace), duration_s, exposed_s. Empty when the run has no
    trace file.
    """
    cols = ["rank", "repeat", "step", "wait_step", "layer", "layer_type", "op", "axis"]
    cols += ["group_size", "is_async", "nbytes", "t_issue", "t_done", "t_wait_start"]
    cols += ["t_wait_end", "duration_s", "exposed_s"]
    path = _trace_path(db, run_id)
    if path is None:
        return pd.DataFrame(columns=cols)
    frames = []
    with np.load(path) as z:
        for key in sorted(k for k in z if k.startswith("events_rank")):
            rank = int(key.removeprefix("events_rank"))
            ev, layers = z[key], [str(x) for x in z[f"layers_rank{rank}"]]
            df = pd.DataFrame({name: ev[name] for name in ev.dtype.names})
            df.insert(0, "rank", rank)
            df["layer"] = [layers[i] if 0 <= i < len(layers) else "" for i in df["layer"]]
            df["op"] = [OPS[i] for i in df["op"]]
            df["axis"] = [AXES[i] for i in df["axis"]]
            frames.append(df)
    if not frames:
        return pd.DataFrame(columns=cols)
    df = pd.concat(frames, ignore_index=True)
    df["layer_type"] = df["layer"].map(layer_type)
    df["duration_s"] = df["t_done"] - df["t_issue"]
    df["exposed_s"] = df["t_wait_end"] - df["t_wait_start"]
    return df[cols]


def _trace_path(db: str | Path | ResultStore, run_id: str) -> Path | None:
    """runs/<run_id>/trace.npz of a run, None when the run or the file is missing."""
    with _store(db) as store:
        runs = store.table("runs")
        out_dir = runs.loc[runs["run_id"] == run_id, "output_dir"]
        path = store.root / str(out_dir.iloc[0]) / "trace.npz" if len(out_dir) else None
    return path if path is not None and path.is_file() else None


def trace_windows(db: str | Path | ResultStore, run_id: str) -> dict[int, np.ndarray]:
    """Per rank, the timed steps' (t_start, t_end) windows of one run's trace.npz, an (n, 2)
    array in perf_counter seconds; empty without a trace file."""
    path = _trace_path(db, run_id)
    if path is None:
        return {}
    with np.load(path) as z:
        keys = [k for k in z if k.startswith("steps_rank")]
        return {
            int(k.removeprefix("steps_rank")): np.stack([z[k]["t_start"], z[k]["t_end"]], axis=1)
            for k in keys
        }


def _union_per_group(ev: pd.DataFrame, keys: list[str], windows: dict) -> pd.DataFrame:
    """Per group of `ev` (one run): inflight_s and exposed_s, the unions of the calls' in-flight
    and blocked intervals clipped to the rank's timed steps, summed over the steps."""
    rows = []
    for key, idx in ev.groupby(keys, sort=True).indices.items():
        sub = ev.iloc[idx]
        w = windows.get(int(sub["rank"].iloc[0]), np.zeros((0, 2)))
        exposed = covered_s(sub["t_wait_start"], sub["t_wait_end"], w[:, 0], w[:, 1]).sum()
        inflight = covered_s(*inflight_intervals(sub), w[:, 0], w[:, 1]).sum()
        rows.append((*key, float(max(inflight, exposed)), float(exposed)))
    return pd.DataFrame(rows, columns=[*keys, "inflight_s", "exposed_s"])


def _timed_steps(db: str | Path | ResultStore) -> pd.Series:
    """Timed steps per (run_id, rank): the denominator of every per-step number."""
    steps = read_table(db, "rank_steps")
    return steps.groupby(["run_id", "rank"]).size()


def layer_breakdown(
    db: str | Path | ResultStore, by: Sequence[str] = ("layer_type",)
) -> pd.DataFrame:
    """Communication per layer type (or module path, op, axis), per ok run and rank, per step.

    `by`: any of "layer_type", "layer" (module path), "op", "axis". Columns: RUN_KEYS, rank,
    *by, calls_per_step, bytes_per_step, time_s (summed op durations), inflight_s and
    exposed_s (unions over the group's calls within the timed steps, as comm_s and
    exposed_comm_s), overlapped_s, overlap_pct, bytes_pct, algbw_gb_s. Runs without a
    trace.npz are left out.
    """
    by = list(by)
    allowed = {"layer_type", "layer", "op", "axis"}
    if not by or set(by) - allowed:
        raise ValueError(f"layer_breakdown by={by!r}: choose from {sorted(allowed)}.")
    with _store(db) as store:
        ok = _ok_runs(store)
        runs = ok[RUN_KEYS]
        # an analytic run's trace is on a boundary clock (suite.measure.optrace): nothing was timed
        analytic = set(ok.loc[ok["world_mode"] == "analytic", "run_id"])
        n_steps = _timed_steps(store)
        frames = []
        for run_id in runs["run_id"]:
            ev = trace_events(store, run_id)
            if ev.empty:
                continue
            ev = ev.assign(run_id=run_id, calls=1)
            keys = ["run_id", "rank", *by]
            sums = ev.groupby(keys, sort=True)[["calls", "nbytes", "duration_s"]].sum()
            unions = _union_per_group(ev, keys, trace_windows(store, run_id))
            frame = sums.reset_index().merge(unions, on=keys, how="left")
            if run_id in analytic:
                frame[["duration_s", "inflight_s", "exposed_s"]] = np.nan
            frames.append(frame)
    cols = [*RUN_KEYS, "rank", *by, *_COMM_SUMS]
    cols += ["overlapped_s", "overlap_pct", "bytes_pct", "algbw_gb_s"]
    if not frames:
        return pd.DataFrame(columns=cols)
    out = pd.concat(frames, ignore_index=True)
    denom = n_steps.reindex(pd.MultiIndex.from_frame(out[["run_id", "rank"]])).to_numpy(float)
    out["calls_per_step"] = out.pop("calls") / denom
    out["bytes_per_step"] = out.pop("nbytes") / denom
    out["time_s"] = out.pop("duration_s") / denom
    out["inflight_s"] = out["inflight_s"] / denom
    out["exposed_s"] = out["exposed_s"] / denom
    out = _comm_derived(out, ["run_id", "rank"])
    return runs.merge(out, on="run_id", how="inner")[cols]


def ideal_latency(db: str | Path | ResultStore) -> pd.DataFrame:
    """Measured latency beside the no-communication ideal, per ok run (DistriFusion Table 2).

    ideal_latency_s is the compute critical path: per timed loop, the max over ranks of the
    rank's summed compute_s over the loop's steps; median over loops (as latency_s). It is what
    the run would take if every collective were free and compute unchanged.
    comm_overhead_s = latency_s - ideal_latency_s; comm_overhead_pct is its share of latency_s.
    Columns: RUN_KEYS, latency_s, ideal_latency_s, comm_overhead_s, comm_overhead_pct,
    exposed_comm_s, overlap_pct, comm_bytes_per_step (the runs table's per-step means).
    """
    runs = _ok_runs(db)
    steps = read_table(db, "rank_steps")
    # min_count: a run without timed steps (an analytic one) has no ideal, not 0 s
    per_loop = steps.groupby(["run_id", "repeat", "rank"])["compute_s"].sum(min_count=1)
    critical = per_loop.groupby(["run_id", "repeat"]).max()
    ideal = critical.groupby("run_id").median().rename("ideal_latency_s").reset_index()
    out = runs.merge(ideal, on="run_id", how="left")
    out["comm_overhead_s"] = out["latency_s"] - out["ideal_latency_s"]
    out["comm_overhead_pct"] = _pct(out["comm_overhead_s"], out["latency_s"])
    cols = [*RUN_KEYS, "latency_s", "ideal_latency_s", "comm_overhead_s", "comm_overhead_pct"]
    return out[[*cols, "exposed_comm_s", "overlap_pct", "comm_bytes_per_step"]]
