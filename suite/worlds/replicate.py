"""Steady-state replication for analytic worlds: an exact shortcut, never an approximation.

After a strategy's synchronous warm-up, the steps of a denoising loop repeat: the same operators
in the same segments, the same collectives at the same places. Once two consecutive steps of a
rank have identical traces, `Replicator` (the loop's `fast_forward` hook) stops emulating: the
loop jumps to the last `TAIL` steps, which are emulated (DistriFusion's last step issues
nothing; PipeFusion's pipeline drains), while the solver alone steps over the skipped ones.
`expand` then writes the skipped steps into the trace as copies of the second of the two (the
template).

Identical traces (`step_view`): the same segment signatures from the step's start to its end,
then one empty segment before the next step; the same collectives issued at the same boundaries
relative to the step's start (op, axis, group, peer, bytes, async flag, layer), each waited at
the same place in the step or carried into the next one; the same waits, at the same places, on
what the previous step carried. Only a carry into the very next step is replicated: a replica's
carries are waited where the first emulated tail step waits the last replica's. Steps that
alternate (naive_patch's row and column bands on a DiT) never give two identical consecutive
steps, and are emulated in full.

Checked, not assumed: the first emulated tail step must reproduce the template exactly (waits
included), or `expand` returns None and the rank is emulated again in full.
The state a strategy carries from step to step (pending exchanges, K/V buffers, a solver's
history) has the same shapes in every steady step, and the loop keeps the solver's own state
exact, so the tail sees what it would have seen after the skipped steps.
"""

from __future__ import annotations

import math

import numpy as np

from suite.measure.optrace import EMPTY

TAIL = 2  # last steps always emulated; the first of them checks the replication

_STATIC = ("layer", "op", "axis", "group_size", "group_first", "peer", "is_async", "nbytes")
_WAIT = ("t_done", "t_wait_start", "t_wait_end")


def _carried(e) -> bool:
    """An async op not waited in its own step (or not waited yet)."""
    return bool(e["is_async"]) and (e["wait_step"] != e["step"] or math.isnan(e["t_done"]))


def step_view(events: np.ndarray, marks: list, segments, j: int) -> tuple:
    """Step j of a rank's trace, relative to its start (see the module docstring)."""
    _, start, end = marks[j]
    start, end = int(start), int(end)
    issued = []
    for e in events[events["step"] == j]:
        row = (*(e[f].item() for f in _STATIC), e["t_issue"] - start)
        if _carried(e):
            row += ("carried",)
        else:
            row += (e["t_done"] - start, e["t_wait_start"] - start, e["t_wait_end"] - start)
        issued.append(row)
    waits = []
    for s in range(j):
        mine = events[events["step"] == s]
        for order, e in enumerate(mine):
            if e["is_async"] and e["wait_step"] == j:
                waits.append((j - s, order, e["t_wait_start"] - start, e["t_done"] - start))
    return tuple(segments[start:end]), tuple(issued), tuple(sorted(waits, key=lambda w: w[2]))


