"""Operator efficiency curves of the local device, for `diffscale calibrate` (analysis.opmodel).

Per operator class and dtype, the throughput reached over a ladder of sizes: GEMMs (TFLOP/s by
FLOPs per call), 3x3 convolutions (likewise), scaled-dot-product attention (TFLOP/s by sequence
length, head dims 32, 64 and 128 on CPUs, 64 and 128 on GPUs), group + layer norm, an elementwise
add, a copy, SiLU (UNets' activation) and GELU (tanh; DiTs', the `gelu` curve of the GELU
family) (GB/s by bytes read + written per call), and the per-call overhead of an operator.

CPU: fp32, and bf16 where it runs; timed with perf_counter, best of 3 batches of calls. GEMMs are
timed as a model's linear layers run them: `F.linear` (transposed weight, bias) cycling through
64 MB of distinct weights, so that each call finds its weight out of cache as a layer of a
model does (a GEMM repeated on the same operands runs up to 10% faster from cache, and a
64-row one 30%). On CPU the overhead is paid before every kernel, so it is subtracted from each
measured call: the model (kernel at the curve's rate + launch) then gives back the measured time
at every kept size. Sizes whose call is within 3x the overhead are dropped (kernel and overhead
cannot be told apart there; the curve is clamped to its smallest kept size).
CUDA: fp32 (TF32 off, PyTorch's default for matmul), tf32, fp16, bf16, timed with CUDA events
over back-to-back calls; the launch cost is the CPU time to queue a tiny kernel, overlapped
with the kernels (`async`). A ladder stops where one call exceeds `max_call_s`.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

GEMM_N = {"cpu": (16, 32, 64, 128, 256, 512, 1024, 2048), "cuda": (128, 256, 512, 1024, 2048, 4096, 8192)}  # fmt: skip
CONV = {  # (channels in = out, height = width), 3x3, batch 1
    "cpu": ((8, 16), (16, 32), (32, 32), (64, 64), (128, 64), (256, 64)),
    "cuda": ((32, 32), (64, 64), (128, 64), (320, 64), (320, 128), (640, 128)),
}
SEQ = {"cpu": (64, 256, 1024, 2048, 4096), "cuda": (256, 1024, 2048, 4096, 8192, 16384)}
HEADS = {"cpu": 4, "cuda": 16}  # batch x heads of the attention calls
HEAD_DIMS = {"cpu": (32, 64, 128), "cuda": (64, 128)}
COLD_WEIGHT_BYTES = 64 << 20  # CPU GEMMs cycle through this much weight (beyond the caches)
NUMEL = {"cpu": (1 << 10, 1 << 14, 1 << 18, 1 << 22, 1 << 24), "cuda": (1 << 14, 1 << 18, 1 << 22, 1 << 26, 1 << 28)}  # fmt: skip
TORCH_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16,
                "bf16": torch.bfloat16}  # fmt: skip


class _Timer:
    """Seconds per call of `fn` on `device`: best of 3 batches, each long enough to time."""

    def __init__(self, device: torch.device, min_s: float = 0.02):
        self.cuda = device.type == "cuda"
        self.min_s = min_s

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def batch(self, fn: Callable[[], object], n: int) -> float:
        if self.cuda:  # device time of back-to-back calls
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / n
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n

    def __call__(self, fn: Callable[[], object]) -> float:
        fn()  # warm-up: allocation, kernel selection
        self.sync()
        one = self.batch(fn, 1)
        n = max(1, min(2000, int(self.min_s / max(one, 1e-7))))
        return min(self.batch(fn, n) for _ in range(3))


def _launch_s(device: torch.device) -> float:
    """Seconds of per-call overhead: a tiny add, as the CPU issues it."""
    x = torch.ones(1, device=device)
    y = torch.ones(1, device=device)
    for _ in range(50):
        torch.add(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    n = 2000
    best = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            torch.add(x, y)
        best = min(best, (time.perf_counter() - t0) / n)  # CPU time to issue, not to finish
    if device.type == "cuda":
        torch.cuda.synchronize()
    return best


def _runs(dtype: torch.dtype, device: torch.device) -> bool:
    try:
        a = torch.ones(8, 8, dtype=dtype, device=device)
        (a @ a).sum().item()
        return True
    except (RuntimeError, TypeError):
        return False


def measure_op_curves(device: torch.device | None = None, max_call_s: float = 1.0) -> dict:
    """The `opcurves` mapping of a calibrated profile (see analysis.opmodel.parse_curves), with
    `measured` notes: the device, the dtypes measured and the wall time it took."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind = "cuda" if device.type == "cuda" else "cpu"
    timer = _Timer(device)
    t_start = time.perf_counter()
    launch = _launch_s(device)
    on_cpu = kind == "cpu"
    wanted = ("fp32", "bf16") if on_cpu else ("fp32", "tf32", "fp16", "bf16")
    dtypes = [d for d in wanted if _runs(TORCH_DTYPES[d], device)]

    def kernel_s(t: float) -> float:
        # CPU: the call overhead is modelled apart (added per call): take it out of the kernel
        return max(t - launch, 0.5 * t) if on_cpu else t

    def reliable(timed: list[tuple[float, dict]]) -> list[dict]:
        """Points whose call is not mostly overhead (CPU: over 3x the launch cost; at least
        the two largest): below that kernel and overhead cannot be told apart, and the curve
        is clamped to its smallest reliable point instead."""
        keep = [p for t, p in timed if not on_cpu or t > 3 * launch]
        return keep if len(keep) >= 2 else [p for _, p in timed[-2:]]

    def ladder(sizes, make) -> list[dict]:
        """make(size) -> (fn, work, point); stops after a call longer than max_call_s."""
        timed = []
        for size in sizes:
            fn, work, point = make(size)
            t = timer(fn)
            timed.append((t, {**point, **work(kernel_s(t))}))
            if t > max_call_s:
                break
        return reliable(timed)

    out: dict = {"launch": {"us": launch * 1e6, "async": not on_cpu}}
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    prev_cudnn = torch.backends.cudnn.allow_tf32
    try:
        with torch.inference_mode():
            for name in dtypes:
                dt = TORCH_DTYPES[name]
                if not on_cpu:  # fp32: PyTorch's default CUDA-core matmul; tf32: tensor cores
                    torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
                    torch.backends.cudnn.allow_tf32 = name != "fp32"

                def gemm(n, dt=dt):
                    a = torch.randn(n, n, device=device).to(dt)
                    flops = 2.0 * n**3
                    if on_cpu:  # a linear layer's GEMM, its weight out of cache
                        nbytes = n * n * dt.itemsize
                        count = max(2, min(256, COLD_WEIGHT_BYTES // nbytes))
                        weights = itertools.cycle([torch.randn(n, n).to(dt) for _ in range(count)])
                        bias = torch.randn(n).to(dt)

                        def fn():
                            return F.linear(a, next(weights), bias)

                    else:
                        b = torch.randn(n, n, device=device).to(dt)

                        def fn():
                            return a @ b

                    return fn, (lambda t: {"tflops": flops / t / 1e12}), {"flops": flops}

                def conv(cfg, dt=dt):
                    c, hw = cfg
                    x = torch.randn(1, c, hw, hw, device=device).to(dt)
                    w = torch.randn(c, c, 3, 3, device=device).to(dt)
                    flops = 2.0 * hw * hw * c * c * 9
                    return (
                        (lambda: F.conv2d(x, w, padding=1)),
                        (lambda t: {"tflops": flops / t / 1e12}),
                        {"flops": flops},
                    )

                out.setdefault("matmul", {})[name] = ladder(GEMM_N[kind], gemm)
                out.setdefault("conv", {})[name] = ladder(CONV[kind], conv)
                if name == "tf32":
                    continue  # SDPA has no TF32 path of its own: fp32's curve serves
                att = out.setdefault("attention", {}).setdefault(name, {})
                for d in HEAD_DIMS[kind]:

                    def sdpa(s, dt=dt, d=d):
                        q, k, v = (
                            torch.randn(1, HEADS[kind], s, d, device=device).to(dt)
                            for _ in range(3)
                        )
                        flops = 4.0 * HEADS[kind] * s * s * d
                        return (
                            (lambda: F.scaled_dot_product_attention(q, k, v)),
                            (lambda t: {"tflops": flops / t / 1e12}),
                            {"s_kv": s},
                        )

                    att[d] = ladder(SEQ[kind], sdpa)

            def mem(numel, op):
                a = torch.randn(numel, device=device)
                b = torch.randn(numel, device=device)
                if op == "norm":  # group norm (UNet) and layer norm (DiT), the mean of the two
                    g = a.view(1, 32, -1)
                    rows = a.view(-1, 64)
                    fns = [lambda: F.group_norm(g, 8), lambda: F.layer_norm(rows, (64,))]
                    nbytes = 2.0 * numel * 4
                elif op == "elementwise":
                    fns, nbytes = [lambda: torch.add(a, b)], 3.0 * numel * 4
                elif op == "activation":  # UNets' SiLU (and sigmoid / exp-like ops)
                    fns, nbytes = [lambda: F.silu(a)], 2.0 * numel * 4
                elif op == "gelu":  # DiTs' GELU (tanh): the GELU family's curve
                    fns, nbytes = [lambda: F.gelu(a, approximate="tanh")], 2.0 * numel * 4
                else:
                    fns, nbytes = [lambda: a.clone()], 2.0 * numel * 4
                return fns, nbytes

            for op in ("norm", "elementwise", "memory", "activation", "gelu"):
                timed = []
                for numel in NUMEL[kind]:
                    fns, nbytes = mem(numel, op)
                    t = sum(timer(f) for f in fns) / len(fns)
                    timed.append((t, {"bytes": nbytes, "gb_s": nbytes / kernel_s(t) / 1e9}))
                out[op] = reliable(timed)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32
        torch.backends.cudnn.allow_tf32 = prev_cudnn
    out["measured"] = {
        "device": kind,
        "dtypes": dtypes,
        "threads": torch.get_num_threads(),
        "wall_s": time.perf_counter() - t_start,
    }
    return out
