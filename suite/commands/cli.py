"""`diffscale`: run experiments, report, export, list workloads."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from suite.commands.cli_checks import calibrate_problems, out_dir_problem, profile_problems

EPILOG = """examples:
  diffscale run configs/quickstart.yaml            # sweep, store, report
  diffscale run configs/quickstart.yaml --dry-run  # validate and list the runs only
  diffscale report results/quickstart              # rebuild reports/quickstart/index.html
  diffscale export results/quickstart --format parquet
  diffscale workloads --resolution 1024
  torchrun --nproc-per-node 4 -m suite run CONFIG --launcher torchrun   # multi-GPU / multi-node

exit codes: 0 done (run: every run ok); 1 some run failed; 2 invalid config or arguments;
  3 the results store cannot be used (missing, empty, not SQLite, damaged, not a diffscale
  store: the message names the file and what to do); 4 the results directory is in use by
  another diffscale sweep / fidelity / project (its lock DIR/.lock; the message names the holder)
"""


def _errors(problems: list[str]) -> int:
    """Print argument problems, all at once; exit code 2."""
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 2


def _cmd_run(args: argparse.Namespace) -> int:
    # Cheap checks first, torch-free: a bad config or argument is rejected in well under a
    # second; torch and diffusers load only for a valid config (memory check, then the sweep).
    from suite.config.experiment import ConfigError, load_config
    from suite.config.settings import expand_path

    problems = [p for p in [args.out is not None and out_dir_problem("--out", args.out)] if p]
    try:
        config = load_config(args.config)
    except ConfigError as e:
        problems.insert(0, str(e))
    if problems:
        return _errors(problems)
    problems = _memory_problems(config, args.launcher)
    if problems:
        return _errors(
            [
                f"{config.source}: runs would not fit in memory (estimated before any process "
                "starts):\n" + "\n".join(f"  - {p}" for p in problems)
            ]
        )
    for note in config.warnings:
        print(f"warning: {note}", file=sys.stderr)
    from suite.commands.sweep import default_out_dir

    out = expand_path(args.out) if args.out else default_out_dir(config.experiment)
    if args.profile:  # read by every rank (spawned ranks inherit it); not part of run identity
        import os

        from suite.measure.profiling import PROFILE_ENV

        os.environ[PROFILE_ENV] = "1"
    if args.dry_run:
        from suite.store.results import ResultStore

        done: set[str] = set()
        if (out / "results.db").exists():  # read only: a dry run never writes the store
            with ResultStore(out / "results.db", read_only=True) as store:
                done = store.done_run_ids()
        print(f"{config.experiment}: {len(config.runs)} runs -> {out / 'results.db'}")
        for spec in config.runs:
            state = "done" if spec.run_id in done else "pending"
            print(f"  {spec.run_id}  world={spec.world_size}  {state:7s}  {spec.label()}")
        return 0

    if args.launcher == "torchrun":
        from suite.commands.sweep import run_torchrun

        summary = run_torchrun(
            config, out, skip_failed=args.skip_failed, progress=not args.no_progress
        )
        if summary is None:  # not rank 0
            return 0
    else:
        from suite.commands.sweep import run_local

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


def _memory_problems(config, launcher: str) -> list[str]:
    """suite.config.memory's refusals for the runs this launch would start (torchrun: its world's)."""
    import os

    from suite.config.memory import check_runs

    runs, per_host = config.runs, None
    if launcher == "torchrun":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        per_host = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        runs = [s for s in runs if s.world_size == world and s.world_mode == "real"]
    return check_runs(runs, per_host)


def _db_of(path: str) -> Path:
    """The results.db of a results directory (or the file itself); StoreError if there is none."""
    from suite.store.directory import StoreMissingError

    p = Path(path)
    db = p / "results.db" if p.is_dir() else p
    if not db.is_file():
        raise StoreMissingError(
            f"no results database at {db} (give the results directory of a run)."
        )
    return db


def _cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import default_report_dir, write_report

    db = _db_of(args.results)
    html, md = write_report(db, Path(args.out) if args.out else default_report_dir(db))
    print(f"report: {html}\n        {md}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from suite.config.settings import expand_path
    from suite.store.results import ResultStore

    if args.out is not None and (problem := out_dir_problem("--out", args.out)):
        return _errors([problem])
    db = _db_of(args.results)
    out = expand_path(args.out) if args.out else db.parent / "export"
    with ResultStore(db, read_only=True) as store:
        for path in store.export(out, args.format):
            print(path)
    return 0


def _cmd_workloads(args: argparse.Namespace) -> int:
    from suite.config.settings import parse_resolution
    from workloads.presets import PRESETS
    from workloads.video_size import check_size, format_size
    from workloads.video_size import size_rule as resolution_rule

    presets = [p for p in PRESETS.values() if args.tiny in (None, p.name.startswith("tiny-"))]
    height = width = frames = None
    if args.resolution is not None:
        text = args.resolution.strip()
        parsed = parse_resolution(int(text) if text.isdigit() else text)
        if parsed is None:
            return _errors(
                [
                    f"--resolution {args.resolution!r}: write pixels as a positive int (a "
                    "square) or HxW, e.g. 1024 or 768x1344, or a clip as FxHxW, e.g. 81x480x832"
                ]
            )
        height, width = parsed[-2:]
        frames = parsed[0] if len(parsed) == 3 else None
        rules: dict[str, list[str]] = {}  # what each rejecting preset accepts
        for p in presets:
            try:
                check_size(p, parsed)
            except ValueError:
                rules.setdefault(resolution_rule(p), []).append(p.name)
        refused = [f"  {', '.join(names)}: {rule}" for rule, names in rules.items()]
        if refused and sum(map(len, rules.values())) == len(presets):
            head = (
                f"--resolution {text}: no preset listed accepts {format_size(parsed)}; they accept:"
            )
            return _errors(["\n".join([head, *refused])])
        if refused:
            print(f"note: --resolution {text}: left out (they accept):", file=sys.stderr)
            print("\n".join(refused), file=sys.stderr)
        presets = [p for p in presets if not any(p.name in n for n in rules.values())]
    import workloads

    rows = workloads.describe_presets(height, width, [p.name for p in presets], frames)
    cols = list(rows[0]) if rows else []
    widths = {c: max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(_fmt(r[c]).ljust(widths[c]) for c in cols))
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    problems, world_sizes = calibrate_problems(args)
    if problems:
        return _errors(problems)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        return _errors(
            ["--device cuda: torch sees no CUDA device on this machine; use --device cpu"]
        )
    from suite.commands.calibrate import calibrate, size_ladder
    from suite.config.settings import expand_path

    profile_path, plot, profile = calibrate(
        world_sizes=world_sizes,
        sizes=size_ladder(args.sizes),
        threads=args.threads,
        name=args.name,
        out_dir=expand_path(args.out),
        preset=args.preset,
        device=args.device,
        keep_collectives=args.keep_collectives,
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
    curves = profile.get("opcurves") or {}
    if curves:
        print(f"operator curves ({curves['measured']['device']}, "
              f"{curves['measured']['wall_s']:.0f} s): launch {curves['launch']['us']:.2f} us/call")  # fmt: skip
        for cls in ("matmul", "conv"):
            for dtype, pts in curves.get(cls, {}).items():
                rates = ", ".join(f"{p['tflops'] * 1e3:.3g}" for p in pts)
                print(f"  {cls:11s} {dtype}: GFLOP/s {rates} (by size)")
        for dtype, by_dim in curves.get("attention", {}).items():
            for d, pts in by_dim.items():
                rates = ", ".join(f"{p['s_kv']}: {p['tflops'] * 1e3:.3g}" for p in pts)
                print(f"  attention   {dtype} head dim {d}: GFLOP/s by S {rates}")
        for cls in ("norm", "elementwise", "memory", "activation", "gelu"):
            rates = ", ".join(f"{p['gb_s']:.3g}" for p in curves.get(cls, []))
            print(f"  {cls:11s} GB/s {rates} (by size)")
    return 0


def _cmd_project(args: argparse.Namespace) -> int:
    from analysis.projection import ProjectionInputError, project_store

    problems, names, anchor = profile_problems(args)
    if problems:
        return _errors(problems)
    db = _db_of(args.results)
    from suite.store.results import DirectoryLock, ResultStore

    ResultStore(db, read_only=True).close()  # a damaged store: StoreError before any write
    with DirectoryLock(db.parent):  # one writer: not while a sweep or fidelity writes
        try:
            rows = project_store(db, names, args.source, args.dtype, anchor, args.execution)
        except ProjectionInputError as e:  # an anchor the store lacks, a dtype a run cannot use
            return _errors([str(e)])
    print(f"{len(rows)} projections (PROJECTED, not measured) -> {db} table 'projection'")
    from analysis.projection_report import write_projection_report
    from analysis.report import default_report_dir

    page = write_projection_report(
        db, Path(args.out) if args.out else default_report_dir(db), args.source
    )
    print(f"report: {page.resolve()}")
    for r in rows:
        anchored = f"  anchored to {r['anchored_to']}" if r["anchored_to"] else ""
        print(f"  {r['run_id']}  {r['hardware']:28s} {r['projected_dtype']}  latency "
              f"{r['latency_s']:.4g} s  exposed comm {r['exposed_comm_s']:.3g} s/step  link "
              f"{r['link_pct']:.0f}%{anchored}  [{r['compute_model']}]")  # fmt: skip
    return 0


def _cmd_fidelity(args: argparse.Namespace) -> int:
    from suite.fidelity.score import FidelityOptions, score_store
    from suite.store.results import DirectoryLock, ResultStore

    db = _db_of(args.results)
    if args.reference and not Path(args.reference).is_dir():
        print(f"error: --reference {args.reference}: not a directory of images", file=sys.stderr)
        return 2
    options = FidelityOptions(
        reference=args.reference,
        weights_dir=args.weights_dir,
        allow_download=False if args.no_download else None,
    )
    # One writer: not while a sweep writes; a run whose files a crash left pending is settled
    # first, as scoring reads the files in their final place.
    with DirectoryLock(db.parent), ResultStore(db) as store:
        for note in store.recover_run_dirs():
            print(f"recovered: {note}", file=sys.stderr)
        for note in score_store(store, options, rescore=args.rescore):
            print(note)
        table = store.table("fidelity")
    missing = table[table["value"].isna()].drop_duplicates("metric")
    for _, r in missing.iterrows():
        print(f"  {r['metric']} missing: {str(r['backbone']).removeprefix('missing: ')}")
    print(f"{len(table)} fidelity rows -> {db} table 'fidelity' (diffscale report to see them)")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from suite.commands.reproduce import ReproduceError, reproduce, resolve_names

    try:
        names = resolve_names(args.names)
        measured = Path(args.measured) if args.measured else None
        if measured is not None and not (measured / "results.db").is_file():
            raise ReproduceError(f"--measured {args.measured}: no results.db there")
    except ReproduceError as e:
        return _errors([str(e)])
    reproduce(
        names,
        measured=measured,
        anchor=args.anchor == "single-device",
        results_root=Path(args.results),
        reports_root=Path(args.out),
        progress=not args.no_progress,
    )
    print(f"index: {Path(args.out) / 'index.md'}")
    return 0


def _fmt(v) -> str:
    if v is None:  # e.g. an image preset's frames
        return "-"
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
    wl.add_argument(
        "--resolution",
        help="pixels: an int (square) or HxW; FxHxW (frames x height x width) for video presets",
    )
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
        "measure fp32 GEMM, attention and a denoiser step, and the device's operator curves "
        "(GEMM, conv, attention, norm, elementwise, copy, launch; per dtype, over sizes); write "
        "configs/hardware/NAME.yaml, reports/calibration/NAME.png (measured vs fitted) and "
        "NAME-ops.png (operator curves).",
    )
    cal.add_argument("--world-sizes", default="2,4", help="comma-separated (default 2,4)")
    cal.add_argument("--sizes", default="1K-256M", help="byte range, x4 steps (default 1K-256M)")
    cal.add_argument("--threads", type=int, default=1, help="intra-op threads per rank (default 1)")
    cal.add_argument("--name", default="local-cpu", help="profile name (default local-cpu)")
    cal.add_argument("--out", default="configs/hardware", help="profile directory")
    cal.add_argument(
        "--preset", default="small-pixart-alpha", help="preset timed for the model step"
    )
    cal.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="device whose operator curves are measured (cuda: CUDA events; collectives stay gloo)",
    )
    cal.add_argument(
        "--keep-collectives",
        action="store_true",
        help="reuse the collective measurements of the existing profile NAME (refitted as they "
        "were); measure only compute and operator curves",
    )
    cal.set_defaults(func=_cmd_calibrate)

    proj = sub.add_parser(
        "project",
        help="re-time stored runs on other hardware (projected, never measured)",
        description="Re-time each ok run's per-rank trace on each hardware profile: "
        "collectives by alpha-beta on the link their group crosses (inner mesh axes inside a "
        "node, outer axes may cross nodes), async ops overlapping compute until their wait; "
        "compute by the operator model (analytic runs: every operator priced on the target; "
        "measured runs: their compute scaled by target / --source time of the same work). "
        "Fills the 'projection' table.",
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
    proj.add_argument(
        "--dtype",
        help="dtype on the target (default: the run's): fp32, tf32, fp16, bf16; compute priced "
        "in it, collective payloads rescaled by its element size",
    )
    proj.add_argument(
        "--execution",
        choices=("eager", "cuda_graphs", "compile"),
        help="how the GPU runs the model (default eager): per-call host costs of eager PyTorch, "
        "or CUDA graphs replayed (compile: reduce-overhead mode, fusion not modelled); a "
        "projection per mode is kept beside the others",
    )
    proj.add_argument(
        "--anchor",
        metavar="LATENCY_S|RUN_ID",
        help="scale the (one) --hardware profile's compute so that the store's single-device run "
        "projects to this latency (seconds, or a stored single-device run measured there)",
    )
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

    rep = sub.add_parser(
        "reproduce",
        help="a paper's tables: analytic runs projected on its hardware, beside its rows",
        description="Reproduce published tables of DistriFusion, PipeFusion and xDiT: run the "
        "experiment configs/papers/NAME.yaml in analytic worlds (into results/papers/NAME; runs "
        "already stored are reused), project every run on the hardware profiles the paper's "
        "rows (papers/*.csv) name, add the stages the paper times (prompt encoding, VAE "
        "decode), and write reports/papers/NAME/index.md + index.html (the paper's value, ours, "
        "ratio and error per row; speedup curves; median error and fastest-method agreement "
        "per table) and reports/papers/index.md. All numbers of ours are PROJECTED unless "
        "--measured supplies real runs.",
    )
    rep.add_argument("names", nargs="+", metavar="NAME", help="experiment name(s), or all")
    rep.add_argument(
        "--measured",
        metavar="DIR",
        help="results directory of real runs on the paper's hardware (e.g. a torchrun world of "
        "GPUs); their measured loop latency replaces the projection where a run matches",
    )
    rep.add_argument(
        "--anchor",
        choices=("single-device",),
        help="also show ours anchored: one compute scale per profile and workload so that our "
        "single device equals the paper's single-device row (labelled anchored)",
    )
    rep.add_argument("--results", default="results/papers", help="where the runs are stored")
    rep.add_argument("--out", default="reports/papers", help="where the pages go")
    rep.add_argument("--no-progress", action="store_true", help="no progress bars")
    rep.set_defaults(func=_cmd_reproduce)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so the same cleanup runs."""


def _raise_terminated(signum, frame):
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    args = build_parser().parse_args(argv)
    # A scheduler's `kill PID` stops a sweep as Ctrl-C does: the worlds' `with` blocks kill their
    # ranks, the run in flight is not stored, the runs stored before it stay.
    on_main = threading.current_thread() is threading.main_thread()  # signal.signal's rule
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if on_main else None
    from suite.store.directory import StoreError

    try:
        return args.func(args)
    except StoreError as e:  # the store is unusable or locked: a sentence, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        signum = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT
        what = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        print(
            f"interrupted: {what}; diffscale {args.command} stopped (results stored before it "
            "are kept)",
            file=sys.stderr,
        )
        return 128 + signum
    except BrokenPipeError:  # `diffscale ... | head`: the reader left; what was written stands
        # the pipe is gone: point stdout at /dev/null so that the interpreter's final flush is quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
