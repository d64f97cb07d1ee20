"""Helper of benchmarks/gpu_check.sh (issue 12, item 5c): the steps of the GPU check that are
Python rather than `diffscale` commands.

    python benchmarks/gpu_check_compare.py env --out env.txt
    python benchmarks/gpu_check_compare.py preflight configs/perf/gpu_check.yaml ...
    python benchmarks/gpu_check_compare.py subset CONFIG --world-mode real --out FILE
    python benchmarks/gpu_check_compare.py nccl-probe --out probe.json
    python benchmarks/gpu_check_compare.py compare DB --configs A,B --md OUT.md --csv OUT.csv

- env: versions (python, torch, CUDA, cuDNN, NCCL, diffusers), the GPU and driver, the commit.
- preflight: validates the configs and estimates each real run's peak GPU memory against the
  GPU's (suite.config.memory, as `diffscale run` will); on a machine without a GPU it validates them
  with `device: cpu` (the only check that needs the GPU counts GPUs) and takes the memory of an
  H200 as nvidia-smi reports it (143771 MiB), so that it runs anywhere.
- subset: a copy of a config with only the strategy entries of one world mode (same experiment,
  so the same run ids: the real and the analytic runs become separate, time-boxed stages).
- nccl-probe: a world of one rank on the NCCL backend, collectives timed through the comm
  ledger's CUDA-event path (`suite.distributed.comm.Ledger(cuda=True)`) and by plain CUDA events, a bf16
  GEMM load sampled by NVML (`suite.measure.profiling.NvmlSampler`). NCCL refuses two ranks on one GPU,
  so one rank is what a single GPU can exercise.
- compare: every real run beside the unanchored projection of its analytic twin on each
  profile projected (signed error, target within 15%), measured peak memory beside the
  estimate, NVML columns, the stages' status; a Markdown page and a CSV.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from any directory
    sys.path.insert(0, str(REPO))

H200_SMI_BYTES = 143771 << 20  # an H200 as nvidia-smi reported it on the lent machines
TARGET_PCT = 15.0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# -- env ---------------------------------------------------------------------------------------


def _git_commit() -> str:
    if os.environ.get("GPU_CHECK_COMMIT"):
        return os.environ["GPU_CHECK_COMMIT"] + " (GPU_CHECK_COMMIT)"
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or "unknown (no git checkout)"
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"


def cmd_env(args) -> int:
    import platform

    import torch

    lines = {
        "host": socket.gethostname(),
        "python": f"{platform.python_version()} ({sys.executable})",
        "torch": torch.__version__,
        "torch CUDA": str(torch.version.cuda),
        "cuDNN": str(torch.backends.cudnn.version()),
        "CPU cores": str(os.cpu_count()),
        "diffscale commit": _git_commit(),
    }
    for name in ("diffusers", "transformers", "numpy", "pandas"):
        try:
            lines[name] = __import__(name).__version__
        except Exception as e:  # noqa: BLE001 - recorded, not fatal
            lines[name] = f"missing ({type(e).__name__}: {e})"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        lines["GPU"] = f"{p.name}, {p.total_memory / 2**30:.1f} GiB, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs"  # fmt: skip
        try:
            v = torch.cuda.nccl.version()
            lines["NCCL"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        except Exception as e:  # noqa: BLE001
            lines["NCCL"] = f"unknown ({e})"
        try:
            import pynvml

            pynvml.nvmlInit()
            lines["driver"] = str(pynvml.nvmlSystemGetDriverVersion())
            pynvml.nvmlShutdown()
        except Exception as e:  # noqa: BLE001
            lines["driver"] = f"NVML unavailable ({type(e).__name__}: {e})"
    else:
        lines["GPU"] = "none: torch.cuda.is_available() is False"
    text = "\n".join(f"{k}: {v}" for k, v in lines.items()) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")
    return 0 if torch.cuda.is_available() or args.allow_cpu else 1


# -- configs -------------------------------------------------------------------------------------


def specs_of(path: str | Path) -> tuple[list, str]:
    """The runs of a config as `diffscale run` resolves them on a GPU machine, and how it was
    validated. Without a GPU, `device: auto` resolves to cpu and `device: cuda` fails the GPU
    count (the only check that needs the machine's GPUs: the config is then validated with
    device cpu); either way the runs are given device cuda, so their run ids are the GPU's."""
    import yaml

    from suite.config.experiment import ConfigError, load_config, parse_config

    raw = yaml.safe_load(Path(path).read_text())
    device = (raw.get("settings") or {}).get("device", "cpu")
    try:
        runs = list(load_config(path).runs)
    except ConfigError as e:
        only_gpus = all("GPUs; this machine has 0" in p for p in e.problems)
        if not only_gpus:
            raise
    else:
        if device != "auto" or any(s.device == "cuda" for s in runs):
            return runs, "validated as written"
        # device auto resolved to cpu here: the runs as a GPU machine resolves them
        note = "validated as written (device auto: cpu here, given device cuda as on a GPU)"
        return [dataclasses.replace(s, device="cuda") for s in runs], note
    cpu = copy.deepcopy(raw)
    cpu.setdefault("settings", {})["device"] = "cpu"
    for entry in cpu.get("strategies") or []:
        if isinstance(entry.get("settings"), dict) and "device" in entry["settings"]:
            entry["settings"]["device"] = "cpu"
    runs = parse_config(cpu, str(path)).runs
    note = f"validated with device cpu (no GPU here), runs given device {device} back"
    return [dataclasses.replace(s, device=device) for s in runs], note


