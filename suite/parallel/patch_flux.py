"""Flux attention for patch parallelism: image K/V exchanged after the rotary embedding.

diffusers' FluxAttnProcessor applies one rotary table to Q and K, so full-length K cannot be
produced by wrapping to_k as for the other families; this processor follows FluxAttnProcessor
step for step and only swaps the band's image K/V (post-norm, post-rotary, so stale K/V need
no recomputation) for the whole image's. Text tokens come first in Flux's joint sequence; every
rank computes them fully (replicated, never exchanged).
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb

from suite.parallel.patch_modules import full_kv
from suite.parallel.patch_state import PatchState


class FluxPatchProcessor:
    """FluxAttnProcessor with the image tokens' K/V spanning every rank's band."""

    def __init__(self, state: PatchState, layer: str) -> None:
        self.state, self.layer = state, layer

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        if attn.fused_projections:
            raise ValueError("patch parallelism expects Flux's unfused q/k/v projections")
        query = attn.to_q(hidden_states).unflatten(-1, (-1, attn.head_dim))
        key = attn.to_k(hidden_states).unflatten(-1, (-1, attn.head_dim))
        value = attn.to_v(hidden_states).unflatten(-1, (-1, attn.head_dim))
        query, key = attn.norm_q(query), attn.norm_k(key)
        if attn.added_kv_proj_dim is not None:  # double-stream block: text from its own stream
            text = encoder_hidden_states.shape[1]

            def project(linear, norm=None):
                out = linear(encoder_hidden_states).unflatten(-1, (-1, attn.head_dim))
                return out if norm is None else norm(out)

            query = torch.cat([project(attn.add_q_proj, attn.norm_added_q), query], dim=1)
            key = torch.cat([project(attn.add_k_proj, attn.norm_added_k), key], dim=1)
            value = torch.cat([project(attn.add_v_proj), value], dim=1)
        else:  # single-stream block: hidden_states is [text; image band] already
            text = self.state.text_len
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        # (B, tokens, heads, head_dim): image tokens after the text ones
        kv = full_kv(self.state, self.layer, torch.stack([key[:, text:], value[:, text:]]), 2)
        key = torch.cat([key[:, :text], kv[0]], dim=1)
        value = torch.cat([value[:, :text], kv[1]], dim=1)

        hidden_states = dispatch_attention_fn(query, key, value, attn_mask=attention_mask)
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return hidden_states
        encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
            [text, hidden_states.shape[1] - text], dim=1
        )
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
        encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
        return hidden_states, encoder_hidden_states
