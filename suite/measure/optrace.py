"""Operator traces: what an analytic world records between a rank's collectives, and what the
operator model (`analysis.opmodel`) prices on a device. numpy only, no torch.

A rank's analytic trace is its ledger events (`suite.distributed.comm.EVENT_DTYPE`) and step marks
(`suite.worlds.runner.STEP_DTYPE`) on a *boundary clock*: every timestamp is the index of a boundary
between compute segments. Each time the rank's timeline needs a time (a collective's issue or
done, a wait's start or end, a step's start or end) the segment running until then is closed and
the next boundary's index is returned. Segment b runs from boundary b to boundary b + 1.

A segment holds the operators the rank ran in it, aggregated: one `OP_DTYPE` row per distinct
(class, dtype, dims), with the number of calls and the FLOPs and bytes of one call. Identical
segments (the same layer in every step, every rank of a symmetric strategy) share one signature
id, so a trace of 50 steps over 8 ranks stays small.

Stored in a run's `trace.npz` beside the usual `events_rank{r}` / `steps_rank{r}` (whose times are
then boundary indices): `segments_rank{r}` (int32, segment b -> signature id, -1 for an empty
segment) and `ops` (`OP_DTYPE` rows of every signature, shared by the ranks).

Projection prices each signature on a device (`analysis.opmodel`), and `retime` turns the
boundary clock into seconds: boundary b is at the summed durations of segments 0..b-1. The
re-timed events and steps look like a measured trace, so `analysis.projection.simulate` replays
the ranks together as it does measured ones (collectives by the alpha-beta link model, async
ops beside compute until their wait).
"""

from __future__ import annotations

import numpy as np

# Operator classes, each priced by its own efficiency curve. dims per class (unused dims 0):
#   matmul     mm / addmm / bmm / baddbmm / linear: (batch, M, N, K)
#   conv       convolution as an implicit GEMM: (groups, M = batch*H_out*W_out,
#              N = C_out / groups, K = C_in / groups * kernel_h * kernel_w)
#   attention  scaled dot-product attention as one fused kernel: (batch*heads, S_q, S_kv, D)
#   norm       group / layer / batch / RMS norm: (numel, normalized size, 0, 0)
#   elementwise pointwise arithmetic and reductions: (numel, 0, 0, 0)
#   memory     ops that only move data (cat, clone, copy, index, pad): (numel, 0, 0, 0)
#   activation pointwise transcendentals (GELU, SiLU, tanh, exp, softmax outside attention):
#              (numel, kind, 0, 0), kind 1 for the GELU family (gelu, tanh, erf, ...), 0 else;
#              added last, so traces written before it keep their indices
OP_CLASSES: tuple[str, ...] = (
    "matmul", "conv", "attention", "norm", "elementwise", "memory", "activation",
)  # fmt: skip
# dtype of an operator's inputs (its element size sets its bytes and its peak)
TRACE_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16", "other")

OP_DTYPE = np.dtype(
    [
        ("sig", np.int32),  # signature (distinct segment content) the row belongs to
        ("cls", np.int8),  # index into OP_CLASSES
        ("dtype", np.int8),  # index into TRACE_DTYPES
        ("count", np.int32),  # calls of this op in one occurrence of the segment
        ("flops", np.float64),  # per call, 2 per multiply-add (torch.utils.flop_counter's rule)
        ("bytes", np.float64),  # per call: bytes read (inputs) + bytes written (outputs)
        ("d0", np.int64),
        ("d1", np.int64),
        ("d2", np.int64),
        ("d3", np.int64),
    ]
)

EMPTY = -1  # segment id of a segment in which the rank ran no operator


def retime(
    events: np.ndarray, steps: np.ndarray, segments: np.ndarray, durations: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Copies of `events` and `steps` with boundary-clock times turned into seconds.

    `segments[b]` is segment b's signature id (EMPTY: 0 s); `durations[sig]` is a signature's
    time on the device, seconds. Boundary b is at the summed durations of segments 0..b-1.
    """
    seg = np.asarray(segments, dtype=np.int64)
    dur = np.where(seg >= 0, np.asarray(durations, dtype=float)[np.maximum(seg, 0)], 0.0)
    at = np.concatenate([[0.0], np.cumsum(dur)])  # time of boundary 0..len(segments)

    def convert(times: np.ndarray) -> np.ndarray:
        idx = np.asarray(times, dtype=float)
        ok = np.isfinite(idx)
        out = np.full(idx.shape, np.nan)
        out[ok] = at[np.clip(idx[ok].astype(np.int64), 0, len(at) - 1)]
        return out

    events, steps = events.copy(), steps.copy()
    for field in ("t_issue", "t_done", "t_wait_start", "t_wait_end"):
        events[field] = convert(events[field])
    for field in ("t_start", "t_end"):
        steps[field] = convert(steps[field])
    return events, steps
