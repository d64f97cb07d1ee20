"""The operator recorder of analytic worlds: every aten op a rank runs on the meta device, in
compute segments between the ledger's clock boundaries (the format: `suite.measure.optrace`).

While recording, a `TorchDispatchMode` sees every aten op. Composite ops (linear, conv2d,
layer_norm, to, contiguous, ...) are decomposed first, so what is recorded is what a device
runs whatever the grad mode: mm / addmm / bmm / baddbmm, convolution, native_*_norm, copies.
Pure views and metadata ops, and allocations (empty, zeros, ...), are not recorded. Each
recorded op is classified (`optrace.OP_CLASSES`); its FLOPs come from `torch.utils.flop_counter`
where it has a formula (matmul, conv) and 2*B*H*S_q*S_kv*(D + D_v) for attention; its bytes are
its tensor inputs' plus its outputs'; its dtype is its inputs'. Scaled dot-product attention is
ONE attention op, returned as an empty output without running its decomposition (bmm, softmax
on meta): caught whole by the dispatch mode under inference mode (where composite ops reach it
undecomposed), and by a `TorchFunctionMode` on `F.scaled_dot_product_attention` outside it.

Ops of a segment are aggregated into rows, one per distinct (class, dtype, dims, FLOPs and bytes
per call), with a count; identical segments share one signature id. Only ops on meta tensors are recorded (host
scalars, such as a solver's sigmas on the CPU, are not device work).

Speed: meta kernels are largely Python reference code (0.1-2 ms an op). Their results depend only
on the inputs' shapes, strides and dtypes and the other arguments, so functional ops are
memoized on exactly those: a repeated op returns fresh empty tensors of the memoized shapes and
strides. Views and in-place ops always run (their outputs alias their inputs).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from suite.measure.optrace import EMPTY, OP_CLASSES, OP_DTYPE, TRACE_DTYPES

_CLS = {name: i for i, name in enumerate(OP_CLASSES)}
_DTYPES = {getattr(torch, name): i for i, name in enumerate(TRACE_DTYPES[:-1])}
_OTHER_DTYPE = len(TRACE_DTYPES) - 1

_MATMUL = {"mm", "addmm", "bmm", "baddbmm"}
_CONV = {"convolution", "_convolution", "convolution_overrideable", "_slow_conv2d_forward"}
_ATTENTION = {
    "scaled_dot_product_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_cudnn_attention",
    "_flash_attention_forward",
    "_efficient_attention_forward",
}
_NORM = {
    "native_group_norm",
    "native_layer_norm",
    "native_batch_norm",
    "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit_functional",
    "rms_norm",
    "_fused_rms_norm",
}
_MEMORY = {
    "cat",
    "stack",
    "clone",
    "copy",
    "copy_",
    "_to_copy",
    "index",
    "_unsafe_index",
    "index_put",
    "index_put_",
    "_index_put_impl_",
    "index_select",
    "gather",
    "scatter",
    "scatter_",
    "scatter_add",
    "scatter_add_",
    "slice_scatter",
    "select_scatter",
    "as_strided_scatter",
    "constant_pad_nd",
    "repeat",
    "roll",
    "flip",
    "narrow_copy",
    "fill_",
    "zero_",
    "upsample_nearest1d",
    "upsample_nearest2d",
    "upsample_nearest3d",
}
# pointwise transcendentals: on a CPU several times the time of an add of the same bytes
_ACTIVATION = {
    "gelu",
    "silu",
    "mish",
    "tanh",
    "sigmoid",
    "exp",
    "expm1",
    "log",
    "log1p",
    "erf",
    "sin",
    "cos",
    "softplus",
    "_softmax",
    "_log_softmax",
}
# activations a CPU evaluates through tanh / erf polynomials: several times SiLU's cost per
# element there (GELU tanh 3x); recorded with kind 1 in d1 so that a profile may price them apart
_GELU_FAMILY = {"gelu", "tanh", "erf", "mish", "softplus", "sin", "cos", "log", "log1p"}
# allocations and metadata queries that are not views in the schema's sense
_SKIP = {
    "empty",
    "empty_like",
    "empty_strided",
    "empty_permuted",
    "new_empty",
    "new_empty_strided",
    "zeros",
    "zeros_like",
    "new_zeros",
    "ones",
    "ones_like",
    "new_ones",
    "full",
    "full_like",
    "new_full",
    "scalar_tensor",
    "lift_fresh",
    "lift_fresh_copy",
    "detach",
    "_local_scalar_dense",
    "sym_size",
    "sym_stride",
    "sym_numel",
    "sym_storage_offset",
    "is_contiguous",
    "is_strides_like_format",
    "is_non_overlapping_and_dense",
    "size",
    "stride",
    "numel",
    "dim",
    "storage_offset",
}
# handling of an aten op, decided once per overload
_RUN, _DECOMPOSE, _RECORD, _SDPA = range(4)


def _plan(func) -> tuple[int, str | None]:
    name = func._overloadpacket.__name__
    if name == "scaled_dot_product_attention":
        return _SDPA, "attention"
    if name == "rms_norm":  # composite, but one normalization
        return _RECORD, "norm"
    if name in _SKIP:
        return _RUN, None
    if torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd"):
        return _DECOMPOSE, None
    if func.is_view:
        return _RUN, None
    for cls, names in (
        ("matmul", _MATMUL),
        ("conv", _CONV),
        ("attention", _ATTENTION),
        ("norm", _NORM),
        ("memory", _MEMORY),
        ("activation", _ACTIVATION),
    ):
        if name in names:
            return _RECORD, cls
    return _RECORD, "elementwise"


def _tensors(x, out: list) -> list:
    if isinstance(x, torch.Tensor):
        out.append(x)
    elif isinstance(x, list | tuple):
        for y in x:
            _tensors(y, out)
    return out


def _describe(x, tensors: list):
    """What a meta kernel's result depends on: shapes, strides, dtypes and plain values (the
    tensors met are appended to `tensors`)."""
    if isinstance(x, torch.Tensor):
        tensors.append(x)
        return (x.shape, x.stride(), x.dtype, x.is_meta)
    if isinstance(x, list | tuple):
        if all(type(y) is int for y in x):  # sizes, dims: the common case, no recursion
            return (int, *x)
        return tuple([_describe(y, tensors) for y in x])
    if isinstance(x, dict):
        return tuple([(k, _describe(v, tensors)) for k, v in x.items()])
    if isinstance(x, int | float):  # 1 == 1.0 == True, but they promote differently
        return (type(x), x)
    return x


def _nbytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _attention_dims(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[tuple, int]:
    """(batch*heads, S_q, S_kv, D) and the FLOPs of Q K^T plus P V (2 per multiply-add)."""
    bh, s_q, s_kv, d, d_v = (
        math.prod(q.shape[:-2]),
        q.shape[-2],
        k.shape[-2],
        q.shape[-1],
        v.shape[-1],
    )
    return (bh, s_q, s_kv, d), 2 * bh * s_q * s_kv * (d + d_v)


def _dims(cls: str, name: str, args: tuple, outputs: list, inputs: list) -> tuple[int, ...]:
    if cls == "matmul":
        a, b = (args[1], args[2]) if name in ("addmm", "baddbmm") else (args[0], args[1])
        batch = a.shape[0] if a.dim() == 3 else 1
        return (batch, a.shape[-2], b.shape[-1], a.shape[-1])
    if cls == "conv":
        x, w, out = args[0], args[1], outputs[0]
        transposed, groups = bool(args[6]), int(args[8])
        kernel = math.prod(w.shape[2:])
        if transposed:  # weight (C_in, C_out/g, k...): the GEMM over the input positions
            return (
                groups,
                x.shape[0] * math.prod(x.shape[2:]),
                w.shape[1],
                w.shape[0] // groups * kernel,
            )
        return (
            groups,
            out.shape[0] * math.prod(out.shape[2:]),
            w.shape[0] // groups,
            w.shape[1] * kernel,
        )
    if cls == "norm":
        x = args[0]
        if name == "native_group_norm":
            return (x.numel(), x.numel() // (x.shape[0] * int(args[6])), 0, 0)
        if name in ("native_layer_norm", "rms_norm", "_fused_rms_norm"):
            return (x.numel(), math.prod(args[1]), 0, 0)
        return (x.numel(), x.numel() // x.shape[1], 0, 0)  # batch norm: per channel
    if cls == "memory":  # elements moved: an in-place op's source (copy_'s), else the output
        moved = max((t.numel() for t in inputs[1:]), default=1) if name.endswith("_") else 1
        return (moved if moved > 1 else max(t.numel() for t in outputs or inputs), 0, 0, 0)
    numel = max(t.numel() for t in inputs + outputs)
    if cls == "activation":
        return (numel, int(name in _GELU_FAMILY), 0, 0)
    return (numel, 0, 0, 0)


class OpRecorder:
    """Records the ops of the emulated ranks, one rank at a time (`start_rank`).

    `boundary()` is the ledger's clock: it closes the open segment and returns the index of the
    boundary after it. Signature ids and the op table are shared by every rank recorded.
    """

    def __init__(self):
        self._signatures: dict[tuple, int] = {}
        self._rows: list[tuple] = []  # OP_DTYPE rows
        self._open: dict[tuple, int] = {}  # op key -> calls in the open segment
        self.segments: list[int] = []  # signature id of each closed segment of this rank
        self._plans: dict = {}
        # (func, described arguments) -> (output shapes, or None to run it again; op counts)
        self._memo: dict = {}
        self._dispatch = _Dispatch(self)
        self._functions = _Functions(self)

    # -- the clock --------------------------------------------------------------------------
    def start_rank(self) -> None:
        self._open = {}
        self.segments = []

    def boundary(self) -> float:
        """Close the open segment; the index of the boundary after it."""
        self.segments.append(self._intern(self._open))
        self._open = {}
        return float(len(self.segments))

    def open_segment_empty(self) -> bool:
        return not self._open

    def drop_open(self) -> None:
        """Forget the ops of the open segment (work of steps a replication stands in for)."""
        self._open = {}

    def _intern(self, counts: dict[tuple, int]) -> int:
        if not counts:
            return EMPTY
        rows = tuple(sorted(counts.items()))
        sig = self._signatures.get(rows)
        if sig is None:
            sig = self._signatures[rows] = len(self._signatures)
            for (cls, dtype, d0, d1, d2, d3, flops, nbytes), count in rows:
                self._rows.append((sig, cls, dtype, count, flops, nbytes, d0, d1, d2, d3))
        return sig

    def ops(self) -> np.ndarray:
        """The OP_DTYPE rows of every signature interned so far."""
        return np.array(self._rows, dtype=OP_DTYPE)

    def segment_array(self) -> np.ndarray:
        return np.array(self.segments, dtype=np.int32)

    # -- recording --------------------------------------------------------------------------
    @contextlib.contextmanager
    def recording(self):
        """Record (and memoize) every op run inside.

        Under inference mode composite ops (F.scaled_dot_product_attention among them) reach
        the dispatch mode whole, so the function mode, which costs a Python call per torch
        call, is pushed only outside it."""
        with contextlib.ExitStack() as modes:
            if not torch.is_inference_mode_enabled():
                modes.enter_context(self._functions)
            modes.enter_context(self._dispatch)
            yield self

    def _count(self, counts) -> None:
        """Add (op key, calls) pairs to the open segment."""
        segment = self._open
        for key, n in counts:
            segment[key] = segment.get(key, 0) + n

    def attention(self, q, k, v, *args, **kwargs) -> torch.Tensor:
        """F.scaled_dot_product_attention on meta: one attention op, an empty output."""
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        dims, flops = _attention_dims(q, k, v)
        mask = kwargs.get("attn_mask", args[0] if args else None)
        inputs = [q, k, v] + ([mask] if isinstance(mask, torch.Tensor) else [])
        self._count(((self._key("attention", inputs, dims, flops, [out]), 1),))
        return out

    def _key(self, cls: str, inputs: list, dims, flops: float, outputs: list) -> tuple:
        floating = [t for t in inputs if t.is_floating_point()] or inputs
        dtype = _DTYPES.get(floating[0].dtype, _OTHER_DTYPE) if floating else _OTHER_DTYPE
        nbytes = float(_nbytes(inputs) + _nbytes(outputs))
        return (_CLS[cls], dtype, *(int(d) for d in dims), float(flops), nbytes)

    def dispatch(self, func, args: tuple, kwargs: dict):
        plan = self._plans.get(func)
        if plan is None:
            plan = self._plans[func] = _plan(func)
        how, cls = plan
        if how == _RUN:
            return func._op(*args, **kwargs)
        if how == _SDPA:
            return self.attention(*args, **kwargs)
        inputs: list[torch.Tensor] = []
        key = [func]  # _describe of the arguments, inlined for the common ones
        for x in args:
            if isinstance(x, torch.Tensor):
                inputs.append(x)
                key.append((x.shape, x.stride(), x.dtype, x.is_meta))
            elif x is None or isinstance(x, torch.dtype | bool):
                key.append(x)
            else:
                key.append(_describe(x, inputs))
        if kwargs:
            key.append(_describe(kwargs, inputs))
        described = tuple(key)
        hit = self._memo.get(described)  # keyed on which inputs are meta too
        if hit is not None:
            shapes, counts = hit
            self._count(counts)
            return func(*args, **kwargs) if shapes is None else _rebuild(shapes)
        if not any(t.is_meta for t in inputs):
            return func(*args, **kwargs)  # host work (a solver's scalars): not a device op
        mutable = func._schema.is_mutable
        if how == _DECOMPOSE:  # its parts are counted (and memoized) as they run
            counts, self._open = self._open, {}
            try:
                with self._dispatch:
                    out = func.decompose(*args, **kwargs)
            finally:
                parts, self._open = self._open, counts
            if out is NotImplemented:
                plan = self._plans[func] = (_RECORD, "elementwise")
                return self.dispatch(func, args, kwargs)
            counts = tuple(parts.items())
        else:
            out = func(*args, **kwargs)
            counts = ((self._classify(cls, func, args, kwargs, inputs, out), 1),)
        self._count(counts)
        # views, in-place ops and ops returning an input run again on a hit (None): only
        # their counts are memoized
        shapes = None if mutable or func.is_view else _shapes(out, inputs)
        if all(t.is_meta or t.dim() == 0 for t in inputs):
            self._memo[described] = (shapes, counts)
        return out

    def _classify(self, cls: str, func, args: tuple, kwargs: dict, inputs: list, out) -> tuple:
        name = func._overloadpacket.__name__
        outputs = _tensors(out, [])
        if cls == "attention":
            dims, flops = _attention_dims(*args[:3])
        else:
            dims = _dims(cls, name, args, outputs, inputs)
            formula = flop_registry.get(func._overloadpacket)
            flops = formula(*args, **kwargs, out_val=out) if formula is not None else 0
        return self._key(cls, inputs, dims, flops, outputs)


def _shapes(out, inputs: list):
    """A memo of `out`: per output (shape, stride, dtype) of a meta tensor, or a plain value;
    None when an output is not a fresh meta tensor (a view of an input, say)."""
    if isinstance(out, torch.Tensor):
        if out.device.type != "meta" or out.storage_offset():
            return None
        if any(torch._C._is_alias_of(out, t) for t in inputs):
            return None
        return ("T", out.shape, out.stride(), out.dtype)
    if isinstance(out, tuple | list):
        parts = [_shapes(o, inputs) for o in out]
        return None if any(p is None for p in parts) else (type(out), parts)
    if out is None or isinstance(out, int | float | bool):
        return ("V", out)
    return None


def _rebuild(shapes):
    if shapes[0] == "T":
        return torch.empty_strided(shapes[1], shapes[2], dtype=shapes[3], device="meta")
    if shapes[0] == "V":
        return shapes[1]
    kind, parts = shapes
    return kind(_rebuild(p) for p in parts)


class _Dispatch(TorchDispatchMode):
    def __init__(self, recorder: OpRecorder):
        super().__init__()
        self.recorder = recorder

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False  # nothing is compiled here: spare every op torch's dynamo-disabling wrapper

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return self.recorder.dispatch(func, args, kwargs or {})


class _Functions(TorchFunctionMode):
    def __init__(self, recorder: OpRecorder):
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and args and args[0].device.type == "meta":
            return self.recorder.attention(*args, **kwargs)
        return func(*args, **kwargs)


def merge_tables(parts: list[list]) -> None:
    """Give the RankResults of several recorders (one list per emulating process) one op table:
    each signature re-interned by its rows, every rank's segments renumbered, in place."""
    ids: dict[tuple, int] = {}
    rows: list[tuple] = []
    for part in parts:
        if not part:
            continue
        ops = part[0].ops
        remap = np.full(int(ops["sig"].max()) + 1 if len(ops) else 0, EMPTY, dtype=np.int64)
        for sig in np.unique(ops["sig"]):
            mine = ops[ops["sig"] == sig]
            content = tuple(tuple(r)[1:] for r in mine.tolist())
            new = ids.get(content)
            if new is None:
                new = ids[content] = len(ids)
                rows.extend((new, *r) for r in content)
            remap[sig] = new
        for r in part:
            seg = np.asarray(r.segments, dtype=np.int64)
            r.segments = np.where(seg >= 0, remap[np.maximum(seg, 0)], EMPTY).astype(np.int32)
    table = np.array(rows, dtype=OP_DTYPE)
    for part in parts:
        for r in part:
            r.ops = table
