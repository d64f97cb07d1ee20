"""Fill the store's `fidelity` table: each run vs its baseline run, and vs a reference folder.

The baseline of a run is the ok run of the same store with strategy 'none' on one rank and the
same workload, height, width, steps, scheduler, guidance, batch, seed and dtype (same device
preferred, then the newest): it denoised the same seeds, so image i of both is the same image
up to what the parallel method changed. A baseline itself gets only ground-truth rows.

Rows per scored run and reference: psnr, ssim, lpips, fid, fid_torchmetrics ('original'); fid,
fid_torchmetrics ('ground_truth'). A video run (images/VIDEO.json) also gets, vs original, the
rows of suite.fidelity.video: psnr_frame / ssim_frame / lpips_frame per frame, psnr_frame_std,
flicker and fvd. A metric whose network is unavailable is stored with an empty
value and backbone 'missing: <reason and what to do>'; a run is never scored with a stand-in.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from suite.fidelity import backbones as fb
from suite.fidelity import metrics as fm
from suite.fidelity import video as fv
from suite.fidelity.images import (
    IMAGES,
    image_files,
    image_source,
    load_images,
    video_layout,
    write_run_images,
)
from suite.store.results import ResultStore

MATCH = (
    "workload",
    "height",
    "width",
    "frames",
    "steps",
    "scheduler",
    "guidance",
    "batch",
    "seed",
    "dtype",
)
ORIGINAL, GROUND_TRUTH = "original", "ground_truth"


@dataclass(frozen=True)
class FidelityOptions:
    """Where the reference images and the pretrained networks' weights are."""

    reference: str | None = None  # folder of ground-truth images (None: no ground-truth rows)
    weights_dir: str | None = None  # None: $DIFFSCALE_WEIGHTS_DIR, then the cache
    allow_download: bool | None = None  # None: unless DIFFSCALE_OFFLINE=1


@dataclass
class Backbones:
    """The networks behind lpips / fid / fid_torchmetrics / fvd, loaded once, or why they are
    missing.

    Tests inject small networks as (name, object): lpips an _LPIPS-like module, fid a feature
    extractor on (N, 3, 299, 299) images in [0, 255], fid_torchmetrics a zero-argument factory of
    a torchmetrics FrechetInceptionDistance, fvd a feature extractor on (N, 3, F, 224, 224)
    videos in [-1, 1].
    """

    options: FidelityOptions = field(default_factory=FidelityOptions)
    injected: dict[str, tuple[str, Any]] = field(default_factory=dict)
    _loaded: dict[str, tuple[str, Any] | fb.MissingWeights] = field(default_factory=dict)
    _ref_features: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    def get(self, metric: str) -> tuple[str, Any]:
        """(backbone name, network) for `metric`; raises MissingWeights with the reason."""
        if metric in self.injected:
            return self.injected[metric]
        if metric not in self._loaded:
            loaders: dict[str, tuple[str, Callable]] = {
                "lpips": (fb.LPIPS_NAME, fb.lpips_net),
                "fid": (fb.CLEANFID_NAME, fb.cleanfid_inception),
                "fid_torchmetrics": (
                    fb.TM_FID_NAME,
                    lambda d, a: lambda: fb.torchmetrics_fid(d, a),
                ),
                "fvd": (fb.I3D_NAME, fb.i3d_net),
            }
            name, load = loaders[metric]
            try:
                net = load(self.options.weights_dir, self.options.allow_download)
                if metric == "fid_torchmetrics":
                    net()  # resolve the weights file now: a missing one is reported per metric
                self._loaded[metric] = (name, net)
            except fb.MissingWeights as e:
                self._loaded[metric] = e
        got = self._loaded[metric]
        if isinstance(got, fb.MissingWeights):
            raise got
        return got

    def clean_features(self, folder: Path, cache: bool = False) -> np.ndarray:
        """clean-fid features of a folder's images (cached per folder when `cache`)."""
        name, extractor = self.get("fid")
        key = (str(Path(folder).resolve()), name)
        if cache and key in self._ref_features:
            return self._ref_features[key]
        feats = fm.clean_features(image_files(folder), extractor)
        if cache:
            self._ref_features[key] = feats
        return feats


