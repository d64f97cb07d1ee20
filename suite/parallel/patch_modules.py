"""Module wrappers of patch parallelism: each runs its diffusers module on this rank's band.

Layouts: a UNet activation band is (B, C, h, W), rows [rank*h, (rank+1)*h) of the full map; a
token band is (B, N/n, D), the tokens of this rank's rows of patches (contiguous, row-major).
Every wrapper keeps the wrapped module as a child, so parameters are counted and moved as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from suite.parallel.patch_state import PatchState

# -- UNet: halo convolutions and group norm ----------------------------------------------------


def halo_rows(conv: nn.Conv2d) -> tuple[int, int]:
    """(rows above, rows below) a band needs from its neighbours for `conv`'s output rows.

    Output row o reads input rows o*s - p .. o*s - p + k - 1; for a band starting at a
    multiple of the stride s that is p rows above and k - p - s below (0 for a stride-2
    downsample with k=3, p=1: its last output row never reaches the next band).
    """
    if conv.dilation[0] != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"patch parallelism supports dilation 1, zero padding; got {conv}")
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    return p, max(0, k - p - s)


class _BandConv(nn.Module):
    """Base of the band convolutions: the conv without height padding on a padded band."""

    def __init__(self, conv: nn.Conv2d, state: PatchState, layer: str) -> None:
        super().__init__()
        self.conv, self.state, self.layer = conv, state, layer
        self.top, self.bottom = halo_rows(conv)

    def _conv(self, padded: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return F.conv2d(padded, c.weight, c.bias, c.stride, (0, c.padding[1]), 1, c.groups)


class InputConv(_BandConv):
    """The UNet's input conv: takes the full latent and convolves this rank's band.

    Every rank holds the full latent, so the halo rows are read locally: no exchange.
    """

    def forward(self, full: torch.Tensor) -> torch.Tensor:
        s, height = self.state, full.shape[2]
        h = height // s.n
        lo, hi = s.rank * h - self.top, (s.rank + 1) * h + self.bottom
        rows = full[:, :, max(lo, 0) : min(hi, height)]
        return self._conv(F.pad(rows, (0, 0, max(0, -lo), max(0, hi - height))))


class HaloConv(_BandConv):
    """A conv with kernel > 1 on a band: pads with the neighbours' boundary rows.

    Sync steps exchange this step's rows (blocking); later steps pad with the rows the
    neighbours sent during the previous step and send this step's rows asynchronously. All
    ranks' boundary rows go through one all-gather (the reference code's choice: one batched
    collective instead of 2 sends + 2 receives; at n = 2 it moves exactly the halos).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, top, bottom = self.state, self.top, self.bottom
        # what the rank above needs (our first `bottom` rows) and below (our last `top` rows)
        fresh = torch.cat([x[:, :, :bottom], x[:, :, x.shape[2] - top :]], dim=2)

        def build(buf: torch.Tensor, _fresh: bool) -> torch.Tensor:
            above = buf[s.rank - 1][:, :, bottom:] if s.rank > 0 else x.new_zeros(_rows(x, top))
            below = (
                buf[s.rank + 1][:, :, :bottom]
                if s.rank < s.n - 1
                else x.new_zeros(_rows(x, bottom))
            )
            return torch.cat([above, x, below], dim=2)

        return self._conv(s.exchange(self.layer, fresh, build))


def _rows(x: torch.Tensor, k: int) -> tuple[int, ...]:
    return (x.shape[0], x.shape[1], k, x.shape[3])


