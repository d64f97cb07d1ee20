"""The report's Fidelity section: metrics per run and reference, and image grids per method.

A grid shows, for the first images of a run, the baseline's image, the method's image and their
absolute difference amplified DIFF_GAIN times (white = large), so seams and drift are visible
even where PSNR is high. A video run gets, instead, a table of its video metrics, a strip of its
first clip (rows baseline, method, difference; frames left to right) and an animated GIF of the
same three side by side (imageio).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.fmt import fmt_fixed, fmt_int, fmt_sig, fmt_text, is_missing
from analysis.render import Block, Heading, Image, Para, Table
from suite.fidelity.images import (
    IMAGES,
    SOURCES,
    image_files,
    image_source,
    load_images,
    video_layout,
)
from suite.fidelity.metrics import FIDS, PSNR_CAP_DB
from suite.store.results import ResultStore

DIFF_GAIN = 4  # |baseline - method| x 4, clipped to 1
GRID_IMAGES = 4  # images (rows) per grid
TILE_PX = 128  # small images are enlarged (nearest) to at least this many pixels
STRIP_FRAMES = 8  # frames (columns) of a video strip, evenly spaced over the clip
GIF_FRAME_MS = 250  # display time of one frame of a comparison GIF
VIDEO_COLUMNS = ("psnr", "psnr_frame_std", "ssim", "lpips", "flicker", "fvd")
METRIC_COLUMNS = ("psnr", "ssim", "lpips", *FIDS)
_DECIMALS = {"psnr": 2, "ssim": 4, "lpips": 4, "psnr_frame_std": 2, "flicker": 3}


def _value(v: object, metric: str, backbone: object) -> str:
    if is_missing(v):
        return "missing" if str(backbone).startswith("missing") else "-"
    if metric in _DECIMALS:
        return fmt_fixed(v, _DECIMALS[metric])
    return fmt_sig(v)


def _strategy(r: pd.Series) -> str:
    text = fmt_text(r["strategy"])
    opts = r.get("options")
    if isinstance(opts, str) and opts not in ("", "{}"):
        text += f" {opts}"
    return text


def diff_grid(base: np.ndarray, run: np.ndarray, gain: int = DIFF_GAIN) -> np.ndarray:
    """(H * n, W * 3, 3) uint8: per row baseline | method | gain x |difference| (grey)."""
    diff = _abs_diff(base, run, gain)
    rows = [np.concatenate([b, r, d], axis=1) for b, r, d in zip(base, run, diff, strict=True)]
    return np.concatenate(rows, axis=0)


def write_grid(base_dir: Path, run_dir: Path, path: Path) -> Path:
    """The grid of the first GRID_IMAGES images of two folders, saved as PNG at `path`."""
    from PIL import Image as PILImage

    base = (load_images(base_dir, GRID_IMAGES) * 255).round().byte()
    run = (load_images(run_dir, GRID_IMAGES) * 255).round().byte()
    grid = diff_grid(base.permute(0, 2, 3, 1).numpy(), run.permute(0, 2, 3, 1).numpy())
    scale = max(1, -(-TILE_PX // base.shape[-1]))
    img = PILImage.fromarray(grid)
    img = img.resize((img.width * scale, img.height * scale), PILImage.NEAREST)
    img.save(path)
    return path


def _enlarge(arr: np.ndarray, tile: int) -> np.ndarray:
    """Nearest-neighbour enlargement of (H, W, 3) so that a tile `tile` px wide is >= TILE_PX."""
    scale = max(1, -(-TILE_PX // tile))
    return arr.repeat(scale, axis=0).repeat(scale, axis=1)


def _abs_diff(base: np.ndarray, run: np.ndarray, gain: int) -> np.ndarray:
    diff = np.abs(base.astype(np.float32) - run.astype(np.float32)).max(axis=-1) * gain
    return np.repeat(np.clip(diff, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def video_strip(base: np.ndarray, run: np.ndarray, gain: int = DIFF_GAIN) -> np.ndarray:
    """(3 H, F W, 3) uint8 of two (F, H, W, 3) clips: rows baseline, method, gain x |difference|
    (grey), frames left to right."""
    rows = [base, run, _abs_diff(base, run, gain)]
    return np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)


def write_video_pair(base_dir: Path, run_dir: Path, out: Path, stem: str) -> tuple[Path, Path]:
    """Strip PNG and GIF of the first clip of two video runs' image folders: (strip, gif)."""
    import imageio.v3 as iio

    clips, frames = video_layout(run_dir)
    base = (load_images(base_dir, frames) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    run = (load_images(run_dir, frames) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    pick = np.unique(np.linspace(0, frames - 1, min(frames, STRIP_FRAMES)).round().astype(int))
    strip_path, gif_path = out / f"{stem}_strip.png", out / f"{stem}.gif"
    width = base.shape[2]
    iio.imwrite(strip_path, _enlarge(video_strip(base[pick], run[pick]), width))
    # one GIF frame per video frame: baseline | method | |difference|, as the image grids
    anim = [_enlarge(diff_grid(base[t : t + 1], run[t : t + 1]), width) for t in range(frames)]
    iio.imwrite(gif_path, np.stack(anim), duration=GIF_FRAME_MS, loop=0)
    return strip_path, gif_path


def _video_table(df: pd.DataFrame) -> list[Block]:
    """Per video run: clip layout, the video metrics and the per-frame PSNR."""
    orig = df[df["reference"] == "original"]
    video = orig[orig["metric"].isin(["psnr_frame", "fvd"])]  # fvd: every video run has it
    if video.empty:
        return []
    rows, reasons = [], []
    for _run_id, g in orig[orig["run_id"].isin(video["run_id"])].groupby("run_id", sort=False):
        first = g.iloc[0]
        per_frame = g[g["metric"] == "psnr_frame"].sort_values("frame")
        whole = g[g["frame"].isna()].set_index("metric")
        cells = [fmt_text(first["workload"]), _strategy(first), fmt_int(first["world_size"])]
        cells.append(f"{fmt_int(per_frame['n_images'].max())} x {len(per_frame)}")
        for m in VIDEO_COLUMNS:
            if m not in whole.index:
                cells.append("-")
                continue
            r = whole.loc[m]
            cells.append(_value(r["value"], m, r["backbone"]))
            if str(r["backbone"]).startswith("missing") and m not in METRIC_COLUMNS:
                # lpips' reason is already under the main table
                reasons.append(f"{m}: {str(r['backbone']).removeprefix('missing: ')}")
        cells.append(" ".join(fmt_fixed(v, 1) for v in per_frame["value"]))
        rows.append(cells)
    head = ["workload", "strategy", "world_size", "clips x frames", *VIDEO_COLUMNS]
    table = Table([*head, "psnr per frame [dB]"], rows, right=set(range(2, len(head))))
    blocks: list[Block] = [
        Heading("Video fidelity", 3),
        Para(
            "Frame t of each clip vs frame t of the baseline's clip (projected latent videos: "
            "latent frames). psnr / ssim / lpips: mean over frames and clips; psnr_frame_std: "
            "std over frames of the per-frame PSNR [dB]; flicker: mean |D_t - D_(t-1)| / mean "
            "|D_t| of the difference D = method - baseline (0 stable error or none, ~1.4 "
            "independent from frame to frame, 2 sign flips every frame); fvd: Frechet distance "
            "of I3D clip features. Per-frame values are rows psnr_frame / ssim_frame / "
            "lpips_frame of the fidelity table (column frame)."
        ),
        table,
    ]
    if reasons:
        blocks.append(Para("Missing: " + " | ".join(dict.fromkeys(reasons))))
    return blocks


def _table(df: pd.DataFrame) -> tuple[Table, list[str]]:
    rows, reasons = [], []
    keys = ["run_id", "reference"]
    for (_run_id, reference), g in df.groupby(keys, sort=False):
        first = g.iloc[0]
        by_metric = g.set_index("metric")
        cells = [
            fmt_text(first["workload"]),
            _strategy(first),
            fmt_int(first["world_size"]),
            fmt_text(reference),
        ]
        for m in METRIC_COLUMNS:
            if m in by_metric.index:
                r = by_metric.loc[m]
                cells.append(_value(r["value"], m, r["backbone"]))
                if str(r["backbone"]).startswith("missing"):
                    reasons.append(f"{m}: {str(r['backbone']).removeprefix('missing: ')}")
            else:
                cells.append("-")
        cells.append(fmt_int(g["n_images"].max()))
        rows.append(cells)
    head = ["workload", "strategy", "world_size", "reference", *METRIC_COLUMNS, "n_images"]
    return Table(head, rows, right=set(range(2, len(head))) - {3}), list(dict.fromkeys(reasons))


def fidelity_section(store: ResultStore, runs: pd.DataFrame, out: Path) -> list[Block]:
    """Blocks of the Fidelity section (empty when nothing was scored); grids saved in `out`."""
    fid = store.table("fidelity")
    if fid.empty:
        return []
    cols = ["run_id", "workload", "strategy", "world_size", "options", "output_dir"]
    df = fid.merge(runs[cols], on="run_id", how="left")
    table, reasons = _table(df)
    blocks: list[Block] = [
        Heading("Fidelity"),
        Para(
            "Each run's saved 8-bit images vs the single-device baseline run with the same "
            "workload, size, steps and seeds ('original', image i vs image i) and, where the "
            "config names a reference folder, vs ground truth (FID only). psnr: mean over images "
            f"of the per-image PSNR [dB], data range [0, 1], identical images capped at "
            f"{PSNR_CAP_DB:g} dB; ssim: mean per-image SSIM; lpips: AlexNet LPIPS v0.1, inputs "
            "in [0, 1] (lower is closer); fid: clean-fid 'clean' mode; fid_torchmetrics: "
            "torchmetrics' FID, a cross-check. n_images: images of the run the values rest on."
        ),
        table,
    ]
    if reasons:
        blocks.append(Para("Missing values (stored empty, never computed with a stand-in): "
                           + " | ".join(reasons)))  # fmt: skip
    if df["backbone"].astype(str).str.contains("FEW IMAGES").any():
        blocks.append(
            Para(
                "FEW IMAGES: FID on fewer images than the 2048 Inception features is biased and "
                "noisy; compare such FIDs only with FIDs on as many images."
            )
        )
    sources = {}
    root = store.root
    for _, r in df.drop_duplicates("run_id").iterrows():
        folder = root / str(r["output_dir"]) / IMAGES
        if folder.is_dir():
            sources[image_source(folder)] = True
    if sources:
        blocks.append(
            Para("Images: " + "; ".join(SOURCES.get(s, s) for s in sources) + ".")
        )  # fmt: skip
    blocks += _video_table(df)
    blocks += _grids(df, runs, root, out)
    return blocks


def _grids(df: pd.DataFrame, runs: pd.DataFrame, root: Path, out: Path) -> list[Block]:
    orig = df[(df["reference"] == "original") & df["baseline_run_id"].notna()]
    blocks: list[Block] = []
    for run_id, g in orig.groupby("run_id", sort=False):
        r = g.iloc[0]
        base = runs[runs["run_id"] == r["baseline_run_id"]]
        if base.empty:
            continue
        run_dir = root / str(r["output_dir"]) / IMAGES
        base_dir = root / str(base.iloc[0]["output_dir"]) / IMAGES
        if not (image_files(run_dir) and base_dir.is_dir() and image_files(base_dir)):
            continue
        psnr = g[g["metric"] == "psnr"]["value"]
        label = f"{fmt_text(r['workload'])} | {_strategy(r)} | world {fmt_int(r['world_size'])}" + (
            "" if psnr.empty else f" | PSNR {fmt_fixed(psnr.iloc[0], 2)} dB"
        )
        if not blocks:
            blocks.append(Heading(f"Images: baseline | method | |difference| x{DIFF_GAIN}", 3))
        if video_layout(run_dir) is not None and video_layout(base_dir) is not None:
            strip, gif = write_video_pair(base_dir, run_dir, out, f"fidelity_{run_id}")
            blocks += [
                Para(f"{label} (first clip; strip rows: baseline, method, difference)"),
                Image(strip.name, f"{label}: strip"),
                Image(gif.name, f"{label}: animation"),
            ]
            continue
        path = write_grid(base_dir, run_dir, out / f"fidelity_{run_id}.png")
        blocks += [Para(label), Image(path.name, label)]
    return blocks
