"""Fidelity through the harness: the sweep's record step saves images and fills the fidelity
table per run; on the trained presets, PSNR vs the baseline orders the patch methods as the
DistriFusion paper does: naive_patch < distrifusion (async) < distrifusion full_sync."""

from __future__ import annotations

import pytest
import torch

import workloads
from suite.fidelity import metrics as fm
from suite.fidelity import backbones as fb
from suite import parallel
from suite.config.experiment import FidelitySettings, parse_config
from suite.fidelity.images import IMAGES, decode, image_files, to_uint8
from suite.store.results import ResultStore
from suite.commands.sweep import SweepSummary, _record
from workloads.models import packaged_weights_path

STRATEGIES = [
    ("none", 1, {}),
    ("naive_patch", 2, {}),
    ("distrifusion", 2, {}),
    ("distrifusion", 2, {"full_sync": True}),
]


def _spec(workload, strategy, world, options, resolution, steps, batch):
    entry = {"name": strategy, "options": options}
    if world > 1:
        entry["world_sizes"] = [world]
    raw = {
        "experiment": "test_fidelity",
        "workloads": [workload],
        "resolutions": [resolution],
        "settings": {"steps": steps, "batch": batch, "repeats": 1, "warmup_runs": 0},
        "strategies": [entry],
    }
    (spec,) = parse_config(raw).runs
    return spec


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv(fb.ENV_OFFLINE, "1")
    monkeypatch.setenv(fb.ENV_DIR, str(tmp_path / "no-weights"))
    monkeypatch.setattr(fb, "CACHE_DIR", tmp_path / "no-cache")


def test_sweep_record_saves_images_and_fills_the_fidelity_table(world1, world2, tmp_path, offline):
    worlds = {1: world1, 2: world2}
    store = ResultStore(tmp_path / "results.db")
    summary = SweepSummary(db_path=store.path)
    specs = [_spec("tiny-dit-xl-2", s, w, o, 64, 3, 2) for s, w, o in STRATEGIES[:3]]
    # the baseline last: runs recorded before it are scored when it arrives
    for spec in [specs[1], specs[0], specs[2]]:
        _record(store, spec, (worlds[spec.world_size].run(spec), None, None), summary,
                FidelitySettings())  # fmt: skip
    df = store.table("fidelity")
    runs = store.table("runs").set_index("run_id")
    for spec in specs:
        assert len(image_files(store.root / runs.loc[spec.run_id, "output_dir"] / IMAGES)) == 2
    assert set(df["run_id"]) == {specs[1].run_id, specs[2].run_id}  # the baseline is not scored
    assert (df["baseline_run_id"] == specs[0].run_id).all()
    for _run_id, g in df.groupby("run_id"):
        by = g.set_index("metric")
        assert sorted(by.index) == sorted(fm.METRICS) and (by["n_images"] == 2).all()
        assert by.loc["psnr", "value"] > 0 and 0 < by.loc["ssim", "value"] <= 1
        for metric in ("lpips", "fid", "fid_torchmetrics"):  # offline: stored missing
            assert by[["value"]].loc[metric].isna().all()
            assert by.loc[metric, "backbone"].startswith("missing: ")
    store.close()


# -- PSNR ordering on the trained presets ------------------------------------------------------

# Margins [dB] between neighbours (naive -> async, async -> full_sync), 20 DDIM steps, batch 4,
# seed 0, world 2, asserted at about half the measured gap.
_MARGINS = {
    # measured: naive_patch 20.43, distrifusion 30.60, full_sync 100 (the cap: bitwise equal)
    "trained-tiny-dit": (5.0, 35.0),
    # measured: naive_patch 14.14, distrifusion 25.62, full_sync 95.75 (band rounding only)
    "trained-tiny-unet": (5.0, 35.0),
}


def _missing(preset: str) -> str | None:
    p = workloads.get_preset(preset)
    path = packaged_weights_path(p)
    if not path.is_file():
        return f"{path} not trained yet (python -m workloads.train_tiny --model {preset})"
    for name in ("naive_patch", "distrifusion"):
        if p.family not in parallel.get(name).families:
            return f"strategy {name} does not support family {p.family!r} yet"
    return None


@pytest.mark.parametrize("preset", list(_MARGINS))
def test_psnr_orders_naive_patch_below_distrifusion_below_full_sync(world1, world2, preset):
    reason = _missing(preset)
    if reason:
        pytest.skip(reason)
    worlds, p = {1: world1, 2: world2}, workloads.get_preset(preset)
    images = {}
    for strategy, world, options in STRATEGIES:
        spec = _spec(preset, strategy, world, options, 32, p.default_steps, 4)
        latents = worlds[world].run(spec)[0].latents
        images[(strategy, str(options))] = torch.from_numpy(to_uint8(decode(p, latents)[0]))
    base = images[("none", "{}")].permute(0, 3, 1, 2).float() / 255

    def psnr(key):
        return float(fm.psnr(images[key].permute(0, 3, 1, 2).float() / 255, base).mean())

    naive = psnr(("naive_patch", "{}"))
    async_ = psnr(("distrifusion", "{}"))
    sync = psnr(("distrifusion", "{'full_sync': True}"))
    print(f"{preset}: PSNR naive {naive:.2f}, distrifusion {async_:.2f}, full_sync {sync:.2f} dB")
    low, high = _MARGINS[preset]
    assert naive + low < async_, (naive, async_)
    assert async_ + high < sync, (async_, sync)