def cmd_preflight(args) -> int:
    from suite.config.memory import CUDA_RESERVE_BYTES, estimate, fmt_bytes

    bad = 0
    if _cuda():
        from suite.config.memory import _gpu_limit

        limit, what = _gpu_limit(1)
    else:
        limit = H200_SMI_BYTES - CUDA_RESERVE_BYTES
        what = f"no GPU here: an H200's {fmt_bytes(H200_SMI_BYTES)} less {fmt_bytes(CUDA_RESERVE_BYTES)}"  # fmt: skip
    for path in args.configs:
        specs, note = specs_of(path)
        print(f"{path}: {len(specs)} runs ({note})")
        for s in specs:
            line = f"  {s.run_id}  {s.world_mode:8s} {s.label()}"
            if s.world_mode == "real" and s.memory_check:
                t0 = time.perf_counter()
                est = estimate(s)
                fits = est.total <= limit
                bad += not fits
                line += (
                    f"\n      memory estimate {fmt_bytes(est.total)} ({fmt_bytes(est.params)} "
                    f"parameters + {fmt_bytes(est.activations)} activations) vs limit "
                    f"{fmt_bytes(limit)} [{what}]: {'fits' if fits else 'REFUSED'} "
                    f"({time.perf_counter() - t0:.1f} s to estimate)"
                )
            print(line)
    return 1 if bad else 0


def cmd_subset(args) -> int:
    import yaml

    raw = yaml.safe_load(Path(args.config).read_text())
    top = (raw.get("settings") or {}).get("world_mode", "real")
    keep = [
        e
        for e in raw.get("strategies") or []
        if (e.get("settings") or {}).get("world_mode", top) == args.world_mode
    ]
    if not keep:
        print(f"error: {args.config} has no {args.world_mode} entries", file=sys.stderr)
        return 2
    raw["strategies"] = keep
    head = f"# generated by benchmarks/gpu_check_compare.py subset from {args.config}: the {args.world_mode} entries only\n"  # fmt: skip
    Path(args.out).write_text(head + yaml.safe_dump(raw, sort_keys=False))
    return 0


# -- NCCL / CUDA events / NVML probe -------------------------------------------------------------


