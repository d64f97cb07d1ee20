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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