class PatchGroupNorm(nn.Module):
    """GroupNorm on a band with statistics per `mode` (torch's biased variance throughout).

    Statistics are per (sample, group): mean and variance of this band, float32. After the
    synchronous warm-up (where every mode uses fresh global statistics, gathered):
    separate: this band's own statistics, no communication;
    stale: the previous step's statistics of the other bands with this band's fresh ones;
    corrected: previous global + (fresh local - previous local) on E[x] and E[x^2] (the
        paper's Eq. 2); where the variance comes out negative, the local variance is used;
    sync: a blocking all-reduce of E[x], E[x^2] every step, fresh.
    """

    def __init__(self, norm: nn.GroupNorm, state: PatchState, layer: str, mode: str) -> None:
        super().__init__()
        self.norm, self.state, self.layer, self.mode = norm, state, layer, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, groups = self.state, self.norm.num_groups
        xg = x.reshape(x.shape[0], groups, -1)
        # E[x] and E[x^2] by two vectorized reductions: ~20x faster than var_mean's Welford
        # pass on CPU; fp32, so the cancellation in E[x^2] - E[x]^2 stays ~1e-6 relative
        mean = xg.mean(-1, dtype=torch.float32)
        square = torch.linalg.vector_norm(xg, 2, -1, dtype=torch.float32) ** 2 / xg.shape[-1]
        local = torch.stack([mean, (square - mean * mean).clamp_min(0)])  # (2, B, G)
        if self.mode == "separate" and not s.sync:
            mean, var = local
        elif self.mode == "sync":
            moments = s.all_reduce_mean(self.layer, torch.stack([mean, square]))
            mean, var = moments[0], (moments[1] - moments[0] ** 2).clamp_min(0)
        else:
            mean, var = s.exchange(
                self.layer, local, lambda buf, fresh: self._global(buf, fresh, local)
            )
        return self._normalize(x, mean, var)

    def _global(self, buf: torch.Tensor, fresh: bool, local: torch.Tensor) -> torch.Tensor:
        """(mean, var) over the whole image from the gathered (n, 2, B, G) statistics."""
        r = self.state.rank
        if fresh or self.mode == "separate":
            return _combine(buf)
        if self.mode == "stale":
            return _combine(torch.cat([buf[:r], local[None], buf[r + 1 :]]))

        # corrected: moments E[x], E[x^2] of the stale whole plus this band's change since then
        def moments(t: torch.Tensor) -> torch.Tensor:
            return torch.stack([t[..., 0, :, :], t[..., 1, :, :] + t[..., 0, :, :] ** 2], dim=-3)

        m = moments(buf).mean(0) + moments(local) - moments(buf[r])
        var = m[1] - m[0] ** 2
        return torch.stack([m[0], torch.where(var < 0, local[1], var)])

    def _normalize(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        # One fused pass: eval-mode batch norm normalizes each channel with given statistics;
        # folding the batch into the channels makes them per (sample, channel).
        norm, (b, c) = self.norm, x.shape[:2]
        per_group = c // norm.num_groups
        mean = mean.repeat_interleave(per_group, dim=1).reshape(b * c).to(x.dtype)
        var = var.repeat_interleave(per_group, dim=1).reshape(b * c).to(x.dtype)
        weight = norm.weight.repeat(b) if norm.affine else None
        bias = norm.bias.repeat(b) if norm.affine else None
        folded = x.reshape(1, b * c, *x.shape[2:])
        return F.batch_norm(folded, mean, var, weight, bias, False, 0.0, norm.eps).view_as(x)


def _combine(stats: torch.Tensor) -> torch.Tensor:
    """(mean, var) of the union of n equal-sized bands from their (n, 2, B, G) statistics."""
    mean = stats[:, 0].mean(0)
    var = (stats[:, 1] + (stats[:, 0] - mean) ** 2).mean(0)
    return torch.stack([mean, var])


# -- attention -----------------------------------------------------------------------------


class _KVExchange:
    """K and V of one self-attention over the whole image: this rank's fresh K/V in its slot,
    the other ranks' from the exchange. Installed as the module's to_k / to_v, so diffusers'
    own processor runs unchanged with local queries against full-length K/V. K and V travel
    together in one all-gather; to_v returns the V computed by the preceding to_k call.
    """

    def __init__(self, state: PatchState, layer: str, to_k: nn.Module, to_v: nn.Module) -> None:
        self.state, self.layer, self.to_k, self.to_v = state, layer, to_k, to_v
        self.value: torch.Tensor | None = None

    def key(self, x: torch.Tensor) -> torch.Tensor:
        kv = full_kv(self.state, self.layer, torch.stack([self.to_k(x), self.to_v(x)]), dim=2)
        self.value = kv[1]
        return kv[0]

    def take_value(self) -> torch.Tensor:
        value, self.value = self.value, None
        if value is None:
            raise RuntimeError("patch attention: to_v called without a preceding to_k")
        return value


def full_kv(state: PatchState, layer: str, fresh: torch.Tensor, dim: int) -> torch.Tensor:
    """Full-sequence (K, V) stacked on dim 0 from this band's `fresh` ones: tokens on `dim`."""

    def build(buf: torch.Tensor, _fresh: bool) -> torch.Tensor:
        return torch.cat([fresh if j == state.rank else buf[j] for j in range(state.n)], dim=dim)

    return state.exchange(layer, fresh, build)


class ExchangedKey(nn.Module):
    def __init__(self, pair: _KVExchange) -> None:
        super().__init__()
        self.linear, self.pair = pair.to_k, pair

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pair.key(x)


class ExchangedValue(nn.Module):
    def __init__(self, pair: _KVExchange) -> None:
        super().__init__()
        self.linear, self.pair = pair.to_v, pair

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pair.take_value()


def exchange_self_attention(attn: nn.Module, state: PatchState, layer: str) -> None:
    """Make `attn` (a diffusers Attention) attend from its band to the whole image."""
    pair = _KVExchange(state, layer, attn.to_k, attn.to_v)
    attn.to_k, attn.to_v = ExchangedKey(pair), ExchangedValue(pair)


class LoopCached(nn.Module):
    """A projection of the text conditioning, computed once per denoising loop.

    Cross-attention K/V depend only on the prompt embedding, the same in every step of a loop.
    """

    def __init__(self, linear: nn.Module, state: PatchState) -> None:
        super().__init__()
        self.linear, self.state = linear, state
        self._key: tuple | None = None
        self._out: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = (self.state.loop, x.shape, x.dtype)
        if self._key != key:
            self._key, self._out = key, self.linear(x)
        return self._out


# -- token models --------------------------------------------------------------------------


class TokenBand(nn.Module):
    """A token model's embedding cut to this rank's band: its output tokens (PatchEmbed), or
    its input tokens (a per-token linear like Flux's x_embedder, cheaper)."""

    def __init__(self, module: nn.Module, state: PatchState, slice_input: bool) -> None:
        super().__init__()
        self.module, self.state, self.slice_input = module, state, slice_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.slice_input:
            self.state.tokens = x.shape[1]
            return self.module(self.state.band().take(x, 1))
        out = self.module(x)
        self.state.tokens = out.shape[1]
        return self.state.band().take(out, 1)


class TokenGather(nn.Module):
    """A token model's output projection on the band, then every band gathered (all tokens)."""

    def __init__(self, module: nn.Module, state: PatchState) -> None:
        super().__init__()
        self.module, self.state = module, state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.state.gather_output(self.module(x), dim=1)
        return self.state.band().place(out, 1)


class RowGather(nn.Module):
    """The UNet's output conv on the band, then the bands gathered along the height."""

    def __init__(self, module: nn.Module, state: PatchState) -> None:
        super().__init__()
        self.module, self.state = module, state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.state.gather_output(self.module(x), dim=2)


class RopeBand(nn.Module):
    """Flux's rotary embedding of [text ids; image ids] cut to the text and this band's image
    tokens; records the text length for the single-stream blocks' attention."""

    def __init__(self, module: nn.Module, state: PatchState) -> None:
        super().__init__()
        self.module, self.state = module, state

    def forward(self, ids: torch.Tensor):
        text = ids.shape[0] - self.state.tokens
        self.state.text_len = text
        return self.module(torch.cat([ids[:text], self.state.band().take(ids[text:], 0)]))