def cmd_nccl_probe(args) -> int:
    import numpy as np
    import torch
    import torch.distributed as dist

    from suite.distributed.comm import AXES, OPS, Ledger, _all_gather_flat
    from suite.measure.profiling import NvmlSampler, nvml_summary
    from suite.worlds.launch import _free_port

    report: dict = {"ok": False}
    try:
        if not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA device")
        dev = torch.device("cuda", 0)
        torch.cuda.set_device(dev)
        t0 = time.perf_counter()
        # device_id: the NCCL communicator is made here, not at the first collective
        dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}",
                                rank=0, world_size=1, device_id=dev)  # fmt: skip
        report["backend"] = dist.get_backend()
        report["init_s"] = time.perf_counter() - t0
        ledger = Ledger(0, cuda=True)
        sampler = NvmlSampler(dev)
        sampler.start()
        ref = torch.cuda.Event(enable_timing=True)
        ref.record()
        torch.cuda.synchronize()
        ref_t = time.perf_counter()
        plain = []  # (op, nbytes, async, start and end CUDA events around the call)
        for nbytes in (1 << 20, 16 << 20, 256 << 20):
            x = torch.ones(nbytes // 2, dtype=torch.bfloat16, device=dev)
            out = torch.empty_like(x)
            dist.all_reduce(x)  # warm-up: communicator and buffers
            calls = {
                "all_reduce": lambda a, x=x: dist.all_reduce(x, async_op=a),
                "all_gather": lambda a, x=x, o=out: _all_gather_flat(o, x, async_op=a),
                "broadcast": lambda a, x=x: dist.broadcast(x, 0, async_op=a),
            }
            for op, call in calls.items():
                for is_async in (False, True):
                    s, e = (
                        torch.cuda.Event(enable_timing=True),
                        torch.cuda.Event(enable_timing=True),
                    )
                    idx = ledger.open(op, "patch", 1, nbytes, "gpu_check.probe", is_async)
                    s.record()
                    work = call(is_async)
                    if is_async:
                        ledger.begin_wait(idx)
                        work.wait()
                        ledger.end_wait(idx)
                    else:
                        ledger.close_blocking(idx)
                    e.record()
                    plain.append((op, nbytes, is_async, s, e))
        torch.cuda.synchronize()
        ledger.resolve(ref, ref_t)
        ev = ledger.events()
        rows = []
        for i, (op, nbytes, is_async, s, e) in enumerate(plain):
            r = ev[i]
            assert OPS[r["op"]] == op and AXES[r["axis"]] == "patch"
            rows.append({"op": op, "nbytes": int(nbytes), "async": is_async,
                         "ledger_s": float(r["t_done"] - r["t_issue"]),
                         "ledger_wait_s": float(r["t_wait_end"] - r["t_wait_start"]),
                         "cuda_event_s": s.elapsed_time(e) / 1e3})  # fmt: skip
        report["collectives"] = rows
        report["ledger_times_finite"] = bool(
            np.isfinite(ev[["t_issue", "t_done"]].tolist()).all()
            and all(r["ledger_s"] >= 0 for r in rows)
        )
        # a GPU load for NVML to see: bf16 GEMMs for about a second, timed by CUDA events
        a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        n, t_end = 0, time.perf_counter() + 1.0
        s.record()
        while time.perf_counter() < t_end:
            for _ in range(20):
                a @ b
            n += 20
            torch.cuda.synchronize()
        e.record()
        e.synchronize()
        report["gemm_bf16_8192_tflops"] = 2 * 8192**3 * n / (s.elapsed_time(e) / 1e3) / 1e12
        samples = sampler.stop()
        report["nvml_samples"] = int(len(samples))
        report["nvml"] = nvml_summary({0: samples})
        report["ok"] = report["ledger_times_finite"] and report["nvml_samples"] > 0
    except Exception as e:  # noqa: BLE001 - the probe reports, the check goes on
        import traceback

        report["error"] = f"{type(e).__name__}: {e}"
        report["traceback"] = traceback.format_exc()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: v for k, v in report.items() if k != "traceback"}, indent=1, default=str))
    return 0 if report["ok"] else 1


# -- comparison ----------------------------------------------------------------------------------


def _short(dtype: str) -> str:
    return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(dtype, dtype)


def comparison(db: str | Path, target_pct: float = TARGET_PCT):
    """(pairs, real): each real run beside the unanchored projection of its analytic twin in the
    run's dtype on every profile projected (pairs: one row per run and profile), and the real
    runs themselves. Twins are matched on analysis.projection_report.MATCH, as `validation`."""
    import pandas as pd

    from analysis.projection_report import MATCH
    from analysis.tables import read_table

    runs, proj = read_table(db, "runs"), read_table(db, "projection")
    ok = runs[runs["status"] == "ok"]
    real = ok[ok["world_mode"] == "real"]
    twins = ok[ok["world_mode"] == "analytic"]
    unanchored = proj["anchored_to"].isna() | proj["anchored_to"].eq("")
    proj = proj[unanchored]
    tw = twins[["run_id", *MATCH]].merge(proj, on="run_id")
    tw = tw[tw["projected_dtype"] == tw["dtype"].map(_short)]
    keep = ["run_id", *MATCH, "latency_s", "latency_min_s", "latency_max_s", "peak_mem_bytes",
            "nvml_mem_used_max_bytes", "nvml_util_mean_pct", "nvml_power_mean_w", "device"]  # fmt: skip
    pairs = real[[c for c in keep if c in real]].merge(
        tw.rename(columns={"run_id": "twin_run_id", "latency_s": "projected_latency_s"}),
        on=MATCH,
        suffixes=("", "_proj"),
    )
    pairs = pairs.rename(columns={"latency_s": "measured_latency_s", "hardware": "profile"})
    pairs["error_pct"] = 100 * (pairs["projected_latency_s"] / pairs["measured_latency_s"] - 1)
    pairs["within_target"] = pairs["error_pct"].abs() <= target_pct
    pairs["resolution"] = [_size(r) for r in pairs.itertuples()]
    cols = ["profile", "workload", "resolution", "steps", "dtype", "measured_latency_s",
            "projected_latency_s", "error_pct", "within_target", "compute_bound_pct",
            "memory_bound_pct", "launch_pct", "compute_model", "run_id", "twin_run_id"]  # fmt: skip
    pairs = pairs[[c for c in cols if c in pairs]].sort_values(
        ["profile", "workload", "resolution"]
    )
    return pairs.reset_index(drop=True), real, pd.concat([twins, real])


