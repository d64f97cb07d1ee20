"""Projection: re-time a run's per-rank traces on a hardware profile it did not run on.

Every number this module produces is PROJECTED, labelled with the profile's name, never mixed
with measured columns.

The model (after "Characterizing Deep Learning Training Workloads on Alibaba-PAI": split time into
computation and communication, then re-cost each on other hardware):
- compute, analytic runs (`suite.measure.optrace` traces): the operator model (`analysis.opmodel`) prices
  every segment signature on the target; `retime` turns the boundary clock into seconds;
- compute, measured runs (real, fake): each measured compute interval (the time a rank was not
  blocked on communication) is scaled by target / source time of the same work: the operator
  model on an analytic run of the same configuration where the store holds one, else the ratio
  of the profiles' matmul-curve throughput at the run's typical GEMM;
- dtype: compute priced in the target dtype, collective payloads rescaled by its element size;
- anchoring: one factor on a target's compute time, chosen so that the single-device run of
  the workload projects to a given latency;
- sensitivity: the critical path (the slowest rank's timeline) split into compute-bound,
  memory-bound, launch and exposed-communication shares;
- communication: each collective costs alpha-beta on the link its group crosses (ring
  all-gather / reduce-scatter / all-to-all (p-1)a + (p-1)/p n/B, all-reduce 2(p-1)a +
  2(p-1)/p n/B, broadcast and send/recv a + n/B); a group that spans nodes uses the
  inter-node link, whose bandwidth a node's GPUs share when it is one NIC per node; a profile
  calibrated on the source machine may carry fitted alpha/beta per (op, group size) instead;
- timeline: ranks are simulated together. A collective starts when the last member issues it
  (the k-th op on a group matches the k-th on every member, as NCCL requires) and a send pairs
  with the receive of the same order; async ops run beside compute until their wait point;
- core sharing (CPU profiles, `cpu_cores`): when a world's busy threads outnumber the cores, each
  runs slower by the mean number of busy threads per core over the loop (processor sharing).
  Busy: a rank's compute threads while it computes, and one thread per op it takes part in for
  the op's cost (on CPU the backend moves data with the ranks' own cores, async or not); a rank
  blocked waiting for a peer (a pipeline bubble, a late member) sleeps and frees its core. On the
  target the factor is solved with the timeline it shapes (a fixed point); a real run measured
  under sharing is first brought back to unshared speed by the factor its own trace shows.
"""

from __future__ import annotations

import functools
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import opmodel
from analysis.collectives import collective_s, load_collectives
from analysis.hardware import Profile
from suite.distributed.comm import OPS
from suite.distributed.mesh import AXES
from suite.measure.intervals import covered_s
from suite.measure.optrace import EMPTY, retime

# nccl-tests bus-bandwidth factors: busbw = algbw * factor(p), algbw = size / time
BUSBW_FACTOR = {
    "all_reduce": lambda p: 2 * (p - 1) / p,
    "all_gather": lambda p: (p - 1) / p,
    "reduce_scatter": lambda p: (p - 1) / p,
    "all_to_all": lambda p: (p - 1) / p,
    "broadcast": lambda p: 1.0,
    "send": lambda p: 1.0,
    "recv": lambda p: 1.0,
}


def bus_bandwidth(op: str, nbytes: float, group_size: int, time_s: float) -> tuple[float, float]:
    """(algbw, busbw) in bytes/s for an op of `nbytes` (nccl-tests size) taking `time_s`."""
    algbw = nbytes / time_s
    return algbw, algbw * BUSBW_FACTOR[op](group_size)


def alpha_beta_time(op: str, nbytes: float, p: int, alpha_s: float, bandwidth_b_s: float) -> float:
    """Seconds for one collective of `nbytes` over `p` ranks on a link (latency, bytes/s)."""
    if p <= 1:
        return 0.0
    if op in ("all_gather", "reduce_scatter", "all_to_all"):
        return (p - 1) * alpha_s + (p - 1) / p * nbytes / bandwidth_b_s
    if op == "all_reduce":
        return 2 * (p - 1) * alpha_s + 2 * (p - 1) / p * nbytes / bandwidth_b_s
    if op in ("broadcast", "send", "recv"):
        return alpha_s + nbytes / bandwidth_b_s
    raise ValueError(f"no cost model for op {op!r}")


