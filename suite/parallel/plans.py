"""Per-model-family parallelization plans: what each module of a diffusers model is, as data.

A plan names modules by path patterns over `model.named_modules()`, in the spirit of diffusers'
`_cp_plan` / `_tp_plan`: `*` stands for exactly one path segment (a block index), so
`transformer_blocks.*.attn1` matches `transformer_blocks.3.attn1` and nothing deeper. Strategies
read plans and stay generic; supporting a new model means adding a `Plan` here.

What a plan says, and who reads it:
- sequence parallelism (ulysses, ring, usp): where the image tokens are split (`split_after`, the
  output of the token embedding, or `split_inputs`, model inputs that already are tokens), where
  they are gathered again (`gather_after`, the output head), and the layout of every attention.
- tensor parallelism: the same attention list (Q/K/V split by heads, output projections by
  input features) plus the MLP linears (`column`, `packed_column`, `row`, `packed_row`) and, for
  UNets, the ResNet blocks split by channels.
- patch / pipeline strategies may read `attention`, `token_patch` and `resnets` too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch-free at import: config validation reads these plans
    import torch

# How the tokens of one attention module are laid out (see the attention processor in
# suite/parallel/attention.py, which implements every layout with the same projections as
# diffusers' own processors).
LAYOUTS: dict[str, str] = {
    "self": "image tokens attend to image tokens (to_q/to_k/to_v on hidden_states)",
    "cross": "image queries attend to the text (to_k/to_v on encoder_hidden_states, replicated)",
    "joint_text_last": "MMDiT (SD3): image and text streams projected separately "
    "(to_* / add_*_proj), attention over [image; text], outputs to_out / to_add_out",
    "joint_text_first": "MMDiT (Flux double-stream): as joint_text_last with [text; image] and "
    "rotary embeddings",
    "text_prefix": "single stream whose first T tokens are the text (Flux single-stream); T is "
    "the length of the model input named by Plan.text_input; no output projection",
    "shared_text_first": "joint attention over [text; video] through the same to_q/to_k/to_v "
    "(CogVideoX): text from encoder_hidden_states, outputs (video, text) through to_out",
    "shared_text_last": "as shared_text_first over [video; text], no output projection "
    "(HunyuanVideo single-stream)",
}

# Layouts whose text tokens follow the image tokens in the joint sequence
TEXT_LAST = frozenset({"joint_text_last", "shared_text_last"})


@dataclass(frozen=True)
class AttentionPlan:
    """The attention modules matching `pattern` and their token layout (a key of LAYOUTS)."""

    pattern: str
    layout: str
    # whether the rope table's first rows belong to the text (Flux: positions of [text; image]);
    # False: the table covers the image / video tokens only and the text is not rotated
    rope_text: bool = True

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r}; allowed: {', '.join(LAYOUTS)}")


@dataclass(frozen=True)
class PackedRow:
    """A Linear whose input is the concatenation of sibling modules' outputs, each part split by
    tensor parallelism on its own (Flux single-stream `proj_out`: [attention, MLP])."""

    pattern: str
    parts: tuple[str, ...]  # sibling module paths (relative to the Linear's parent) whose
    # `out_features` give the part widths, in concatenation order


@dataclass(frozen=True)
class Plan:
    """How one model family is split; see the module docstring."""

    family: str
    token_patch: int  # latent pixels per token side (patch size; Flux packs 2x2)
    attention: tuple[AttentionPlan, ...]
    gather_after: str | None = None  # module whose (B, N_local, C) output is gathered on dim 1
    split_after: str | None = None  # module whose (B, N, D) output is split on dim 1
    # or: model inputs (name -> dim) that hold the image tokens, split before the model runs
    split_inputs: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    text_input: str | None = None  # model input whose dim 1 is the text length
    # video models: a module whose first input (hidden_states, (B, N, D)) is split on dim 1 (Wan
    # patchifies with a Conv3d and flattens inside forward: its first block is the first (B, N,
    # D) view), as diffusers' _cp_plan splits "blocks.0"
    split_before: str | None = None
    # modules whose output (a tensor, or each tensor of a tuple) is split on a dim: rotary tables
    # built from the full latent (one row per token) must follow the tokens
    split_outputs: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    # split_after's output is [text; image] (CogVideoX's patch embedding): the first
    # len(text_input) tokens stay whole on every rank, the rest is split
    split_after_text_first: bool = False
    # model input holding a text attention mask that must be all ones (HunyuanVideo): checked
    # once per forward, after which the joint attention runs unmasked
    text_mask: str | None = None
    column: tuple[str, ...] = ()  # Linear split by output features (first MLP linear)
    packed_column: tuple[tuple[str, int], ...] = ()  # (Linear, k): output is k packed parts
    row: tuple[str, ...] = ()  # Linear split by input features, all-reduce after
    packed_row: tuple[PackedRow, ...] = ()
    resnets: tuple[str, ...] = ()  # diffusers ResnetBlock2D modules, split by channels

    @property
    def sequence_parallel(self) -> bool:
        """Whether the token sequence can be split (a DiT: tokens from a patch embedding)."""
        return self.gather_after is not None


def _blocks(prefix: str, names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{prefix}.{n}" for n in names)


# BasicTransformerBlock's feed-forward: net.0 is GELU / GEGLU holding `.proj`, net.2 the output.
_FF_GELU = dict(column=("ff.net.0.proj",), row=("ff.net.2",))

PIXART = Plan(
    family="pixart",
    token_patch=2,
    split_after="pos_embed",
    gather_after="proj_out",
    attention=(
        AttentionPlan("transformer_blocks.*.attn1", "self"),
        AttentionPlan("transformer_blocks.*.attn2", "cross"),
    ),
    column=_blocks("transformer_blocks.*", _FF_GELU["column"]),
    row=_blocks("transformer_blocks.*", _FF_GELU["row"]),
)

DIT = Plan(
    family="dit",
    token_patch=2,
    split_after="pos_embed",
    # proj_out_2 maps tokens to patches; the model then infers the grid from the token count
    gather_after="proj_out_2",
    attention=(AttentionPlan("transformer_blocks.*.attn1", "self"),),
    column=_blocks("transformer_blocks.*", _FF_GELU["column"]),
    row=_blocks("transformer_blocks.*", _FF_GELU["row"]),
)

SD3 = Plan(
    family="sd3",
    token_patch=2,
    split_after="pos_embed",
    gather_after="proj_out",
    attention=(AttentionPlan("transformer_blocks.*.attn", "joint_text_last"),),
    # the last block is context_pre_only: it has no ff_context, and patterns simply miss it
    column=_blocks("transformer_blocks.*", ("ff.net.0.proj", "ff_context.net.0.proj")),
    row=_blocks("transformer_blocks.*", ("ff.net.2", "ff_context.net.2")),
)

# Dual-stream blocks (an MLP per stream) then single-stream blocks whose proj_out reads
# [attention; MLP]: Flux and HunyuanVideo alike
_DUAL_SINGLE_MLPS = dict(
    column=(
        *_blocks("transformer_blocks.*", ("ff.net.0.proj", "ff_context.net.0.proj")),
        "single_transformer_blocks.*.proj_mlp",
    ),
    row=_blocks("transformer_blocks.*", ("ff.net.2", "ff_context.net.2")),
    packed_row=(PackedRow("single_transformer_blocks.*.proj_out", ("attn.to_q", "proj_mlp")),),
)

FLUX = Plan(
    family="flux",
    token_patch=2,  # the denoiser packs 2x2 latent pixels into one token
    # tokens enter the model already packed: split them (and their rope positions) up front
    split_inputs=MappingProxyType({"hidden_states": 1, "img_ids": 0}),
    gather_after="proj_out",
    text_input="encoder_hidden_states",
    attention=(
        AttentionPlan("transformer_blocks.*.attn", "joint_text_first"),
        AttentionPlan("single_transformer_blocks.*.attn", "text_prefix"),
    ),
    **_DUAL_SINGLE_MLPS,
)

_UNET_TRANSFORMERS = (
    "down_blocks.*.attentions.*.transformer_blocks.*",
    "mid_block.attentions.*.transformer_blocks.*",
    "up_blocks.*.attentions.*.transformer_blocks.*",
)

UNET = Plan(
    family="unet",
    token_patch=1,
    # convolutions need neighbouring rows: the UNet's sequence is split by patch strategies
    # (DistriFusion), not here
    attention=tuple(
        AttentionPlan(f"{t}.{a}", layout)
        for t in _UNET_TRANSFORMERS
        for a, layout in (("attn1", "self"), ("attn2", "cross"))
    ),
    # GEGLU: net.0.proj emits [hidden, gate]; each rank keeps its slice of both halves
    packed_column=tuple((f"{t}.ff.net.0.proj", 2) for t in _UNET_TRANSFORMERS),
    row=tuple(f"{t}.ff.net.2" for t in _UNET_TRANSFORMERS),
    resnets=("down_blocks.*.resnets.*", "mid_block.resnets.*", "up_blocks.*.resnets.*"),
)

# -- video models: the tokens are split where sequence and patch parallelism cut them
# (token_split.py); rope tables cover the video tokens only. Tensor parallelism splits heads and
# MLPs as for the image DiTs; Wan's q/k RMSNorm spans all heads, so tensor.py replaces it by one
# whose statistics are all-reduced (found by its width, like the attention processor does).

WAN = Plan(
    family="wan",
    token_patch=2,
    split_before="blocks.0",
    split_outputs=MappingProxyType({"rope": 1}),  # (cos, sin), each (1, N, 1, head_dim)
    gather_after="proj_out",
    attention=(
        AttentionPlan("blocks.*.attn1", "self"),
        AttentionPlan("blocks.*.attn2", "cross"),
    ),
    column=("blocks.*.ffn.net.0.proj",),
    row=("blocks.*.ffn.net.2",),
)

HUNYUANVIDEO = Plan(
    family="hunyuanvideo",
    token_patch=2,
    split_after="x_embedder",
    split_outputs=MappingProxyType({"rope": 0}),  # (cos, sin), each (N, head_dim)
    gather_after="proj_out",
    text_mask="encoder_attention_mask",
    attention=(
        AttentionPlan("transformer_blocks.*.attn", "joint_text_last", rope_text=False),
        AttentionPlan("single_transformer_blocks.*.attn", "shared_text_last", rope_text=False),
    ),
    # the text refiner (context_embedder) stays replicated, as Flux's embedders do
    **_DUAL_SINGLE_MLPS,
)

COGVIDEOX = Plan(
    family="cogvideox",
    token_patch=2,
    split_after="patch_embed",
    split_after_text_first=True,
    text_input="encoder_hidden_states",
    # the rope table is a model input here (the pipeline builds it): (cos, sin), each (N, d)
    split_inputs=MappingProxyType({"image_rotary_emb": 0}),
    gather_after="proj_out",
    attention=(AttentionPlan("transformer_blocks.*.attn1", "shared_text_first", rope_text=False),),
    column=_blocks("transformer_blocks.*", _FF_GELU["column"]),
    row=_blocks("transformer_blocks.*", _FF_GELU["row"]),
)

PLANS: dict[str, Plan] = {
    p.family: p for p in (PIXART, DIT, SD3, FLUX, UNET, WAN, HUNYUANVIDEO, COGVIDEOX)
}

# Families whose token sequence can be split (ulysses, ring, usp, diffusers_cp)
SEQUENCE_FAMILIES = frozenset(f for f, p in PLANS.items() if p.sequence_parallel)


@dataclass(frozen=True)
class PipePlan:
    """What PipeFusion needs to know about a family beyond `Plan`."""

    blocks: str  # the ModuleList of transformer blocks that is cut into stages
    head: tuple[str, ...]  # modules only the last stage runs (output projections)
    # submodules of blocks that the output head reads (DiT's head re-embeds the timestep and
    # class with block 0's embedding), kept on the last stage even when it lacks that block
    head_reads: tuple[str, ...] = ()
    # the token embedding that stages after the first replace by a stub; None: Plan.split_after.
    # Wan: its Conv3d patch embedding, whose (B, hidden, F', h', w') output the model flattens
    # itself, so the patch's tokens are taken at Plan.split_before (the first block's input)
    # and its rope rows at Plan.split_outputs
    embed: str | None = None


# Families whose blocks return one tensor (the image stream) and read a fixed text (PixArt's
# and Wan's cross-attention). SD3, Flux, HunyuanVideo and CogVideoX blocks update their text
# stream from all image / video tokens in every block (joint attention), so running the tokens
# in patches would change what the text sees; they are not supported.
PIPE_PLANS: dict[str, PipePlan] = {
    "pixart": PipePlan(blocks="transformer_blocks", head=("proj_out",)),
    "dit": PipePlan(
        blocks="transformer_blocks",
        head=("proj_out_1", "proj_out_2"),
        head_reads=("transformer_blocks.0.norm1.emb",),
    ),
    # patches: contiguous runs of the F' x h' x w' video tokens (whole token rows); the output
    # head's modulation table (scale_shift_table) is a parameter of the model, kept everywhere
    "wan": PipePlan(blocks="blocks", head=("norm_out", "proj_out"), embed="patch_embedding"),
}


def get_plan(family: str) -> Plan:
    """The plan of a workload family; ValueError naming the known families otherwise."""
    if family not in PLANS:
        raise ValueError(f"no parallel plan for family {family!r}; known: {', '.join(PLANS)}")
    return PLANS[family]


def _regex(pattern: str) -> re.Pattern:
    return re.compile(
        "^" + r"\.".join(r"[^.]+" if s == "*" else re.escape(s) for s in pattern.split(".")) + "$"
    )


def find(model: torch.nn.Module, pattern: str) -> list[tuple[str, torch.nn.Module]]:
    """(path, module) of every submodule matching `pattern` ('*' = one path segment)."""
    rx = _regex(pattern)
    return [(name, m) for name, m in model.named_modules() if rx.match(name)]


def image_tokens(plan: Plan, preset, height: int, width: int) -> tuple[int, int]:
    """(rows, columns) of the image-token grid for height x width pixels (a video preset: of one
    latent frame, at its own patch size: trained-tiny-video's 4x4, not its family's 2x2)."""
    patch = preset.spatial_multiple if preset.video else plan.token_patch
    side = preset.vae_scale_factor * patch
    return height // side, width // side
