"""PipeFusion model surgery: one rank keeps one pipeline stage of a DiT and runs it per patch.

The diffusers model keeps its own forward. What changes, all through module swaps and hooks:
- blocks outside this rank's stage become `Skipped` pass-throughs and their parameters are freed;
- the first stage's patch embedding still embeds the full latent (so every token gets the
  positional embedding of its row in the full image; the token-local convolution costs far
  less than one block) and a hook keeps the current patch's tokens; later stages hold no
  embedding, and a pre-hook on their first block swaps in the activations received from the
  previous stage;
- every stage but the last stops the forward after its last block (`StageOutput`): nothing
  after it runs, so those ranks hold no output head;
- on the last stage a hook places the patch's output tokens into a full-size token buffer, so
  diffusers' un-patchify (which reads the grid from the input or the token count) works;
- the stage's self-attention layers get a K/V cache in their attention core
  (pipeline_attention.py).

Composition. Strategies inside pipefusion (ring, ulysses) split the tokens after the embedding
and gather them after the output head with hooks installed when they are applied, after this
one. The patch selection hook is prepended, so it runs before their split; the output placement
and the attention cores must wrap theirs, so `Stage.attach` installs them when the loop first
runs. For the whole-image steps the embedding hook orders the tokens so that the sequence
split hands each rank its shard of every patch, patch after patch (the K/V cache's layout); the
placement hook restores row-major order after their gather.

Video (Wan): the tokens are F' x h' x w', frame-major; a patch is a contiguous run of whole token
rows, which may span frames. Wan flattens its patch embedding's output inside forward, so the
patch is taken at the first block's input (the plan's `split_before`) and its rows of the rope
table with it (`split_outputs`): every patch is rotated at its true 3-D positions.

Family knowledge is data (`plans.PIPE_PLANS`, beside the shared plans).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from suite.parallel import plans
from suite.parallel.attention import PlanAttnProcessor
from suite.parallel.pipeline_attention import KVCache, PipeCore
from suite.parallel.plans import PIPE_PLANS


def stage_bounds(layers: int, stages: int) -> list[tuple[int, int]]:
    """[start, stop) block indices of each stage: contiguous, sizes differ by at most one
    (the first `layers % stages` stages take the extra block)."""
    base, extra = divmod(layers, stages)
    bounds, start = [], 0
    for k in range(stages):
        stop = start + base + (k < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


class StageOutput(Exception):  # noqa: N818 - control flow, not an error
    """Raised after the stage's last block on every stage but the last: carries its output."""

    def __init__(self, hidden_states: torch.Tensor):
        super().__init__("pipeline stage output")
        self.hidden_states = hidden_states


