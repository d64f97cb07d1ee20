"""Operator model: what an operator costs on a device, from its FLOPs, bytes and size.

On a device profile one call of an operator takes

    kernel = max(FLOPs / compute_rate(class, dtype, size), bytes / memory_rate(class, bytes))

plus the per-call overhead `launch_s`: added on a CPU (the calling thread does it before the
kernel runs), overlapped on a GPU (`launch_async`: the CPU queues the next kernel while the
current one runs, so a call costs max(kernel, launch)). A segment signature of an operator trace
(`suite.measure.optrace.OP_DTYPE` rows) costs the sum over its rows of count x op time.

Rates are efficiency curves, stored as the throughput achieved at each size (rate = peak x
efficiency): TFLOP/s by FLOPs per call for matmul and conv, by S_kv per head dim for attention;
GB/s by bytes per call for norm, elementwise, memory (copies) and activation (transcendentals),
whose compute side uses the device's vector (fp32) peak. Between measured sizes a rate is linear
in log(size); outside them it is clamped to the nearest end. A class without a curve of its own
uses matmul's (compute), the elementwise curve (activation) or the copy curve (memory); a profile
without curves uses its device's peaks (efficiency 1). Attention kernels compiled for a few head
dims (`attention_kernel.head_dim_tiles`: FlashAttention-2's 32, 64, 96, 128, ...) run a head dim
at the next tile up: its FLOPs x tile / head dim, at the tile's rate.

Curves come from `diffscale calibrate` (the calibrated profile's `opcurves`) or, for catalog
GPUs, from `configs/hardware/opcurves/<device>.yaml`, where every point names its source or is
marked `estimate` with the reasoning. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.hardware import Profile
from analysis.opcurves import (  # noqa: F401 - dtype_key, parse_curves: this module's API too
    COMPUTE_CLASSES,
    DTYPE_KEYS,
    GELU_CURVE,
    MEMORY_CLASSES,
    Curve,
    OpCurves,
    dtype_key,
    parse_curves,
)
from suite.measure.optrace import OP_CLASSES, OP_DTYPE, TRACE_DTYPES

ELEMENT_BYTES = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2}
_TRACE_KEY = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "other": "fp32"}
_KEY_TRACE = {"fp32": "float32", "tf32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def attention_tile(curves: OpCurves | None, key: str, head_dim):
    """The head dim an attention kernel runs `head_dim` (array) at: the next compiled tile in
    the profile's `attention_kernel` (FlashAttention-2 pads 72 to 96), else itself."""
    head_dim = np.asarray(head_dim, dtype=float)
    if curves is None or not curves.attention_tiles or key not in curves.attention_tile_dtypes:
        return head_dim
    tiles = np.asarray(curves.attention_tiles, dtype=float)
    at = np.searchsorted(tiles, head_dim)  # first tile >= head_dim
    return np.where(at < len(tiles), tiles[np.minimum(at, len(tiles) - 1)], head_dim)


def dtypes(profile: Profile) -> list[str]:
    """dtype keys `profile` can price: its matmul curves', else its device's listed peaks."""
    if profile.opcurves is not None and profile.opcurves.dtypes():
        return profile.opcurves.dtypes()
    have = profile.device.tflops
    return [k for k in DTYPE_KEYS if k in have or (k == "fp32" and "tf32" in have)]


def check_dtype(profile: Profile, key: str) -> None:
    """ValueError with the allowed values when `profile` cannot run dtype `key`."""
    if key not in dtypes(profile):
        runs = ", ".join(dtypes(profile)) or "none"
        raise ValueError(f"profile {profile.name} cannot run {key}; it runs: {runs}")


def _peak_tflops(profile: Profile, key: str) -> float:
    t = profile.device.tflops
    for k in (key, "fp32" if key == "tf32" else "tf32" if key == "fp32" else None):
        if k in t:
            return t[k]
    return max(t.values()) if t else float("inf")


