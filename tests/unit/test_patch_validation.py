"""Patch strategies without a process group: config validation, bands, halos, GroupNorm modes."""

from __future__ import annotations

import pytest
import torch

from suite.config.experiment import ConfigError, parse_config
from suite.parallel.patch_modules import PatchGroupNorm, halo_rows
from suite.parallel.patch_state import Band


def _config(workload: str, resolution, entry: dict):
    raw = {
        "experiment": "t",
        "workloads": [workload],
        "resolutions": [resolution],
        "settings": {"steps": 2},
        "strategies": [entry],
    }
    return parse_config(raw)


def _problems(workload: str, resolution, entry: dict) -> str:
    with pytest.raises(ConfigError) as err:
        _config(workload, resolution, entry)
    return str(err.value)


def test_unet_bands_must_survive_every_downsample():
    # 256 px -> 32 latent rows; tiny-sdxl downsamples twice, so bands need multiples of 4 rows
    msg = _problems("tiny-sdxl", 256, {"name": "distrifusion", "world_sizes": [3]})
    assert "patch degree 3 does not split the 32 latent rows of 256x256 px" in msg
    assert "downsamples by 4" in msg
    assert "allowed patch degrees here: 1, 2, 4, 8" in msg
    msg = _problems("tiny-sdxl", 256, {"name": "distrifusion", "world_sizes": [16]})
    assert "patch degree 16" in msg  # bands of 2 rows vanish after the second downsample
    (spec,) = _config("tiny-sdxl", 256, {"name": "distrifusion", "world_sizes": [4]}).runs
    assert spec.options_dict == {
        "coalesce": "block",
        "full_sync": False,
        "gn_mode": "corrected",
        "warmup_steps": 1,
    }


def test_token_models_split_token_rows():
    # tiny-pixart at 256 px: 32 latent rows, 2x2 patches -> 16 token rows
    msg = _problems("tiny-pixart-alpha", 256, {"name": "distrifusion", "world_sizes": [3]})
    assert "16 token rows" in msg and "allowed patch degrees here: 1, 2, 4, 8, 16" in msg
    # Flux packs 2x2 latent pixels per token: 16 token rows as well
    msg = _problems("tiny-flux-dev", 256, {"name": "naive_patch", "world_sizes": [32]})
    assert "16 token rows" in msg
    assert _config("tiny-flux-dev", 256, {"name": "distrifusion", "world_sizes": [16]}).runs


def test_naive_split_checks_the_axes_it_cuts():
    # 256x288 px: 32 latent rows, 36 latent columns; 36 columns do not make 2 bands of 4k
    entry = {"name": "naive_patch", "world_sizes": [2]}
    assert _config("tiny-sdxl", "256x288", entry | {"options": {"split": "row"}}).runs
    msg = _problems("tiny-sdxl", "256x288", entry | {"options": {"split": "column"}})
    assert "36 latent columns" in msg
    msg = _problems("tiny-sdxl", "256x288", entry)  # default: alternate needs both
    assert "36 latent columns" in msg and "latent rows" not in msg
    assert _config("tiny-sdxl", "256x288", {"name": "distrifusion", "world_sizes": [2]}).runs


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"gn_mode": "global"}, "allowed: 'separate', 'stale', 'corrected', 'sync'"),
        ({"warmup_steps": -1}, "it must be >= 0"),
        ({"warmup_steps": 1.5}, "must be of type int"),
        ({"full_sync": "yes"}, "allowed: False, True"),
    ],
)
def test_distrifusion_options_are_checked(options, expected):
    entry = {"name": "distrifusion", "world_sizes": [2], "options": options}
    assert expected in _problems("tiny-sdxl", 256, entry)


def test_naive_split_option_is_checked():
    entry = {"name": "naive_patch", "world_sizes": [2], "options": {"split": "diagonal"}}
    assert "allowed: 'row', 'column', 'alternate'" in _problems("tiny-sdxl", 256, entry)


@pytest.mark.parametrize("axis", ["row", "column"])
def test_bands_partition_the_grid(axis):
    grid = torch.arange(2 * 4 * 6).reshape(2, 24)  # (batch, 4 rows x 6 cols)
    bands = [Band(4, 6, 2, r, axis) for r in range(2)]
    parts = [b.take(grid, 1) for b in bands]
    expected = grid.reshape(2, 4, 6)[:, :2] if axis == "row" else grid.reshape(2, 4, 6)[:, :, :3]
    assert torch.equal(parts[0], expected.reshape(2, 12))
    assert torch.equal(bands[0].place(torch.cat(parts, 1), 1), grid)


