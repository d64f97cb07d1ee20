"""Our `ulysses` vs diffusers' `diffusers_cp` (Ulysses), interleaved loop by loop in one world.

A sweep runs one method's loops back to back, so a neighbour's job that starts mid-sweep lands on
one method only. Here both methods are built on every rank and their denoising loops alternate
(a barrier before each), so both see the same machine; we report the median loop of each, their
ratio, and the largest difference between their outputs.

    flock /tmp/diffscale-cpu.lock .venv/bin/python benchmarks/ab_ulysses.py \
        --workload tiny-flux-dev --px 1024 --steps 4 --loops 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def ab(ctx, workload: str, px: int, steps: int, loops: int) -> dict:
    """On every rank: build both, alternate their loops; per-loop seconds and rank-0 outputs."""
    import torch
    import torch.distributed as dist

    import workloads
    from suite import parallel
    from suite.distributed.comm import Comm, Ledger
    from suite.distributed.mesh import ParallelDims
    from suite.worlds.runner import denoise

    mesh = ctx.mesh(ParallelDims(ulysses=ctx.world_size))
    methods = {}
    for name in ("ulysses", "diffusers_cp"):
        wl = workloads.build(workload, height=px, width=px, steps=steps)
        ledger = Ledger(ctx.rank)
        methods[name] = (parallel.apply(name, wl, Comm(mesh, ledger), {}), wl, ledger)
    seconds = {name: [] for name in methods}
    outputs = {}
    with torch.inference_mode():
        for i in range(loops + 1):  # the first round warms up
            for name, (par, wl, ledger) in methods.items():
                dist.barrier()
                t0 = time.perf_counter()
                outputs[name] = denoise(par, wl, ledger, ctx.device)
                if i:
                    seconds[name].append(time.perf_counter() - t0)
    diff = (outputs["ulysses"] - outputs["diffusers_cp"]).abs().max().item()
    return {
        "seconds": seconds,
        "max_abs_diff": diff,
        "max_abs": outputs["ulysses"].abs().max().item(),
    }


def main() -> None:
    from suite.worlds.launch import LocalWorld

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="tiny-flux-dev")
    parser.add_argument("--px", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--loops", type=int, default=10)
    parser.add_argument("--world", type=int, default=2)
    args = parser.parse_args()
    with LocalWorld(args.world, threads_per_rank=1) as world:
        got = world.call(ab, args.workload, args.px, args.steps, args.loops, timeout_s=1800)
    # a loop's latency is its slowest rank's, as in the harness
    per_loop = {
        name: [max(r["seconds"][name][i] for r in got) for i in range(args.loops)]
        for name in got[0]["seconds"]
    }
    median = {name: statistics.median(v) for name, v in per_loop.items()}
    print(
        json.dumps(
            {
                **vars(args),
                "median_loop_s": median,
                "min_loop_s": {name: min(v) for name, v in per_loop.items()},
                "ours_over_diffusers": median["ulysses"] / median["diffusers_cp"],
                "max_abs_diff": got[0]["max_abs_diff"],
                "max_abs_output": got[0]["max_abs"],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