def _row(metric: str, value: float | None, backbone: str, n: int, reference: str) -> dict:
    return {
        "metric": metric,
        "value": None if value is None else float(value),
        "backbone": backbone,
        "n_images": int(n),
        "reference": reference,
    }


def _fid_rows(
    run_folder: Path, other_folder: Path, backbones: Backbones, reference: str, label: str
) -> list[dict]:
    """fid and fid_torchmetrics of a run's images against another folder's."""
    n_run, n_other = len(image_files(run_folder)), len(image_files(other_folder))
    rows = []
    for metric in fm.FIDS:
        try:
            name, net = backbones.get(metric)
        except fb.MissingWeights as e:
            rows.append(_row(metric, None, f"missing: {e}", n_run, reference))
            continue
        if min(n_run, n_other) < 2:
            rows.append(
                _row(
                    metric,
                    None,
                    f"missing: FID needs >= 2 images per side; {name}",
                    n_run,
                    reference,
                )
            )
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fm.FewImagesWarning)  # issued once below, per run
            if metric == "fid":
                f_run = backbones.clean_features(run_folder)
                f_other = backbones.clean_features(other_folder, cache=reference == GROUND_TRUTH)
                value, dim = fm.fid_from_features(f_run, f_other), f_run.shape[1]
            else:
                tm = net()
                value = fm.torchmetrics_fid_value(
                    tm, load_images(other_folder), load_images(run_folder)
                )
                dim = int(tm.real_features_sum.shape[0])
        note = fm.warn_few_images(min(n_run, n_other), dim)
        backbone = f"{name}; images: {label}" + ("; FEW IMAGES" if note else "")
        rows.append(_row(metric, value, backbone, n_run, reference))
    return rows


def compare_original(run_folder: Path, base_folder: Path, backbones: Backbones) -> list[dict]:
    """psnr, ssim, lpips (image i vs image i) and the FIDs of a run vs its baseline; for video
    runs also the per-frame, temporal and FVD rows (suite.fidelity.video)."""
    run, base = load_images(run_folder), load_images(base_folder)
    if run.shape != base.shape:
        raise ValueError(f"run images {tuple(run.shape)} vs baseline {tuple(base.shape)} differ")
    label, n = image_source(run_folder), run.shape[0]
    per_image = {"psnr": fm.psnr(run, base), "ssim": fm.ssim(run, base)}
    rows = [
        _row(m, per_image[m].mean(), f"none (pixels); images: {label}", n, ORIGINAL)
        for m in ("psnr", "ssim")
    ]
    try:
        name, net = backbones.get("lpips")
        per_image["lpips"] = fm.lpips(run, base, net)
        rows.append(
            _row("lpips", per_image["lpips"].mean(), f"{name}; images: {label}", n, ORIGINAL)
        )
    except fb.MissingWeights as e:
        rows.append(_row("lpips", None, f"missing: {e}", n, ORIGINAL))
    rows += _fid_rows(run_folder, base_folder, backbones, ORIGINAL, label)
    layout = video_layout(run_folder)
    if layout is None:
        return rows
    if layout != video_layout(base_folder):
        raise ValueError(f"run clips {layout} vs baseline {video_layout(base_folder)} differ")
    videos = fv.as_videos(run, *layout), fv.as_videos(base, *layout)
    return rows + fv.video_rows(*videos, backbones, label, per_image)


def compare_reference(run_folder: Path, reference: Path, backbones: Backbones) -> list[dict]:
    """The FIDs of a run's images vs a ground-truth folder (unpaired: no psnr / ssim / lpips)."""
    return _fid_rows(run_folder, reference, backbones, GROUND_TRUTH, image_source(run_folder))


# -- the store -------------------------------------------------------------------------------


