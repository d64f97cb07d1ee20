"""One attention processor for every plan layout, with a pluggable attention core.

`PlanAttnProcessor` replaces a diffusers processor (per module, via `.processor`): it computes the
same projections as diffusers' AttnProcessor2_0 / JointAttnProcessor2_0 / FluxAttnProcessor for
the layouts of `plans.LAYOUTS`, hands query/key/value to a core, and applies the output
projections. Cores:

- `LocalCore`: plain scaled-dot-product attention over what the rank holds (single device, and
  tensor parallelism, where a rank holds all tokens of its heads).
- `SequenceCore`: Ulysses (all-to-all between token and head sharding) around Ring attention
  (K/V blocks passed by async send/recv, partial outputs merged by log-sum-exp), on the mesh's
  'ulysses' and 'ring' axes; either degree may be 1.

Tensors inside are (B, S, heads, head_dim), "token-major", so that splitting tokens (dim 1) or
heads (dim 2) is a view. The processor never assumes the head count: it reads it from the
projection width (heads = width / head_dim), so tensor-parallel shards pass through unchanged.

Joint attention (SD3, Flux, HunyuanVideo, CogVideoX): the text tokens are replicated on every rank and only the image
tokens are split. Ulysses: each rank keeps its head slice of the text locally (no traffic) and
sends its heads of the text output to every rank inside the output all-to-all. Ring: the text K/V join the rank's first block
only, so every key is counted once; the text queries see all blocks and their output is complete
on every rank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb

from suite.distributed.comm import Comm
from suite.parallel.plans import TEXT_LAST

Text = tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # text (q, k, v) or None


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention of token-major (B, S, h, d) tensors, as diffusers' processors call it."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def sdpa_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """(out, lse) for head-major (B, h, S, d) tensors: out (B, h, Sq, d), lse (B, h, Sq) float32.

    CPU: torch's flash-attention kernel for CPU returns the log-sum-exp it computed anyway.
    CUDA: the memory-efficient kernel (any float dtype), whose lse is padded to 32 queries.
    """
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False)
        return out, lse.float()
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True)[:2]
    return out, lse[..., : q.shape[2]].float()


def _join(img: torch.Tensor, txt: torch.Tensor | None, text_first: bool) -> torch.Tensor:
    if txt is None:
        return img
    return torch.cat([txt, img] if text_first else [img, txt], dim=1)


def _part(x: torch.Tensor, n_txt: int, text_first: bool):
    """Split a joined (B, S, ...) tensor into (image, text)."""
    if n_txt == 0:
        return x, None
    if text_first:
        return x[:, n_txt:], x[:, :n_txt]
    return x[:, : x.shape[1] - n_txt], x[:, x.shape[1] - n_txt :]


class LocalCore:
    """Attention over everything this rank holds: the single-device arithmetic."""

    def __call__(self, q, k, v, text: Text, text_first: bool, layer: str):
        if text is None:
            return sdpa(q, k, v), None
        tq, tk, tv = text
        out = sdpa(_join(q, tq, text_first), _join(k, tk, text_first), _join(v, tv, text_first))
        return _part(out, tq.shape[1], text_first)


class SequenceCore:
    """Ulysses over the 'ulysses' axis around Ring over the 'ring' axis (USP when both > 1).

    Inputs hold this rank's image tokens with all heads; the sequence is split over ring x
    ulysses with the ulysses rank innermost, so one ulysses all-to-all yields the ring block.
    """

    def __init__(self, comm: Comm):
        self.comm = comm
        self.ulysses = comm.mesh.size("ulysses")
        self.ring = comm.mesh.size("ring")

    def __call__(self, q, k, v, text: Text, text_first: bool, layer: str):
        comm, u = self.comm, self.ulysses
        if u > 1:
            # one all-to-all for Q, K and V: scatter heads, gather tokens (packed on a new dim)
            qkv = comm.all_to_all(
                torch.stack([q, k, v], dim=2), "ulysses", scatter_dim=3, gather_dim=1, layer=layer
            )
            q, k, v = qkv.unbind(2)
            if text is not None:  # replicated: keep this rank's heads, no traffic
                h = text[0].shape[2] // u
                lo = comm.mesh.rank("ulysses") * h
                text = tuple(t[:, :, lo : lo + h] for t in text)
        if self.ring > 1:
            out, out_text = self._ring(q, k, v, text, text_first, layer)
        else:
            out, out_text = LocalCore()(q, k, v, text, text_first, layer)
        if u > 1:
            if out_text is None:
                out = comm.all_to_all(out, "ulysses", scatter_dim=1, gather_dim=2, layer=layer)
            else:
                # every rank needs the text output with all heads: append this rank's heads of
                # it to each destination's chunk of the output all-to-all (the bytes of an
                # all-gather, without a second collective)
                n_img = out.shape[1] // u
                chunks = [torch.cat([c, out_text], dim=1) for c in out.chunk(u, dim=1)]
                both = comm.all_to_all(
                    torch.cat(chunks, dim=1), "ulysses", scatter_dim=1, gather_dim=2, layer=layer
                )
                out, out_text = both[:, :n_img], both[:, n_img:]
        return out, out_text

    def _ring(self, q, k, v, text: Text, text_first: bool, layer: str):
        comm, n = self.comm, self.ring
        r = comm.mesh.rank("ring")
        n_txt = 0 if text is None else text[0].shape[1]
        queries = q if text is None else _join(q, text[0], text_first)
        queries = queries.transpose(1, 2)  # (B, h, Sq, d) for the kernel
        block = torch.stack([k, v])  # (2, B, N/ring, h, d): the image K/V that travel
        out = lse = None
        for i in range(n):
            if i + 1 < n:
                # post the next hop before computing on the block in hand, so they overlap
                incoming = torch.empty_like(block)
                recv = comm.recv(incoming, "ring", src=(r - 1) % n, layer=layer, async_op=True)
                send = comm.send(block, "ring", dst=(r + 1) % n, layer=layer, async_op=True)
            bk, bv = block[0], block[1]
            if i == 0 and text is not None:  # the replicated text keys join one block only
                bk, bv = _join(bk, text[1], text_first), _join(bv, text[2], text_first)
            o, s = sdpa_lse(queries, bk.transpose(1, 2), bv.transpose(1, 2))
            out, lse = _merge(out, lse, o, s)
            if i + 1 < n:
                block = recv.wait()
                send.wait()
        out = out.to(q.dtype).transpose(1, 2)
        return _part(out, n_txt, text_first)


def _merge(out, lse, o, s):
    """Combine two partial attentions over disjoint key sets by their log-sum-exp."""
    if out is None:
        return o.float(), s
    new = torch.logaddexp(lse, s)
    out = out * torch.exp(lse - new).unsqueeze(-1) + o.float() * torch.exp(s - new).unsqueeze(-1)
    return out, new


class TextLength:
    """The text length of the current forward, for layouts whose text is a token prefix; set by
    a pre-forward hook on the model (the strategy installs it)."""

    def __init__(self):
        self.value = 0


class PlanAttnProcessor:
    """A diffusers attention processor for one plan layout; attention done by `core`.

    Same projections, norms, rotary embeddings and output projections as diffusers' processors,
    in the same order; what differs is only where the attention of the tokens is computed.
    """

    def __init__(
        self,
        layout: str,
        core,
        head_dim: int,
        layer: str,
        text_length: TextLength | None = None,
        rope_text: bool = True,
        drop_mask: bool = False,
    ):
        self.layout, self.core, self.head_dim, self.layer = layout, core, head_dim, layer
        self.text_length = text_length
        self.rope_text = rope_text  # the rope table's first rows are the text's (Flux)
        # the plan checks once per forward that the model's text mask is all ones, so the
        # joint mask built from it masks nothing (HunyuanVideo)
        self.drop_mask = drop_mask

    @staticmethod
    def check(attn: torch.nn.Module, layer: str) -> None:
        """Refuse modules using features this processor does not reproduce."""
        unsupported = {
            "spatial_norm": getattr(attn, "spatial_norm", None) is not None,
            "group_norm": getattr(attn, "group_norm", None) is not None,
            "residual_connection": bool(getattr(attn, "residual_connection", False)),
            "rescale_output_factor": getattr(attn, "rescale_output_factor", 1.0) != 1.0,
            "fused_projections": bool(getattr(attn, "fused_projections", False)),
        }
        bad = [k for k, v in unsupported.items() if v]
        if bad:
            raise NotImplementedError(f"{layer}: attention with {', '.join(bad)} is not supported")

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (-1, self.head_dim))

    def _normed_heads(self, x: torch.Tensor, norm) -> torch.Tensor:
        """Projection output (B, S, width) -> (B, S, h, d), normalized by `norm` per head or,
        when the norm spans the whole width (Wan's rms_norm_across_heads), before the split."""
        if norm is None:
            return self._heads(x)
        # a tensor-parallel rank's share of such a norm (AcrossHeadsRMSNorm) may be one head wide
        if getattr(norm, "across_heads", False) or norm_width(norm) == x.shape[-1] != self.head_dim:
            return self._heads(norm(x))
        return norm(self._heads(x))

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb=None,
        **kwargs,
    ):
        if attention_mask is not None and not self.drop_mask:
            raise NotImplementedError(f"{self.layer}: attention masks are not supported")
        if hidden_states.ndim != 3:
            raise NotImplementedError(f"{self.layer}: expected (B, S, C) hidden states")
        layout = self.layout
        x = hidden_states
        src = x
        if layout == "cross":
            src = encoder_hidden_states
            if getattr(attn, "norm_cross", None):  # Wan's attention has no such attribute
                src = attn.norm_encoder_hidden_states(src)
        norm_q, norm_k = getattr(attn, "norm_q", None), getattr(attn, "norm_k", None)
        q = self._normed_heads(attn.to_q(x), norm_q)
        k = self._normed_heads(attn.to_k(src), norm_k)
        v = self._heads(attn.to_v(src))

        text, text_first = None, layout not in TEXT_LAST
        if layout in ("joint_text_last", "joint_text_first"):
            c = encoder_hidden_states
            tq, tk, tv = (
                self._heads(p(c)) for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
            )
            if getattr(attn, "norm_added_q", None) is not None:
                tq = attn.norm_added_q(tq)
            if getattr(attn, "norm_added_k", None) is not None:
                tk = attn.norm_added_k(tk)
            text = (tq, tk, tv)
        elif layout == "text_prefix":
            t = self.text_length.value
            text = (q[:, :t], k[:, :t], v[:, :t])
            q, k, v = q[:, t:], k[:, t:], v[:, t:]
        elif layout in ("shared_text_first", "shared_text_last"):
            # the text goes through the image's own projections and norms (one joint sequence)
            c = encoder_hidden_states
            tq = self._normed_heads(attn.to_q(c), norm_q)
            tk = self._normed_heads(attn.to_k(c), norm_k)
            text = (tq, tk, self._heads(attn.to_v(c)))

        if image_rotary_emb is not None:
            # rope is per position: rotate text and image parts with their own rows of the
            # table (Flux: ordered [text; image], as the model built it from [txt_ids; img_ids];
            # video models: image rows only, the text unrotated)
            n_txt = 0 if text is None or not self.rope_text else text[0].shape[1]
            # Wan's table is (1, S, 1, d): one row per token, as the others'
            cos, sin = (r.reshape(-1, r.shape[-1]) for r in image_rotary_emb)
            img_rope, txt_rope = (cos[n_txt:], sin[n_txt:]), (cos[:n_txt], sin[:n_txt])
            q = apply_rotary_emb(q, img_rope, sequence_dim=1)
            k = apply_rotary_emb(k, img_rope, sequence_dim=1)
            if n_txt:
                tq, tk, tv = text
                tq = apply_rotary_emb(tq, txt_rope, sequence_dim=1)
                tk = apply_rotary_emb(tk, txt_rope, sequence_dim=1)
                text = (tq, tk, tv)

        out, out_text = self.core(q, k, v, text, text_first, self.layer)
        out = out.flatten(2)
        if layout == "text_prefix":  # Flux single-stream: no projection here (block does it)
            return torch.cat([out_text.flatten(2), out], dim=1)
        to_out = getattr(attn, "to_out", None)
        if to_out is not None:
            out = to_out[1](to_out[0](out))
        if out_text is None:
            return out
        out_text = out_text.flatten(2)
        if getattr(attn, "to_add_out", None) is not None:
            out_text = attn.to_add_out(out_text)
        elif layout == "shared_text_first" and to_out is not None:
            out_text = to_out[1](to_out[0](out_text))  # CogVideoX: one projection for both
        return out, out_text


