"""Video fidelity through the harness: a tiny Wan clip run on one device and under ulysses at
world 2 (the session's gloo worlds), recorded by the sweep's record step, scored per latent frame,
and reported with its strip and GIF."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from analysis.report import write_report
from suite.config.experiment import FidelitySettings, parse_config
from suite.fidelity import backbones as fb
from suite.fidelity.images import IMAGES, video_layout
from suite.fidelity.score import Backbones, FidelityOptions, score_store
from suite.store.results import ResultStore
from suite.commands.sweep import SweepSummary, _record

# 9 frames -> 3 latent frames of 8 x 8, 2 clips (FVD needs two a side), 2 steps: ~1 s a run
CLIP, STEPS, CLIPS, LATENT_FRAMES = "9x64x64", 2, 2, 3


def _spec(strategy: str, degrees: dict):
    raw = {
        "experiment": "video_fidelity",
        "workloads": ["tiny-wan2.1-t2v-1.3b"],
        "resolutions": [CLIP],
        "settings": {"steps": STEPS, "batch": CLIPS, "repeats": 1, "warmup_runs": 0},
        "strategies": [{"name": strategy, "degrees": degrees}],
    }
    (spec,) = parse_config(raw).runs
    return spec


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv(fb.ENV_OFFLINE, "1")
    monkeypatch.setenv(fb.ENV_DIR, str(tmp_path / "no-weights"))
    monkeypatch.setattr(fb, "CACHE_DIR", tmp_path / "no-cache")


class ClipMeans(torch.nn.Module):
    """Stand-in FVD extractor: per clip, the mean of each channel in each frame."""

    def forward(self, x):  # (N, 3, F, 224, 224)
        return x.mean(dim=(3, 4)).flatten(1)


def test_tiny_wan_ulysses_run_is_scored_per_frame_and_reported(world1, world2, tmp_path, offline):
    store = ResultStore(tmp_path / "results.db")
    summary = SweepSummary(db_path=store.path)
    base, uly = _spec("none", {}), _spec("ulysses", {"ulysses": 2})
    for spec, world in ((base, world1), (uly, world2)):
        _record(store, spec, (world.run(spec), None, None), summary, FidelitySettings())
    runs = store.table("runs").set_index("run_id")
    assert runs.loc[uly.run_id, "status"] == "ok", runs.loc[uly.run_id, "error"]
    folder = store.root / runs.loc[uly.run_id, "output_dir"] / IMAGES
    assert video_layout(folder) == (CLIPS, LATENT_FRAMES)

    df = store.table("fidelity")
    assert set(df["run_id"]) == {uly.run_id}
    per_frame = df[df["metric"] == "psnr_frame"].sort_values("frame")
    assert list(per_frame["frame"]) == [0, 1, 2] and (per_frame["n_images"] == CLIPS).all()
    # ulysses is bitwise equal to one device (tests/dist/test_video_exact.py): identical frames,
    # so every frame scores the cap and the error has no temporal structure at all
    assert (per_frame["value"] == 100.0).all()
    whole = df[df["frame"].isna()].set_index("metric")
    assert whole.loc["flicker", "value"] == 0.0 and whole.loc["psnr_frame_std", "value"] == 0.0
    assert whole.loc["fvd", "backbone"].startswith("missing: i3d_torchscript.pt")

    # rescored with a stand-in extractor: FVD is computed on the two clips a side
    backbones = Backbones(injected={"fvd": ("clip-means", ClipMeans())})
    score_store(store, FidelityOptions(allow_download=False), backbones, rescore=True)
    fvd = store.table("fidelity").set_index("metric").loc["fvd"]
    # two clips a side: rank-1 covariances, so sqrtm leaves a rounding residue around 0
    assert fvd["backbone"].startswith("clip-means") and abs(fvd["value"]) < 1e-6
    store.close()

    _html, md = write_report(tmp_path / "results.db", tmp_path / "report")
    assert "### Video fidelity" in md.read_text()
    strip = iio.imread(tmp_path / "report" / f"fidelity_{uly.run_id}_strip.png")
    gif = iio.imread(tmp_path / "report" / f"fidelity_{uly.run_id}.gif", index=None)
    assert strip.shape[1] == LATENT_FRAMES * 128 and gif.shape[0] == LATENT_FRAMES
    assert np.ptp(strip[: strip.shape[0] // 3]) > 0  # the baseline row shows a picture