def is_baseline(run: pd.Series) -> bool:
    return run["strategy"] == "none" and int(run["world_size"]) == 1


_EMULATED = ("fake", "analytic")  # world modes whose outputs are not the model's


def _real(runs: pd.DataFrame) -> pd.Series:
    """Rows of runs with images: a fake world's outputs are not the model's, an analytic world
    has none (never scored)."""
    return (~runs["world_mode"].isin(_EMULATED)).astype(bool)


def find_baseline(runs: pd.DataFrame, run: pd.Series) -> pd.Series | None:
    """The baseline row of `run` in `runs` (see the module docstring), or None."""
    ok = runs[
        (runs["status"] == "ok")
        & (runs["strategy"] == "none")
        & (runs["world_size"] == 1)
        & _real(runs)
    ]
    ok = ok[ok["run_id"] != run["run_id"]]
    for col in MATCH:
        # empty on both sides matches (frames of image runs, columns older stores lack)
        ok = ok[(ok[col] == run[col]) | (ok[col].isna() & pd.isna(run[col]))]
    if ok.empty:
        return None
    ok = ok.assign(_same_device=ok["device"] == run["device"])
    ok = ok.sort_values(["_same_device", "created_at"], ascending=False, kind="stable")
    return ok.iloc[0]


def run_images(store: ResultStore, run: pd.Series, spec: Any = None) -> Path | None:
    """The run's image folder, decoded from latents.pt first if needed; None without both.

    A video run's images saved before VIDEO.json existed are decoded again to get it."""
    run_dir = store.root / str(run["output_dir"])
    folder = run_dir / IMAGES
    old_video = pd.notna(run.get("frames")) and folder.is_dir() and video_layout(folder) is None
    if folder.is_dir() and image_files(folder) and not old_video:
        return folder
    if old_video and not (run_dir / "latents.pt").is_file():
        return folder if image_files(folder) else None
    if not (run_dir / "latents.pt").is_file():
        return None
    spec = spec or SimpleNamespace(workload=run["workload"], device="cpu", weights=None)
    return write_run_images(spec, run_dir)


def _save(store: ResultStore, run_id: str, baseline: str | None, reference: str, rows) -> None:
    full = [r | {"run_id": run_id, "baseline_run_id": baseline} for r in rows]
    store.save_rows("fidelity", full, replace_where={"run_id": run_id, "reference": reference})


def score_run(
    store: ResultStore,
    run_id: str,
    options: FidelityOptions | None = None,
    backbones: Backbones | None = None,
    runs: pd.DataFrame | None = None,
) -> list[str]:
    """Score one stored run; returns what was done or skipped, one line per reference."""
    options = options or FidelityOptions()
    backbones = backbones or Backbones(options)
    runs = store.table("runs") if runs is None else runs
    run = runs[runs["run_id"] == run_id].iloc[0]
    folder = run_images(store, run)
    if folder is None:
        return [f"{run_id}: no images or latents.pt in {run['output_dir']}; not scored"]
    notes = []
    if not is_baseline(run):
        base = find_baseline(runs, run)
        base_folder = None if base is None else run_images(store, base)
        if base_folder is None:
            notes.append(f"{run_id}: no baseline run with images in this store; not vs original")
        else:
            rows = compare_original(folder, base_folder, backbones)
            _save(store, run_id, str(base["run_id"]), ORIGINAL, rows)
            notes.append(f"{run_id}: scored vs baseline {base['run_id']}")
    if options.reference:
        rows = compare_reference(folder, Path(options.reference), backbones)
        _save(store, run_id, None, GROUND_TRUTH, rows)
        notes.append(f"{run_id}: scored vs ground truth {options.reference}")
    return notes