def group_members(degrees: dict[str, int], rank: int, axis: str) -> list[int]:
    """Global ranks of `rank`'s group on `axis` for a row-major mesh of the active axes."""
    active = [(a, degrees[a]) for a in AXES if degrees.get(a, 1) > 1]
    if axis not in dict(active):
        return [rank]
    strides, stride = {}, 1
    for a, d in reversed(active):
        strides[a] = stride
        stride *= d
    coord = (rank // strides[axis]) % degrees[axis]
    base = rank - coord * strides[axis]
    return [base + i * strides[axis] for i in range(degrees[axis])]


def op_time(
    profile: Profile, op: str, nbytes: float, members: list[int], group: list[int] | None = None
) -> float:
    """Projected seconds of one collective on `profile` among global ranks `members` (`group`:
    the axis group a send / recv pair belongs to, which tells how many pairs share a link).

    A profile calibrated on its machine prices with its own measurements; a GPU profile with a
    `topology` as NCCL runs the op (analysis.collectives); others with alpha-beta on its links."""
    p = len(members)
    curve = profile.curves.get((op, p))
    if curve is not None and curve[0][0] <= nbytes <= curve[0][-1]:
        # inside the calibrated range: interpolate the measurements in log-log space
        return float(np.exp(np.interp(np.log(nbytes), np.log(curve[0]), np.log(curve[1]))))
    fit = profile.fits.get((op, p))
    if fit is not None:
        return fit.alpha_s + fit.beta_s_per_byte * nbytes
    if profile.topology is not None:
        return collective_s(profile.topology, load_collectives(), op, nbytes, members, group)
    nodes = {m // profile.gpus_per_node for m in members}
    link = profile.intra_node if len(nodes) == 1 else profile.inter_node
    if link is None:
        raise ValueError(f"profile {profile.name} has no link between nodes {sorted(nodes)}")
    bandwidth = link.effective_bandwidth_gb_s(profile.gpus_per_node) * 1e9
    return alpha_beta_time(op, nbytes, p, link.latency_us * 1e-6, bandwidth)


@dataclass
class RankTrace:
    """One rank's measured timeline for one timed loop."""

    rank: int
    steps: np.ndarray  # suite.worlds.runner.STEP_DTYPE rows of this loop
    events: np.ndarray  # suite.distributed.comm.EVENT_DTYPE rows of this loop


@dataclass
class Projected:
    latency_s: float
    compute_s: float  # per step, mean over ranks
    comm_s: float
    exposed_comm_s: float
    critical_rank: int = -1  # the slowest rank: its timeline is the critical path
    critical_exposed_s: float = math.nan  # its time blocked on communication, whole loop


class ProjectionError(RuntimeError):
    """The traces cannot be re-timed together (their collectives do not match across ranks)."""


def _actions(trace: RankTrace) -> list[tuple]:
    """(measured time, order, kind, event index) sorted: what the rank did, in order."""
    out = []
    for i, e in enumerate(trace.events):
        if e["is_async"]:
            out.append((e["t_issue"], 0, "issue", i))
            out.append((e["t_wait_start"], 1, "wait", i))
        else:
            out.append((e["t_issue"], 0, "block", i))
    for s in trace.steps:
        out.append((s["t_end"], 2, "step_end", int(s["step"])))
    return sorted(out, key=lambda a: (a[0], a[1], a[3]))


def simulate(
    traces: list[RankTrace],
    degrees: dict[str, int],
    cost,  # (op, nbytes, members, group) -> seconds
    compute_scale: float,
    overlap_slowdown: float = 0.0,
    call_host_s: float = 0.0,
) -> Projected:
    """Re-time the ranks' loops together; see the module docstring for the model.

    `overlap_slowdown`: the fraction by which compute slows while a collective of its rank moves
    data beside it (NCCL's kernels take SMs and memory bandwidth): the compute a rank ran while
    an async op it waits for was transferring (from the last member's arrival to the op's end)
    is stretched by it.
    `call_host_s`: host time each collective call costs its rank before the op is issued (eager
    PyTorch; 0 with CUDA graphs)."""
    keys: dict[int, list] = {}
    for t in traces:
        counters: dict[tuple, int] = defaultdict(int)
        ks = []
        for e in t.events:
            op = OPS[e["op"]]
            if op in ("send", "recv"):
                src, dst = (t.rank, int(e["peer"])) if op == "send" else (int(e["peer"]), t.rank)
                base = ("p2p", src, dst, op)
                counters[base] += 1
                ks.append(("p2p", src, dst, counters[base]))
            else:
                base = (int(e["axis"]), int(e["group_first"]))
                counters[base] += 1
                ks.append((*base, counters[base]))
        keys[t.rank] = ks

    arrivals: dict[tuple, list[float]] = defaultdict(list)
    need: dict[tuple, int] = {}
    ends: dict[tuple, float] = {}
    moving: dict[tuple, float] = {}  # when the op's data starts to move: its last member arrives
    sizes: dict[tuple, tuple] = {}
    state = {}
    for t in traces:
        start = float(t.steps["t_start"].min())
        state[t.rank] = {
            "pos": 0,
            "T": 0.0,
            "L": start,
            "acts": _actions(t),
            "inflight": [],  # (start, end) of each op on the simulated clock
            "exposed": 0.0,
            "slowed_to": 0.0,  # compute up to this time already paid its overlap slowdown
        }

    def finish(key) -> float | None:
        if key in ends:
            return ends[key]
        if len(arrivals[key]) < need[key]:
            return None
        moving[key] = max(arrivals[key])
        ends[key] = moving[key] + cost(*sizes[key])
        return ends[key]

    remaining = len(traces)
    while remaining:
        progressed = False
        for t in traces:
            st = state[t.rank]
            while st["pos"] < len(st["acts"]):
                t_meas, _, kind, i = st["acts"][st["pos"]]
                if kind == "step_end":
                    st["T"] += max(0.0, t_meas - st["L"]) * compute_scale
                    st["L"] = t_meas
                    st["pos"] += 1
                    progressed = True
                    continue
                e, key = t.events[i], keys[t.rank][i]
                if ("arrived", i) not in st:
                    st["T"] += max(0.0, t_meas - st["L"]) * compute_scale + call_host_s
                    st["L"] = t_meas
                    sizes[key] = _op_args(e, t.rank, degrees)
                    arrivals[key].append(st["T"])
                    need[key] = len(sizes[key][2])
                    st[("arrived", i)] = st["T"]
                    progressed = True
                    if kind == "issue":
                        st["pos"] += 1
                        continue
                end = finish(key)
                if end is None:
                    break  # waits for a peer that has not issued this op yet
                st["inflight"].append((st[("arrived", i)], end))
                if kind == "wait":  # compute ran until the wait point
                    st["T"] += max(0.0, t_meas - st["L"]) * compute_scale
                    if overlap_slowdown:
                        start = max(moving[key], st["slowed_to"])
                        overlap = max(0.0, min(end, st["T"]) - start)
                        st["T"] += overlap * overlap_slowdown
                        st["slowed_to"] = max(st["slowed_to"], min(end, st["T"]))
                before = st["T"]
                st["T"] = max(st["T"], end)
                st["exposed"] += st["T"] - before
                st["L"] = e["t_done"] if kind == "block" else e["t_wait_end"]
                st["pos"] += 1
                progressed = True
            if st["pos"] == len(st["acts"]) and not st.get("done"):
                st["done"] = True
                remaining -= 1
        if remaining and not progressed:
            stuck = {
                r: s["acts"][s["pos"]][2] for r, s in state.items() if s["pos"] < len(s["acts"])
            }
            raise ProjectionError(f"ranks cannot proceed (unmatched communication): {stuck}")

    n_steps = len(traces[0].steps)
    latency = max(s["T"] for s in state.values())
    critical = max(state, key=lambda r: state[r]["T"])
    # comm_s as measured runs define it: time at least one op is in flight (a union, not a sum)
    comm = float(np.mean([_inflight_s(s["inflight"], s["T"]) for s in state.values()])) / n_steps
    exposed = float(np.mean([s["exposed"] for s in state.values()])) / n_steps
    step = float(np.mean([s["T"] for s in state.values()])) / n_steps
    return Projected(latency, step - exposed, comm, exposed, critical, state[critical]["exposed"])


def _inflight_s(intervals: list[tuple[float, float]], end: float) -> float:
    """Seconds of [0, end] during which at least one of `intervals` was in flight."""
    if not intervals:
        return 0.0
    starts, ends = np.array(intervals, dtype=float).T
    return float(covered_s(starts, ends, 0.0, end))


def _op_args(
    e: np.ndarray, rank: int, degrees: dict[str, int]
) -> tuple[str, float, list[int], list[int]]:
    """(op for the cost model, nbytes, global ranks taking part, their axis group) of one ledger
    event; a send / recv is priced once per pair, as a send."""
    op = OPS[e["op"]]
    group = group_members(degrees, rank, AXES[e["axis"]])
    if op in ("send", "recv"):
        return "send", float(e["nbytes"]), [rank, int(e["peer"])], group
    return op, float(e["nbytes"]), group, group


def comm_busy_s(traces: list[RankTrace], degrees: dict[str, int], cost) -> float:
    """Thread-seconds the ranks' communication keeps busy: every event's full cost (each member
    of an op, sender and receiver alike, moves data for its whole duration)."""
    return float(sum(cost(*_op_args(e, t.rank, degrees)) for t in traces for e in t.events))


def core_sharing(busy_s: float, latency_s: float, cores: float) -> float:
    """How much slower a busy thread runs when `busy_s` thread-seconds share `cores` over a loop
    of `latency_s` (processor sharing: the mean busy threads per core, at least 1)."""
    if not latency_s > 0:
        return 1.0
    return max(1.0, busy_s / (latency_s * cores))


def measured_sharing(
    traces_by_rank: dict[int, tuple[np.ndarray, np.ndarray]],
    degrees: dict[str, int],
    source: Profile,
    threads_per_rank: int,
) -> float:
    """Core sharing a real run's measured compute ran under (1 without `cpu_cores`).

    From the trace: compute (step time not blocked on communication) times the rank's threads,
    plus the communication's busy time on `source`, over the loops' wall time and the cores.
    """
    if not source.cpu_cores:
        return 1.0
    busy = wall = 0.0
    for rep in sorted(set(traces_by_rank[0][0]["repeat"].tolist())):
        traces = []
        for r, (steps, events) in sorted(traces_by_rank.items()):
            st, ev = steps[steps["repeat"] == rep], events[events["repeat"] == rep]
            traces.append(RankTrace(r, st, ev))
            blocked = float((ev["t_wait_end"] - ev["t_wait_start"]).sum())
            busy += (float((st["t_end"] - st["t_start"]).sum()) - blocked) * threads_per_rank
        busy += comm_busy_s(traces, degrees, lambda *args: op_time(source, *args))
        wall += max(float(t.steps["t_end"].max()) for t in traces) - min(
            float(t.steps["t_start"].min()) for t in traces
        )
    return core_sharing(busy, wall, source.cpu_cores)


def simulate_shared(
    traces: list[RankTrace],
    degrees: dict[str, int],
    cost,
    compute_scale: float,
    cores: float,
    threads_per_rank: int = 1,
) -> tuple[Projected, float]:
    """`simulate` on `cores` shared by the ranks: (projection, core-sharing factor).

    The factor scales compute and depends on the timeline it produces (how long ranks sleep
    in bubbles and waits), so it is solved by damped fixed-point iteration.
    """
    n_steps, world = len(traces[0].steps), len(traces)
    busy_comm = comm_busy_s(traces, degrees, cost)
    share = max(1.0, world * threads_per_rank / cores)  # every rank always busy: the bound
    for _ in range(100):
        p = simulate(traces, degrees, cost, compute_scale * share)
        busy = p.compute_s * n_steps * world * threads_per_rank + busy_comm
        new = core_sharing(busy, p.latency_s, cores)
        if abs(new - share) <= 1e-4 * share:
            break
        share = 0.5 * (share + new)
    return p, share


def _repeats(steps: np.ndarray) -> list[int]:
    """Timed loops of a trace (warm-up loops, negative, only when nothing else is there)."""
    reps = sorted(set(steps["repeat"].tolist()))
    return [r for r in reps if r >= 0] or reps


def _median(results: list[tuple[Projected, tuple | None]]) -> tuple[Projected, tuple | None]:
    if not results:
        return Projected(math.nan, math.nan, math.nan, math.nan), None
    results = sorted(results, key=lambda r: r[0].latency_s)
    return results[len(results) // 2]


def _run_loop(traces, degrees, target: Profile, scale: float, threads_per_rank: int) -> Projected:
    cost = lambda *args: op_time(target, *args)  # noqa: E731
    if target.cpu_cores:
        return simulate_shared(traces, degrees, cost, scale, target.cpu_cores, threads_per_rank)[0]
    # on GPUs NCCL's kernels slow the compute they overlap (a CPU target's core sharing covers
    # its own case); see collectives.yaml `overlap_slowdown` for the sources
    slowdown = load_collectives().overlap_slowdown if target.topology is not None else 0.0
    host = target.execution.collective_host_s if target.execution is not None else 0.0
    return simulate(traces, degrees, cost, scale, slowdown, host)


def _scaled_bytes(events: np.ndarray, byte_scale: float) -> np.ndarray:
    if byte_scale == 1.0:
        return events
    events = events.copy()
    events["nbytes"] = np.rint(events["nbytes"] * byte_scale).astype(events["nbytes"].dtype)
    return events


def project_run(
    traces_by_rank: dict[int, tuple[np.ndarray, np.ndarray]],
    degrees: dict[str, int],
    source: Profile,
    target: Profile,
    dtype: str,
    extra_scale: float = 1.0,
    threads_per_rank: int = 1,
    compute_ratio: float | None = None,
    byte_scale: float = 1.0,
) -> Projected:
    """Project a measured run (per rank: its steps and events arrays) onto `target`.

    Every measured compute interval is multiplied by `compute_ratio` (target / source time of
    the same work; default: the ratio of the profiles' large-GEMM throughput in `dtype`) and by
    `extra_scale` (e.g. 1 / the core sharing a real run was measured under, or an anchor);
    collective payloads by `byte_scale` (a dtype change). Each timed loop is simulated and the
    median-latency one is returned; on a target with `cpu_cores` the ranks share its cores.
    """
    world = len(traces_by_rank)
    if world > target.world_size:
        raise ValueError(
            f"run needs {world} devices; profile {target.name} has {target.world_size}"
        )
    if compute_ratio is None:
        key = opmodel.dtype_key(dtype)
        compute_ratio = opmodel.matmul_rate(source, key, 1e15) / opmodel.matmul_rate(
            target, key, 1e15
        )
    results = []
    for rep in _repeats(traces_by_rank[0][0]):
        traces = [
            RankTrace(
                r,
                steps[steps["repeat"] == rep],
                _scaled_bytes(events[events["repeat"] == rep], byte_scale),
            )
            for r, (steps, events) in sorted(traces_by_rank.items())
        ]
        scale = compute_ratio * extra_scale
        results.append((_run_loop(traces, degrees, target, scale, threads_per_rank), None))
    return _median(results)[0]


def project_analytic(
    trace,
    world_size: int,
    degrees: dict[str, int],
    target: Profile,
    dtype: str | None = None,
    compute_scale: float = 1.0,
    byte_scale: float = 1.0,
    threads_per_rank: int = 1,
) -> tuple[Projected, tuple[float, float, float]]:
    """Project an analytic trace (`suite.measure.optrace`: boundary-clock events and steps, per-rank
    segments, the signatures' `ops`) with the operator model alone: every signature priced on
    `target` (its float ops in `dtype` when given), the ranks re-timed and simulated together
    with compute_scale 1 (times `compute_scale`, an anchor).

    Returns the median loop's projection and its critical rank's compute split in seconds:
    (compute-bound, memory-bound, launch).
    """
    priced = opmodel.price(target, trace["ops"], dtype)
    durations = priced.time_s * compute_scale
    timed = {}
    for r in range(world_size):
        steps, segments = trace[f"steps_rank{r}"], trace[f"segments_rank{r}"]
        events, steps_s = retime(trace[f"events_rank{r}"], steps, segments, durations)
        timed[r] = (steps, steps_s, _scaled_bytes(events, byte_scale), segments)
    results = []
    for rep in _repeats(timed[0][0]):
        traces = []
        for r, (steps, steps_s, events, _) in timed.items():
            traces.append(
                RankTrace(r, steps_s[steps["repeat"] == rep], events[events["repeat"] == rep])
            )
        p = _run_loop(traces, degrees, target, 1.0, threads_per_rank)
        steps, _, _, segments = timed[p.critical_rank]
        loop = steps[steps["repeat"] == rep]
        first, last = int(loop["t_start"].min()), int(loop["t_end"].max())
        seg = np.asarray(segments[first:last], dtype=np.int64)
        seg = seg[seg != EMPTY]
        split = tuple(
            float(a[seg].sum())
            for a in (priced.compute_bound_s, priced.memory_bound_s, priced.launch_s)
        )
        results.append((p, split))
    return _median(results)


def shares(p: Projected, split: tuple[float, float, float] | None) -> dict[str, float]:
    """What bounds a projection: percent of the critical path (the slowest rank's timeline)
    compute-bound, memory-bound, in per-call launch overhead, and blocked on communication
    (`link_pct`). The compute split is unknown (NaN) without an operator trace."""
    total = p.latency_s
    link = 100 * p.critical_exposed_s / total if total > 0 else math.nan
    out = {"link_pct": link}
    rest = 100 - link
    parts = sum(split) if split else 0.0
    for name, x in zip(("compute_bound_pct", "memory_bound_pct", "launch_pct"),
                       split or (math.nan,) * 3, strict=True):  # fmt: skip
        out[name] = rest * x / parts if parts > 0 else math.nan
    return out


class ProjectionInputError(ValueError):
    """The store cannot be projected as asked (an anchor it does not hold, a dtype a profile
    cannot run): a sentence for the user, never a traceback."""


# Fields that make two runs the same workload on one device (anchoring, analytic twins); frames
# (a video clip's, empty for images and in stores older than the column) keeps two clip lengths at
# one height x width apart.
WORKLOAD_KEY = ["workload", "frames", "height", "width", "steps", "batch", "scheduler", "guidance"]
# ... and the same run in another world mode (an analytic trace of a measured run).
TWIN_KEY = [*WORKLOAD_KEY, "dtype", "strategy", "degrees", "options", "world_size"]
_MODE_ORDER = {"analytic": 0, "fake": 1, "real": 2}  # what a baseline is best taken from


def _equal(column: pd.Series, value) -> pd.Series:
    """Rows of `column` equal to `value` as text; a missing value (an image's frames) matches
    missing values only."""
    if pd.isna(value):
        return column.isna()
    return column.astype(str) == str(value)


def _is_analytic(run, trace) -> bool:
    return run.world_mode == "analytic" and "ops" in trace


@functools.lru_cache(maxsize=256)
def load_trace(path: Path) -> dict[str, np.ndarray]:
    """A run's trace.npz, every array decompressed once (an NpzFile decompresses an array at
    each access) and kept for the next projection of the same run."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


class StoreTraces:
    """The ok runs of a store, their traces (loaded once) and their analytic twins."""

    def __init__(self, store, source: Profile):
        runs = store.table("runs")
        self.root, self.source = store.root, source
        self.runs = runs[runs["status"] == "ok"].reset_index(drop=True)
        self._traces: dict[str, object] = {}

    def trace(self, run):
        if run.run_id not in self._traces:
            self._traces[run.run_id] = load_trace(self.root / run.output_dir / "trace.npz")
        return self._traces[run.run_id]

    def twin(self, run):
        """An analytic run of the same configuration, or None."""
        same = self.runs[self.runs["world_mode"] == "analytic"]
        for k in TWIN_KEY:
            if k in same:
                same = same[_equal(same[k], getattr(run, k))]
        for t in same.itertuples():
            if _is_analytic(t, self.trace(t)):
                return t
        return None

    def anchor_baseline(self, anchor: float | str) -> tuple[object, float, str]:
        """(the single-device run the anchor is matched on, the anchor latency, its label)."""
        runs = self.runs
        if isinstance(anchor, str):
            hit = runs[runs["run_id"] == anchor]
            if hit.empty:
                raise ProjectionInputError(
                    f"--anchor {anchor}: no ok run with that id in the store; give a run_id of "
                    "a single-device run (diffscale export lists them) or a latency in seconds"
                )
            ref = next(hit.itertuples())
            if int(ref.world_size) != 1:
                raise ProjectionInputError(
                    f"--anchor {anchor}: run has world_size {ref.world_size}; an anchor is a "
                    "single-device (world_size 1) run"
                )
            latency = float(ref.latency_s)
            if not latency > 0:  # an analytic run has no measured latency
                raise ProjectionInputError(
                    f"--anchor {anchor}: run has no measured latency ({ref.world_mode} world); "
                    "anchor to a real single-device run or give a latency in seconds"
                )
            label = f"run {anchor} ({latency:.4g} s)"
            same = runs[runs["world_size"] == 1]
            for k in WORKLOAD_KEY:
                same = same[_equal(same[k], getattr(ref, k))]
        else:
            latency, label = float(anchor), f"{float(anchor):.4g} s"
            same = runs[runs["world_size"] == 1]
            groups = same.groupby(WORKLOAD_KEY, dropna=False).size()
            if len(groups) > 1:
                names = "; ".join(" ".join(map(str, g)) for g in groups.index[:5])
                raise ProjectionInputError(
                    f"--anchor {anchor}: the store holds single-device runs of {len(groups)} "
                    f"workloads ({names}); anchor with the run id of one instead"
                )
        if same.empty:
            raise ProjectionInputError(
                f"--anchor {anchor}: the store holds no ok single-device (world_size 1) run to "
                "anchor; add strategy none at world size 1 to the experiment"
            )
        same = same.assign(_order=same["world_mode"].map(_MODE_ORDER).fillna(3))
        base = next(same.sort_values("_order", kind="stable").itertuples())
        return base, latency, label


def _dtype_or_fail(profile: Profile, key: str, why: str) -> None:
    try:
        opmodel.check_dtype(profile, key)
    except ValueError as e:
        raise ProjectionInputError(f"{why}: {e}") from None


def project_one(ctx: StoreTraces, run, target: Profile, dtype: str | None, scale: float) -> dict:
    """One run on one target: the projection row (without its anchor columns)."""
    trace = ctx.trace(run)
    world, degrees = int(run.world_size), json.loads(run.degrees)
    run_key = opmodel.dtype_key(run.dtype)
    key = dtype or run_key
    _dtype_or_fail(target, key, f"run {run.run_id} in {key}")
    byte_scale = opmodel.ELEMENT_BYTES[key] / opmodel.ELEMENT_BYTES[run_key]
    try:
        threads = int(run.threads_per_rank)
    except (TypeError, ValueError):  # stored before the column existed
        threads = 1
    if _is_analytic(run, trace):
        p, split = project_analytic(
            trace, world, degrees, target, dtype, scale, byte_scale, threads
        )
        model = "operator model (analytic trace)"
    else:
        src = ctx.source
        _dtype_or_fail(src, run_key, f"run {run.run_id} ran in {run.dtype} on source")
        twin, split = ctx.twin(run), None
        if twin is not None:
            tw = ctx.trace(twin)
            segs = [tw[f"segments_rank{r}"] for r in range(int(twin.world_size))]
            on_target = opmodel.price(target, tw["ops"], key)
            ratio = opmodel.workload_s(on_target.time_s, segs) / opmodel.workload_s(
                opmodel.price(src, tw["ops"], run_key).time_s, segs
            )
            model = f"operator-model ratio {ratio:.4g} (analytic run {twin.run_id})"
        else:
            try:
                frames = 0 if pd.isna(run.frames) else int(run.frames)
                m, n, k = opmodel.representative_gemm(
                    run.workload, run.height, run.width, run.batch, run.guidance, world, frames
                )
                flops, at = 2.0 * m * n * k, f"{2.0 * m * n * k / 1e9:.3g} GFLOP per GEMM"
            except ValueError:  # a workload this checkout does not know
                flops, at = 1e15, "the curves' largest size"
            ratio = opmodel.matmul_rate(src, run_key, flops) / opmodel.matmul_rate(
                target, key, flops
            )
            model = f"matmul-curve ratio {ratio:.4g} at {at} (no analytic trace of this run)"
        by_rank = {r: (trace[f"steps_rank{r}"], trace[f"events_rank{r}"]) for r in range(world)}
        # compute measured under core sharing (a real CPU world) is first brought back to
        # unshared speed; a fake world ran its ranks one at a time, unshared
        measured = (
            measured_sharing(by_rank, degrees, src, threads) if run.world_mode == "real" else 1.0
        )
        p = project_run(
            by_rank, degrees, src, target, key, scale / measured, threads, ratio, byte_scale
        )
        if twin is not None:  # the twin's split of the same rank's work on the target
            seg = np.asarray(tw[f"segments_rank{p.critical_rank}"], dtype=np.int64)
            seg = seg[seg != EMPTY]
            split = tuple(
                float(a[seg].sum())
                for a in (on_target.compute_bound_s, on_target.memory_bound_s, on_target.launch_s)
            )
    return {"run_id": run.run_id, "hardware": target.name, "latency_s": p.latency_s,
            "compute_s": p.compute_s, "comm_s": p.comm_s, "exposed_comm_s": p.exposed_comm_s,
            "projected_dtype": key, "compute_model": model, **shares(p, split),
            "execution": target.execution.mode if target.execution is not None else None}  # fmt: skip


def project_store(
    db_path,
    hardware: list[str],
    source: str,
    dtype: str | None = None,
    anchor: float | str | None = None,
    execution: str | None = None,
) -> list[dict]:
    """Project every ok run of a results store onto each profile in `hardware`.

    `source` is the calibrated profile of the machine measured runs were taken on (analytic runs
    need none); `dtype` sets the dtype on the target (e.g. bf16 for fp32 CPU traces: compute
    priced in bf16, collective payloads halved). `anchor` (one target only): a latency in
    seconds, or the run_id of a stored single-device run measured on the target; the target's
    compute time is scaled by one factor so that the store's single-device run of that workload
    projects to exactly that latency. `execution` (GPU profiles): eager (default), cuda_graphs
    or compile. Rows go to the `projection` table, replacing only an earlier projection of the
    same run, profile, dtype, anchor and execution (other variants stay beside them), and are
    returned; runs a profile cannot hold are skipped. ProjectionInputError for what the user
    must change.
    """
    from pathlib import Path

    from analysis.hardware import load_profile, with_execution
    from suite.store.results import ResultStore

    src = load_profile(source)
    targets = [load_profile(h) for h in hardware]
    if execution is not None:
        cpu = [t.name for t in targets if t.topology is None]
        if cpu:
            raise ProjectionInputError(
                f"--execution {execution}: {', '.join(cpu)} is not a GPU profile (no topology); "
                "execution modes are for GPU profiles"
            )
        targets = [with_execution(t, execution) for t in targets]
    key = opmodel.dtype_key(dtype) if dtype else None
    if key:
        for t in targets:
            _dtype_or_fail(t, key, f"--dtype {dtype}")
    if anchor is not None and len(targets) != 1:
        raise ProjectionInputError(
            f"--anchor {anchor}: anchors one profile's compute; give one --hardware profile "
            f"(got {len(targets)}: {', '.join(t.name for t in targets)})"
        )
    rows = []
    with ResultStore(Path(db_path)) as store:
        ctx = StoreTraces(store, src)
        scale, anchored_to = 1.0, None
        if anchor is not None:
            base, latency, label = ctx.anchor_baseline(anchor)
            free = project_one(ctx, base, targets[0], key, 1.0)["latency_s"]
            scale, anchored_to = latency / free, label
        for run in ctx.runs.itertuples():
            for target in targets:
                if run.world_size > target.world_size:
                    continue
                row = project_one(ctx, run, target, key, scale)
                row.update(anchored_to=anchored_to, anchor_scale=scale)
                variant = {k: row[k] for k in ("projected_dtype", "anchored_to", "execution")}
                store.save_rows(
                    "projection",
                    [row],
                    replace_where={"run_id": run.run_id, "hardware": target.name, **variant},
                )
                rows.append(row)
    return rows
