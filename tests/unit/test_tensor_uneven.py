"""Uneven tensor-parallel shares on UNets: each rank's shard and the sum of their outputs.

Every rank of a tensor world runs here in one process, one thread per rank, through
`apply_tensor` itself; only the all-reduce is a stand-in (the ranks' partials summed in rank
order), so degrees that need no spawned world can be checked in milliseconds: SDXL's head counts
(10 and 20, as DistriFusion's 8-device baseline splits them) and degree 3 on tiny-sdxl (4 heads
and 8 GroupNorm groups: both uneven). The gloo world runs degree 4 in tests/dist/test_exact.py.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import threading

import pytest
import torch

import workloads
from suite.parallel.plans import UNET, find
from suite.parallel.tensor import _span, apply_tensor
from workloads.presets import get_preset


class _Mesh:
    def __init__(self, rank: int, n: int):
        self.r, self.n = rank, n

    def size(self, axis: str) -> int:
        return self.n if axis == "tensor" else 1

    def rank(self, axis: str) -> int:
        return self.r if axis == "tensor" else 0


class _Board:
    """What the ranks of one thread world share: a slot each and a barrier."""

    def __init__(self, n: int):
        self.slots: list[torch.Tensor | None] = [None] * n
        self.barrier = threading.Barrier(n, timeout=60)
        self.calls = 0


class _ThreadComm:
    """Comm's all_reduce over threads: post the partial, wait for all, sum them in rank order."""

    def __init__(self, board: _Board, rank: int, n: int):
        self.board, self.r, self.mesh = board, rank, _Mesh(rank, n)

    def all_reduce(self, x, axis, *, layer="", async_op=False):
        assert axis == "tensor" and not async_op
        board = self.board
        board.slots[self.r] = x
        board.barrier.wait()
        total = functools.reduce(torch.add, board.slots)
        if self.r == 0:
            board.calls += 1
        board.barrier.wait()  # no rank posts its next partial before all have summed this one
        return total


@dataclasses.dataclass
class _Workload:
    """What apply_tensor reads of a workload."""

    preset: object
    denoiser: torch.nn.Module
    inputs: object


def _workload(preset) -> _Workload:
    """A seeded model of `preset` (a Preset, possibly outside the registry) and its inputs."""
    from workloads.inputs import make_inputs
    from workloads.models import random_model

    model = random_model(preset, seed=0).eval().requires_grad_(False)
    inputs = make_inputs(preset, 256, 256, batch=1, seed=0, guidance=5.0)
    return _Workload(preset, workloads.Denoiser(model, preset), inputs)


def _run(w: _Workload, n: int):
    """(single-device prediction, every rank's prediction, shards, all-reduces per forward)."""
    x, cond = torch.cat([w.inputs.latents] * 2), w.inputs.model_cond()  # [uncond; cond]
    t = torch.tensor(500.0)
    with torch.no_grad():
        ref = w.denoiser(x, t, cond)
    board = _Board(n)
    ranks = []
    for r in range(n):
        model = copy.deepcopy(w.denoiser.model)
        mine = _Workload(w.preset, workloads.Denoiser(model, w.preset), w.inputs)
        apply_tensor(mine, _ThreadComm(board, r, n), {})
        ranks.append(mine.denoiser)
    outs, errors = [None] * n, []

    def rank(r: int) -> None:
        try:
            with torch.no_grad():
                outs[r] = ranks[r](x, t, cond)
        except BaseException as e:
            errors.append(e)
            board.barrier.abort()  # frees the ranks waiting for this one

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    return ref, outs, [d.model for d in ranks], board.calls


def _tiny_sdxl_with(name: str, **changes):
    """tiny-sdxl with other head counts / groups: a preset the registry does not hold."""
    tiny = get_preset("tiny-sdxl")
    return dataclasses.replace(tiny, name=name, config={**tiny.config, **changes})


# SDXL's head counts (5, 10, 20; head size 8 instead of 64) with 10 GroupNorm groups, so that 8
# ranks split heads and groups unevenly (SDXL's own 32 groups and its channels split evenly)
SDXL_HEADS = _tiny_sdxl_with(
    "sdxl-heads",
    block_out_channels=(40, 80, 160),
    attention_head_dim=(5, 10, 20),
    norm_num_groups=10,
)


def test_span_cuts_contiguous_shares_first_ranks_larger():
    for units, n, want in [
        (20, 8, [3, 3, 3, 3, 2, 2, 2, 2]),
        (10, 8, [2, 2, 1, 1, 1, 1, 1, 1]),
        (4, 3, [2, 1, 1]),
        (32, 8, [4] * 8),
    ]:
        spans = [_span(units, r, n) for r in range(n)]
        assert [hi - lo for lo, hi in spans] == want
        assert spans[0][0] == 0 and spans[-1][1] == units
        assert all(spans[r][1] == spans[r + 1][0] for r in range(n - 1))


def _shares(units: int, n: int) -> list[int]:
    return [hi - lo for lo, hi in (_span(units, r, n) for r in range(n))]


def _heads_per_rank(shards) -> dict[int, set[tuple[int, ...]]]:
    """{heads of a layer: the distinct per-rank head shares seen over such layers}."""
    out: dict[int, set[tuple[int, ...]]] = {}
    for pattern in (a.pattern for a in UNET.attention):
        per_model = [find(m, pattern) for m in shards]
        for layer in zip(*per_model, strict=True):
            share = tuple(a.to_q.out_features // a.processor.head_dim for _, a in layer)
            out.setdefault(sum(share), set()).add(share)
    return out


# Tolerance relative to the largest reference value: a rank's partial products are summed
# across ranks instead of inside one GEMM, which reorders fp32 sums (measured max |error| /
# max |reference| <= 8.6e-7 here); a wrong head or group slice moves outputs by O(1).
TOL = 1e-5


@pytest.mark.parametrize(
    "preset, n, heads, groups",
    [
        # DistriFusion's 8 devices on SDXL's heads: 10 -> 2,2,1,..., 20 -> 3,3,3,3,2,2,2,2
        (SDXL_HEADS, 8, (10, 20), 10),
        (get_preset("tiny-sdxl"), 3, (4,), 8),  # 4 heads -> 2,1,1; 8 groups -> 3,3,2
    ],
    ids=["sdxl-heads-8", "tiny-sdxl-3"],
)
def test_uneven_shards_sum_to_the_single_device_output(preset, n, heads, groups):
    ref, outs, shards, calls = _run(_workload(preset), n)
    scale = ref.abs().max().item()
    for r, out in enumerate(outs):
        err = (out - ref).abs().max().item()
        print(f"{preset.name} degree {n} rank {r}: max |error| {err:.3g} (max |ref| {scale:.3g})")
        torch.testing.assert_close(out, ref, rtol=0, atol=TOL * scale)
    # contiguous shares, the first ranks one larger, in every layer
    assert _heads_per_rank(shards) == {h: {tuple(_shares(h, n))} for h in heads}
    norms = {
        tuple(m.get_submodule(path).norm2.num_groups for m in shards)
        for pattern in UNET.resnets
        for path, _ in find(shards[0], pattern)
    }
    assert norms == {tuple(_shares(groups, n))}
    # one all-reduce per ResNet block and per attention and MLP output, whatever the shares
    per_forward = sum(len(find(shards[0], p)) for p in UNET.resnets)
    per_forward += 3 * sum(len(find(shards[0], p)) for p in UNET.row)
    assert calls == per_forward