def score_store(
    store: ResultStore,
    options: FidelityOptions | None = None,
    backbones: Backbones | None = None,
    rescore: bool = False,
) -> list[str]:
    """Score every ok run of the store (only runs without fidelity rows unless `rescore`);
    fake- and analytic-world runs are never scored."""
    options = options or FidelityOptions()
    backbones = backbones or Backbones(options)
    runs = store.table("runs")
    have = set(store.table("fidelity")["run_id"])
    notes = []
    for _, run in runs[(runs["status"] == "ok") & _real(runs)].iterrows():
        if rescore or run["run_id"] not in have:
            notes += score_run(store, run["run_id"], options, backbones, runs)
    return notes


def unscored_runs(store: ResultStore, options: FidelityOptions | None = None) -> list[str]:
    """run_ids of ok real-world runs lacking fidelity rows they can have: 'original' when their
    baseline is in the store, 'ground_truth' when `options.reference` is set."""
    options = options or FidelityOptions()
    runs, fid = store.table("runs"), store.table("fidelity")
    have = set(zip(fid["run_id"], fid["reference"], strict=True))
    todo = []
    for _, run in runs[(runs["status"] == "ok") & _real(runs)].iterrows():
        want = [GROUND_TRUTH] if options.reference else []
        if not is_baseline(run) and find_baseline(runs, run) is not None:
            want.append(ORIGINAL)
        if any((run["run_id"], ref) not in have for ref in want):
            todo.append(run["run_id"])
    return todo


def score_missing(store: ResultStore, options: FidelityOptions | None = None) -> list[str]:
    """Score `unscored_runs` (a sweep killed between a run's row and its scores left them out);
    a sweep calls it at its start and end. Returns notes; never raises."""
    options = options or FidelityOptions()
    backbones = _HOOK_BACKBONES.setdefault(options, Backbones(options))
    try:
        todo, runs = unscored_runs(store, options), store.table("runs")
    except Exception as e:  # noqa: BLE001 - reported, the sweep goes on
        return [f"warning: unscored runs not found: {type(e).__name__}: {e}"]
    notes = []
    for run_id in todo:
        try:
            notes += score_run(store, run_id, options, backbones, runs)
        except Exception as e:  # noqa: BLE001 - fidelity must not fail or lose a measured run
            notes.append(f"warning: {run_id} not scored: {type(e).__name__}: {e}")
    return notes


_HOOK_BACKBONES: dict[FidelityOptions, Backbones] = {}


def score_after_record(store: ResultStore, spec, options: FidelityOptions | None = None) -> None:
    """Sweep hook, after an ok run is stored: score it, or the runs waiting for it if it is a
    baseline. Never raises: fidelity must not fail or lose a measured run."""
    options = options or FidelityOptions()
    backbones = _HOOK_BACKBONES.setdefault(options, Backbones(options))
    try:
        runs = store.table("runs")
        run = runs[runs["run_id"] == spec.run_id].iloc[0]
        if run["world_mode"] in _EMULATED:
            return  # no images: the emulated ranks' outputs are not the model's
        run_images(store, run, spec)
        targets = [spec.run_id]
        if is_baseline(run):
            for _, other in runs[runs["status"] == "ok"].iterrows():
                base = None if is_baseline(other) else find_baseline(runs, other)
                if base is not None and base["run_id"] == spec.run_id:
                    targets.append(other["run_id"])
        for run_id in targets:
            score_run(store, run_id, options, backbones, runs)
    except Exception as e:  # noqa: BLE001 - reported, the sweep goes on
        print(
            f"warning: fidelity of {spec.run_id} not scored: {type(e).__name__}: {e}",
            file=sys.stderr,
        )


def fidelity_table(store: ResultStore) -> pd.DataFrame:
    """The fidelity rows joined with their runs' workload / strategy / world size / options."""
    fid = store.table("fidelity")
    runs = store.table("runs")[["run_id", "workload", "strategy", "world_size", "options"]]
    return fid.merge(runs, on="run_id", how="left")


__all__ = [
    "Backbones",
    "FidelityOptions",
    "compare_original",
    "compare_reference",
    "find_baseline",
    "score_after_record",
    "score_missing",
    "score_run",
    "score_store",
    "unscored_runs",
]
