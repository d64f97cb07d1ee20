"""Time on a rank's timeline covered by intervals: how comm_s and exposed_comm_s are measured.

A rank's collectives overlap one another (async ops in flight together, a displaced exchange
spanning two steps), so their durations do not add up to communication time. These helpers
measure the union of intervals inside windows (the timed steps) instead; numpy only, so that
analysis can use them on stored traces without importing the harness.
"""

from __future__ import annotations

import numpy as np


def inflight_intervals(ev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends), seconds: when the ledger's ops in `ev` were in flight. Per op its issue to
    its done time, and its blocked interval (so that blocked time is always in-flight time: a
    done stamp from a completion callback can precede the wait's return). An op without a done
    stamp (never found complete nor waited) contributes its blocked interval only."""
    starts = np.concatenate([ev["t_issue"], ev["t_wait_start"]])
    ends = np.concatenate([ev["t_done"], ev["t_wait_end"]])
    return starts, ends


def _union(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The disjoint, sorted intervals covering [starts_i, ends_i]; empty and NaN ones dropped."""
    starts, ends = np.asarray(starts, float), np.asarray(ends, float)
    keep = np.isfinite(starts) & np.isfinite(ends) & (ends > starts)
    s, e = starts[keep], ends[keep]
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    if not len(s):
        return s, e
    reach = np.maximum.accumulate(e)
    first = np.ones(len(s), dtype=bool)
    first[1:] = s[1:] > reach[:-1]  # starts a new merged interval
    idx = np.flatnonzero(first)
    return s[idx], np.maximum.reduceat(e, idx)


def covered_s(starts, ends, lo, hi) -> np.ndarray:
    """Per window [lo_i, hi_i]: seconds of it covered by at least one interval [starts, ends]
    (the measure of their union clipped to the window); 0 for an empty window."""
    s, e = _union(starts, ends)
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    if not len(s):
        return np.zeros(np.broadcast(lo, hi).shape)
    before = np.concatenate([[0.0], np.cumsum(e - s)])  # covered length before interval k

    def upto(t: np.ndarray) -> np.ndarray:  # covered length in (-inf, t]
        k = np.searchsorted(s, t, side="right") - 1  # last interval starting at or before t
        kk = np.maximum(k, 0)
        return np.where(k >= 0, before[kk] + np.clip(t - s[kk], 0.0, e[kk] - s[kk]), 0.0)

    return np.maximum(upto(hi) - upto(lo), 0.0)
