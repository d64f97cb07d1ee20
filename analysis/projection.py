"""Projection: re-time a run's per-rank traces on a hardware profile it did not run on.

Every number this module produces is PROJECTED, labelled with the profile's name, never mixed
with measured columns.

The model (after "Characterizing Deep Learning Training Workloads on Alibaba-PAI": split time into
computation and communication, then re-cost each on other hardware):
- compute: each measured compute interval (the time a rank was not blocked on communication)
  is scaled by source throughput / target throughput for the run's dtype;
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

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from analysis.hardware import Profile
from suite.comm import OPS
from suite.intervals import covered_s
from suite.mesh import AXES

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


def op_time(profile: Profile, op: str, nbytes: float, members: list[int]) -> float:
    """Projected seconds of one collective on `profile` among global ranks `members`."""
    p = len(members)
    curve = profile.curves.get((op, p))
    if curve is not None and curve[0][0] <= nbytes <= curve[0][-1]:
        # inside the calibrated range: interpolate the measurements in log-log space
        return float(np.exp(np.interp(np.log(nbytes), np.log(curve[0]), np.log(curve[1]))))
    fit = profile.fits.get((op, p))
    if fit is not None:
        return fit.alpha_s + fit.beta_s_per_byte * nbytes
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
    steps: np.ndarray  # suite.runner.STEP_DTYPE rows of this loop
    events: np.ndarray  # suite.comm.EVENT_DTYPE rows of this loop


@dataclass
class Projected:
    latency_s: float
    compute_s: float  # per step, mean over ranks
    comm_s: float
    exposed_comm_s: float


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
    cost,  # (op, nbytes, members) -> seconds
    compute_scale: float,
) -> Projected:
    """Re-time the ranks' loops together; see the module docstring for the model."""
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
        }

    def finish(key) -> float | None:
        if key in ends:
            return ends[key]
        if len(arrivals[key]) < need[key]:
            return None
        op, nbytes, members = sizes[key]
        ends[key] = max(arrivals[key]) + cost(op, nbytes, members)
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
                    st["T"] += max(0.0, t_meas - st["L"]) * compute_scale
                    st["L"] = t_meas
                    op = OPS[e["op"]]
                    members = (
                        [t.rank, int(e["peer"])]
                        if op in ("send", "recv")
                        else group_members(degrees, t.rank, AXES[e["axis"]])
                    )
                    arrivals[key].append(st["T"])
                    need[key] = len(members)
                    sizes[key] = (
                        "send" if op in ("send", "recv") else op,
                        float(e["nbytes"]),
                        members,
                    )
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
    # comm_s as measured runs define it: time at least one op is in flight (a union, not a sum)
    comm = float(np.mean([_inflight_s(s["inflight"], s["T"]) for s in state.values()])) / n_steps
    exposed = float(np.mean([s["exposed"] for s in state.values()])) / n_steps
    step = float(np.mean([s["T"] for s in state.values()])) / n_steps
    return Projected(latency, step - exposed, comm, exposed)


def _inflight_s(intervals: list[tuple[float, float]], end: float) -> float:
    """Seconds of [0, end] during which at least one of `intervals` was in flight."""
    if not intervals:
        return 0.0
    starts, ends = np.array(intervals, dtype=float).T
    return float(covered_s(starts, ends, 0.0, end))


def _op_args(e: np.ndarray, rank: int, degrees: dict[str, int]) -> tuple[str, float, list[int]]:
    """(op for the cost model, nbytes, global ranks taking part) of one ledger event."""
    op = OPS[e["op"]]
    if op in ("send", "recv"):
        return "send", float(e["nbytes"]), [rank, int(e["peer"])]
    return op, float(e["nbytes"]), group_members(degrees, rank, AXES[e["axis"]])


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
        busy += comm_busy_s(traces, degrees, lambda op, n, m: op_time(source, op, n, m))
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


