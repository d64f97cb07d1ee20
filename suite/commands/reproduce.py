"""`diffscale reproduce NAME|all`: a paper's table, re-run as analytic worlds and projected on the
paper's hardware, set beside the published rows (papers/*.csv).

For each experiment (configs/papers/NAME.yaml): its runs go into one store shared by every paper
(results/papers/results.db, experiment "papers": a run that several tables need runs once, and
runs already stored are reused), every ok run is projected on each hardware profile the paper's rows
name, in the run's dtype, unanchored (the operator model alone) and, with `anchor`, anchored
(one compute scale per profile and workload so that our single device lands on the paper's
single-device row). The stages a paper times besides the loop (prompt encoding, VAE decode:
`timed` in the CSV) are recorded on meta and priced on the same profile (analysis.stages).
`measured`: a results directory of real runs on the paper's hardware (torchrun on GPUs), whose
loop latency replaces the projection where a run matches. The pages: analysis.paper_report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from analysis.papers import PAPER_CONFIGS_DIR, PAPERS_DIR, load_papers

RESULTS_ROOT = Path("results/papers")
SHARED = "papers"  # the experiment name of every paper run in the shared store
REPORTS_ROOT = Path("reports/papers")
RUN_FIELDS = ["run_id", "workload", "height", "width", "steps", "batch", "guidance", "dtype",
              "strategy", "degrees", "options", "world_size"]  # fmt: skip


class ReproduceError(ValueError):
    """A name that is not a paper experiment, or a --measured directory without a store."""


def paper_configs(configs_dir: Path = PAPER_CONFIGS_DIR) -> dict[str, Path]:
    """experiment name -> its config file in configs/papers."""
    from analysis.papers import paper_experiments

    out = {}
    for path in sorted(Path(configs_dir).glob("*.yaml")):
        for name in paper_experiments(path.parent) & {path.stem}:
            out[name] = path
    missing = paper_experiments(Path(configs_dir)) - set(out)
    if missing:  # a config whose experiment differs from its file name
        raise ReproduceError(f"configs/papers: experiments {sorted(missing)} not named as files")
    return out


def resolve_names(names: list[str], configs_dir: Path = PAPER_CONFIGS_DIR) -> list[str]:
    """`all` or experiment names -> experiment names (ReproduceError naming the known ones)."""
    known = paper_configs(configs_dir)
    if names == ["all"]:
        return list(known)
    bad = [n for n in names if n not in known]
    if bad:
        raise ReproduceError(
            f"unknown paper experiment(s) {', '.join(bad)}; known: all, {', '.join(known)}"
        )
    return names


@dataclass
class _Stages:
    """Prompt encoding and VAE decode per workload, recorded once, priced per profile."""

    ops: dict

    def seconds(self, profile, run) -> tuple[float, float]:
        from analysis.opmodel import dtype_key
        from analysis.stages import price_stage, text_encoder_ops, vae_decode_ops

        key = dtype_key(run.dtype)
        cfg = bool(run.guidance and float(run.guidance) > 1)
        text_key = ("text", run.workload, int(run.batch), cfg, key)
        frames = _frames(run)
        vae_key = (
            "vae",
            run.workload,
            int(run.height),
            int(run.width),
            int(run.batch),
            key,
            frames,
        )
        if text_key not in self.ops:
            self.ops[text_key] = text_encoder_ops(run.workload, int(run.batch), cfg, key)
        if vae_key not in self.ops:
            self.ops[vae_key] = vae_decode_ops(
                run.workload, int(run.height), int(run.width), int(run.batch), key, frames
            )
        return (
            price_stage(profile, self.ops[text_key], key).time_s,
            price_stage(profile, self.ops[vae_key], key).time_s,
        )


def _frames(run) -> int:
    """A video run's clip length (0 for images, whose `frames` is stored empty)."""
    frames = getattr(run, "frames", None)
    return 0 if frames is None or pd.isna(frames) else int(frames)


