"""Fidelity metrics on known cases, the Frechet distance against its closed form, missing
backbones recorded as missing, and the store filled per run (no process group, no downloads)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import linalg

from suite.fidelity import backbones as fb
from suite.fidelity import metrics as fm
from suite.fidelity.images import (
    PIXEL_SPACE,
    PROJECTION,
    decode,
    image_source,
    load_images,
    project_latents,
    save_images,
)
from suite.fidelity.score import Backbones, FidelityOptions, find_baseline, score_store
from suite.store.results import ResultStore


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    # No test may fetch weights, and none may find a developer's own weights either.
    monkeypatch.setenv(fb.ENV_OFFLINE, "1")
    monkeypatch.setenv(fb.ENV_DIR, str(tmp_path / "no-weights"))
    monkeypatch.setattr(fb, "CACHE_DIR", tmp_path / "no-cache")


def _images(n=4, size=32, seed=0) -> torch.Tensor:
    # 8-bit values, as every metric reads saved PNGs
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g).float() / 255


class SmallExtractor(torch.nn.Module):
    """A random conv net standing in for Inception in tests: (N, 3, H, W) -> (N, 16)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 5, stride=4),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )

    def forward(self, x):
        return self.net(x / 255)


def _small_lpips():
    # torchmetrics' LPIPS with an untrained backbone: only the mechanics are under test here
    from torchmetrics.functional.image.lpips import _LPIPS

    torch.manual_seed(0)
    return _LPIPS(pretrained=True, net="alex", pnet_rand=True).eval()


def _injected() -> Backbones:
    from torchmetrics.image.fid import FrechetInceptionDistance

    ext = SmallExtractor().eval()
    return Backbones(
        injected={
            "lpips": ("test-lpips", _small_lpips()),
            "fid": ("test-extractor", ext),
            "fid_torchmetrics": ("test-extractor", lambda: FrechetInceptionDistance(feature=ext)),
        }
    )


# -- metrics on known cases ----------------------------------------------------------------------


def test_psnr_of_identical_images_is_the_documented_cap():
    x = _images()
    assert torch.equal(fm.psnr(x, x), torch.full((4,), fm.PSNR_CAP_DB))


def test_psnr_matches_its_definition_per_image():
    a = torch.zeros(2, 3, 8, 8)
    b = a.clone()
    b[0] += 0.1  # MSE 0.01 -> 20 dB
    b[1] += 0.01  # MSE 1e-4 -> 40 dB
    torch.testing.assert_close(fm.psnr(b, a), torch.tensor([20.0, 40.0]), rtol=0, atol=1e-4)


def test_ssim_is_one_for_identical_and_lower_for_noisy_images():
    x = _images()
    torch.testing.assert_close(fm.ssim(x, x), torch.ones(4), rtol=0, atol=1e-6)
    noisy = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    assert (fm.ssim(noisy, x) < 0.9).all()


def test_lpips_is_zero_for_identical_images_and_grows_with_noise():
    net, x = _small_lpips(), _images(n=2, size=64)
    assert fm.lpips(x, x, net).abs().max() < 1e-6
    small = fm.lpips((x + 0.05 * torch.randn_like(x)).clamp(0, 1), x, net)
    large = fm.lpips((x + 0.3 * torch.randn_like(x)).clamp(0, 1), x, net)
    assert (small > 0).all() and (large > small).all()


# -- Frechet distance ----------------------------------------------------------------------------


def _closed_form(mu1, s1, mu2, s2) -> float:
    # Tr((S1 S2)^(1/2)) from the eigenvalues of S1 S2 (real and >= 0 for SPD S1, S2): an
    # implementation independent of the sqrtm the metric uses
    eig = np.linalg.eigvals(s1 @ s2).real.clip(min=0)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(eig).sum())


def _spd(d, seed):
    a = np.random.default_rng(seed).normal(size=(d, d))
    return a @ a.T / d + 0.5 * np.eye(d)


def test_frechet_distance_equals_closed_form_on_exact_gaussian_statistics():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    s1, s2 = _spd(3, 1), _spd(3, 2)
    assert fm.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        _closed_form(mu1, s1, mu2, s2), rel=1e-9
    )
    # diagonal covariances: ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fm.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected)
    assert fm.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6)


def test_fid_of_gaussian_samples_converges_to_closed_form_and_torchmetrics_agrees():
    from torchmetrics.image.fid import _compute_fid

    rng = np.random.default_rng(0)
    mu1, mu2 = np.zeros(4), np.array([0.5, -0.5, 1.0, 0.0])
    s1, s2 = _spd(4, 3), _spd(4, 4)
    f1 = rng.multivariate_normal(mu1, s1, size=40_000)
    f2 = rng.multivariate_normal(mu2, s2, size=40_000)
    value = fm.fid_from_features(f1, f2)
    # sampling error of mean and covariance at n = 40 000 in 4-d: about 1e-2 absolute
    assert value == pytest.approx(_closed_form(mu1, s1, mu2, s2), abs=3e-2)
    (m1, c1), (m2, c2) = fm.feature_stats(f1), fm.feature_stats(f2)
    tm = _compute_fid(*(torch.from_numpy(t) for t in (m1, c1, m2, c2)))
    assert float(tm) == pytest.approx(value, rel=1e-6)  # same statistics, two implementations