def compute_rate(profile: Profile, cls: str, key: str, flops, s_kv=None, head_dim=None):
    """Achieved FLOP/s of calls of class `cls` in dtype `key`: by FLOPs per call (matmul, conv),
    by S_kv and head dim (attention; a profile without an attention curve uses matmul's)."""
    flops = np.asarray(flops, dtype=float)
    curves = profile.opcurves
    if cls in MEMORY_CLASSES or curves is None:  # vector units / no curves: the peak
        peak = _peak_tflops(profile, "fp32" if cls in MEMORY_CLASSES else key)
        return np.full(flops.shape, peak * 1e12)

    def curve_of(c: str):
        found = curves.compute.get((c, key))
        return found if found is not None or key != "tf32" else curves.compute.get((c, "fp32"))

    by_dim = curve_of(cls)
    if by_dim is None or (cls == "attention" and s_kv is None):
        cls, by_dim = "matmul", curve_of("matmul")
    if by_dim is None:
        check_dtype(profile, key)
        raise ValueError(f"profile {profile.name} has no matmul curve for {key}")
    if cls != "attention":
        return next(iter(by_dim.values()))(flops) * 1e12
    s_kv = np.broadcast_to(np.asarray(s_kv, dtype=float), flops.shape)
    dims = sorted(by_dim)
    if len(dims) == 1:
        return by_dim[dims[0]](s_kv) * 1e12
    at = np.stack([by_dim[d](s_kv) for d in dims], axis=-1)  # (..., head dims)
    hd = np.broadcast_to(np.asarray(head_dim, dtype=float), flops.shape)
    # linear in log(head dim) between the curves, clamped to the outer ones
    pos = np.interp(np.log(np.maximum(hd, 1.0)), np.log(dims), np.arange(len(dims)))
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, len(dims) - 1)
    w = pos - lo
    pick = lambda i: np.take_along_axis(at, i[..., None], axis=-1)[..., 0]  # noqa: E731
    return ((1 - w) * pick(lo) + w * pick(hi)) * 1e12


def memory_rate(profile: Profile, cls: str, nbytes) -> np.ndarray:
    """Achieved bytes/s of class `cls` moving `nbytes` per call (inf: no memory term)."""
    nbytes = np.asarray(nbytes, dtype=float)
    curves = profile.opcurves
    curve = None
    if curves is not None:  # activations without a curve of their own stream like elementwise
        fallback = ("memory",)
        if cls in ("activation", GELU_CURVE):
            fallback = ("activation", "elementwise", "memory")
        curve = curves.memory.get(cls) or next(
            (curves.memory[c] for c in fallback if c in curves.memory), None
        )
    if curve is not None:
        return curve(nbytes) * 1e9
    bw = profile.device.mem_bandwidth_gb_s
    return np.full(nbytes.shape, bw * 1e9 if bw > 0 else np.inf)


@dataclass(frozen=True)
class Priced:
    """Per signature id: seconds on the device, and how they split (sums to time_s)."""

    time_s: np.ndarray
    compute_bound_s: np.ndarray  # ops whose FLOPs term is the larger
    memory_bound_s: np.ndarray  # ops whose bytes term is the larger
    launch_s: np.ndarray  # per-call overhead not hidden behind kernels