def test_halo_rows():
    conv = torch.nn.Conv2d(1, 1, 3, padding=1)
    assert halo_rows(conv) == (1, 1)
    down = torch.nn.Conv2d(1, 1, 3, stride=2, padding=1)
    assert halo_rows(down) == (1, 0)  # a stride-2 band's last output row stays inside it


class _FakeState:
    """Rank 0 of 2 with a given 'previous step' of GroupNorm statistics."""

    def __init__(self, sync: bool, previous: torch.Tensor | None = None):
        self.n, self.rank, self.sync, self.previous = 2, 0, sync, previous
        self.seen = None

    def exchange(self, layer, fresh, build):
        self.seen = fresh
        return build(self.previous, False) if not self.sync else build(self.fresh_all, True)


def _band_stats(x: torch.Tensor, groups: int) -> torch.Tensor:
    var, mean = torch.var_mean(x.reshape(x.shape[0], groups, -1), dim=-1, correction=0)
    return torch.stack([mean, var])


def _normalized(x, mean, var, eps):
    return (x - mean[:, :, None, None]) / torch.sqrt(var[:, :, None, None] + eps)


def test_group_norm_modes_follow_their_formulas():
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(4, 4, affine=False)
    now = torch.randn(2, 4, 8, 5)
    before = now + 0.3 * torch.randn(2, 4, 8, 5) + 0.1  # the previous step: close, not equal
    band = now[:, :, :4]
    fresh_all = torch.stack([_band_stats(now[:, :, :4], 4), _band_stats(now[:, :, 4:], 4)])
    previous = torch.stack([_band_stats(before[:, :, :4], 4), _band_stats(before[:, :, 4:], 4)])

    sync = _FakeState(sync=True)
    sync.fresh_all = fresh_all
    # Fresh global statistics reproduce torch's GroupNorm on the whole map, restricted to the band.
    # fp32 moments from band variances vs torch's one-pass kernel: rounding only (measured 5e-7).
    out = PatchGroupNorm(norm, sync, "gn", "corrected")(band)
    torch.testing.assert_close(out, norm(now)[:, :, :4], rtol=1e-5, atol=1e-5)

    local = fresh_all[0]
    separate = PatchGroupNorm(norm, _FakeState(False, previous), "gn", "separate")(band)
    torch.testing.assert_close(separate, _normalized(band, local[0], local[1], norm.eps))

    def moments(s):  # (2, ...) mean, var -> E[x], E[x^2]
        return torch.stack([s[0], s[1] + s[0] ** 2])

    corrected = moments(previous.transpose(0, 1)).mean(1) + moments(local) - moments(previous[0])
    var = corrected[1] - corrected[0] ** 2
    assert (var > 0).all()  # this draw takes the Eq. 2 branch everywhere
    out = PatchGroupNorm(norm, _FakeState(False, previous), "gn", "corrected")(band)
    torch.testing.assert_close(out, _normalized(band, corrected[0], var, norm.eps))

    mixed = torch.stack([local, previous[1]])  # stale: others' previous, own fresh
    mean = mixed[:, 0].mean(0)
    var = (mixed[:, 1] + (mixed[:, 0] - mean) ** 2).mean(0)
    out = PatchGroupNorm(norm, _FakeState(False, previous), "gn", "stale")(band)
    torch.testing.assert_close(out, _normalized(band, mean, var, norm.eps))


def test_corrected_group_norm_falls_back_to_local_variance():
    groups, norm = 2, torch.nn.GroupNorm(2, 2, affine=False)
    band = torch.randn(1, 2, 4, 4)
    local = _band_stats(band, groups)
    # previous step: this band had a huge mean, the whole image none -> E[x^2] - E[x]^2 < 0
    previous = torch.zeros(2, 2, 1, groups)
    previous[0, 0] = 10.0
    out = PatchGroupNorm(norm, _FakeState(False, previous), "gn", "corrected")(band)
    # stale whole + this band's change since then; its variance < 0 -> the local variance
    corrected_mean = previous[:, 0].mean(0) + local[0] - previous[0, 0]
    torch.testing.assert_close(out, _normalized(band, corrected_mean, local[1], norm.eps))
