"""`diffscale calibrate`: measure this machine's backend and compute, write a hardware profile.

Collectives are timed the way nccl-tests does (sizes in its "size" convention, a warm-up call,
then the mean of timed calls, the slowest rank's time), through `suite.distributed.comm` so that what is
measured is the path strategies use. Each (op, group size) gets alpha and beta fitted to
t = alpha + beta * bytes, minimizing relative error so that small messages (alpha) count as much
as large ones (beta). Compute is measured on one rank with `threads` intra-op threads: a GEMM,
an attention kernel, and a denoiser step of a benchmark preset (FLOPs counted on the meta
device); the profile's throughput is the model step's, the most representative of a run. The
same rank measures the operator efficiency curves of the device (suite.measure.calibrate_ops: GEMM,
conv, attention, norm, elementwise, copy and launch overhead per dtype, over ladders of sizes)
that analysis.opmodel prices operators with; they go to the profile's `opcurves`.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from suite.distributed.comm import Comm, Ledger
from suite.distributed.mesh import ParallelDims

CALIBRATED_OPS = ("all_gather", "all_reduce", "all_to_all", "reduce_scatter", "send")
DEFAULT_SIZES = tuple(2**k for k in range(10, 29, 2))  # 1 KiB .. 256 MiB, x4


def size_ladder(text: str) -> tuple[int, ...]:
    """'1K-256M' -> the nccl-tests style x4 ladder of byte sizes between the bounds."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}

    def parse(s: str) -> int:
        s = s.strip().upper()
        return int(float(s[:-1]) * units[s[-1]]) if s[-1] in units else int(s)

    low, high = (parse(x) for x in text.split("-"))
    out, n = [], low
    while n <= high:
        out.append(n)
        n *= 4
    return tuple(out)


def _iters(nbytes: int) -> int:
    return 20 if nbytes <= 1 << 20 else 5 if nbytes <= 16 << 20 else 2


