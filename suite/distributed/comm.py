"""The comm ledger: every collective of every strategy goes through `Comm`, which logs it.

One `CommEvent` per call: rank, step, layer, op, mesh axis, group size, payload bytes and four
times: t_issue, t_done (the op finished), t_wait_start / t_wait_end (the caller was blocked).
A blocking op's wait is its whole duration; an async op is waited on through its `Pending`
handle, and only that wait counts as exposed.

Payload bytes follow the nccl-tests "size" convention, so that bus-bandwidth factors and the
alpha-beta formulas of analysis.projection apply unchanged: all_gather counts the gathered
output, reduce_scatter its full input, all_reduce / all_to_all / broadcast the buffer, send and
recv the message.

Logging cost: records are plain Python values in pre-allocated lists (grown by doubling, rarely),
turned into a numpy structured array when read; no per-call syncs. On CPU, times are perf_counter
readings. On CUDA, times are CUDA events on the current stream, resolved to seconds only when
the runner synchronizes at a step's end; an async op's t_done is then its wait end (NCCL futures
complete stream-ordered, not on the host), an upper bound.

An async op's t_done on CPU. By default the ledger polls: at every later ledger event (the
issue of another collective, a wait) and at every step end it asks the backend whether each op
still in flight has completed (`work.is_completed()`, a C++ call of ~0.1 us, no GIL hand-off),
and stamps t_done at the first poll that finds it complete:
- complete before its wait: a hidden op, 0 s exposed (exact); its duration t_done - t_issue
  (what op_time_s sums; comm_s is the union of such intervals) is an upper bound, tight to
  the gap between two ledger events (a layer's compute; a few ms in a UNet, one transformer
  block in a DiT);
- not complete when its wait starts: t_done = t_wait_end, exact up to the wait's return, since
  the wait returns when the op completes (an exposed op).
Polling matters: an op waited on a step later (DistriFusion's displaced exchange) would
otherwise count a whole step as its duration, though gloo finishes it within milliseconds.
With `Ledger(done_callbacks=True)` (the runner sets it when profiling, DIFFSCALE_PROFILE=1) a
callback on the op's future also stamps t_done, and the earlier stamp wins; on CPU each callback
is a GIL hand-off from the backend's thread to the rank's main thread, which costs several
percent of a step with one core per rank (reports/overhead_cpu/diagnosis.md), so it is off in
timed benchmark runs. In a fake world (torch's fake process group) the callback is always used:
ops complete at issue and the callback runs inline, at no cost, so their duration stays ~0.

Analytic worlds (`Comm(..., analytic=True)`, meta tensors): every event is logged as above but
nothing is launched; results are the right-shaped (meta) tensors `finish` makes. The ledger's
clock is then the operator recorder's boundary clock (`Ledger(clock=...)`, suite.measure.optrace): a
blocking op spans two boundaries, and an async op is complete when waited (wait start = wait
end = its done time).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist

from suite.distributed.mesh import AXES, ParallelMesh

OPS: tuple[str, ...] = (
    "all_gather",
    "all_reduce",
    "all_to_all",
    "reduce_scatter",
    "send",
    "recv",
    "broadcast",
)

EVENT_DTYPE = np.dtype(
    [
        ("repeat", np.int32),  # timed loop index; negative for warm-up loops
        ("step", np.int32),  # step the op was issued in
        ("wait_step", np.int32),  # step the caller waited in (exposed time is counted there)
        ("layer", np.int32),  # index into Ledger.layers
        ("op", np.int8),  # index into OPS
        ("axis", np.int8),  # index into AXES
        ("group_size", np.int16),
        ("group_first", np.int32),  # lowest global rank of the group: identifies it on its axis
        ("peer", np.int32),  # send / recv: the other side's global rank; -1 for collectives
        ("is_async", np.bool_),
        ("nbytes", np.int64),
        ("t_issue", np.float64),
        ("t_done", np.float64),
        ("t_wait_start", np.float64),
        ("t_wait_end", np.float64),
    ]
)


_OP_IDS = {op: i for i, op in enumerate(OPS)}
_AXIS_IDS = {axis: i for i, axis in enumerate(AXES)}
# EVENT_DTYPE's fields, by when they are written: at issue, once (one tuple per event) ...
_STATIC = (
    "repeat",
    "step",
    "layer",
    "op",
    "axis",
    "group_size",
    "group_first",
    "peer",
    "is_async",
    "nbytes",
)
# ... and later, into pre-allocated per-field lists (wait_step too)
_TIMES = ("t_issue", "t_done", "t_wait_start", "t_wait_end")
_NAN = float("nan")


class Ledger:
    """Per-rank record of collectives; the runner sets `repeat` and `step` as the loop advances.

    Records are plain Python values (a tuple per event, pre-allocated lists for the times),
    turned into an EVENT_DTYPE array by `events()`: writing numpy structured-array fields one
    by one costs about 1 us each, ten times a list store.
    """

    def __init__(
        self,
        rank: int,
        *,
        cuda: bool = False,
        capacity: int = 4096,
        enabled: bool = True,
        done_callbacks: bool = False,
        clock: Callable[[], float] | None = None,
    ):
        self.rank = rank
        if clock is not None:  # an analytic world's boundary clock instead of perf_counter
            self.now = clock
        self.enabled = enabled
        # CPU: also stamp an async op's t_done from a callback on its future (a GIL hand-off
        # per op; polling alone is the default, see the module docstring)
        self.done_callbacks = done_callbacks
        self.repeat = -1
        self.step = 0
        self.layers: list[str] = []
        self._layer_ids: dict[str, int] = {}
        self._static: list[tuple] = []  # per event: the _STATIC fields
        self._wait_step: list[int] = [0] * capacity
        self._times: dict[str, list[float]] = {f: [0.0] * capacity for f in _TIMES}
        self._t_issue, self._t_done, self._t_wait_start, self._t_wait_end = self._times.values()
        self._count = 0
        self._inflight: list[tuple[int, object]] = []  # (slot, work) of async ops not yet done
        self._lock = threading.Lock()  # t_done: future callbacks write from the backend's thread
        self._cuda = cuda
        self._cuda_marks: list[tuple[int, str, torch.cuda.Event]] = []

    # -- recording ---------------------------------------------------------------------------
    def now(self) -> float:
        return time.perf_counter()

    def open(
        self,
        op: str,
        axis: str,
        group_size: int,
        nbytes: int,
        layer: str,
        is_async: bool,
        group_first: int = 0,
        peer: int = -1,
    ) -> int:
        """Start an event and return its slot."""
        idx = self._count
        if idx == len(self._t_issue):
            self._grow()
        lid = self._layer_ids.get(layer)
        if lid is None:
            lid = self._layer_id(layer)
        step = self.step
        self._static.append(
            (
                self.repeat,
                step,
                lid,
                _OP_IDS[op],
                _AXIS_IDS[axis],
                group_size,
                group_first,
                peer,
                is_async,
                nbytes,
            )
        )
        self._wait_step[idx] = step
        self._t_done[idx] = _NAN
        self._t_wait_start[idx] = self._t_wait_end[idx] = 0.0
        self._count = idx + 1
        if self._cuda:
            self._stamp(idx, "t_issue")
        else:
            self._t_issue[idx] = self.now()
        return idx

    def _grow(self) -> None:
        """Double the pre-allocated lists, in place (a callback may hold a reference)."""
        n = max(1, len(self._t_issue))
        self._wait_step.extend([0] * n)
        for times in self._times.values():
            times.extend([0.0] * n)

    def mark_done(self, idx: int) -> None:
        """Completion callback of an async op (any thread, `done_callbacks` mode)."""
        t = self.now()
        with self._lock:
            if self._t_done[idx] != self._t_done[idx]:  # NaN: a callback trailing the wait
                self._t_done[idx] = t  # end changes nothing

    def close_blocking(self, idx: int) -> None:
        """A blocking op returned: it was done, and waited on, from issue to now."""
        self._stamp(idx, "t_done")

    def begin_wait(self, idx: int, completed: bool = False) -> None:
        """The caller starts waiting on async op `idx`.

        `completed`: a poll found the op complete by now (CPU only). The wait is then settled
        here: t_wait_end = t_wait_start (0 s exposed), t_done stays the poll's stamp (never
        after the wait start), and `end_wait` is not called.
        """
        self._wait_step[idx] = self.step
        if completed and not self._cuda:
            t = self.now()
            self._t_wait_start[idx] = self._t_wait_end[idx] = t
            self._settle_done(idx, t)
            return
        self._stamp(idx, "t_wait_start")

    def track(self, idx: int, work) -> None:
        """Poll async op `idx` for completion until it is found done or waited on (CPU)."""
        self._inflight.append((idx, work))

    def poll(self) -> None:
        """Stamp t_done of every tracked async op the backend now reports complete."""
        if not self._inflight:
            return
        t, still = self.now(), []
        for item in self._inflight:
            if _completed(item[1]):
                self._settle_done(item[0], t)
            else:
                still.append(item)
        self._inflight = still

    def untrack(self, idx: int) -> bool:
        """Op `idx` is being waited on, so its wait settles t_done: stop polling it. True if it
        was still in flight (not yet found complete)."""
        before = len(self._inflight)
        self._inflight = [item for item in self._inflight if item[0] != idx]
        return len(self._inflight) < before

    def polls_completion(self) -> bool:
        """Whether async ops are polled for completion (CPU; CUDA stamps events instead)."""
        return not self._cuda

    def end_wait(self, idx: int) -> None:
        """The caller got an async op's result (an op not complete when its wait started)."""
        if self._cuda:
            self._stamp(idx, "t_wait_end")
            self._stamp(idx, "t_done")
        else:
            t = self.now()
            self._t_wait_end[idx] = t
            self._settle_done(idx, t)

    def _settle_done(self, idx: int, t: float) -> None:
        """t_done is at the latest `t` (the caller had the result): a callback time before it
        stays; none yet, or a callback trailing by a few microseconds, becomes `t`."""
        with self._lock:
            if not self._t_done[idx] <= t:  # NaN or later
                self._t_done[idx] = t

    def _stamp(self, idx: int, field: str) -> None:
        if self._cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._cuda_marks.append((idx, field, event))
        else:
            self._times[field][idx] = self.now()

    def resolve(self, ref_event: torch.cuda.Event | None = None, ref_time: float = 0.0) -> None:
        """CUDA only: turn recorded events into seconds on the host clock.

        Call after synchronizing; `ref_event` was recorded at host time `ref_time`.
        """
        if not self._cuda_marks:
            return
        for idx, field, event in self._cuda_marks:
            self._times[field][idx] = ref_time + ref_event.elapsed_time(event) / 1e3
        self._cuda_marks.clear()

    def _layer_id(self, layer: str) -> int:
        lid = self._layer_ids.get(layer)
        if lid is None:
            lid = self._layer_ids[layer] = len(self.layers)
            self.layers.append(layer)
        return lid

    # -- reading -----------------------------------------------------------------------------
    def events(self) -> np.ndarray:
        """Copy of the recorded events as an EVENT_DTYPE array (CUDA: call `resolve` first)."""
        with self._lock:
            n = self._count
            ev = np.zeros(n, dtype=EVENT_DTYPE)
            if n:
                for name, column in zip(_STATIC, zip(*self._static[:n], strict=True), strict=True):
                    ev[name] = column
                ev["wait_step"] = self._wait_step[:n]
                for name, times in self._times.items():
                    ev[name] = times[:n]
        blocking = ~ev["is_async"]  # its wait is exactly its duration
        ev["t_wait_start"][blocking] = ev["t_issue"][blocking]
        ev["t_wait_end"][blocking] = ev["t_done"][blocking]
        return ev

    def clear(self) -> None:
        with self._lock:
            self._count = 0
            self._static.clear()
            self._inflight = []

    def __len__(self) -> int:
        return self._count


