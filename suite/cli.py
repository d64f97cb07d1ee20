"""`diffscale`: run experiments, report, export, list workloads."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """examples:
  diffscale run configs/quickstart.yaml            # sweep, store, report
  diffscale run configs/quickstart.yaml --dry-run  # validate and list the runs only
  diffscale report results/quickstart              # rebuild reports/quickstart/index.html
  diffscale export results/quickstart --format parquet
  diffscale workloads --resolution 1024
  torchrun --nproc-per-node 4 -m suite.cli run CONFIG --launcher torchrun   # multi-GPU / multi-node
"""


def _cmd_run(args: argparse.Namespace) -> int:
    from suite.config import ConfigError, load_config
    from suite.sweep import default_out_dir

    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for note in config.warnings:
        print(f"warning: {note}", file=sys.stderr)
    out = Path(args.out) if args.out else default_out_dir(config.experiment)
    if args.profile:  # read by every rank (spawned ranks inherit it); not part of run identity
        import os

        from suite.profiling import PROFILE_ENV

        os.environ[PROFILE_ENV] = "1"
    if args.dry_run:
        from suite.results import ResultStore

        done = (
            ResultStore(out / "results.db").done_run_ids()
            if (out / "results.db").exists()
            else set()
        )
        print(f"{config.experiment}: {len(config.runs)} runs -> {out / 'results.db'}")
        for spec in config.runs:
            state = "done" if spec.run_id in done else "pending"
            print(f"  {spec.run_id}  world={spec.world_size}  {state:7s}  {spec.label()}")
        return 0

    if args.launcher == "torchrun":
        from suite.sweep import run_torchrun

        summary = run_torchrun(
            config, out, skip_failed=args.skip_failed, progress=not args.no_progress
        )
        if summary is None:  # not rank 0
            return 0
    else:
        from suite.sweep import run_local

        summary = run_local(
            config, out, skip_failed=args.skip_failed, progress=not args.no_progress
        )

    print(
        f"{config.experiment}: {len(summary.ok)} ok, {len(summary.failed)} failed, "
        f"{len(summary.unsupported)} skipped as unsupported, {len(summary.skipped)} already "
        f"stored -> {summary.db_path}"
    )
    for label, reason in summary.unsupported:
        print(f"  SKIPPED {label}: {reason}", file=sys.stderr)
    for label, error in summary.failed:
        print(f"  FAILED {label}: {error}", file=sys.stderr)
    if not args.no_report:
        from analysis.report import default_report_dir, write_report

        html, md = write_report(summary.db_path, default_report_dir(summary.db_path))
        print(f"report: {html.resolve()}\n        {md.resolve()}")
    return 1 if summary.failed else 0


def _db_of(path: str) -> Path:
    p = Path(path)
    db = p / "results.db" if p.is_dir() else p
    if not db.is_file():
        raise SystemExit(
            f"error: no results database at {db} (give the results directory of a run)"
        )
    return db


def _cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import default_report_dir, write_report

    db = _db_of(args.results)
    html, md = write_report(db, Path(args.out) if args.out else default_report_dir(db))
    print(f"report: {html}\n        {md}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from suite.results import ResultStore

    db = _db_of(args.results)
    out = Path(args.out) if args.out else db.parent / "export"
    with ResultStore(db) as store:
        for path in store.export(out, args.format):
            print(path)
    return 0


def _cmd_workloads(args: argparse.Namespace) -> int:
    import workloads
    from suite.config import _parse_resolution

    height = width = None
    if args.resolution:
        parsed = _parse_resolution(
            int(args.resolution) if args.resolution.isdigit() else args.resolution
        )
        if parsed is None:
            print(f"error: --resolution {args.resolution!r}; write an int or HxW", file=sys.stderr)
            return 2
        height, width = parsed
    rows = workloads.describe_presets(height, width)
    if args.tiny is not None:
        rows = [r for r in rows if r["name"].startswith("tiny-") == args.tiny]
    cols = list(rows[0]) if rows else []
    widths = {c: max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(_fmt(r[c]).ljust(widths[c]) for c in cols))
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from suite.calibrate import calibrate, size_ladder

    profile_path, plot, profile = calibrate(
        world_sizes=tuple(int(w) for w in args.world_sizes.split(",")),
        sizes=size_ladder(args.sizes),
        threads=args.threads,
        name=args.name,
        out_dir=Path(args.out),
        preset=args.preset,
    )
    m = profile["measurements"]
    print(f"profile: {profile_path}\nplot:    {plot}")
    print(
        f"compute (fp32, {args.threads} thread(s)): GEMM {m['gemm_fp32_tflops'] * 1e3:.1f} GFLOP/s, "
        f"attention {m['attention_fp32_tflops'] * 1e3:.1f} GFLOP/s, "
        f"{m['model_step_preset']} step {m['model_step_fp32_tflops'] * 1e3:.1f} GFLOP/s"
    )
    for op, by_size in profile["collectives"].items():
        for p, fit in by_size.items():
            bw = 1e-9 / fit["beta_s_per_byte"] if fit["beta_s_per_byte"] > 0 else float("inf")
            print(
                f"  {op:15s} {p} ranks: alpha {fit['alpha_s'] * 1e6:8.1f} us  1/beta {bw:6.2f} GB/s"
            )
    return 0


def _cmd_project(args: argparse.Namespace) -> int:
    from analysis.hardware import available_profiles
    from analysis.projection import project_store

    db = _db_of(args.results)
    names = [h.strip() for h in args.hardware.split(",") if h.strip()]
    unknown = [h for h in names if h not in available_profiles() and not Path(h).is_file()]
    if unknown:
        print(
            f"error: --hardware {unknown}: unknown; available: {', '.join(available_profiles())}",
            file=sys.stderr,
        )
        return 2
    rows = project_store(db, names, args.source, args.dtype)
    print(f"{len(rows)} projections (PROJECTED, not measured) -> {db} table 'projection'")
    from analysis.projection_report import write_projection_report
    from analysis.report import default_report_dir

    page = write_projection_report(
        db, Path(args.out) if args.out else default_report_dir(db), args.source
    )
    print(f"report: {page.resolve()}")
    for r in rows:
        print(f"  {r['run_id']}  {r['hardware']:28s} latency {r['latency_s']:.4g} s  "
              f"exposed comm {r['exposed_comm_s']:.3g} s/step")  # fmt: skip
    return 0


def _cmd_fidelity(args: argparse.Namespace) -> int:
    from suite.fidelity.score import FidelityOptions, score_store
    from suite.results import ResultStore

    db = _db_of(args.results)
    if args.reference and not Path(args.reference).is_dir():
        print(f"error: --reference {args.reference}: not a directory of images", file=sys.stderr)
        return 2
    options = FidelityOptions(
        reference=args.reference,
        weights_dir=args.weights_dir,
        allow_download=False if args.no_download else None,
    )
    with ResultStore(db) as store:
        for note in score_store(store, options, rescore=args.rescore):
            print(note)
        table = store.table("fidelity")
    missing = table[table["value"].isna()].drop_duplicates("metric")
    for _, r in missing.iterrows():
        print(f"  {r['metric']} missing: {str(r['backbone']).removeprefix('missing: ')}")
    print(f"{len(table)} fidelity rows -> {db} table 'fidelity' (diffscale report to see them)")
    return 0


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}"
    return str(v)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffscale",
        description="Benchmark and characterize parallel inference of diffusion models: run a "
        "grid of workloads x strategies x world sizes, store latency, compute/communication "
        "breakdown, bytes moved and memory per rank, and report them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run an experiment config (resumes: runs stored ok are skipped)",
        description="Validate CONFIG (every problem reported before any process starts), run "
        "each pending run in a local world of spawned ranks (or in the torchrun world), store "
        "every run in DIR/results.db as it finishes, then write the report.",
    )
    run.add_argument("config", help="experiment YAML, e.g. configs/quickstart.yaml")
    run.add_argument(
        "--out", metavar="DIR", help="results directory (default results/<experiment>)"
    )
    run.add_argument(
        "--launcher",
        choices=("local", "torchrun"),
        default="local",
        help="local: spawn the ranks here (default); torchrun: this process is one rank of a "
        "world started by torchrun (multi-GPU / multi-node); runs of other world sizes are skipped",
    )
    run.add_argument(
        "--skip-failed", action="store_true", help="do not retry runs stored as failed"
    )
    run.add_argument(
        "--dry-run", action="store_true", help="validate and list the runs, run nothing"
    )
    run.add_argument("--no-report", action="store_true", help="do not write the report afterwards")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument(
        "--profile",
        action="store_true",
        help="wrap the timed loops in torch.profiler: runs/<run_id>/rank{r}_trace.json.gz per "
        "rank and the ledger's timeline ledger_trace.json.gz (Chrome trace, open in Perfetto); "
        "the profiler's overhead is then part of the latency; runs already stored are not rerun",
    )
    run.set_defaults(func=_cmd_run)

    report = sub.add_parser(
        "report",
        help="write the HTML and Markdown report of a results directory",
        description="Write index.html and index.md (results table, latency-vs-world-size plot, "
        "compute / exposed-communication breakdown) for the runs stored in RESULTS.",
    )
    report.add_argument("results", help="results directory (or its results.db)")
    report.add_argument(
        "--out", metavar="DIR", help="report directory (default reports/<experiment>)"
    )
    report.set_defaults(func=_cmd_report)

    export = sub.add_parser(
        "export",
        help="export the stored tables to CSV or Parquet",
        description="Write one file per table (runs, comm, rank_steps, fidelity, projection).",
    )
    export.add_argument("results", help="results directory (or its results.db)")
    export.add_argument("--format", choices=("csv", "parquet"), default="csv")
    export.add_argument("--out", metavar="DIR", help="output directory (default RESULTS/export)")
    export.set_defaults(func=_cmd_export)

    wl = sub.add_parser(
        "workloads",
        help="list model presets with parameter counts and FLOPs per step",
        description="List presets; FLOPs per denoising step are counted on the meta device "
        "(no memory used) at --resolution, or at each preset's native resolution.",
    )
    wl.add_argument("--resolution", help="pixels: an int (square) or HxW")
    group = wl.add_mutually_exclusive_group()
    group.add_argument(
        "--tiny", dest="tiny", action="store_true", default=None, help="tiny presets only"
    )
    group.add_argument("--full", dest="tiny", action="store_false", help="full-size presets only")
    wl.set_defaults(func=_cmd_workloads)

    cal = sub.add_parser(
        "calibrate",
        help="measure this machine's collectives and compute; write a hardware profile",
        description="Time all_gather, all_reduce, all_to_all, reduce_scatter and send/recv "
        "through the comm ledger's path, nccl-tests style (sizes in its convention, slowest "
        "rank), in local worlds of each --world-sizes; fit alpha and beta per op and group size; "
        "measure fp32 GEMM, attention and a denoiser step; write configs/hardware/NAME.yaml and "
        "reports/calibration/NAME.png (measured vs fitted).",
    )
    cal.add_argument("--world-sizes", default="2,4", help="comma-separated (default 2,4)")
    cal.add_argument("--sizes", default="1K-256M", help="byte range, x4 steps (default 1K-256M)")
    cal.add_argument("--threads", type=int, default=1, help="intra-op threads per rank (default 1)")
    cal.add_argument("--name", default="local-cpu", help="profile name (default local-cpu)")
    cal.add_argument("--out", default="configs/hardware", help="profile directory")
    cal.add_argument(
        "--preset", default="small-pixart-alpha", help="preset timed for the model step"
    )
    cal.set_defaults(func=_cmd_calibrate)

    proj = sub.add_parser(
        "project",
        help="re-time stored runs on other hardware (projected, never measured)",
        description="Re-time each ok run's per-rank ledger trace on each hardware profile: "
        "collectives by alpha-beta on the link their group crosses (inner mesh axes inside a "
        "node, outer axes may cross nodes), async ops overlapping compute until their wait, "
        "compute scaled by device throughput relative to --source. Fills the 'projection' table.",
    )
    proj.add_argument("results", help="results directory (or its results.db)")
    proj.add_argument(
        "--hardware", required=True, help="profile names, comma-separated (see configs/hardware)"
    )
    proj.add_argument(
        "--source",
        default="local-cpu",
        help="calibrated profile of the machine the runs were measured on",
    )
    proj.add_argument("--dtype", help="dtype on the target (default: the run's), e.g. bf16")
    proj.add_argument(
        "--out", metavar="DIR", help="report directory (default reports/<experiment>)"
    )
    proj.set_defaults(func=_cmd_project)

    fid = sub.add_parser(
        "fidelity",
        help="score runs' images vs their baseline (and a reference folder): PSNR, SSIM, LPIPS, FID",
        description="Fill the 'fidelity' table: each ok run's images vs the single-device "
        "baseline run with the same workload, size, steps, seeds ('original': PSNR, SSIM, LPIPS, "
        "FID) and, with --reference, vs a folder of ground-truth images (FID). LPIPS / FID "
        "networks load from --weights-dir, $DIFFSCALE_WEIGHTS_DIR or a download; without them "
        "the metric is stored missing with the reason.",
    )
    fid.add_argument("results", help="results directory (or its results.db)")
    fid.add_argument("--reference", metavar="DIR", help="folder of ground-truth images")
    fid.add_argument(
        "--weights-dir", metavar="DIR", help="local Inception / AlexNet weights (see README)"
    )
    fid.add_argument("--no-download", action="store_true", help="never try to download weights")
    fid.add_argument(
        "--rescore", action="store_true", help="score runs that already have fidelity rows too"
    )
    fid.set_defaults(func=_cmd_fidelity)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