def convert_dtype(ops: np.ndarray, key: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(ops with float dtypes set to `key`'s and bytes rescaled by element size, the dtype key
    of every row). `key` None keeps the trace's dtypes; 'other' rows are never converted."""
    ops = ops.copy()
    names = np.array(TRACE_DTYPES)[ops["dtype"]]
    is_float = names != "other"
    if key is None:
        keys = np.array([_TRACE_KEY[n] for n in names], dtype=object)
        return ops, keys
    old = np.array([ELEMENT_BYTES[_TRACE_KEY[n]] for n in names], dtype=float)
    ops["bytes"] = np.where(is_float, ops["bytes"] * ELEMENT_BYTES[key] / old, ops["bytes"])
    ops["dtype"] = np.where(is_float, TRACE_DTYPES.index(_KEY_TRACE[key]), ops["dtype"])
    keys = np.where(is_float, key, "fp32").astype(object)
    return ops, keys


def price(profile: Profile, ops: np.ndarray, dtype: str | None = None) -> Priced:
    """Seconds of every signature of `ops` (`suite.measure.optrace.OP_DTYPE`) on `profile`, with the
    trace's float dtypes replaced by `dtype` (a key) when given."""
    ops, keys = convert_dtype(np.asarray(ops, dtype=OP_DTYPE), dtype)
    n_sig = int(ops["sig"].max()) + 1 if len(ops) else 0
    t_c = np.zeros(len(ops))
    t_m = np.zeros(len(ops))
    for c, cls in enumerate(OP_CLASSES):
        for key in set(keys[ops["cls"] == c]):
            sel = (ops["cls"] == c) & (keys == key)
            o = ops[sel]
            flops, head_dim = o["flops"].astype(float), o["d3"]
            if cls == "attention":  # the kernel computes at its tile's head dim
                tile = attention_tile(profile.opcurves, key, head_dim)
                flops = flops * tile / np.maximum(head_dim, 1)
                head_dim = tile
            rate = compute_rate(profile, cls, key, flops, o["d2"], head_dim)
            t_c[sel] = flops / rate
            t_m[sel] = o["bytes"] / memory_rate(profile, cls, o["bytes"])
            if cls == "activation":  # the GELU family (kind 1) on its own curve
                gelu = o["bytes"] / memory_rate(profile, GELU_CURVE, o["bytes"])
                t_m[sel] = np.where(o["d1"] == 1, gelu, t_m[sel])
    kernel = np.maximum(t_c, t_m)
    curves = profile.opcurves
    launch = curves.launch_s if curves is not None else 0.0
    asynchronous = curves is not None and curves.launch_async
    count = ops["count"].astype(float)
    sig = ops["sig"]

    def total(per_call) -> np.ndarray:
        return np.bincount(
            sig, weights=count * np.broadcast_to(per_call, len(ops)), minlength=n_sig
        )

    compute_bound = t_c >= t_m
    kernels = total(kernel)
    ex = profile.execution
    if asynchronous and ex is not None and ex.graphs:
        overhead = total(ex.kernel_gap_s)  # a replayed graph: a small gap after every kernel
    elif asynchronous and ex is not None:
        # eager: kernels queue behind the host, so a segment (one signature, between two
        # collectives) takes the longer of its kernels and its host time
        overhead = np.maximum(total(launch + ex.op_host_s) - kernels, 0.0)
    elif asynchronous:
        overhead = total(np.maximum(launch - kernel, 0.0))  # per call: max(kernel, launch)
    else:
        overhead = total(launch)  # a CPU issues each call before running it
    return Priced(
        time_s=kernels + overhead,
        compute_bound_s=total(np.where(compute_bound, kernel, 0.0)),
        memory_bound_s=total(np.where(compute_bound, 0.0, kernel)),
        launch_s=overhead,
    )


def workload_s(durations: np.ndarray, segments: list[np.ndarray]) -> float:
    """Summed seconds of every rank's segments (`segments[r][b]` a signature id or -1)."""
    return float(
        sum(np.where(s >= 0, durations[np.maximum(s, 0)], 0.0).sum() for s in segments if len(s))
    )


def matmul_rate(profile: Profile, key: str, flops: float) -> float:
    """FLOP/s of one GEMM of `flops` FLOPs on `profile` in dtype `key`."""
    return float(compute_rate(profile, "matmul", key, [flops])[0])


def representative_gemm(
    workload: str,
    height: int,
    width: int,
    batch: int,
    guidance: float,
    world_size: int,
    frames: int = 0,
) -> tuple[int, int, int]:
    """(M, N, K) of a typical GEMM of a rank's denoiser step: M = the rank's share of the
    latent tokens (of the widest UNet level with attention: the deepest; times the latent
    frames of a video clip of `frames` frames), N = K = hidden size.
    A size for the matmul curves when no operator trace of the run exists; an estimate."""
    from workloads.presets import get_preset

    p = get_preset(workload)
    c = p.config
    lat_h, lat_w = height // p.vae_scale_factor, width // p.vae_scale_factor
    if p.family in ("unet", "unet2d"):
        channels = tuple(c.get("block_out_channels", (320,)))
        down = 2 ** (len(channels) - 1)
        hidden, tokens = int(channels[-1]), max(1, lat_h // down) * max(1, lat_w // down)
    else:
        patch = c.get("patch_size", 1) or 1
        if isinstance(patch, (tuple, list)):  # Wan: (t, h, w)
            patch = patch[-1]
        patch = 2 if p.family == "flux" else int(patch)  # flux packs 2x2
        hidden = int(c.get("num_attention_heads", 1)) * int(c.get("attention_head_dim", 64))
        tokens = max(1, lat_h // patch) * max(1, lat_w // patch)
        if frames and getattr(p, "temporal_compression", 0):  # a clip: every latent frame's tokens
            tokens *= (int(frames) - 1) // p.temporal_compression + 1
    images = batch * (2 if p.cfg and guidance > 1 else 1)
    return max(1, tokens * images // max(1, world_size)), hidden, hidden