def _call(comm: Comm, op: str, buf: torch.Tensor, rank: int, n: int) -> None:
    """One call of `op` on a buffer of nccl-tests size `buf` over the whole world."""
    if op == "all_gather":
        comm.all_gather(buf[: buf.numel() // n], "patch")
    elif op == "all_reduce":
        comm.all_reduce(buf, "patch")
    elif op == "all_to_all":
        comm.all_to_all(buf, "patch", scatter_dim=0, gather_dim=0)
    elif op == "reduce_scatter":
        comm.reduce_scatter(buf, "patch")
    elif rank == 0:  # point to point between ranks 0 and 1; the others idle
        comm.send(buf, "patch", dst=1)
    elif rank == 1:
        comm.recv(buf, "patch", src=0)


def measure_collectives(ctx, sizes: tuple[int, ...]) -> list[dict]:
    """On every rank of a world: time each op at each size; rows of this rank's seconds/call."""
    import torch.distributed as dist

    n = ctx.world_size
    comm = Comm(ctx.mesh(ParallelDims(patch=n)), Ledger(ctx.rank, enabled=False))
    rows = []
    for op in CALIBRATED_OPS:
        for size in sizes:
            buf = torch.ones(max(n, size // 4) // n * n)  # fp32, divisible by the group
            _call(comm, op, buf, ctx.rank, n)  # warm-up: connection set-up and allocation
            iters = _iters(size)
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(iters):
                _call(comm, op, buf, ctx.rank, n)
            elapsed = (time.perf_counter() - t0) / iters
            rows.append({"op": op, "group_size": 2 if op == "send" else n,
                         "nbytes": buf.numel() * 4, "rank": ctx.rank, "time_s": elapsed})  # fmt: skip
    return rows


def fit_alpha_beta(nbytes: np.ndarray, seconds: np.ndarray) -> tuple[float, float]:
    """alpha (s), beta (s/byte) of t = alpha + beta * n, least squares in relative error."""
    w = 1.0 / seconds
    a = np.stack([w, w * nbytes], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(a, np.ones_like(seconds), rcond=None)
    if alpha < 0:  # latency too small to resolve: fit the slope alone
        alpha, beta = 0.0, float(np.sum(w * w * nbytes) / np.sum((w * nbytes) ** 2))
    return float(alpha), float(beta)


@dataclass
class ComputeRates:
    gemm_tflops: float
    attention_tflops: float
    model_step_tflops: float
    model: str
    opcurves: dict | None = None  # suite.measure.calibrate_ops.measure_op_curves


def measure_compute(
    ctx, threads: int, preset: str = "small-pixart-alpha", device: str = "cpu"
) -> ComputeRates:
    """Achieved fp32 TFLOP/s of a GEMM, an attention kernel and a denoiser step (one rank, on
    the CPU), and the operator curves of `device` (cpu, or cuda: the GPU's curves)."""
    import torch.nn.functional as F

    import workloads
    from suite.measure.calibrate_ops import measure_op_curves

    torch.set_num_threads(threads)
    curves = measure_op_curves(torch.device(device))

    def rate(fn, flops: float) -> float:
        fn()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return flops / float(np.median(times)) / 1e12

    with torch.inference_mode():
        a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
        gemm = rate(lambda: a @ b, 2 * 1024**3)
        q = k = v = torch.randn(1, 8, 1024, 64)
        attn = rate(lambda: F.scaled_dot_product_attention(q, k, v), 4 * 8 * 1024 * 1024 * 64)
        wl = workloads.build(preset, height=256, width=256, steps=1, batch=1)
        x, cond, t = wl.inputs.latents, wl.inputs.cond, torch.tensor(500.0)
        flops = workloads.model_stats(preset, 256, 256).flops_per_forward
        step = rate(lambda: wl.denoiser(x, t, cond), flops)
    return ComputeRates(gemm, attn, step, preset, curves)


def write_profile(
    path: Path,
    name: str,
    rows: list[dict],
    compute: ComputeRates,
    threads: int,
    device: str,
) -> dict:
    """Fit every (op, group size) and write the calibrated profile YAML; returns its content."""
    slowest: dict[tuple, float] = {}
    for r in rows:  # an op takes as long as its slowest rank
        key = (r["op"], r["group_size"], r["nbytes"])
        slowest[key] = max(slowest.get(key, 0.0), r["time_s"])
    collectives: dict[str, dict[int, dict]] = {}
    for op, p in sorted({(k[0], k[1]) for k in slowest}):
        sizes = np.array(sorted(k[2] for k in slowest if k[:2] == (op, p)), dtype=float)
        secs = np.array([slowest[(op, p, int(n))] for n in sizes])
        alpha, beta = fit_alpha_beta(sizes, secs)
        # "send" stands for the point-to-point pair; both sides cost the same
        for key in ("send", "recv") if op == "send" else (op,):
            collectives.setdefault(key, {})[p] = {"alpha_s": alpha, "beta_s_per_byte": beta}
    ag = collectives["all_gather"][max(collectives["all_gather"])]
    curves = compute.opcurves
    on_gpu = bool(curves) and curves.get("measured", {}).get("device") == "cuda"
    achieved = {  # the largest GEMM rate per dtype the curves reached (fp32: see below)
        f"{k}_tflops": max(p["tflops"] for p in pts)
        for k, pts in ((curves or {}).get("matmul") or {}).items()
        if pts and (on_gpu or k != "fp32")
    }
    profile = {
        "name": name,
        "description": f"calibrated by diffscale on {socket.gethostname()} ({device}), "
        f"{threads} thread(s) per rank, gloo over loopback; MEASURED",
        "measured": True,
        "cpu_cores": os.cpu_count(),
        "threads_per_rank": threads,
        "device": {
            "name": device,
            "achieved": True,
            # CPU: the throughput a denoiser step achieved (the vector rate of the operator
            # model, and the peak of profiles without curves); GPU: the curves' best GEMMs
            "fp32_tflops": compute.model_step_tflops,
            **achieved,
        },
        "gpus_per_node": max(p for ops in collectives.values() for p in ops),
        "nodes": 1,
        # a link view of the backend for alpha-beta formulas, from the all-gather fit
        "intra_node_link": {
            "name": "gloo-loopback",
            "latency_us": ag["alpha_s"] * 1e6,
            "bandwidth_gb_s": (1.0 / ag["beta_s_per_byte"]) / 1e9
            if ag["beta_s_per_byte"] > 0
            else 0.0,
        },
        "inter_node_link": None,
        "collectives": collectives,
        **({"opcurves": curves} if curves else {}),
        "measurements": {
            "gemm_fp32_tflops": compute.gemm_tflops,
            "attention_fp32_tflops": compute.attention_tflops,
            "model_step_fp32_tflops": compute.model_step_tflops,
            "model_step_preset": compute.model,
            "raw": [
                dict(op=k[0], group_size=k[1], nbytes=k[2], time_s=v)
                for k, v in sorted(slowest.items())
            ],
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return profile


def plot_fits(profile: dict, path: Path) -> Path:
    """Measured time per call vs size with the fitted lines, one panel per op (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw = profile["measurements"]["raw"]
    ops = sorted({r["op"] for r in raw})
    fig, axes = plt.subplots(1, len(ops), figsize=(4 * len(ops), 3.6), squeeze=False)
    for ax, op in zip(axes[0], ops, strict=True):
        for p in sorted({r["group_size"] for r in raw if r["op"] == op}):
            pts = [
                (r["nbytes"], r["time_s"]) for r in raw if r["op"] == op and r["group_size"] == p
            ]
            n, t = map(np.array, zip(*pts, strict=True))
            fit = profile["collectives"][op][p]
            line = ax.loglog(n, t, "o", label=f"measured, {p} ranks")[0]
            ax.loglog(n, fit["alpha_s"] + fit["beta_s_per_byte"] * n, "-", color=line.get_color(),
                      label=f"fit a={fit['alpha_s'] * 1e6:.0f} us, 1/b={1e-9 / max(fit['beta_s_per_byte'], 1e-30):.2f} GB/s")  # fmt: skip
        ax.set_title(op)
        ax.set_xlabel("size [bytes] (nccl-tests convention)")
        ax.set_ylabel("time per call [s]")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"{profile['name']}: measured vs fitted (MEASURED on this machine)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def calibrate(
    world_sizes: tuple[int, ...] = (2, 4),
    sizes: tuple[int, ...] = DEFAULT_SIZES,
    threads: int = 1,
    name: str = "local-cpu",
    out_dir: Path = Path("configs/hardware"),
    plot_dir: Path = Path("reports/calibration"),
    preset: str = "small-pixart-alpha",
    device: str = "cpu",
    keep_collectives: bool = False,
) -> tuple[Path, Path, dict]:
    """Run the measurements in local worlds; write the profile and its plots (collective fits,
    and the operator curves beside them as NAME-ops.png). `device` cuda: the operator curves
    (and the device's name) are the GPU's; collectives stay gloo's. `keep_collectives`: reuse
    the collective measurements of the existing profile NAME (refitted identically) and measure
    only compute and operator curves."""
    from suite.worlds.launch import LocalWorld
    from suite.worlds.runner import device_name

    rows: list[dict] = []
    if keep_collectives:
        rows = kept_collectives(out_dir / f"{name}.yaml")
        world_sizes = ()
    for n in world_sizes:
        with LocalWorld(n, threads_per_rank=threads) as world:
            for per_rank in world.call(measure_collectives, sizes, timeout_s=3600):
                rows.extend(per_rank)
    with LocalWorld(1, threads_per_rank=threads) as world:
        compute = world.call(measure_compute, threads, preset, device, timeout_s=900)[0]
    profile_path = out_dir / f"{name}.yaml"
    dev = torch.device(device)
    kept = yaml.safe_load(profile_path.read_text()) if keep_collectives else None
    profile = write_profile(profile_path, name, rows, compute, threads, device_name(dev))
    if kept:  # the fits as they were, bit for bit (a refit can differ in the last digit)
        profile.update({k: kept[k] for k in ("collectives", "intra_node_link", "gpus_per_node")})
        profile_path.write_text(yaml.safe_dump(profile, sort_keys=False))
    plot_op_curves(profile, plot_dir / f"{name}-ops.png")
    return profile_path, plot_fits(profile, plot_dir / f"{name}.png"), profile


def kept_collectives(path: Path) -> list[dict]:
    """The raw collective rows of an existing calibrated profile (each op's slowest-rank time),
    as `measure_collectives` rows; ValueError if it has none."""
    raw = ((yaml.safe_load(path.read_text()) or {}).get("measurements") or {}).get("raw") or []
    if not raw:
        raise ValueError(f"{path} holds no collective measurements to keep")
    return [{**r, "rank": 0} for r in raw]


def plot_op_curves(profile: dict, path: Path) -> Path | None:
    """Measured operator curves: TFLOP/s by size per compute class and dtype, GB/s by bytes."""
    curves = profile.get("opcurves")
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, cls in zip(axes[:3], ("matmul", "conv", "attention"), strict=True):
        for dtype, pts in (curves.get(cls) or {}).items():
            series = pts.items() if cls == "attention" else [("", pts)]
            for d, p in series:
                x = [q["s_kv" if cls == "attention" else "flops"] for q in p]
                ax.semilogx(x, [q["tflops"] * 1e3 for q in p], "o-", label=f"{dtype} {d}".strip())
        ax.set_title(cls)
        ax.set_xlabel("sequence length" if cls == "attention" else "FLOPs per call")
        ax.set_ylabel("GFLOP/s")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    for cls in ("norm", "elementwise", "memory", "activation", "gelu"):
        p = curves.get(cls) or []
        axes[3].loglog([q["bytes"] for q in p], [q["gb_s"] for q in p], "o-", label=cls)
    axes[3].set_title("memory-bound ops (fp32)")
    axes[3].set_xlabel("bytes read + written per call")
    axes[3].set_ylabel("GB/s")
    axes[3].legend(fontsize=7)
    axes[3].grid(True, which="both", alpha=0.3)
    launch = curves.get("launch", {}).get("us", 0.0)
    fig.suptitle(f"{profile['name']}: operator curves, launch {launch:.2f} us/call (MEASURED)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
