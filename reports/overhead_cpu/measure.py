"""Measure the comm ledger's overhead: the runs of a config with the ledger on and off.

    flock /tmp/diffscale-cpu.lock .venv/bin/python reports/overhead_cpu/measure.py \
        [--config configs/perf/overhead_cpu.yaml] [--rounds 5] [--out reports/overhead_cpu]

Each run of the config is run 2 x rounds times in one spawned world, ledger on and off in
alternating order (on-off, off-on, ...) so that drift of a shared machine hits both alike. A
run's latency is computed as the store computes it (per timed loop the slowest rank, median over
loops); the overhead is the median over rounds of on / off - 1. The ledger's cost per logged
call is also timed directly (a tight loop of Ledger calls) and multiplied by the collectives a
step logs: a prediction free of run-to-run noise. Step timers stay on in both arms: latency is
measured with them (two perf_counter reads per step).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from suite import profiling  # noqa: E402
from suite.comm import Ledger  # noqa: E402
from suite.config import load_config  # noqa: E402
from suite.launch import LocalWorld  # noqa: E402


def latency(results) -> float:
    loops = np.max(np.array([r.loop_s for r in results]), axis=0)
    return float(np.median(loops))


def per_call_cost_us(n: int = 20000) -> tuple[float, float]:
    """Ledger cost per blocking and per async call (us), timed in this process."""
    ledger = Ledger(0, capacity=n + 1)
    t0 = time.perf_counter()
    for _ in range(n):
        idx = ledger.open("all_gather", "patch", 2, 1 << 16, "down_blocks.0.resnets.0.conv1", False)
        ledger.close_blocking(idx)
    blocking = (time.perf_counter() - t0) / n
    ledger.clear()
    t0 = time.perf_counter()
    for _ in range(n):
        idx = ledger.open("all_gather", "patch", 2, 1 << 16, "down_blocks.0.resnets.0.conv1", True)
        ledger.mark_done(idx)
        ledger.begin_wait(idx)
        ledger.end_wait(idx)
    return blocking * 1e6, (time.perf_counter() - t0) / n * 1e6


def callback_cost_us(n: int = 3000) -> float:
    """Extra cost (us) of the completion callback the ledger puts on a gloo future per async
    call, timed in a gloo world of one in this process (async all-gather with vs without it)."""
    import torch.distributed as dist

    from suite.launch import _free_port

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )
    x, out = torch.randn(1024), torch.empty(1024)

    def run(callback: bool) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            work = dist.all_gather_into_tensor(out, x, async_op=True)
            if callback:
                work.get_future().add_done_callback(lambda _f: None)
            work.wait()
        return (time.perf_counter() - t0) / n

    try:
        diffs = [run(True) - run(False) for _ in range(3)]
    finally:
        dist.destroy_process_group()
    return max(0.0, statistics.median(diffs)) * 1e6


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs/perf/overhead_cpu.yaml"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "reports/overhead_cpu"))
    args = ap.parse_args()
    config = load_config(args.config)
    rows = []
    for spec in config.runs:
        on, off, ratios, calls = [], [], [], None
        with LocalWorld(spec.world_size, threads_per_rank=spec.threads_per_rank) as world:
            for i in range(args.rounds):
                got = {}
                for mode in ("on", "off") if i % 2 == 0 else ("off", "on"):
                    setting = None if mode == "on" else "off"
                    world.call(profiling.configure, {profiling.LEDGER_ENV: setting})
                    results = world.run(spec)
                    got[mode] = latency(results)
                    if mode == "on":
                        n_steps = spec.repeats * spec.steps
                        calls = (
                            np.mean([len(r.events) for r in results]) / n_steps,
                            np.mean([r.events["is_async"].sum() for r in results]) / n_steps,
                        )
                on.append(got["on"])
                off.append(got["off"])
                ratios.append(got["on"] / got["off"] - 1)
                print(f"{spec.label()} round {i}: on {got['on']:.4f} s, off {got['off']:.4f} s")
            world.call(profiling.configure, {profiling.LEDGER_ENV: None})
        rows.append((spec, on, off, ratios, calls))
    blocking_us, async_us = per_call_cost_us()
    async_us += callback_cost_us()
    cfg = Path(args.config).resolve()
    config_path = cfg.relative_to(ROOT) if cfg.is_relative_to(ROOT) else cfg
    write_report(Path(args.out), config_path, config, args.rounds, rows, blocking_us, async_us)
    return 0


def write_report(out: Path, config_path, config, rounds, rows, blocking_us, async_us) -> None:
    spec0 = config.runs[0]
    lines = [
        "# Instrumentation overhead on CPU: comm ledger on vs off",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with "
        f"`reports/overhead_cpu/measure.py` on `{config_path}`.",
        "",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical cores, shared with other jobs "
        "(runs serialized by a lock file)",
        f"- software: Python {platform.python_version()}, torch {torch.__version__}, gloo",
        f"- world: {spec0.world_size} spawned ranks, {spec0.threads_per_rank} intra-op thread per "
        f"rank; {spec0.warmup_runs} warm-up loop, {spec0.repeats} timed loops of {spec0.steps} "
        "steps per run",
        f"- design: each run {2 * rounds} times in one world, ledger on / off alternating "
        "(on-off, off-on, ...); latency per run as stored (per timed loop the slowest rank, "
        "median over loops); overhead = median over rounds of latency_on / latency_off - 1",
        "- off = `DIFFSCALE_LEDGER=off` (Ledger.enabled False: collectives run unlogged); "
        "step timers stay on in both arms (two perf_counter reads per step)",
        "",
        "| run | collectives / step / rank (async) | latency on [s] | latency off [s] | "
        "overhead (median) | paired range | predicted from per-call cost |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for spec, on, off, ratios, (calls, n_async) in rows:
        step_s = statistics.median(off) / spec.steps
        cost_s = ((calls - n_async) * blocking_us + n_async * async_us) * 1e-6
        lines.append(
            f"| {spec.label()} | {calls:.1f} ({n_async:.1f}) | {statistics.median(on):.4f} | "
            f"{statistics.median(off):.4f} | {100 * statistics.median(ratios):+.2f}% | "
            f"{100 * min(ratios):+.2f}% to {100 * max(ratios):+.2f}% | "
            f"{100 * cost_s / step_s:.2f}% |"
        )
    lines += [
        "",
        f"Ledger cost per logged call, timed in one process (20,000 calls): blocking "
        f"{blocking_us:.1f} us (open + close), async {async_us:.1f} us (open, wait begin / "
        "end, and the completion callback registered on the gloo future, timed as the extra "
        "wait time of an async all-gather in a gloo world of one). The prediction column is "
        "that cost times the calls a step logs, over the ledger-off step time.",
        "",
        "Target: <= 3%. The paired range shows the run-to-run noise of this shared 2-core "
        "machine; differences inside it are not resolved by this measurement.",
        "",
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.md").write_text("\n".join(lines))
    print(f"wrote {out / 'index.md'}")


if __name__ == "__main__":
    sys.exit(main())
