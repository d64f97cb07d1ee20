"""Video fidelity on synthetic clips with known answers: per-frame metrics, the temporal
consistency of the error (stable vs flickering), FVD missing or computed with an injected
extractor, the store's per-frame rows, and the report's strip and GIF (no process group)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from suite.fidelity import backbones as fb
from suite.fidelity import metrics as fm
from suite.fidelity import video as fv
from suite.fidelity.images import (
    PIXEL_SPACE,
    PROJECTION,
    decode,
    load_images,
    project_latents,
    save_images,
    save_video_layout,
    video_layout,
    write_run_images,
)
from suite.fidelity.score import Backbones, FidelityOptions, run_images, score_store
from suite.store.results import ResultStore

CLIPS, FRAMES, SIZE = 2, 4, 32


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    # No test may fetch weights, and none may find a developer's own weights either.
    monkeypatch.setenv(fb.ENV_OFFLINE, "1")
    monkeypatch.setenv(fb.ENV_DIR, str(tmp_path / "no-weights"))
    monkeypatch.setattr(fb, "CACHE_DIR", tmp_path / "no-cache")


def _video(seed=0, clips=CLIPS, frames=FRAMES, size=SIZE) -> torch.Tensor:
    # 8-bit values in [0.2, 0.8]: offsets below stay inside [0, 1], as saved PNGs would
    g = torch.Generator().manual_seed(seed)
    return torch.randint(51, 205, (clips, frames, 3, size, size), generator=g).float() / 255


def _signs(frames: int) -> torch.Tensor:
    return torch.tensor([(-1.0) ** t for t in range(frames)]).reshape(1, frames, 1, 1, 1)


class SmallVideoExtractor(torch.nn.Module):
    """A random 3-D conv net standing in for I3D: (N, 3, F, 224, 224) in [-1, 1] -> (N, 8)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv3d(3, 8, (1, 8, 8), stride=(1, 8, 8)),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool3d(1),
            torch.nn.Flatten(),
        )
        self.seen: list[tuple] = []

    def forward(self, x):
        self.seen.append((tuple(x.shape), float(x.min()), float(x.max())))
        return self.net(x)


# -- metrics with known answers ------------------------------------------------------------------


def test_identical_videos_score_the_cap_one_and_no_temporal_error():
    x = _video()
    assert torch.equal(fv.per_frame("psnr", x, x), torch.full((CLIPS, FRAMES), fm.PSNR_CAP_DB))
    torch.testing.assert_close(fv.per_frame("ssim", x, x), torch.ones(CLIPS, FRAMES))
    assert fv.flicker(x, x) == 0.0 and fv.psnr_frame_std(x, x) == 0.0


def test_a_constant_offset_is_a_stable_error():
    x = _video()
    y = x + 10 / 255  # the same error in every frame: MSE (10/255)^2
    # float32 inputs: x + c rounds per pixel, so D varies by ~1e-7 of c between frames
    assert fv.flicker(y, x) == pytest.approx(0.0, abs=1e-6)
    assert fv.psnr_frame_std(y, x) == pytest.approx(0.0, abs=1e-4)
    expected = 20 * math.log10(255 / 10)  # 28.13 dB in every frame
    torch.testing.assert_close(
        fv.per_frame("psnr", y, x), torch.full((CLIPS, FRAMES), expected), rtol=0, atol=1e-3
    )


def test_an_error_that_flips_sign_every_frame_flickers():
    x = _video()
    y = x + _signs(FRAMES) * 10 / 255  # |D| is the same in every frame, its sign alternates
    assert fv.flicker(y, x) == pytest.approx(2.0, abs=1e-6)  # float32 rounding of x +- c
    # the per-frame PSNR cannot tell: every frame is equally far from the baseline
    assert fv.psnr_frame_std(y, x) == pytest.approx(0.0, abs=1e-4)


def test_a_growing_error_moves_the_per_frame_psnr():
    x = _video()
    t = torch.arange(FRAMES, dtype=torch.float32).reshape(1, FRAMES, 1, 1, 1)
    y = x + t * 10 / 255  # D_t = t c: steps of c, mean |D| = 1.5 c over 4 frames
    assert fv.flicker(y, x) == pytest.approx(1 / 1.5, abs=1e-6)
    psnr = fv.per_frame("psnr", y, x)[0]
    assert psnr[0] == fm.PSNR_CAP_DB and (psnr[1:].diff() < 0).all()  # drifts away
    assert fv.psnr_frame_std(y, x) > 10


