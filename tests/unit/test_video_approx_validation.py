"""Validation of the approximate strategies on video presets, before any process starts: the
`split` option (field, value, allowed values), degrees that must divide the chosen axis, and
the video models PipeFusion still refuses, with the reason."""

from __future__ import annotations

import pytest

from suite.config.experiment import ConfigError, parse_config

WAN, HUNYUAN, COG, PIXART = (
    "tiny-wan2.1-t2v-1.3b",
    "tiny-hunyuanvideo",
    "tiny-cogvideox-5b",
    "tiny-pixart-alpha",
)


def _raw(workload: str, size, entry: dict) -> dict:
    return {
        "experiment": "v",
        "workloads": [workload],
        "resolutions": [size],
        "settings": {"steps": 2},
        "strategies": [entry],
    }


def _problems(workload: str, size, entry: dict) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(_raw(workload, size, entry))
    return str(e.value)


@pytest.mark.parametrize("name", ["naive_patch", "distrifusion"])
@pytest.mark.parametrize("workload", [WAN, HUNYUAN, COG])
def test_both_splits_run_every_video_model(name, workload):
    # 13x64x64: 4 latent frames, 4 token rows per frame: both axes split over 2 and 4
    for split in ("frames", "height"):
        entry = {"name": name, "world_sizes": [2, 4], "options": {"split": split}}
        assert len(parse_config(_raw(workload, "13x64x64", entry)).runs) == 2


def test_degree_must_divide_the_chosen_axis_naming_allowed_degrees():
    # 9x64x96: 3 latent frames; 4 token rows per frame
    entry = {"name": "distrifusion", "world_sizes": [2]}  # split unset: frames on video
    msg = _problems(WAN, "9x64x96", entry)
    assert "patch degree 2 does not split the 3 latent frames of the 9x64x96 clip" in msg
    assert "(split: frames); allowed patch degrees here: 1, 3" in msg
    entry["options"] = {"split": "height"}
    assert parse_config(_raw(WAN, "9x64x96", entry)).runs
    entry = {"name": "naive_patch", "world_sizes": [3], "options": {"split": "height"}}
    msg = _problems(COG, "9x64x96", entry)
    assert "does not split the 4 token rows per frame" in msg and "degrees here: 1, 2, 4" in msg
    # naive patch's default alternates the axes: both must split
    msg = _problems(WAN, "9x64x96", {"name": "naive_patch", "world_sizes": [2]})
    assert "3 latent frames" in msg and "(split: alternate)" in msg


def test_split_values_are_checked_per_model_kind():
    bad = {"name": "naive_patch", "world_sizes": [2], "options": {"split": "diagonal"}}
    assert "allowed: 'row', 'column', 'alternate', 'frames', 'height'" in _problems(
        WAN, "13x64x64", bad
    )
    row = {"name": "distrifusion", "world_sizes": [2], "options": {"split": "row"}}
    msg = _problems(WAN, "13x64x64", row)
    assert "option 'split' is 'row', which tiny-wan2.1-t2v-1.3b (a video model)" in msg
    assert "allowed on video: 'frames', 'height'" in msg
    frames = {"name": "distrifusion", "world_sizes": [2], "options": {"split": "frames"}}
    msg = _problems(PIXART, 256, frames)
    assert "applies to video models only; allowed on tiny-pixart-alpha" in msg and "'row'" in msg
    naive = {"name": "naive_patch", "world_sizes": [2], "options": {"split": "height"}}
    assert "'row', 'column', 'alternate'" in _problems(PIXART, 256, naive)


def test_distrifusion_split_is_stored_only_when_set():
    # image runs keep the options (and run ids) they had before the option existed
    (spec,) = parse_config(_raw(PIXART, 256, {"name": "distrifusion", "world_sizes": [2]})).runs
    assert "split" not in spec.options_dict
    entry = {"name": "distrifusion", "world_sizes": [2], "options": {"split": "height"}}
    (spec,) = parse_config(_raw(WAN, "13x64x64", entry)).runs
    assert spec.options_dict["split"] == "height"


@pytest.mark.parametrize("workload", [HUNYUAN, COG])
def test_pipefusion_refuses_joint_attention_video_models_with_the_reason(workload):
    msg = _problems(workload, "13x64x64", {"name": "pipefusion", "world_sizes": [2]})
    assert f"strategy 'pipefusion' cannot run video model '{workload}'" in msg
    assert "update the text stream from every video token by joint attention" in msg
    msg = _problems(
        workload, "13x64x64", {"name": "cfg+pipefusion", "degrees": {"cfg": 2, "pipefusion": 2}}
    )
    assert "pipefusion: PipeFusion pipelines blocks whose text input is fixed" in msg


def test_pipefusion_patches_must_divide_the_clips_token_rows():
    # 13x64x64: 4 latent frames x 4 token rows = 16 token rows; patches may span frames
    entry = {"name": "pipefusion", "world_sizes": [2], "options": {"patches": 8}}
    assert parse_config(_raw(WAN, "13x64x64", entry)).runs
    entry["options"] = {"patches": 3}
    msg = _problems(WAN, "13x64x64", entry)
    assert "the 13x64x64 clip has 4 latent frames x 4 = 16 token rows" in msg
    assert "3 equal patches" in msg and "(M >= 2: 2, 4, 8, 16)" in msg
