"""Tensor parallelism (Megatron-LM, Shoeybi et al. 2019) over the mesh's 'tensor' axis.

Every rank sees all tokens and keeps its share of each split layer:
- attention: Q/K/V projections (and the text-stream add_*_proj of joint attention) split by
  output features = by heads; each rank attends with its heads; the output projections
  (to_out.0, to_add_out) split by input features, then one all-reduce of the output;
- MLP: first linear split by output features (GEGLU: both halves, so each rank keeps matching
  hidden and gate columns), second by input features, then one all-reduce; Flux's single-stream
  proj_out takes [attention; MLP] and is split part by part;
- UNet ResNet blocks, as the tensor-parallel baseline of DistriFusion (Li et al. 2024): conv1
  and the time projection split by output channels, norm2 by groups, conv2 by input channels,
  then one all-reduce.
Norms, adaLN modulation, embeddings, convolutions in/out and the UNet's proj_in/proj_out stay
replicated. Biases of split-by-input layers are added once, after the all-reduce. A q/k norm that
spans every head's features (Wan's rms_norm_across_heads) cannot run on a rank's heads alone: it
becomes `AcrossHeadsRMSNorm`, whose sum of squares (B x S floats) is all-reduced first.

Shares are contiguous and cut in whole units (heads, GroupNorm groups, features); where n does
not divide a count, the first count % n ranks take one unit more (SDXL's 10 heads over 8 ranks:
2, 2, 1, 1, 1, 1, 1, 1). Every all-reduce is of the full output, so uneven shares move the same
bytes as even ones; validation keeps n at most the smallest count, so no rank holds nothing.

Per DiT block: one all-reduce of B x S x hidden per attention output and per MLP, i.e. the
design table's 4 * O(p * hs) * L counted in bus bytes (all-reduce factor 2); Wan adds one of
B x S x 1 fp32 per q/k norm (1/hidden of an output's all-reduce, but four more calls per block).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from suite.distributed.comm import Comm
from suite.parallel import Parallelized
from suite.parallel.attention import LocalCore, install, norm_width, track_text_length
from suite.parallel.plans import find, get_plan
from suite.parallel.token_split import install_mask_check

_ATTN_COLUMN = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")


class RowParallel(nn.Module):
    """A Linear or Conv2d keeping the input features `index` of this rank: the local partial
    product, summed over the 'tensor' axis, plus the (replicated) bias once."""

    def __init__(self, module: nn.Module, index: torch.Tensor, comm: Comm, layer: str):
        super().__init__()
        self.is_conv = isinstance(module, nn.Conv2d)
        if self.is_conv and (module.groups != 1 or module.padding_mode != "zeros"):
            raise NotImplementedError(f"{layer}: only plain zero-padded convolutions are split")
        self.weight = nn.Parameter(module.weight[:, index].clone(), requires_grad=False)
        self.bias = module.bias
        self.geometry = (module.stride, module.padding, module.dilation) if self.is_conv else ()
        self.comm, self.layer = comm, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_conv:
            y = F.conv2d(x, self.weight, None, *self.geometry)
        else:
            y = F.linear(x, self.weight)
        y = self.comm.all_reduce(y, "tensor", layer=self.layer)
        if self.bias is None:
            return y
        return y + (self.bias[:, None, None] if self.is_conv else self.bias)


class AcrossHeadsRMSNorm(nn.Module):
    """An RMSNorm over all heads' features (torch.nn.RMSNorm or diffusers' RMSNorm of the full
    projection width) for a rank holding the features `index`: the per-token sum of squares is
    all-reduced over the 'tensor' axis, then each rank scales its own features. Statistics in
    fp32, as diffusers' RMSNorm computes them."""

    across_heads = True  # PlanAttnProcessor normalizes before splitting heads

    def __init__(self, norm: nn.Module, index: torch.Tensor, comm: Comm, layer: str):
        super().__init__()
        if "RMSNorm" not in type(norm).__name__:
            raise NotImplementedError(f"{layer}: only RMSNorm is split across heads")
        weight = getattr(norm, "weight", None)
        self.weight = None if weight is None else nn.Parameter(weight[index].clone(), False)
        self.width = norm_width(norm)
        self.eps, self.comm, self.layer = norm.eps, comm, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        squares = self.comm.all_reduce(
            xf.square().sum(-1, keepdim=True), "tensor", layer=self.layer
        )
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
        y = (xf * torch.rsqrt(squares / self.width + eps)).to(x.dtype)
        return y if self.weight is None else y * self.weight


