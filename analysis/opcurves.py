"""Operator efficiency curves: the achieved rate of each operator class by size, per dtype.

The data type behind a profile's `opcurves` (parsed from `configs/hardware/opcurves/<device>.yaml`
or a calibrated profile) and the dtype keys they are stored under. Pricing with them is
`analysis.opmodel`'s job; loading them into a profile is `analysis.hardware`'s. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

COMPUTE_CLASSES = ("matmul", "conv", "attention")
MEMORY_CLASSES = ("norm", "elementwise", "memory", "activation")
# the curve of activations of kind 1 (GELU family: d1 of an activation op); SiLU-like ones use
# `activation`'s. A CPU evaluates GELU (tanh) at a third of SiLU's rate; a GPU streams both.
GELU_CURVE = "gelu"
# dtype keys of curves and of `project --dtype` (tf32: fp32 storage, TF32 tensor-core math)
DTYPE_KEYS = ("fp32", "tf32", "fp16", "bf16")
_ALIASES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "half": "fp16"}


def dtype_key(dtype: str) -> str:
    """'bfloat16' / 'bf16' -> 'bf16' (a curve key); ValueError naming the allowed values."""
    key = _ALIASES.get(dtype, dtype)
    if key not in DTYPE_KEYS:
        allowed = ", ".join([*DTYPE_KEYS, *_ALIASES])
        raise ValueError(f"dtype {dtype!r} is unknown; allowed: {allowed}")
    return key


@dataclass(frozen=True)
class Curve:
    """Achieved rate by size: linear in log(size) between points, clamped outside them."""

    sizes: tuple[float, ...]  # ascending
    rates: tuple[float, ...]  # TFLOP/s (compute classes) or GB/s (memory classes)

    def __call__(self, size):
        x = np.log(np.maximum(np.asarray(size, dtype=float), 1e-300))
        return np.interp(x, np.log(self.sizes), self.rates)


@dataclass(frozen=True)
class OpCurves:
    compute: dict[tuple[str, str], dict[int, Curve]] = field(default_factory=dict)
    # (class, dtype key) -> head dim (0 for matmul / conv) -> TFLOP/s by size
    memory: dict[str, Curve] = field(default_factory=dict)  # class -> GB/s by bytes per call
    launch_s: float = 0.0  # per call
    launch_async: bool = False  # GPU: launch overlaps the previous kernel (max, not sum)
    # attention kernels compiled for a few head dims (FlashAttention-2: 32, 64, 96, 128, ...):
    # a head dim between two runs at the next one up, in the dtypes listed
    attention_tiles: tuple[int, ...] = ()
    attention_tile_dtypes: tuple[str, ...] = ()

    def dtypes(self) -> list[str]:
        return [k for k in DTYPE_KEYS if ("matmul", k) in self.compute]


_SIZE_KEY = {"matmul": "flops", "conv": "flops", "attention": "s_kv"}


def _curve(points, size_key: str, rate_key: str, where: str) -> Curve:
    pts = sorted((float(p[size_key]), float(p[rate_key])) for p in points)
    if not pts or any(s <= 0 or r <= 0 for s, r in pts):
        raise ValueError(f"{where}: need points with positive {size_key} and {rate_key}")
    sizes, rates = zip(*pts, strict=True)
    return Curve(sizes, rates)


def parse_curves(data: dict, where: str = "opcurves") -> OpCurves:
    """An `OpCurves` from its YAML mapping (see configs/hardware/opcurves/)."""
    compute: dict[tuple[str, str], dict[int, Curve]] = {}
    for cls in COMPUTE_CLASSES:
        for key, pts in (data.get(cls) or {}).items():
            dkey = dtype_key(str(key))
            at = f"{where}: {cls}.{key}"
            if cls == "attention":  # head dim -> points
                compute[(cls, dkey)] = {
                    int(d): _curve(p, "s_kv", "tflops", f"{at}.{d}") for d, p in pts.items()
                }
            else:
                compute[(cls, dkey)] = {0: _curve(pts, "flops", "tflops", at)}
    memory = {
        cls: _curve(data[cls], "bytes", "gb_s", f"{where}: {cls}")
        for cls in (*MEMORY_CLASSES, GELU_CURVE)
        if data.get(cls)
    }
    launch = data.get("launch") or {}
    kernel = data.get("attention_kernel") or {}
    tiles = tuple(sorted(int(d) for d in kernel.get("head_dim_tiles") or ()))
    if any(d <= 0 for d in tiles):
        raise ValueError(f"{where}: attention_kernel.head_dim_tiles must be positive")
    return OpCurves(
        compute,
        memory,
        float(launch.get("us", 0.0)) * 1e-6,
        bool(launch.get("async", False)),
        tiles,
        tuple(dtype_key(str(k)) for k in kernel.get("dtypes") or ()),
    )