def test_independent_gaussian_errors_flicker_at_sqrt_two():
    x = torch.zeros(1, 16, 3, 64, 64)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    # E|X - Y| / E|X| = sqrt(2) for X, Y independent N(0, s^2); 16 x 12288 samples
    assert fv.flicker(x + 0.01 * noise, x) == pytest.approx(math.sqrt(2), abs=0.01)


def test_flicker_needs_two_frames_and_videos_need_their_shape():
    x = _video(frames=1)
    with pytest.raises(ValueError, match="at least 2 frames"):
        fv.flicker(x, x)
    with pytest.raises(ValueError, match="12 images are not 5 clips x 2 frames"):
        fv.as_videos(torch.zeros(12, 3, 4, 4), 5, 2)


# -- FVD -----------------------------------------------------------------------------------------


def test_fvd_input_resizes_the_shorter_side_crops_and_scales_to_minus_one_one():
    x = torch.full((2, 3, 3, 32, 48), 0.75)
    # a band the centre crop of the 224 x 336 resize cuts away: the crop starts at column 56,
    # source column 7.6, which bilinear sampling blends from columns 7 and 8 (both 0.75)
    x[..., :, :6] = 0.0
    out = fv.fvd_input(x)
    assert out.shape == (2, 3, 3, 224, 224)
    torch.testing.assert_close(out, torch.full_like(out, 0.5))  # 0.75 -> 0.5 in [-1, 1]


def test_fvd_is_missing_without_i3d_weights_with_the_file_and_what_to_do():
    x = _video()
    (row,) = [r for r in fv.video_rows(x, x, Backbones(), "test") if r["metric"] == "fvd"]
    assert row["value"] is None and row["n_images"] == CLIPS
    assert row["backbone"].startswith("missing: i3d_torchscript.pt not found")
    assert "DIFFSCALE_WEIGHTS_DIR" in row["backbone"]


def test_fvd_with_an_injected_extractor_is_zero_for_the_same_clips_and_grows_apart():
    ext = SmallVideoExtractor().eval()
    base = _video(seed=0, clips=4)
    assert fv.fvd(base, base, ext) == pytest.approx(0.0, abs=1e-6)
    near = base + 0.02 * torch.randn(base.shape, generator=torch.Generator().manual_seed(3))
    far = _video(seed=5, clips=4).flip(-1) * 0.5
    assert 0 < fv.fvd(near.clamp(0, 1), base, ext) < fv.fvd(far, base, ext)
    shape, lo, hi = ext.seen[0]
    assert shape == (4, 3, FRAMES, 224, 224) and -1 <= lo < hi <= 1


def test_fvd_needs_two_clips_a_side():
    x = _video(clips=1)
    backbones = Backbones(injected={"fvd": ("test-i3d", SmallVideoExtractor())})
    (row,) = [r for r in fv.video_rows(x, x, backbones, "test") if r["metric"] == "fvd"]
    assert row["value"] is None and "needs >= 2 clips per side, the run has 1" in row["backbone"]


def test_an_i3d_file_in_the_weights_dir_is_loaded_and_called_without_its_own_resize(tmp_path):
    class FakeI3D(torch.nn.Module):
        def forward(self, x, rescale: bool, resize: bool, return_features: bool):
            # records the switches StyleGAN-V's FVD uses in the features
            flags = torch.tensor([float(rescale), float(resize), float(return_features)])
            return torch.cat([x.mean(dim=(1, 2, 3, 4))[:, None], flags.expand(x.shape[0], 3)], 1)

    torch.jit.script(FakeI3D()).save(str(tmp_path / fb.I3D.name))
    net = fb.i3d_net(tmp_path, allow_download=False)
    feats = fv.fvd_features(torch.full((2, 3, 3, 16, 16), 0.75), net)
    np.testing.assert_allclose(feats, [[0.5, 0, 0, 1], [0.5, 0, 0, 1]], atol=1e-6)


# -- decode, store, report -----------------------------------------------------------------------


def test_video_latents_follow_the_image_rule_frame_by_frame():
    z = torch.rand(2, 3, 4, 8, 8) * 2 - 1  # (B, C, F, h, w)
    frames, source = decode(SimpleNamespace(pixel_space=True), z)
    assert source == PIXEL_SPACE
    torch.testing.assert_close(frames[5], (z[1, :, 1] + 1) / 2)  # clip 1, frame 1
    latents = torch.randn(2, 16, 3, 8, 8)
    frames, source = decode(SimpleNamespace(pixel_space=False), latents)
    assert source == PROJECTION and frames.shape == (6, 3, 8, 8)
    assert torch.equal(frames[4], project_latents(latents[1:2, :, 1])[0])