def test_fid_of_identical_image_sets_is_zero_with_an_injected_extractor(tmp_path):
    save_images(_images(n=6), tmp_path / "a", "test")
    files = sorted((tmp_path / "a").glob("*.png"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fm.FewImagesWarning)
        feats = fm.clean_features(files, SmallExtractor().eval())
    assert feats.shape == (6, 16)
    assert fm.fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-6)


def test_fid_warns_below_its_feature_dimension():
    with pytest.warns(fm.FewImagesWarning, match="2048 feature dimensions"):
        assert fm.warn_few_images(8, 2048) is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fm.warn_few_images(4096, 2048) is None


# -- backbones: present or honestly missing ------------------------------------------------------


@pytest.mark.parametrize("metric", ["lpips", "fid", "fid_torchmetrics"])
def test_missing_weights_are_reported_with_reason_and_instruction(metric):
    with pytest.raises(fb.MissingWeights, match=r"not found in .*\$DIFFSCALE_WEIGHTS_DIR"):
        Backbones(FidelityOptions()).get(metric)


def test_lpips_backbone_loads_alexnet_weights_from_the_weights_dir(tmp_path):
    import torchvision

    torch.manual_seed(1)
    alex = torchvision.models.alexnet(weights=None)
    torch.save(alex.state_dict(), tmp_path / fb.ALEXNET.name)
    net = fb.lpips_net(tmp_path, allow_download=False)
    assert torch.equal(net.net.slice1[0].weight, alex.features[0].weight)
    assert torch.equal(getattr(net.net.slice5, "10").bias, alex.features[10].bias)


def test_failed_download_names_the_file_and_what_to_do(monkeypatch, tmp_path):
    def refuse(url, dst, progress):
        raise OSError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    with pytest.raises(fb.MissingWeights, match="download failed .*no route to host.*put alexnet"):
        fb.weight_file(fb.ALEXNET, tmp_path, allow_download=True)


# -- images --------------------------------------------------------------------------------------


def test_pixel_space_latents_are_the_image_and_others_use_the_fixed_projection():
    import workloads

    z = torch.rand(2, 3, 8, 8) * 2 - 1
    images, source = decode(workloads.get_preset("trained-tiny-dit"), z)
    assert source == PIXEL_SPACE
    torch.testing.assert_close(images, (z + 1) / 2)
    latents = torch.randn(2, 4, 8, 8)
    images, source = decode(workloads.get_preset("tiny-dit-xl-2"), latents)
    assert source == PROJECTION and images.shape == (2, 3, 8, 8)
    assert torch.equal(images, project_latents(latents))
    assert images.min() >= 0 and images.max() <= 1


def test_saved_images_round_trip_through_png(tmp_path):
    x = _images(n=3)
    save_images(x, tmp_path / "imgs", PIXEL_SPACE)
    torch.testing.assert_close(load_images(tmp_path / "imgs"), x, rtol=0, atol=0)
    assert image_source(tmp_path / "imgs") == PIXEL_SPACE


# -- the store -----------------------------------------------------------------------------------


def _store_with_runs(tmp_path) -> ResultStore:
    """A store with a baseline, a method run (its images perturbed) and a run of another seed."""
    store = ResultStore(tmp_path / "results.db")
    base = _images(n=4, seed=1)
    common = dict(
        experiment="t", workload="trained-tiny-dit", height=32, width=32, steps=4,
        scheduler="ddim", guidance=3.0, batch=4, seed=0, dtype="float32", device="cpu",
        status="ok", created_at="2026-01-01T00:00:00",
    )  # fmt: skip
    runs = {
        "base": dict(strategy="none", world_size=1, degrees=json.dumps({})),
        "method": dict(strategy="naive_patch", world_size=2, degrees=json.dumps({"patch": 2})),
        "other": dict(strategy="naive_patch", world_size=2, seed=7),
    }
    for run_id, extra in runs.items():
        store.save_rows("runs", [common | extra | {"run_id": run_id, "output_dir": run_id}])
    save_images(base, tmp_path / "base" / "images", PIXEL_SPACE)
    noisy = base + 0.05 * torch.randn(base.shape, generator=torch.Generator().manual_seed(2))
    save_images(noisy.clamp(0, 1), tmp_path / "method" / "images", PIXEL_SPACE)
    save_images(_images(n=4, seed=3), tmp_path / "other" / "images", PIXEL_SPACE)
    return store