def norm_width(norm: torch.nn.Module) -> int | None:
    """The feature width a LayerNorm / RMSNorm normalizes over (None if it does not say)."""
    shape = getattr(norm, "normalized_shape", None)
    if shape is not None:
        return int(shape[-1]) if isinstance(shape, tuple | list | torch.Size) else int(shape)
    dim = getattr(norm, "dim", None)  # diffusers' RMSNorm
    if isinstance(dim, torch.Size | tuple | list):
        return int(dim[-1])
    return int(dim) if isinstance(dim, int) else None


def install(
    model: torch.nn.Module,
    plan,
    make_core,
    text_length: TextLength | None = None,
    *,
    replace: bool = True,
) -> list[str]:
    """Give every attention module of `plan` a PlanAttnProcessor whose core is
    `make_core(layout)`.

    With replace=False, modules that already have one keep it (tensor parallelism composed with
    a sequence strategy keeps the sequence core: the processor is agnostic of head sharding).
    Head size is read from the unsharded projections. Returns the module paths.
    """
    from suite.parallel.plans import find

    paths = []
    for spec in plan.attention:
        for path, attn in find(model, spec.pattern):
            paths.append(path)
            proc = getattr(attn, "processor", None)
            if isinstance(proc, PlanAttnProcessor):
                if not replace:
                    continue
                head_dim = proc.head_dim
            else:
                PlanAttnProcessor.check(attn, path)
                head_dim = attn.to_q.out_features // attn.heads
            attn.set_processor(
                PlanAttnProcessor(
                    spec.layout,
                    make_core(spec.layout),
                    head_dim,
                    path,
                    text_length,
                    rope_text=spec.rope_text,
                    drop_mask=getattr(plan, "text_mask", None) is not None,
                )
            )
    return paths


def track_text_length(model: torch.nn.Module, plan) -> TextLength | None:
    """A TextLength kept up to date from the model input `plan.text_input` (None if the plan
    has no text-prefix layout)."""
    if plan.text_input is None:
        return None
    length = TextLength()

    def record(module, args, kwargs):
        length.value = kwargs[plan.text_input].shape[1]

    model.register_forward_pre_hook(record, with_kwargs=True)
    return length
