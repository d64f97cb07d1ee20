"""PipeFusion's attention: a per-layer full-sequence K/V cache inside the attention core.

Each self-attention layer of a stage gets `attention.PlanAttnProcessor` (diffusers' projections)
with a `PipeCore`: the patch's fresh Q/K/V go through the Ulysses all-to-all (when the 'ulysses'
axis is > 1), the fresh K/V overwrite the patch's slot of the layer's `KVCache`, and the queries
attend to the whole cache, locally or by Ring attention over the 'ring' axis. This is where
xDiT keeps its cache too: after the all-to-all, before ring attention, so each rank caches the
tokens of its ring block at its heads (K/V memory KV * L / (N * ring * ulysses)).

Cache layout. Tokens are held as (groups, patches, n): group g is the g-th Ulysses rank's share
(1 group without Ulysses), patch m its patch, n tokens each. Patch m writes [:, m] of every
group. A whole-image (warm-up) forward fills all of it at once; pipeline_stage orders the
whole image's tokens so that the sequence split hands each rank its shard of every patch, in
patch order, which makes the two layouts coincide (attention does not care about key order).
"""

from __future__ import annotations

import torch

from suite.distributed.comm import Comm
from suite.parallel.attention import SequenceCore, sdpa


class KVCache:
    """K and V of the full sequence for one layer; fresh for the patches written this step."""

    def __init__(self, cursor, groups: int):
        self.cursor = cursor
        self.groups = groups
        self.k: torch.Tensor | None = None  # (B, groups * patches * n, heads, head_dim)
        self.v: torch.Tensor | None = None
        self.valid = 0  # leading patches written in this loop
        self.loop = -1

    def _buffers(self, like: torch.Tensor, tokens: int) -> None:
        shape = (like.shape[0], tokens, *like.shape[2:])
        if self.k is None or self.k.shape != shape or self.k.dtype != like.dtype:
            self.k, self.v = like.new_zeros(shape), like.new_zeros(shape)
            self.valid = 0

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the fresh token-major (B, S, heads, head_dim) K/V; return what attention reads.

        Before the cache was ever filled in this loop (warm-up 0) only the patches done so far
        are returned: the later ones have no K/V yet.
        """
        c, m = self.cursor, self.cursor.patches
        if c.loop != self.loop:
            self.loop, self.valid = c.loop, 0
        if c.full:
            self._buffers(k, k.shape[1])
            self.k.copy_(k)
            self.v.copy_(v)
            self.valid = m
            return self.k, self.v
        g = self.groups
        n = k.shape[1] // g
        self._buffers(k, g * m * n)
        b, rest = k.shape[0], k.shape[2:]
        slots_k, slots_v = (t.view(b, g, m, n, *rest) for t in (self.k, self.v))
        slots_k[:, :, c.index] = k.view(b, g, n, *rest)
        slots_v[:, :, c.index] = v.view(b, g, n, *rest)
        self.valid = max(self.valid, c.index + 1)
        if self.valid == m:
            return self.k, self.v
        done = slice(0, self.valid)
        return (
            slots_k[:, :, done].reshape(b, -1, *rest),
            slots_v[:, :, done].reshape(b, -1, *rest),
        )

    def nbytes(self) -> int:
        if self.k is None:
            return 0
        return 2 * self.k.numel() * self.k.element_size()


class PipeCore:
    """Attention core of one stage layer: [Ulysses all-to-all] -> K/V cache -> local or Ring
    attention -> [all-to-all back]. Image tokens only (no joint text)."""

    def __init__(self, comm: Comm, cache: KVCache):
        self.comm = comm
        self.cache = cache
        self.ulysses = comm.mesh.size("ulysses")
        # Ring attention itself is sequence.py's (SequenceCore._ring): one implementation of
        # the hops and the log-sum-exp merge, here fed the cached K/V instead of the fresh.
        self.ring = SequenceCore(comm) if comm.mesh.size("ring") > 1 else None

    def __call__(self, q, k, v, text, text_first: bool, layer: str):
        if text is not None:
            raise NotImplementedError(f"{layer}: pipefusion does not pipeline joint attention")
        comm, u = self.comm, self.ulysses
        if u > 1:
            qkv = comm.all_to_all(
                torch.stack([q, k, v], dim=2), "ulysses", scatter_dim=3, gather_dim=1, layer=layer
            )
            q, k, v = qkv.unbind(2)
        k, v = self.cache.update(k, v)
        if self.ring is not None:
            out, _ = self.ring._ring(q, k, v, None, True, layer)
        else:
            out = sdpa(q, k, v)
        if u > 1:
            out = comm.all_to_all(out, "ulysses", scatter_dim=1, gather_dim=2, layer=layer)
        return out, None