class Pending:
    """Handle of an async collective; `wait()` blocks, logs the wait and returns the result."""

    __slots__ = ("_work", "_ledger", "_idx", "_finish", "_result")

    def __init__(self, work, ledger: Ledger | None, idx: int, finish: Callable[[], torch.Tensor]):
        self._work, self._ledger, self._idx, self._finish = work, ledger, idx, finish
        self._result: torch.Tensor | None = None

    def wait(self) -> torch.Tensor:
        if self._work is not None:
            ledger, completed = self._ledger, False
            if ledger is not None:
                if ledger.polls_completion():
                    # polled before the wait-start stamp, so that a complete op finished by
                    # then; an op no longer in flight was found complete by this or an
                    # earlier poll
                    ledger.poll()
                    completed = not ledger.untrack(self._idx)
                ledger.begin_wait(self._idx, completed)
            self._work.wait()
            if ledger is not None and not completed:
                ledger.end_wait(self._idx)
            self._work = None
            self._result = self._finish()
        return self._result


def _completed(work) -> bool:
    """Whether the backend has completed an async op (False when it cannot tell)."""
    try:
        return bool(work.is_completed())
    except (AttributeError, RuntimeError):
        return False


class _Settled:
    """The work handle of an analytic world's async op: nothing ran, nothing to wait for."""

    def wait(self) -> None:
        pass