def _profiles(rows: pd.DataFrame) -> list[str]:
    return sorted(set(rows["hardware_profile"]) - {""})


def ours_table(
    db: Path,
    rows: pd.DataFrame,
    anchor: bool,
    stages: _Stages,
    run_ids: set[str],
    execution=None,
) -> pd.DataFrame:
    """The ok runs `run_ids` of the store projected on each profile the paper's `rows` name:
    loop, text and VAE seconds, link share; anchored copies when `anchor`. `execution` (an
    analysis.execution.Execution) replaces the paper's own mode: the fit of its constants."""
    from analysis.hardware import load_profile, with_execution
    from analysis.paper_match import STAGES, same_workload
    from analysis.papers import paper_execution
    from analysis.projection import StoreTraces, project_one
    from suite.store.results import ResultStore

    out = []
    # the paper's own way of running (eager, CUDA graphs), priced per call on every profile
    mode = paper_execution(rows["paper"].iloc[0]) if len(rows) else "eager"
    with ResultStore(db, read_only=True) as store:
        ctx = StoreTraces(store, load_profile("local-cpu"))
        runs = ctx.runs[(ctx.runs["world_mode"] == "analytic") & ctx.runs["run_id"].isin(run_ids)]
        profiles = {  # read once
            name: with_execution(load_profile(name), mode) for name in _profiles(rows)
        }
        if execution is not None:
            profiles = {n: replace(p, execution=execution) for n, p in profiles.items()}
        for name, profile in profiles.items():
            for run in runs.itertuples():
                if int(run.world_size) > profile.world_size:
                    continue
                p = project_one(ctx, run, profile, None, 1.0)
                text_s, vae_s = stages.seconds(profile, run)
                out.append({**{f: getattr(run, f) for f in RUN_FIELDS}, "hardware": name,
                            "source": "projected", "anchored": False, "anchor": "",
                            "scale": 1.0, "loop_s": p["latency_s"], "text_s": text_s,
                            "vae_s": vae_s, "link_pct": p["link_pct"]})  # fmt: skip
        ours = pd.DataFrame(out)
        if not anchor or ours.empty:
            return ours
        pinned, seen = [], set()
        singles = rows[(rows["devices"] == 1) & (rows["metric"] == "latency_s")]
        for _, ref in singles.iterrows():
            key = tuple(
                ref[k] for k in ("hardware_profile", "workload", "height", "width", "steps")
            )
            mine = ours[(ours["hardware"] == ref["hardware_profile"]) & same_workload(ours, ref)]
            base = mine[mine["world_size"] == 1]
            if base.empty or key in seen:  # one anchor per profile and workload
                continue
            seen.add(key)
            free = float(sum(base.iloc[0][c] for c in STAGES[ref["timed"]]))
            scale = float(ref["value"]) / free
            label = f"{ref['value']:.4g} s ({ref['table_or_figure']}, 1 device)"
            for _, r in mine.iterrows():
                run = next(runs[runs["run_id"] == r["run_id"]].itertuples())
                p = project_one(ctx, run, profiles[r["hardware"]], None, scale)
                pinned.append({**r.to_dict(), "anchored": True, "anchor": label, "scale": scale,
                               "loop_s": p["latency_s"], "text_s": r["text_s"] * scale,
                               "vae_s": r["vae_s"] * scale, "link_pct": p["link_pct"]})  # fmt: skip
        pinned_df = pd.DataFrame(pinned, columns=ours.columns)
        both = pd.concat([ours, pinned_df], ignore_index=True)
        return both.astype({"anchored": bool})