def compute_scale(source: Profile, target: Profile, dtype: str) -> float:
    """Factor applied to measured compute time: source throughput / target throughput."""
    return source.device.throughput(dtype) / target.device.throughput(dtype)


def project_run(
    traces_by_rank: dict[int, tuple[np.ndarray, np.ndarray]],
    degrees: dict[str, int],
    source: Profile,
    target: Profile,
    dtype: str,
    extra_scale: float = 1.0,
    threads_per_rank: int = 1,
) -> Projected:
    """Project a stored run (per rank: its steps and events arrays) onto `target`.

    Each timed loop is simulated and the median-latency one is returned. `extra_scale`
    multiplies compute (e.g. 1 / the core sharing a real run was measured under); on a target
    with `cpu_cores` the ranks share its cores (`simulate_shared`).
    """
    world = len(traces_by_rank)
    if world > target.world_size:
        raise ValueError(
            f"run needs {world} devices; profile {target.name} has {target.world_size}"
        )
    scale = compute_scale(source, target, dtype) * extra_scale
    repeats = sorted(set(traces_by_rank[0][0]["repeat"].tolist()))
    results = []
    for rep in repeats:
        traces = [
            RankTrace(r, steps[steps["repeat"] == rep], events[events["repeat"] == rep])
            for r, (steps, events) in sorted(traces_by_rank.items())
        ]
        cost = lambda op, n, m: op_time(target, op, n, m)  # noqa: E731
        if target.cpu_cores:
            p, _ = simulate_shared(traces, degrees, cost, scale, target.cpu_cores, threads_per_rank)
        else:
            p = simulate(traces, degrees, cost, scale)
        results.append(p)
    results.sort(key=lambda p: p.latency_s)
    return (
        results[len(results) // 2] if results else Projected(math.nan, math.nan, math.nan, math.nan)
    )


def project_store(
    db_path, hardware: list[str], source: str, dtype: str | None = None
) -> list[dict]:
    """Project every ok run of a results store onto each profile in `hardware`.

    `source` is the calibrated profile of the machine the runs were measured on; `dtype`
    overrides the runs' dtype on the target (e.g. bf16 for fp32 CPU traces). Rows go to the
    `projection` table (replacing earlier projections of the same run and profile) and are
    returned; runs a profile cannot hold are skipped with a note.
    """
    import json
    from pathlib import Path

    from analysis.hardware import load_profile
    from suite.results import ResultStore

    src = load_profile(source)
    targets = [load_profile(h) for h in hardware]
    rows = []
    with ResultStore(Path(db_path)) as store:
        runs = store.table("runs")
        for run in runs[runs["status"] == "ok"].itertuples():
            trace = np.load(store.root / run.output_dir / "trace.npz")
            by_rank = {
                r: (trace[f"steps_rank{r}"], trace[f"events_rank{r}"])
                for r in range(int(run.world_size))
            }
            degrees = json.loads(run.degrees)
            # compute measured under core sharing (a real CPU world) is first brought back to
            # unshared speed; a fake world ran its ranks one at a time, unshared
            measured = (
                measured_sharing(by_rank, degrees, src, int(run.threads_per_rank))
                if run.world_mode == "real"
                else 1.0
            )
            for target in targets:
                if run.world_size > target.world_size:
                    continue
                p = project_run(
                    by_rank,
                    degrees,
                    src,
                    target,
                    dtype or run.dtype,
                    extra_scale=1.0 / measured,
                    threads_per_rank=int(run.threads_per_rank),
                )
                row = {"run_id": run.run_id, "hardware": target.name, "latency_s": p.latency_s,
                       "compute_s": p.compute_s, "comm_s": p.comm_s, "exposed_comm_s": p.exposed_comm_s}  # fmt: skip
                store.save_rows(
                    "projection",
                    [row],
                    replace_where={"run_id": run.run_id, "hardware": target.name},
                )
                rows.append(row)
    return rows