_SETTLED = _Settled()


class Done(Pending):
    """An 'async' op that needed no communication (axis of degree 1)."""

    def __init__(self, result: torch.Tensor):
        super().__init__(None, None, -1, lambda: result)
        self._result = result


# torch 2.14 renamed the flat-buffer collectives; older releases only have the old names.
_all_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_flat = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _flat(t: torch.Tensor) -> torch.Tensor:
    """(n, *shape) -> (n * shape[0], *shape[1:]): the flat layout the backends take."""
    return t.view(t.shape[0] * t.shape[1], *t.shape[2:]) if t.dim() > 1 else t


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class Comm:
    """Collectives over the named axes of a `ParallelMesh`, each one logged in the ledger.

    Every op takes `axis` (a mesh axis name) and `layer` (the module path, for the breakdown).
    With `async_op=True` it returns a `Pending`; otherwise the result. On an axis of degree 1
    every op is the identity and nothing is logged: there is no communication to count.
    """

    def __init__(self, mesh: ParallelMesh, ledger: Ledger, *, analytic: bool = False):
        self.mesh = mesh
        self.ledger = ledger
        self.analytic = analytic  # log every op, launch none (meta tensors have no backend)
        # torch's fake process group (fake worlds) completes every op at issue and runs a
        # future's callbacks inline, with no thread hand-off: the callback then costs nothing
        # and gives those ops their ~0 duration (its works report is_completed() False)
        self._inline_futures = dist.is_initialized() and dist.get_backend() == "fake"
        self._groups: dict[str, tuple[int, int]] = {}  # axis -> (size, lowest global rank)

    # -- plumbing ----------------------------------------------------------------------------
    def _issue(self, op, axis, nbytes, layer, async_op, launch, finish, peer=-1):
        ledger = self.ledger if self.ledger.enabled else None
        idx = -1
        if ledger is not None:
            ledger.poll()  # ops in flight that finished since the last event
            group = self._groups.get(axis)
            if group is None:
                group = self._groups[axis] = (self.mesh.size(axis), self.mesh.global_ranks(axis)[0])
            idx = ledger.open(op, axis, group[0], nbytes, layer, async_op, group[1], peer)
        if self.analytic:
            if async_op:  # complete when waited: not tracked, no callback
                return Pending(_SETTLED, ledger, idx, finish)
            if ledger is not None:
                ledger.close_blocking(idx)
            return finish()
        work = launch(async_op)
        if async_op:
            callback = ledger is not None and (ledger.done_callbacks or self._inline_futures)
            if callback and not ledger._cuda:
                # a backend without futures for this op leaves t_done to the wait end
                with contextlib.suppress(RuntimeError):
                    work.get_future().add_done_callback(lambda _f: ledger.mark_done(idx))
            # polled in both modes, the earlier stamp wins: a callback must wait for the GIL
            if ledger is not None and ledger.polls_completion() and not self._inline_futures:
                ledger.track(idx, work)
            return Pending(work, ledger, idx, finish)
        if ledger is not None:
            ledger.close_blocking(idx)
        return finish()

    @staticmethod
    def _trivial(result: torch.Tensor, async_op: bool):
        return Done(result) if async_op else result

    # -- collectives -------------------------------------------------------------------------
    def all_gather(
        self,
        x: torch.Tensor,
        axis: str,
        *,
        dim: int = 0,
        out: torch.Tensor | None = None,
        layer: str = "",
        async_op: bool = False,
    ):
        """Gather `x` from every rank of `axis`, concatenated along `dim` in axis-rank order.

        With `out` (shape (n, *x.shape), e.g. a pre-allocated stale-activation buffer) the
        ranks' tensors are stacked into it and `out` is returned instead.
        """
        n = self.mesh.size(axis)
        if n == 1:
            return self._trivial(x if out is None else out.copy_(x.unsqueeze(0)), async_op)
        x = x.contiguous() if x.dim() else x.reshape(1)
        buf = out if out is not None else x.new_empty((n, *x.shape))
        group = self.mesh.group(axis)

        def finish():
            return buf if out is not None else torch.cat(buf.unbind(0), dim=dim)

        return self._issue(
            "all_gather",
            axis,
            _nbytes(buf),
            layer,
            async_op,
            lambda a: _all_gather_flat(_flat(buf), x, group=group, async_op=a),
            finish,
        )

    def all_reduce(self, x: torch.Tensor, axis: str, *, layer: str = "", async_op: bool = False):
        """Sum `x` in place over `axis`."""
        if self.mesh.size(axis) == 1:
            return self._trivial(x, async_op)
        group = self.mesh.group(axis)
        return self._issue(
            "all_reduce",
            axis,
            _nbytes(x),
            layer,
            async_op,
            lambda a: dist.all_reduce(x, group=group, async_op=a),
            lambda: x,
        )

    def all_to_all(
        self,
        x: torch.Tensor,
        axis: str,
        *,
        scatter_dim: int,
        gather_dim: int,
        layer: str = "",
        async_op: bool = False,
    ):
        """Split `x` into n chunks along `scatter_dim`, send chunk i to axis-rank i, and
        concatenate the chunks received along `gather_dim` (the Ulysses re-layout)."""
        n = self.mesh.size(axis)
        if n == 1:
            return self._trivial(x, async_op)
        if x.shape[scatter_dim] % n:
            raise ValueError(
                f"all_to_all on axis '{axis}': dim {scatter_dim} of size {x.shape[scatter_dim]} "
                f"does not split into {n} equal chunks"
            )
        send = torch.stack(x.chunk(n, dim=scatter_dim)).contiguous()
        recv = torch.empty_like(send)
        group = self.mesh.group(axis)
        return self._issue(
            "all_to_all",
            axis,
            _nbytes(send),
            layer,
            async_op,
            lambda a: dist.all_to_all_single(recv, send, group=group, async_op=a),
            lambda: torch.cat(recv.unbind(0), dim=gather_dim),
        )

    def reduce_scatter(
        self, x: torch.Tensor, axis: str, *, dim: int = 0, layer: str = "", async_op: bool = False
    ):
        """Sum `x` over `axis` and keep this rank's chunk along `dim`."""
        n = self.mesh.size(axis)
        if n == 1:
            return self._trivial(x, async_op)
        if x.shape[dim] % n:
            raise ValueError(
                f"reduce_scatter on axis '{axis}': dim {dim} of size {x.shape[dim]} "
                f"does not split into {n} equal chunks"
            )
        send = torch.stack(x.chunk(n, dim=dim)).contiguous()
        recv = torch.empty_like(send[0])
        group = self.mesh.group(axis)
        return self._issue(
            "reduce_scatter",
            axis,
            _nbytes(send),
            layer,
            async_op,
            lambda a: _reduce_scatter_flat(recv, _flat(send), group=group, async_op=a),
            lambda: recv,
        )

    def broadcast(
        self, x: torch.Tensor, axis: str, *, src: int = 0, layer: str = "", async_op: bool = False
    ):
        """Overwrite `x` in place with axis-rank `src`'s tensor."""
        if self.mesh.size(axis) == 1:
            return self._trivial(x, async_op)
        group, root = self.mesh.group(axis), self.mesh.global_ranks(axis)[src]
        return self._issue(
            "broadcast",
            axis,
            _nbytes(x),
            layer,
            async_op,
            lambda a: dist.broadcast(x, src=root, group=group, async_op=a),
            lambda: x,
        )

    def send(
        self, x: torch.Tensor, axis: str, *, dst: int, layer: str = "", async_op: bool = False
    ):
        """Send `x` to axis-rank `dst` (point to point)."""
        peer = self.mesh.global_ranks(axis)[dst]
        x = x.contiguous()
        group = self.mesh.group(axis)
        return self._issue(
            "send",
            axis,
            _nbytes(x),
            layer,
            async_op,
            lambda a: _p2p(dist.isend, x, peer, group, a),
            lambda: x,
            peer,
        )

    def recv(
        self, out: torch.Tensor, axis: str, *, src: int, layer: str = "", async_op: bool = False
    ):
        """Receive into `out` from axis-rank `src` (point to point)."""
        peer = self.mesh.global_ranks(axis)[src]
        group = self.mesh.group(axis)
        return self._issue(
            "recv",
            axis,
            _nbytes(out),
            layer,
            async_op,
            lambda a: _p2p(dist.irecv, out, peer, group, a),
            lambda: out,
            peer,
        )


def _p2p(fn, tensor: torch.Tensor, peer: int, group, async_op: bool):
    work = fn(tensor, peer, group=group)
    if not async_op:
        work.wait()
    return work