def _size(run) -> str:
    """'HxW', or 'FxHxW' for a video run."""
    from analysis.tables import size_text

    return size_text(getattr(run, "frames", None), run.height, run.width)


def _md_table(df) -> str:
    import pandas as pd

    from analysis.render import markdown_table

    def cell(v) -> str:
        if v is None or (isinstance(v, float) and v != v):
            return "–"
        if isinstance(v, bool):
            return "yes" if v else "no"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    numeric = {i for i, c in enumerate(df.columns) if pd.api.types.is_numeric_dtype(df[c])}
    return markdown_table(
        list(df.columns), [[cell(v) for v in row] for row in df.itertuples(index=False)], numeric
    )


def _memory_rows(configs: list[str], real) -> list[dict]:
    """Measured peak GPU memory of each real run beside suite.config.memory's estimate of it."""
    from suite.config.memory import estimate

    out = []
    specs = {
        (s.workload, s.frames or 0, s.height, s.width): s
        for path in configs
        for s in specs_of(path)[0]
        if s.world_mode == "real"
    }
    for r in real.itertuples():
        frames = getattr(r, "frames", None)
        frames = int(frames) if frames is not None and frames == frames else 0
        spec = specs.get((r.workload, frames, int(r.height), int(r.width)))
        if spec is None or not r.peak_mem_bytes > 0:
            continue
        est = estimate(spec)
        out.append({"workload": r.workload, "resolution": _size(r),
                    "measured_peak_GiB": r.peak_mem_bytes / 2**30,
                    "estimate_GiB": est.total / 2**30,
                    "estimate_over_measured": est.total / r.peak_mem_bytes})  # fmt: skip
    return out


def _profile_summary(path: Path) -> list[str]:
    import yaml

    p = yaml.safe_load(path.read_text())
    curves = p.get("opcurves") or {}
    dev = p.get("device") or {}
    rates = ", ".join(f"{k.removesuffix('_tflops')} {v:.4g}" for k, v in dev.items() if k.endswith("_tflops"))  # fmt: skip
    mem = max((q["gb_s"] for q in curves.get("memory") or []), default=float("nan"))
    att = curves.get("attention", {}).get("bf16", {})
    best_att = max((q["tflops"] for pts in att.values() for q in pts), default=float("nan"))
    return [
        f"- profile `{p.get('name')}` ({path.name}): device `{dev.get('name')}`, "
        f"measured {curves.get('measured', {}).get('wall_s', float('nan')):.0f} s of operator curves",
        f"- best GEMM TFLOP/s per dtype: {rates}",
        f"- best bf16 SDPA {best_att:.4g} TFLOP/s; copy {mem:.4g} GB/s (read + written); "
        f"launch {curves.get('launch', {}).get('us', float('nan')):.3g} us/call",
    ]


