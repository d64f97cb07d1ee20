"""Per-rank state of patch parallelism: the step schedule and the displaced (stale) exchanges.

One `PatchState` is shared by every wrapped module of a model. The runner tells it the step
index (`begin_step`); each module calls `exchange(layer, fresh, build)` once per forward.

Schedule (DistriFusion's reference-code convention): steps 0..warmup_steps run synchronous, i.e.
the first step (which has no previous activations to reuse) plus `warmup_steps` more. After
that, an exchange hands `build` the buffer filled by the previous step's async all-gather and
then issues this step's all-gather into the same buffer, to be read one step later. The last
step issues nothing: no later step would read it.

One buffer per layer, not two: `build` copies what it needs out of the buffer (it has to
anyway, to put this rank's fresh slot in place and re-lay the batch) before the next gather is
issued into it, so the async write never races the read. Stale memory is therefore one
(n, *fresh.shape) buffer per exchanging layer: the design table's KV·L for attention.

Coalescing (`coalesce`, the reference code's batching of small async all-gathers): a UNet step
has ~90 exchanges, and each all-gather costs its own launch (Python, the backend's queue, a
rendezvous of the ranks) whatever its size. With `coalesce="block"` the async steps stage each
layer's fresh tensor instead of gathering it, and issue one all-gather per top-level block
(`down_blocks.1`, `mid_block.attentions.0`, `transformer_blocks.3`, ...) when the next block's
first exchange arrives, and the step's last bucket just before the output is gathered;
`"step"` issues one per step. Bytes are unchanged (the same tensors,
concatenated). A bucket's receive buffer is rewritten only once every member has read its stale
slot: each layer reads before it stages, and a bucket is issued after its last member staged.
Synchronous steps (warm-up, `full_sync`) stay per layer and blocking: each layer needs its own
fresh neighbours before the next layer runs, so there is nothing to batch and exactness holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from suite.distributed.comm import Comm, Pending
from suite.parallel.checks import COALESCE_MODES

T = TypeVar("T")


@dataclass(frozen=True)
class Band:
    """This rank's share of a rows x cols grid stored row-major: whole rows or whole columns."""

    rows: int
    cols: int
    n: int
    rank: int
    axis: str  # "row" | "column"

    def take(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's part of `x`, whose `dim` holds the flattened grid (rows * cols)."""
        if self.axis == "row":
            size = self.rows * self.cols // self.n
            return x.narrow(dim, self.rank * size, size)
        width = self.cols // self.n
        grid = x.unflatten(dim, (self.rows, self.cols))
        return grid.narrow(dim + 1, self.rank * width, width).flatten(dim, dim + 1)

    def place(self, parts: torch.Tensor, dim: int) -> torch.Tensor:
        """Inverse of `take` on all ranks' parts concatenated in rank order along `dim`."""
        if self.axis == "row":
            return parts
        grid = parts.unflatten(dim, (self.n, self.rows, self.cols // self.n))
        return grid.transpose(dim, dim + 1).flatten(dim, dim + 2)


def block_of(layer: str) -> str:
    """The top-level block a module path belongs to: its path up to the first index.

    'down_blocks.1.resnets.0.conv1' -> 'down_blocks.1'; 'mid_block.attentions.0.norm' ->
    'mid_block.attentions.0'; 'transformer_blocks.3.attn1' -> 'transformer_blocks.3'.
    """
    parts = layer.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return parts[0]


@dataclass
class _Bucket:
    """Several layers' async exchanges as one all-gather: member j of rank r is
    recv[r, offset_j : offset_j + numel_j]."""

    members: tuple[tuple[str, torch.Size], ...]  # (layer, shape of its fresh tensor)
    recv: torch.Tensor  # (n, total numel)
    slots: dict[str, tuple[int, int, torch.Size]] = field(default_factory=dict)
    pending: Pending | None = None

    def __post_init__(self) -> None:
        offset = 0
        for layer, shape in self.members:
            numel = shape.numel()
            self.slots[layer] = (offset, numel, shape)
            offset += numel

    def view(self, layer: str) -> torch.Tensor:
        """(n, *shape) view of `layer`'s slot of every rank (waits for the gather first)."""
        if self.pending is not None:
            self.pending.wait()
            self.pending = None
        offset, numel, shape = self.slots[layer]
        return self.recv[:, offset : offset + numel].unflatten(1, shape)


class PatchState:
    """Step schedule, pre-allocated buffers and pending async gathers of one rank."""

    def __init__(
        self,
        comm: Comm,
        *,
        warmup_steps: int = 0,
        full_sync: bool = False,
        total_steps: int | None = None,
        split: str = "row",
        axis: str = "patch",
        coalesce: str = "none",
    ) -> None:
        if coalesce not in COALESCE_MODES:
            raise ValueError(f"coalesce={coalesce!r}; allowed: {', '.join(COALESCE_MODES)}")
        self.comm = comm
        self.axis = axis
        self.n = comm.mesh.size(axis)
        self.rank = comm.mesh.rank(axis)
        self.warmup_steps = warmup_steps
        self.full_sync = full_sync
        self.total_steps = total_steps
        self.step = 0
        self.loop = 0  # denoising loops begun; caches keyed on it live for one loop
        self.sync = True  # this step exchanges fresh activations, blocking
        self.issue = False  # this step issues async gathers for the next one
        self.split = split  # row | column | alternate (naive_patch; distrifusion: row)
        self.grid = (0, 0)  # (rows, cols) of the full latent's token grid, set per forward
        self.tokens = 0  # image tokens of the full latent (token models), set by the embedding
        self.text_len = 0  # text tokens prepended to the image (Flux), set by the rope ids
        self._buffers: dict[str, torch.Tensor] = {}
        self._filled: set[str] = set()
        self._pending: dict[str, Pending] = {}
        self.coalesce = coalesce
        self._staged: list[tuple[str, torch.Tensor]] = []  # fresh tensors not yet issued
        self._buckets: dict[tuple, _Bucket] = {}  # by members: reused step after step
        self._bucket_of: dict[str, _Bucket] = {}  # layer -> bucket holding its stale slot

    # -- schedule ---------------------------------------------------------------------------
    def begin_step(self, i: int) -> None:
        """Called by the runner before step i of every denoising loop."""
        if i == 0:
            self.drain()
            self._filled.clear()  # a new loop: nothing of the last one may be reused
            self._bucket_of.clear()
            self.loop += 1
        else:
            self._flush()  # a model without a gathered head: the previous step's last bucket
        self.step = i
        self.sync = self.full_sync or i <= self.warmup_steps
        last = self.total_steps is not None and i >= self.total_steps - 1
        self.issue = not self.sync and not last

    def band(self) -> Band:
        """This rank's band of the token grid in the current step."""
        axis = self.split
        if axis == "alternate":  # the paper's naive patch: rows and columns in turn
            axis = "row" if self.step % 2 == 0 else "column"
        return Band(*self.grid, self.n, self.rank, axis)

    def drain(self) -> None:
        """Wait for every async gather in flight."""
        for pending in self._pending.values():
            pending.wait()
        self._pending.clear()
        self._staged.clear()
        for bucket in self._buckets.values():
            if bucket.pending is not None:
                bucket.pending.wait()
                bucket.pending = None

    # -- buffers ----------------------------------------------------------------------------
    def buffer(self, layer: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """The buffer of `layer`, allocated on first use (or when the shape changes)."""
        buf = self._buffers.get(layer)
        if buf is None or buf.shape != shape or buf.dtype != like.dtype:
            if layer in self._pending:
                self._pending.pop(layer).wait()
            buf = self._buffers[layer] = like.new_empty(shape)
            self._filled.discard(layer)
        return buf

    def stale_bytes(self) -> int:
        """Bytes of the per-layer exchange buffers this rank holds (the stale activations)."""
        layers = sum(
            b.numel() * b.element_size() for k, b in self._buffers.items() if k != "output"
        )
        buckets = sum(b.recv.numel() * b.recv.element_size() for b in self._buckets.values())
        return layers + buckets

    # -- exchanges --------------------------------------------------------------------------
    def exchange(
        self, layer: str, fresh: torch.Tensor, build: Callable[[torch.Tensor, bool], T]
    ) -> T:
        """All-gather `fresh` over the patch axis and return `build(buf, is_fresh)`.

        buf has shape (n, *fresh.shape); buf[j] is rank j's tensor, from this step when
        is_fresh and from the previous step otherwise (buf[self.rank] then holds this rank's
        stale tensor: use `fresh` for its current value).
        """
        if self.coalesce != "none" and not self.sync and layer in self._filled:
            return self._exchange_coalesced(layer, fresh, build)
        buf = self.buffer(layer, (self.n, *fresh.shape), fresh)
        if self.sync or layer not in self._filled:
            self.comm.all_gather(fresh, self.axis, out=buf, layer=layer)
            self._filled.add(layer)
            return build(buf, True)
        pending = self._pending.pop(layer, None)
        if pending is not None:
            pending.wait()
        result = build(buf, False)  # copies out of buf before the next gather may write it
        if self.issue:
            self._pending[layer] = self.comm.all_gather(
                fresh, self.axis, out=buf, layer=layer, async_op=True
            )
        return result

    def _exchange_coalesced(
        self, layer: str, fresh: torch.Tensor, build: Callable[[torch.Tensor, bool], T]
    ) -> T:
        """An async step's exchange with coalescing: read the stale slot, stage the fresh one."""
        bucket = self._bucket_of.get(layer)
        if bucket is None:  # first async step: the synchronous step filled the layer's buffer
            result = build(self._buffers.pop(layer), False)  # freed: buckets hold it from now
        else:
            result = build(bucket.view(layer), False)
        if self.issue:
            if self._staged and self._bucket_key(self._staged[-1]) != self._bucket_key(
                (layer, fresh)
            ):
                self._flush()
            self._staged.append((layer, fresh))
        return result

    def _bucket_key(self, item: tuple[str, torch.Tensor]) -> tuple:
        layer, fresh = item
        return (block_of(layer) if self.coalesce == "block" else "", fresh.dtype, fresh.device)

    def _flush(self) -> None:
        """Issue the staged tensors as one async all-gather into their bucket."""
        if not self._staged:
            return
        staged, self._staged = self._staged, []
        members = tuple((layer, fresh.shape) for layer, fresh in staged)
        bucket = self._buckets.get(members)
        if bucket is None:
            total = sum(shape.numel() for _, shape in members)
            bucket = self._buckets[members] = _Bucket(
                members, staged[0][1].new_empty((self.n, total))
            )
        send = torch.cat([fresh.reshape(-1) for _, fresh in staged])
        first, last = members[0][0], members[-1][0]
        label = block_of(first) if self.coalesce == "block" else f"{first}..{last}"
        bucket.pending = self.comm.all_gather(
            send, self.axis, out=bucket.recv, layer=f"coalesced:{label}", async_op=True
        )
        for layer, _ in members:
            self._bucket_of[layer] = bucket

    def all_reduce_mean(self, layer: str, x: torch.Tensor) -> torch.Tensor:
        """Blocking mean of `x` over the patch axis (fresh every call)."""
        return self.comm.all_reduce(x.clone(), self.axis, layer=layer) / self.n

    def gather_output(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Blocking all-gather of this rank's band of the output, concatenated along `dim`.

        Part of every step's cost: each rank needs the full prediction for the solver step.
        The output head is the model's last module, so the step's last coalesced bucket is
        issued here, in the step that staged it.
        """
        self._flush()
        buf = self.buffer("output", (self.n, *x.shape), x)
        self.comm.all_gather(x, self.axis, out=buf, layer="output")
        return torch.cat(buf.unbind(0), dim=dim)