def _span(units: int, rank: int, n: int) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous share of `units` (heads, groups, features); the
    first units % n ranks take one more, as torch.tensor_split cuts."""
    share, extra = divmod(units, n)
    start = rank * share + min(rank, extra)
    return start, start + share + (rank < extra)


def _columns(width: int, rank: int, n: int, packed: int = 1, unit: int = 1) -> torch.Tensor:
    """Indices of this rank's share of `width` features made of `packed` equal parts, each part
    cut in whole `unit`s (a head's features, a GroupNorm group's channels)."""
    part = width // packed
    lo, hi = _span(part // unit, rank, n)
    return torch.cat(
        [torch.arange(j * part + lo * unit, j * part + hi * unit) for j in range(packed)]
    )


def _shard_out(module: nn.Module, index: torch.Tensor) -> None:
    """Keep output features `index` of a Linear / Conv2d, in place."""
    module.weight = nn.Parameter(module.weight[index].clone(), requires_grad=False)
    if module.bias is not None:
        module.bias = nn.Parameter(module.bias[index].clone(), requires_grad=False)
    if isinstance(module, nn.Linear):
        module.out_features = len(index)
    else:
        module.out_channels = len(index)


def _split_group_norm(norm: nn.GroupNorm, rank: int, n: int) -> nn.GroupNorm:
    """This rank's share of the groups, with their channels (groups are independent, so each
    rank normalizes its own exactly as the whole norm would)."""
    per = norm.num_channels // norm.num_groups
    lo, hi = _span(norm.num_groups, rank, n)
    part = nn.GroupNorm(hi - lo, (hi - lo) * per, eps=norm.eps, affine=False)
    if norm.affine:
        keep = slice(lo * per, hi * per)
        part.weight = nn.Parameter(norm.weight[keep].clone(), requires_grad=False)
        part.bias = nn.Parameter(norm.bias[keep].clone(), requires_grad=False)
        part.affine = True
    return part


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


# q/k norms and the projection whose output each normalizes
_QK_NORMS = {"norm_q": "to_q", "norm_k": "to_k", "norm_added_q": "add_q_proj",
             "norm_added_k": "add_k_proj"}  # fmt: skip


def _shard_attention(model: nn.Module, path: str, rank: int, n: int, row, comm: Comm) -> None:
    """Q/K/V (and text-stream) projections by heads, output projections by input features;
    q/k norms over all heads replaced by their all-reduced form."""
    attn = model.get_submodule(path)
    head = attn.processor.head_dim  # cut in whole heads: a rank attends with the heads it holds
    for norm_name, proj_name in _QK_NORMS.items():
        norm, lin = getattr(attn, norm_name, None), getattr(attn, proj_name, None)
        if norm is not None and lin is not None and norm_width(norm) == lin.out_features != head:
            index = _columns(lin.out_features, rank, n, unit=head)
            setattr(attn, norm_name, AcrossHeadsRMSNorm(norm, index, comm, f"{path}.{norm_name}"))
    for name in _ATTN_COLUMN:
        lin = getattr(attn, name, None)
        if lin is not None:
            _shard_out(lin, _columns(lin.out_features, rank, n, unit=head))
    to_out = getattr(attn, "to_out", None)
    if to_out is not None:
        row(f"{path}.to_out.0", to_out[0], _columns(to_out[0].in_features, rank, n, unit=head))
    add_out = getattr(attn, "to_add_out", None)
    if add_out is not None:
        row(f"{path}.to_add_out", add_out, _columns(add_out.in_features, rank, n, unit=head))


def _shard_resnet(res: nn.Module, path: str, rank: int, n: int, row) -> None:
    """conv1 and the time projection by output channels, norm2 by groups, conv2 by input
    channels (DistriFusion's tensor-parallel ResNet)."""
    if res.time_embedding_norm != "default":
        raise NotImplementedError(f"{path}: time_embedding_norm {res.time_embedding_norm}")
    # conv1's output channels in whole groups of norm2, so that each rank's norm2 is exact
    per_group = res.conv1.out_channels // res.norm2.num_groups
    index = _columns(res.conv1.out_channels, rank, n, unit=per_group)
    _shard_out(res.conv1, index)
    if res.time_emb_proj is not None:
        _shard_out(res.time_emb_proj, index)
    res.norm2 = _split_group_norm(res.norm2, rank, n)
    row(f"{path}.conv2", res.conv2, index)


def apply_tensor(workload, comm, options) -> Parallelized:
    """Shard the plan's modules over the 'tensor' axis, in place."""
    plan = get_plan(workload.preset.family)
    model = workload.denoiser.model
    n, rank = comm.mesh.size("tensor"), comm.mesh.rank("tensor")
    par = Parallelized(
        denoiser=workload.denoiser, inputs=workload.inputs, modules=[workload.denoiser]
    )

    def row(path: str, module: nn.Module, index: torch.Tensor) -> None:
        _set(model, path, RowParallel(module, index, comm, path))

    # input part widths of packed-row linears, read before their producers are split
    packed = []
    for spec in plan.packed_row:
        for path, lin in find(model, spec.pattern):
            parent = model.get_submodule(path.rpartition(".")[0])
            packed.append((path, lin, [parent.get_submodule(p).out_features for p in spec.parts]))
    # processors read the head size from the unsharded projections, so install them first;
    # composed with a sequence strategy, its processors (agnostic of head sharding) stay
    text_length = track_text_length(model, plan)
    attention = install(model, plan, lambda layout: LocalCore(), text_length, replace=False)
    install_mask_check(model, plan)  # our processors run the joint attention unmasked
    if n == 1:
        return par
    for path in attention:
        _shard_attention(model, path, rank, n, row, comm)
    for pattern in plan.column:
        for _, lin in find(model, pattern):
            _shard_out(lin, _columns(lin.out_features, rank, n))
    for pattern, parts in plan.packed_column:
        for _, lin in find(model, pattern):
            _shard_out(lin, _columns(lin.out_features, rank, n, parts))
    for pattern in plan.row:
        for path, lin in find(model, pattern):
            row(path, lin, _columns(lin.in_features, rank, n))
    for path, lin, widths in packed:
        row(
            path,
            lin,
            torch.cat([sum(widths[:j]) + _columns(w, rank, n) for j, w in enumerate(widths)]),
        )
    for pattern in plan.resnets:
        for path, res in find(model, pattern):
            _shard_resnet(res, path, rank, n, row)
    return par