def measured_table(directory: Path, stages: _Stages, rows: pd.DataFrame) -> pd.DataFrame:
    """Real runs of a --measured store: their measured loop, the text / VAE stages priced on the
    paper's profile (labelled so)."""
    from analysis.hardware import load_profile
    from suite.store.results import ResultStore

    db = directory / "results.db" if directory.is_dir() else directory
    if not db.is_file():
        raise ReproduceError(f"--measured {directory}: no results.db there")
    with ResultStore(db, read_only=True) as store:
        runs = store.table("runs")
    runs = runs[(runs["status"] == "ok") & (runs["world_mode"] == "real")]
    profiles = _profiles(rows)
    first = load_profile(profiles[0]) if profiles else None
    out = []
    for run in runs.itertuples():
        text_s = vae_s = 0.0
        if first is not None:
            text_s, vae_s = stages.seconds(first, run)
        out.append({**{f: getattr(run, f) for f in RUN_FIELDS}, "hardware": str(run.device),
                    "source": "measured", "anchored": False, "anchor": "", "scale": 1.0,
                    "loop_s": float(run.latency_s), "text_s": text_s, "vae_s": vae_s,
                    "link_pct": float("nan")})  # fmt: skip
    return pd.DataFrame(out)


def reproduce(
    names: list[str],
    *,
    measured: Path | None = None,
    anchor: bool = False,
    results_root: Path = RESULTS_ROOT,
    reports_root: Path = REPORTS_ROOT,
    progress: bool = True,
    papers_dir: Path = PAPERS_DIR,
    configs_dir: Path = PAPER_CONFIGS_DIR,
) -> list[dict]:
    """Run, project and compare each experiment; write its page and the index. Returns the
    summary rows (one per table or figure)."""
    from analysis.paper_match import LATENCY_METRICS, compare, summary
    from analysis.paper_report import write_index, write_paper_page
    from suite.commands.sweep import run_local
    from suite.config.experiment import load_config

    configs = paper_configs(configs_dir)
    papers = load_papers(papers_dir, configs_dir)
    # One sweep for every experiment, into one store shared by all papers: a run two tables
    # share (an analytic run does not depend on the hardware) runs once, one process emulates
    # them all, and one progress bar covers the long part.
    timed = [
        n
        for n in names
        if papers.loc[papers["experiment"] == n, "metric"].isin(LATENCY_METRICS).any()
    ]
    run_ids, specs = {}, {}
    for name in timed:
        config = load_config(configs[name])
        mine = [replace(s, experiment=SHARED) for s in config.runs]
        run_ids[name] = {s.run_id for s in mine}
        specs.update({s.run_id: s for s in mine})
    failed: list[tuple[str, str]] = []
    db = results_root / "results.db"
    if specs:
        shared = replace(config, experiment=SHARED, runs=tuple(specs.values()))
        sweep = run_local(shared, results_root, progress=progress)
        failed, db = list(sweep.failed), sweep.db_path
    stages = _Stages({})
    summaries = []
    for name in names:
        t0 = time.perf_counter()
        rows = papers[papers["experiment"] == name]
        ours = pd.DataFrame()
        if name in run_ids:  # fidelity-only experiments have nothing to project
            ours = ours_table(db, rows, anchor, stages, run_ids[name])
        if measured is not None:
            ours = pd.concat([ours, measured_table(measured, stages, rows)], ignore_index=True)
        comp = compare(rows, ours) if len(ours) else pd.DataFrame()
        table = summary(comp) if len(comp) else pd.DataFrame()
        own = {specs[i].label() for i in run_ids.get(name, ())}
        mine = [f"{label}: {error}" for label, error in failed if label in own]
        write_paper_page(
            reports_root / name, name, configs[name], rows, ours, comp, table, mine, anchor
        )
        summaries += table.to_dict("records")
        answered = int(table["answered"].sum()) if len(table) else 0
        print(f"{name}: {len(comp)} published timings, {answered} answered, "
              f"{time.perf_counter() - t0:.0f} s -> {reports_root / name / 'index.md'}")  # fmt: skip
    write_index(reports_root, pd.DataFrame(summaries), names, anchor)
    return summaries