def _video_store(tmp_path, run_video: torch.Tensor, base_video: torch.Tensor) -> ResultStore:
    store = ResultStore(tmp_path / "results.db")
    common = dict(
        experiment="t", workload="tiny-wan2.1-t2v-1.3b", height=SIZE * 8, width=SIZE * 8,
        frames=4 * (FRAMES - 1) + 1, steps=2, scheduler="flow", guidance=5.0, batch=CLIPS,
        seed=0, dtype="float32", device="cpu", status="ok", created_at="2026-01-01T00:00:00",
    )  # fmt: skip
    runs = {
        "base": dict(strategy="none", world_size=1),
        "method": dict(strategy="ring", world_size=2),
    }
    for (run_id, extra), video in zip(runs.items(), (base_video, run_video), strict=True):
        store.save_rows("runs", [common | extra | {"run_id": run_id, "output_dir": run_id}])
        folder = tmp_path / run_id / "images"
        save_images(video.flatten(0, 1), folder, PROJECTION)
        save_video_layout(folder, *video.shape[:2])
    return store


def test_video_runs_get_per_frame_temporal_and_fvd_rows(tmp_path):
    base = _video()
    run = base + _signs(FRAMES) * 10 / 255  # a flickering error
    with _video_store(tmp_path, run, base) as store:
        score_store(store, FidelityOptions(allow_download=False))
        df = store.table("fidelity")
    assert set(df["run_id"]) == {"method"}
    per_frame = df[df["metric"] == "psnr_frame"].sort_values("frame")
    assert (
        list(per_frame["frame"]) == list(range(FRAMES)) and (per_frame["n_images"] == CLIPS).all()
    )
    np.testing.assert_allclose(per_frame["value"], 20 * math.log10(25.5), atol=1e-3)
    assert len(df[df["metric"] == "ssim_frame"]) == FRAMES
    assert df[df["metric"] == "lpips_frame"].empty  # offline: the lpips row says why
    whole = df[df["frame"].isna()].set_index("metric")
    assert whole.loc["psnr", "n_images"] == CLIPS * FRAMES
    assert whole.loc["flicker", "value"] == pytest.approx(2.0, abs=1e-6)
    assert whole.loc["psnr_frame_std", "value"] == pytest.approx(0.0, abs=1e-3)
    assert np.isnan(whole.loc["fvd", "value"])
    assert whole.loc["fvd", "backbone"].startswith("missing: i3d_torchscript.pt")


def test_video_rows_with_injected_networks_fill_lpips_frames_and_fvd(tmp_path):
    from torchmetrics.functional.image.lpips import _LPIPS

    torch.manual_seed(0)
    backbones = Backbones(
        injected={
            "lpips": ("test-lpips", _LPIPS(pretrained=True, net="alex", pnet_rand=True).eval()),
            "fvd": ("test-i3d", SmallVideoExtractor().eval()),
        }
    )
    base = _video()
    with _video_store(tmp_path, base, base) as store:
        score_store(store, FidelityOptions(allow_download=False), backbones)
        df = store.table("fidelity").set_index("metric")
    assert (df.loc["lpips_frame", "value"].abs() < 1e-6).all()
    assert df.loc["fvd", "value"] == pytest.approx(0.0, abs=1e-6)
    assert df.loc["fvd", "backbone"] == "test-i3d; clips: latent projection; FEW CLIPS"
    assert df.loc["flicker", "value"] == 0.0


def test_video_images_saved_before_the_layout_file_are_decoded_again(tmp_path):
    latents = torch.randn(CLIPS, 16, FRAMES, 8, 8)
    store = _video_store(tmp_path, _video(size=8), _video(size=8))
    torch.save(latents, tmp_path / "method" / "latents.pt")
    (tmp_path / "method" / "images" / "VIDEO.json").unlink()  # as an older diffscale left it
    runs = store.table("runs")
    folder = run_images(store, runs[runs["run_id"] == "method"].iloc[0])
    assert video_layout(folder) == (CLIPS, FRAMES)
    store.close()