class Replicator:
    """The `fast_forward` hook of one rank's loop (suite.worlds.runner.denoise).

    `marks` is the runner's list of (step, t_start, t_end), `events` a callable returning the
    ledger's events so far.
    """

    def __init__(self, recorder, events, marks: list, steps: int, warmup_steps: int):
        self.recorder, self.events, self.marks, self.steps = recorder, events, marks, steps
        # steps 0..warmup of a strategy with a warm-up are synchronous (DistriFusion: w + 1 of
        # them, identical to each other): the compared steps come after them
        self.first_candidate = warmup_steps + 1 if warmup_steps else 0
        # set when a template is found: the step replicated, the first one skipped, the step
        # the loop resumes at, and the boundaries one step spans (its gap to the next included)
        self.template = self.first = self.resume = None
        self.period = 0

    @property
    def skipped(self) -> int:
        return 0 if self.template is None else self.resume - self.first

    def __call__(self, i: int) -> int:
        if i == self.resume:
            self.recorder.drop_open()  # the solver's steps over the skipped ones
            return i
        k = i - 1  # the template candidate: the step just done, compared with the one before
        if self.template is not None or k - 1 < self.first_candidate:
            return i
        if i >= self.steps - TAIL or len(self.marks) != i:
            return i
        segments = self.recorder.segments
        _, start, end = self.marks[k]
        if not self.recorder.open_segment_empty() or len(segments) != int(end):
            return i
        if int(self.marks[k - 1][2]) + 1 != int(start) or segments[int(start) - 1] != EMPTY:
            return i  # something ran between the steps
        events = self.events()
        if int(start - self.marks[k - 1][1]) != int(end - start) + 1 or step_view(
            events, self.marks, segments, k - 1
        ) != step_view(events, self.marks, segments, k):
            return i
        before = events[events["step"] < k]
        if (before["is_async"] & np.isnan(before["t_done"])).any():
            return i  # a collective carried over more than one step
        self.template, self.first, self.resume = k, i, self.steps - TAIL
        self.period = int(end - start) + 1
        return self.resume


def expand(rep: Replicator, events: np.ndarray, steps: np.ndarray, segments: np.ndarray):
    """The full trace (events, steps, segments) of a loop `rep` shortened, or None when the first
    emulated tail step does not reproduce the template."""
    if rep.template is None:
        return events, steps, segments
    k, resume, period, skipped = rep.template, rep.resume, rep.period, rep.skipped
    start_k = int(steps["t_start"][steps["step"] == k][0])
    recorded_resume = int(steps["t_start"][steps["step"] == resume][0])
    if recorded_resume != start_k + period:
        return None
    shift = skipped * period

    def later(x: np.ndarray) -> np.ndarray:
        """Boundaries at or after the resumed step moved past the replicas."""
        for f in ("t_issue", *_WAIT):
            x[f] = np.where(x[f] >= recorded_resume, x[f] + shift, x[f])
        return x

    before = events[events["step"] < k]
    template = events[events["step"] == k]
    after = later(events[events["step"] > k].copy())
    if (before["wait_step"] > k).any():
        return None
    carried = np.array([_carried(e) for e in template], dtype=bool)
    waited = later(template[carried].copy())  # the last replica's carries, waited in `resume`
    if (waited["wait_step"] != resume).any() or np.isnan(waited["t_done"]).any():
        return None
    copies = []
    for d in range(skipped + 1):  # d = 0: the template itself
        rep_ev = template.copy()
        rep_ev["step"] += d
        rep_ev["wait_step"] += d
        for f in ("t_issue", *_WAIT):
            rep_ev[f] = rep_ev[f] + d * period
        # carries: waited in the next step where `resume` waits the last replica's
        rep_ev["wait_step"][carried] = k + d + 1
        for f in _WAIT:
            rep_ev[f][carried] = waited[f] - (skipped - d) * period
        copies.append(rep_ev)
    full_events = np.concatenate([before, *copies, after])
    full_events = full_events[np.argsort(full_events["t_issue"], kind="stable")]

    mark_k = steps[steps["step"] == k]
    replicas = []
    for d in range(1, skipped + 1):
        m = mark_k.copy()
        m["step"] += d
        m["t_start"] += d * period
        m["t_end"] += d * period
        replicas.append(m)
    tail = steps[steps["step"] > k].copy()
    tail["t_start"] += shift
    tail["t_end"] += shift
    full_steps = np.concatenate([steps[steps["step"] <= k], *replicas, tail])

    seg = np.asarray(segments)
    full_segments = np.concatenate(
        [
            seg[:recorded_resume],
            np.tile(seg[start_k:recorded_resume], skipped),
            seg[recorded_resume:],
        ]
    ).astype(np.int32)

    marks = [(int(s["step"]), s["t_start"], s["t_end"]) for s in full_steps]
    if step_view(full_events, marks, full_segments, resume) != step_view(
        full_events, marks, full_segments, k
    ):
        return None
    return full_events, full_steps, full_segments