def test_baseline_is_the_single_device_run_with_the_same_seeds(tmp_path):
    with _store_with_runs(tmp_path) as store:
        runs = store.table("runs")
        method = runs[runs["run_id"] == "method"].iloc[0]
        other = runs[runs["run_id"] == "other"].iloc[0]
        assert find_baseline(runs, method)["run_id"] == "base"
        assert find_baseline(runs, other) is None


def test_fidelity_table_is_filled_per_run(tmp_path):
    ref = tmp_path / "ground_truth"
    save_images(_images(n=5, seed=9), ref, "image files")
    with _store_with_runs(tmp_path) as store:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fm.FewImagesWarning)
            notes = score_store(store, FidelityOptions(reference=str(ref)), _injected())
        df = store.table("fidelity")
    assert any("other: no baseline" in n for n in notes)
    orig = df[(df["run_id"] == "method") & (df["reference"] == "original")].set_index("metric")
    assert sorted(orig.index) == sorted(fm.METRICS)
    assert (orig["baseline_run_id"] == "base").all() and (orig["n_images"] == 4).all()
    # noise of sigma 0.05 (clipped, 8-bit) on uniform-noise images: PSNR 26.3 dB measured;
    # SSIM stays near 1 (0.985 measured) since the images' own variance dominates its terms
    assert 25 < orig.loc["psnr", "value"] < 28 and 0.9 < orig.loc["ssim", "value"] < 0.995
    assert orig.loc["lpips", "value"] > 0 and orig.loc["fid", "value"] > 0
    assert "FEW IMAGES" in orig.loc["fid", "backbone"]
    # clean-fid (resized to 299) and torchmetrics (raw 32 px) see the images differently; both
    # are finite distances of the same two sets
    assert math.isfinite(orig.loc["fid_torchmetrics", "value"])
    # every ok run, the baseline included, is scored vs the ground-truth folder: FIDs only
    gt = df[df["reference"] == "ground_truth"]
    assert sorted(gt["run_id"].unique()) == ["base", "method", "other"]
    assert set(gt["metric"]) == set(fm.FIDS) and gt["value"].notna().all()
    assert df[(df["run_id"] == "base") & (df["reference"] == "original")].empty


def test_missing_backbones_are_stored_as_missing_never_as_numbers(tmp_path):
    with _store_with_runs(tmp_path) as store:
        score_store(store, FidelityOptions(allow_download=False))
        df = store.table("fidelity").set_index("metric")
    assert df.loc["psnr", "value"] > 0 and df.loc["ssim", "value"] > 0  # no network needed
    for metric in ("lpips", "fid", "fid_torchmetrics"):
        assert np.isnan(df.loc[metric, "value"])
        assert df.loc[metric, "backbone"].startswith("missing: ")
        assert "DIFFSCALE_WEIGHTS_DIR" in df.loc[metric, "backbone"]


def test_closed_form_helper_is_itself_right_for_commuting_covariances():
    # guards the test's own reference: for commuting S1, S2, (S1 S2)^(1/2) = S1^(1/2) S2^(1/2)
    s1, s2 = np.diag([1.0, 2.0]), np.diag([3.0, 5.0])
    expected = np.trace(s1 + s2 - 2 * linalg.sqrtm(s1) @ linalg.sqrtm(s2)).real
    assert _closed_form(np.zeros(2), s1, np.zeros(2), s2) == pytest.approx(expected)


def test_report_shows_the_fidelity_table_and_a_grid_per_method(tmp_path):
    from analysis.fidelity_report import diff_grid
    from analysis.report import write_report

    with _store_with_runs(tmp_path) as store:
        score_store(store, FidelityOptions(allow_download=False))
    html, md = write_report(tmp_path / "results.db", tmp_path / "report")
    text = md.read_text()
    assert "## Fidelity" in text and "missing" in text and "DIFFSCALE_WEIGHTS_DIR" in text
    assert (tmp_path / "report" / "fidelity_method.png").is_file()
    assert "fidelity_method.png" in html.read_text()
    base = np.zeros((1, 2, 2, 3), np.uint8)
    run = base.copy()
    run[0, 0, 0] = 10  # a difference of 10 shows as 40 (x4) in the third tile
    grid = diff_grid(base, run)
    assert grid.shape == (2, 6, 3) and grid[0, 4, 0] == 40 and grid[1, 5, 0] == 0


def test_fidelity_command_scores_a_results_directory(tmp_path, capsys):
    from suite.commands.cli import main

    _store_with_runs(tmp_path).close()
    assert main(["fidelity", str(tmp_path), "--no-download"]) == 0
    out = capsys.readouterr().out
    assert "method: scored vs baseline base" in out and "lpips missing: " in out
    with ResultStore(tmp_path / "results.db") as store:
        assert set(store.table("fidelity")["run_id"]) == {"method"}