def test_write_run_images_records_the_clip_layout(tmp_path):
    spec = SimpleNamespace(workload="tiny-wan2.1-t2v-1.3b", device="cpu", weights=None)
    folder = write_run_images(spec, tmp_path, torch.randn(3, 16, 2, 8, 8))
    assert json.loads((folder / "VIDEO.json").read_text()) == {"clips": 3, "frames": 2}
    assert len(list(folder.glob("*.png"))) == 6


# Small random VAEs of each video family's class (8 channels a level, the published compression:
# 8x in space, 4x in time), saved as a pipeline directory's vae/ folder
_TINY_VIDEO_VAES = {
    "tiny-wan2.1-t2v-1.3b": dict(base_dim=8, dim_mult=[1, 1, 1, 1], num_res_blocks=1),
    "tiny-hunyuanvideo": dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                              norm_num_groups=4),
    "tiny-cogvideox-5b": dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                              norm_num_groups=4),
}  # fmt: skip


@pytest.mark.parametrize("workload", list(_TINY_VIDEO_VAES))
def test_video_latents_with_a_local_vae_are_decoded_to_every_frame(tmp_path, workload):
    import diffusers

    from suite.fidelity.images import VIDEO_VAE, image_source
    from workloads.presets import get_preset
    from workloads.vae import unscale_video_latents, vae_config

    preset = get_preset(workload)
    cls = getattr(diffusers, vae_config(preset)[0])
    torch.manual_seed(0)
    vae = cls(**_TINY_VIDEO_VAES[workload]).eval()
    vae.save_pretrained(tmp_path / "pipe" / "vae")
    latents = torch.randn(2, 16, 3, 4, 6)  # 2 clips of 3 latent frames, 4x6 latent pixels
    spec = SimpleNamespace(workload=workload, device="cpu", weights=str(tmp_path / "pipe"))
    folder = write_run_images(spec, tmp_path / "run", latents)
    # 4 (3 - 1) + 1 = 9 frames of 32 x 48 px per clip, clip after clip
    assert video_layout(folder) == (2, 9) and image_source(folder) == VIDEO_VAE
    images = load_images(folder)
    assert images.shape == (18, 3, 32, 48)
    with torch.no_grad():  # clip 1, frame 4: the pipeline's un-normalized latent, decoded
        z = unscale_video_latents(preset.family, latents[1:2], vae.config)
        expected = ((vae.decode(z, return_dict=False)[0][0, :, 4] + 1) / 2).clamp(0, 1)
    # the PNGs hold 8-bit values: within half a level of the decoded frame
    torch.testing.assert_close(images[9 + 4], expected, rtol=0, atol=0.5 / 255 + 1e-6)
    # without the vae/ folder the same latents are projected per latent frame
    spec.weights = None
    assert video_layout(write_run_images(spec, tmp_path / "bare", latents)) == (2, 3)


def test_report_shows_video_metrics_a_strip_and_a_gif_per_pair(tmp_path):
    import imageio.v3 as iio

    from analysis.fidelity_report import TILE_PX, video_strip
    from analysis.report import write_report

    base = _video()
    with _video_store(tmp_path, base + 10 / 255, base) as store:
        score_store(store, FidelityOptions(allow_download=False))
    html, md = write_report(tmp_path / "results.db", tmp_path / "report")
    text = md.read_text()
    assert "### Video fidelity" in text and "i3d_torchscript.pt" in text
    assert "28.1 28.1 28.1 28.1" in text  # psnr per frame [dB], a stable error
    strip = iio.imread(tmp_path / "report" / "fidelity_method_strip.png")
    gif = iio.imread(tmp_path / "report" / "fidelity_method.gif", index=None)
    scale = TILE_PX // SIZE  # 32 px tiles are enlarged 4x
    assert strip.shape == (3 * SIZE * scale, FRAMES * SIZE * scale, 3)
    assert gif.shape[:3] == (FRAMES, SIZE * scale, 3 * SIZE * scale)
    assert "fidelity_method.gif" in html.read_text() and "fidelity_method_strip.png" in text
    assert not (tmp_path / "report" / "fidelity_method.png").exists()  # no image grid for video
    a = np.zeros((2, 1, 1, 3), np.uint8)
    b = a.copy()
    b[1, 0, 0] = 10  # frame 1 differs by 10: x4 in the third row, second column
    s = video_strip(a, b)
    assert s.shape == (3, 2, 3) and s[2, 1, 0] == 40 and s[2, 0, 0] == 0 and s[1, 1, 0] == 10
