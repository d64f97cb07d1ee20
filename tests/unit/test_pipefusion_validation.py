"""PipeFusion without a process group: config validation, stage bounds, the K/V cache layout,
token orders for sequence-parallel hybrids, and the analytic bubble."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from suite.config.experiment import ConfigError, parse_config
from suite.parallel.pipeline_attention import KVCache
from suite.parallel.pipeline_bubble import bubble_table, useful_fraction
from suite.parallel.pipeline_stage import PatchCursor, stage_bounds


def _config(workload: str, entry: dict, resolution=256):
    raw = {
        "experiment": "t",
        "workloads": [workload],
        "resolutions": [resolution],
        "settings": {"steps": 2},
        "strategies": [entry],
    }
    return parse_config(raw)


def _problems(workload: str, entry: dict, resolution=256) -> str:
    with pytest.raises(ConfigError) as err:
        _config(workload, entry, resolution)
    return str(err.value)


def test_defaults_are_m_equals_n_and_one_warmup_step():
    (spec,) = _config("tiny-pixart-alpha", {"name": "pipefusion", "world_sizes": [2]}).runs
    assert spec.degrees == (("pipefusion", 2),)
    assert spec.options_dict == {"patches": None, "warmup_steps": 1}


def test_fewer_patches_than_stages_is_rejected():
    entry = {"name": "pipefusion", "world_sizes": [4], "options": {"patches": 2}}
    msg = _problems("tiny-dit-xl-2", entry)
    assert "patches (M) is 2 but the pipefusion degree (N) is 4" in msg
    assert "M >= N" in msg


def test_more_stages_than_blocks_is_rejected():
    msg = _problems("tiny-pixart-alpha", {"name": "pipefusion", "world_sizes": [8]})
    assert "pipefusion degree 8 exceeds the 4 transformer blocks of tiny-pixart-alpha" in msg


def test_patches_must_divide_the_token_rows():
    # 256 px -> 32 latent rows -> 16 token rows (patch 2)
    entry = {"name": "pipefusion", "world_sizes": [2], "options": {"patches": 3}}
    msg = _problems("tiny-pixart-alpha", entry)
    assert "height 256 px gives 16 token rows" in msg and "3 equal patches" in msg
    entry["options"] = {"patches": 32}
    assert "16 token rows" in _problems("tiny-pixart-alpha", entry)
    entry["options"] = {"patches": 16}
    assert _config("tiny-pixart-alpha", entry).runs


def test_joint_attention_families_are_rejected_naming_the_supported_ones():
    for preset in ("tiny-sd3-medium", "tiny-flux-dev", "tiny-sdxl"):
        msg = _problems(preset, {"name": "pipefusion", "world_sizes": [2]})
        assert "does not support workload" in msg and "dit, pixart" in msg


def test_option_types_are_checked():
    for bad in ({"patches": "2"}, {"patches": 0}, {"warmup_steps": -1}, {"warmup_steps": 1.5}):
        entry = {"name": "pipefusion", "world_sizes": [2], "options": bad}
        assert "options." in _problems("tiny-dit-xl-2", entry)


def test_hybrids_validate_every_part():
    ok = [
        ("cfg+pipefusion", {"cfg": 2, "pipefusion": 2}),
        ("pipefusion+ulysses", {"pipefusion": 2, "ulysses": 2}),
        ("ulysses+pipefusion", {"pipefusion": 2, "ulysses": 2}),  # order in the name is free
        ("pipefusion+ring", {"pipefusion": 2, "ring": 2}),
        ("cfg+pipefusion+usp", {"cfg": 2, "pipefusion": 2, "ring": 2, "ulysses": 2}),
    ]
    for name, degrees in ok:
        (spec,) = _config("tiny-pixart-alpha", {"name": name, "degrees": degrees}).runs
        assert spec.strategy.split("+").index("pipefusion") >= 0
    # ulysses must divide the 4 heads (sequence's check), M >= N (pipefusion's)
    msg = _problems(
        "tiny-pixart-alpha",
        {"name": "pipefusion+ulysses", "degrees": {"pipefusion": 2, "ulysses": 8}},
    )
    assert "ulysses degree 8 does not divide the 4 attention heads" in msg
    msg = _problems(
        "tiny-pixart-alpha",
        {
            "name": "pipefusion+ring",
            "degrees": {"pipefusion": 4, "ring": 2},
            "options": {"patches": 2},
        },
    )
    assert "patches (M) is 2 but the pipefusion degree (N) is 4" in msg
    msg = _problems(
        "tiny-pixart-alpha",
        {"name": "pipefusion+tensor", "degrees": {"pipefusion": 2, "tensor": 2}},
    )
    assert "pipefusion composes with data, cfg, ring and ulysses; not with tensor" in msg
    # 16 token rows in 16 patches: 16 tokens per patch do not split over ring 32
    msg = _problems(
        "tiny-pixart-alpha",
        {
            "name": "pipefusion+ring",
            "degrees": {"pipefusion": 2, "ring": 32},
            "options": {"patches": 16},
        },
    )
    assert "a patch holds 16 tokens, which do not split over ring x ulysses = 32" in msg


def test_stage_bounds_are_contiguous_and_balanced():
    assert stage_bounds(4, 2) == [(0, 2), (2, 4)]
    assert stage_bounds(28, 8) == [
        (0, 4), (4, 8), (8, 12), (12, 16), (16, 19), (19, 22), (22, 25), (25, 28)
    ]  # fmt: skip
    assert stage_bounds(3, 3) == [(0, 1), (1, 2), (2, 3)]


def test_kv_cache_keeps_fresh_and_stale_patches():
    cursor = PatchCursor(patches=2)
    cache = KVCache(cursor, groups=1)
    k0 = torch.arange(8.0).view(1, 4, 1, 2)  # whole image: 4 tokens
    cursor.loop, cursor.full = 1, True
    k, _ = cache.update(k0, -k0)
    assert torch.equal(k, k0)
    cursor.full, cursor.index = False, 1  # patch 1 fresh, patch 0 from the whole-image step
    fresh = torch.full((1, 2, 1, 2), 100.0)
    k, v = cache.update(fresh, -fresh)
    assert torch.equal(k[:, :2], k0[:, :2]) and torch.equal(k[:, 2:], fresh)
    assert torch.equal(v[:, 2:], -fresh)
    assert cache.nbytes() == 2 * 8 * 4
    # a new loop without warm-up: only the patches done so far are attended to
    cursor.loop, cursor.index = 2, 0
    k, _ = cache.update(fresh, fresh)
    assert k.shape[1] == 2


def test_kv_cache_under_ulysses_writes_each_group_slot():
    # 2 ulysses groups x 2 patches x 1 token; patch 1's fresh K holds (group 0, group 1)
    cursor = PatchCursor(patches=2, shards=2, loop=1, full=True)
    cache = KVCache(cursor, groups=2)
    whole = torch.tensor([0.0, 1.0, 2.0, 3.0]).view(1, 4, 1, 1)  # [g0 p0, g0 p1, g1 p0, g1 p1]
    cache.update(whole, whole)
    cursor.full, cursor.index = False, 1
    k, _ = cache.update(torch.tensor([10.0, 30.0]).view(1, 2, 1, 1), whole[:, :2])
    assert k.flatten().tolist() == [0.0, 10.0, 2.0, 30.0]


def test_shard_major_order_round_trips():
    cursor = PatchCursor(patches=2, shards=2)
    x = torch.arange(8.0).view(1, 8, 1)  # patch 0: tokens 0-3 (shard 0: 0-1), patch 1: 4-7
    y = cursor.shard_major(x)
    # shard 0 gets its part of patch 0 then of patch 1; shard 1 likewise
    assert y.flatten().tolist() == [0, 1, 4, 5, 2, 3, 6, 7]
    assert torch.equal(cursor.shard_major(y, inverse=True), x)


def test_analytic_useful_fraction():
    # the paper's M*S / (M*S + N - 1) without warm-up
    assert useful_fraction(patches=2, steps=10, stages=2) == pytest.approx(20 / 21)
    assert useful_fraction(patches=8, steps=20, stages=4) == pytest.approx(160 / 163)
    # one whole-image warm-up step runs the N stages one after another
    assert useful_fraction(2, 10, 2, warmup_steps=1) == pytest.approx(20 / (4 + 18 + 1))
    # all steps warm-up: each rank works 1/N of the time
    assert useful_fraction(2, 4, 4, warmup_steps=4) == pytest.approx(1 / 4)


def test_bubble_table_from_stored_rows():
    runs = pd.DataFrame(
        [
            {
                "run_id": "a",
                "workload": "w",
                "strategy": "pipefusion",
                "degrees": '{"pipefusion": 2}',
                "options": '{"patches": null, "warmup_steps": 0}',
                "steps": 10,
                "warmup_steps": 0,
                "status": "ok",
            }
        ]
    )
    comm = pd.DataFrame(
        [
            {"run_id": "a", "rank": 0, "op": "recv", "axis": "pipefusion", "exposed_s": 0.1},
            {"run_id": "a", "rank": 0, "op": "send", "axis": "pipefusion", "exposed_s": 0.5},
            {"run_id": "a", "rank": 1, "op": "recv", "axis": "pipefusion", "exposed_s": 0.3},
        ]
    )
    steps = pd.DataFrame(
        [{"run_id": "a", "rank": r, "step": i, "step_s": 1.0} for r in (0, 1) for i in range(2)]
    )
    (row,) = bubble_table(runs, comm, steps).to_dict("records")
    assert row["stages"] == 2 and row["patches"] == 2
    assert row["bubble_measured"] == pytest.approx(0.2)  # mean of 0.1 and 0.3, sends excluded
    assert row["bubble_measured_max"] == pytest.approx(0.3)
    assert row["bubble_analytic"] == pytest.approx(1 / 21)