@dataclass
class PatchCursor:
    """Which part of the image the next model call computes; shared by every hook of a rank."""

    patches: int  # M
    shards: int = 1  # ranks the sequence is split over inside a stage (ring x ulysses)
    index: int = 0  # current patch m
    full: bool = True  # the whole image (warm-up steps) instead of patch `index`
    loop: int = 0  # denoising loops begun; K/V caches are reset by a new loop
    inbox: torch.Tensor | None = None  # activations from the previous stage for this call

    def tokens(self, total: int) -> slice:
        """Token range of the current part among `total` row-major tokens (a band of latent
        rows is a contiguous range)."""
        if self.full:
            return slice(0, total)
        size = total // self.patches
        return slice(self.index * size, (self.index + 1) * size)

    def shard_major(self, x: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """Whole-image tokens (B, T, C) from patch-major [patch][shard][n] to shard-major
        [shard][patch][n] order (or back): contiguous shards are then per-patch shards."""
        if self.shards == 1:
            return x
        b, t, c = x.shape
        dims = (self.shards, self.patches) if inverse else (self.patches, self.shards)
        return (
            x.view(b, *dims, t // (self.patches * self.shards), c).transpose(1, 2).reshape(b, t, c)
        )


class Skipped(nn.Module):
    """A block of another stage: returns its hidden states unchanged, holds no parameters
    (except submodules the output head reads, grafted on by `build_stage`)."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states


class EmbedStub(nn.Module):
    """The patch embedding of a stage that is not the first: no parameters, no compute; returns
    an uninitialised (batch, tokens, hidden) placeholder the first block's pre-hook replaces
    (Wan: (batch, hidden, tokens), which the model flattens and transposes itself)."""

    def __init__(
        self, hidden: int, token_patch: int, cursor: PatchCursor, channels_first: bool = False
    ):
        super().__init__()
        self.hidden, self.token_patch, self.cursor = hidden, token_patch, cursor
        self.channels_first = channels_first

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        b, (h, w) = latent.shape[0], latent.shape[-2:]
        frames = latent.shape[2] if latent.ndim == 5 else 1  # video: temporal patch 1 (Wan 2.1)
        total = frames * (h // self.token_patch) * (w // self.token_patch)
        n = len(range(total)[self.cursor.tokens(total)])
        shape = (b, self.hidden, n) if self.channels_first else (b, n, self.hidden)
        return latent.new_empty(shape)


@dataclass
class Stage:
    """This rank's stage after `build_stage`."""

    index: int  # k
    stages: int  # N
    blocks: tuple[int, int]  # [start, stop) of the model's blocks held here
    cursor: PatchCursor
    model: nn.Module
    family: str
    caches: list[KVCache] = field(default_factory=list)
    attached: bool = False

    @property
    def first(self) -> bool:
        return self.index == 0

    @property
    def last(self) -> bool:
        return self.index == self.stages - 1

    def kv_bytes(self) -> int:
        """Bytes of the K/V caches this rank holds (KV * L / N, divided by the sequence
        degree inside the stage)."""
        return sum(c.nbytes() for c in self.caches)

    def attach(self, comm) -> None:
        """Install what must wrap the inner strategies' hooks (see the module docstring)."""
        if self.attached:
            return
        self.attached = True
        plan = plans.get_plan(self.family)
        for pattern in (a.pattern for a in plan.attention if a.layout == "self"):
            for path, attn in plans.find(self.model, pattern):
                proc = attn.processor
                if isinstance(proc, PlanAttnProcessor):
                    head_dim = proc.head_dim
                else:
                    PlanAttnProcessor.check(attn, path)
                    head_dim = attn.to_q.out_features // attn.heads
                cache = KVCache(self.cursor, comm.mesh.size("ulysses"))
                self.caches.append(cache)
                attn.set_processor(PlanAttnProcessor("self", PipeCore(comm, cache), head_dim, path))
        if self.last:
            self.model.get_submodule(plan.gather_after).register_forward_hook(_place(self.cursor))


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def _graft(root: nn.Module, relative: str, module: nn.Module) -> None:
    """Attach `module` at `relative` under `root`, creating empty containers on the way."""
    *parents, name = relative.split(".")
    node = root
    for p in parents:
        if not hasattr(node, p):
            node.add_module(p, nn.Module())
        node = getattr(node, p)
    node.add_module(name, module)


def hidden_size(model: nn.Module) -> int:
    """Width of the token stream between blocks (heads x head dim)."""
    cfg = model.config
    return int(cfg.num_attention_heads * cfg.attention_head_dim)


def build_stage(
    model: nn.Module,
    family: str,
    index: int,
    stages: int,
    patches: int,
    shards: int = 1,
    token_patch: int | None = None,
) -> Stage:
    """Cut `model` in place down to stage `index` of `stages` and install the patch hooks
    (`token_patch`: latent pixels per token side; None: the family plan's)."""
    pipe, plan = PIPE_PLANS[family], plans.get_plan(family)
    token_patch = token_patch or plan.token_patch
    blocks: nn.ModuleList = model.get_submodule(pipe.blocks)
    start, stop = stage_bounds(len(blocks), stages)[index]
    cursor = PatchCursor(patches=patches, shards=shards)
    last = index == stages - 1

    # The head's reads from other stages' blocks, taken before those blocks go.
    kept = {p: model.get_submodule(p) for p in pipe.head_reads} if last else {}
    for j in range(len(blocks)):
        if not start <= j < stop:
            blocks[j] = Skipped()  # the original block (and its parameters) is freed
    for path, module in kept.items():
        j, _, rest = path[len(pipe.blocks) + 1 :].partition(".")
        if not start <= int(j) < stop:
            _graft(blocks[int(j)], rest, module)

    embed = pipe.embed or plan.split_after
    if index == 0 and plan.split_after:
        model.get_submodule(plan.split_after).register_forward_hook(_select(cursor), prepend=True)
    elif index == 0:  # Wan: the patch's tokens taken at the first block's input
        model.get_submodule(plan.split_before).register_forward_pre_hook(
            _select_input(cursor), with_kwargs=True, prepend=True
        )
    else:
        stub = EmbedStub(hidden_size(model), token_patch, cursor, embed != plan.split_after)
        _set(model, embed, stub)
        blocks[start].register_forward_pre_hook(_swap_in(cursor), with_kwargs=True)
    # rope tables (one row per token, 3-D positions) follow the tokens on every stage: each
    # patch rotates its queries and keys at its own positions
    for path, dim in plan.split_outputs.items():
        model.get_submodule(path).register_forward_hook(_select_rows(cursor, dim), prepend=True)
    if not last:
        blocks[stop - 1].register_forward_hook(_stop_forward)
        for path in pipe.head:
            _set(model, path, nn.Identity())  # never reached: the forward stops earlier
    return Stage(index, stages, (start, stop), cursor, model, family)


def _select(cursor: PatchCursor):
    """Embedding hook (stage 0): the current patch's tokens, or the whole image shard-major."""

    def hook(_module, _args, out: torch.Tensor) -> torch.Tensor:
        if cursor.full:
            return cursor.shard_major(out)
        return out[:, cursor.tokens(out.shape[1])]

    return hook


def _select_input(cursor: PatchCursor):
    """First-block pre-hook (stage 0, Wan): `_select` on the block's hidden_states input."""
    select = _select(cursor)

    def hook(module, args, kwargs):
        if args:
            return (select(module, args, args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": select(module, args, kwargs["hidden_states"])}

    return hook


def _select_rows(cursor: PatchCursor, dim: int):
    """Rope hook: the rows of the current part's tokens on `dim` of each table, in the token
    order `_select` gives (the whole image shard-major)."""

    def take(table: torch.Tensor) -> torch.Tensor:
        total = table.shape[dim]
        if not cursor.full:
            return table[(slice(None),) * dim + (cursor.tokens(total),)]
        if cursor.shards == 1:
            return table
        order = cursor.shard_major(torch.arange(total).view(1, total, 1)).view(total)
        return table.index_select(dim, order.to(table.device))

    def hook(_module, _args, out):
        return tuple(take(t) for t in out) if isinstance(out, tuple | list) else take(out)

    return hook


def _swap_in(cursor: PatchCursor):
    def hook(_module, args, kwargs):
        received, cursor.inbox = cursor.inbox, None
        if received is None:
            raise RuntimeError("pipeline stage ran without activations from the previous stage")
        if args:
            return (received, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": received}

    return hook


def _stop_forward(_module, _args, output):
    raise StageOutput(output)


def _place(cursor: PatchCursor):
    """Output-head hook (last stage): the patch's tokens into a zero buffer of the full token
    count, or the whole image back to row-major order."""

    def hook(_module, _args, out: torch.Tensor) -> torch.Tensor:
        if cursor.full:
            return cursor.shard_major(out, inverse=True)
        n = out.shape[1]
        full = out.new_zeros((out.shape[0], n * cursor.patches, *out.shape[2:]))
        full[:, cursor.index * n : (cursor.index + 1) * n] = out
        return full

    return hook