def cmd_compare(args) -> int:
    lines = ["# GPU check (issue 12, item 5c)", ""]
    lines += [
        "Single-device latency on one GPU, MEASURED (real world, NCCL backend, steps timed after "
        "a device synchronize, latency = median of the timed loops) beside the PROJECTED latency "
        "of the same run's analytic twin (operator model, unanchored, bf16) on each profile. "
        f"error = projected / measured - 1; target |error| <= {args.target:g}%.",
        "",
    ]
    if args.env and Path(args.env).is_file():
        lines += ["## Environment", "", "```", Path(args.env).read_text().strip(), "```", ""]
    if args.stages and Path(args.stages).is_file():
        lines += [
            "## Stages",
            "",
            "| stage | status | seconds | note |",
            "| --- | --- | ---: | --- |",
        ]
        for row in Path(args.stages).read_text().splitlines():
            parts = (row.split("\t") + ["", "", "", ""])[:4]
            lines.append("| " + " | ".join(parts) + " |")
        lines.append("")
    pairs = None
    rc = 0
    try:
        pairs, real, _ = comparison(args.db, args.target)
    except Exception as e:  # noqa: BLE001 - the page still says what there is
        lines += [f"**No comparison**: {type(e).__name__}: {e}", ""]
        rc = 1
    if pairs is not None:
        pairs.to_csv(args.csv, index=False)  # header only when nothing pairs
        lines += ["## Measured (real world, one GPU)", ""]
        shown = real.assign(
            peak_mem_GiB=real["peak_mem_bytes"] / 2**30,
            nvml_mem_used_max_GiB=real["nvml_mem_used_max_bytes"] / 2**30,
        )
        cols = ["workload", "height", "width", "steps", "latency_s", "latency_min_s",
                "latency_max_s", "peak_mem_GiB", "nvml_mem_used_max_GiB", "nvml_util_mean_pct",
                "nvml_power_mean_w", "device", "run_id"]  # fmt: skip
        lines += [_md_table(shown[cols]) if len(real) else "no real run stored", ""]
        lines += ["## Projected vs measured (PROJECTED: analytic twin, unanchored)", ""]
        if len(pairs):
            for profile, g in pairs.groupby("profile"):
                med = float(g["error_pct"].abs().median())
                lines.append(f"- `{profile}`: {int(g['within_target'].sum())} of {len(g)} within "
                             f"{args.target:g}%, median |error| {med:.1f}%")  # fmt: skip
            shown = pairs.drop(columns=["compute_model"]).assign(
                within_target=pairs["within_target"].map({True: "yes", False: "**NO**"})
            )
            lines += ["", _md_table(shown), ""]
        else:
            lines += ["no real run with a projected analytic twin in the store", ""]
            rc = 1
        if args.configs:
            try:
                mem = _memory_rows(args.configs.split(","), real)
                if mem:
                    import pandas as pd

                    lines += ["## Peak GPU memory: measured vs suite.config.memory's estimate", "",
                              _md_table(pd.DataFrame(mem)), ""]  # fmt: skip
            except Exception as e:  # noqa: BLE001
                lines += [f"memory estimates not computed: {type(e).__name__}: {e}", ""]
    if args.profile and Path(args.profile).is_file():
        lines += ["## Calibrated profile (MEASURED on this GPU)", ""]
        try:
            lines += _profile_summary(Path(args.profile)) + [""]
        except Exception as e:  # noqa: BLE001
            lines += [f"profile not read: {type(e).__name__}: {e}", ""]
    if args.probe and Path(args.probe).is_file():
        probe = json.loads(Path(args.probe).read_text())
        lines += ["## NCCL / CUDA-event / NVML probe (one rank)", ""]
        if probe.get("ok"):
            lines.append(f"- backend {probe.get('backend')}, init {probe.get('init_s', 0):.2f} s; "
                         f"ledger CUDA-event times finite: {probe.get('ledger_times_finite')}; "
                         f"NVML samples {probe.get('nvml_samples')}: {probe.get('nvml')}; "
                         f"bf16 GEMM 8192^3 {probe.get('gemm_bf16_8192_tflops', 0):.0f} TFLOP/s")  # fmt: skip
            import pandas as pd

            lines += ["", _md_table(pd.DataFrame(probe.get("collectives") or [])), ""]
        else:
            lines += [f"- FAILED: {probe.get('error')}", "", "```", str(probe.get("traceback", "")).strip(), "```", ""]  # fmt: skip
    Path(args.md).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("env", help="versions, GPU, driver, commit")
    p.add_argument("--out")
    p.add_argument("--allow-cpu", action="store_true", help="exit 0 without a GPU too")
    p.set_defaults(func=cmd_env)
    p = sub.add_parser("preflight", help="validate configs, estimate GPU memory")
    p.add_argument("configs", nargs="+")
    p.set_defaults(func=cmd_preflight)
    p = sub.add_parser("subset", help="a config with one world mode's entries only")
    p.add_argument("config")
    p.add_argument("--world-mode", required=True, choices=("real", "fake", "analytic"))
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_subset)
    p = sub.add_parser("nccl-probe", help="NCCL world of 1, ledger CUDA events, NVML")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_nccl_probe)
    p = sub.add_parser("compare", help="projected vs measured: Markdown and CSV")
    p.add_argument("db")
    p.add_argument("--md", required=True)
    p.add_argument("--csv", required=True)
    p.add_argument("--configs", help="comma-separated configs (memory estimates of real runs)")
    p.add_argument("--env")
    p.add_argument("--stages", help="TSV: stage, status, seconds, note")
    p.add_argument("--probe", help="nccl-probe JSON")
    p.add_argument("--profile", help="calibrated profile YAML")
    p.add_argument("--target", type=float, default=TARGET_PCT, help="percent (default 15)")
    p.set_defaults(func=cmd_compare)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
