"""Video workloads in experiment configs: FxHxW sizes, which sizes go to which presets, the
errors before any process starts, run identity, the memory estimate and the stored frames."""

from __future__ import annotations

import pandas as pd
import pytest

from suite.config.experiment import ConfigError, parse_config
from suite.config.settings import parse_resolution
from suite.fidelity.score import find_baseline

VIDEO, IMAGE = "tiny-wan2.1-t2v-1.3b", "tiny-pixart-alpha"


def _raw(**over) -> dict:
    raw = {
        "experiment": "v",
        "workloads": [VIDEO],
        "resolutions": ["9x64x64"],
        "settings": {"steps": 2},
        "strategies": [{"name": "none"}],
    }
    return raw | over


def _problems(**over) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(_raw(**over))
    return str(e.value)


def test_resolutions_parse_clips_and_images():
    assert parse_resolution("81x480x832") == (81, 480, 832)
    assert parse_resolution(" 9 X 64 x 96 ") == (9, 64, 96)
    assert parse_resolution("512x1024") == (512, 1024) and parse_resolution(256) == (256, 256)
    assert parse_resolution("0x64x64") is None and parse_resolution("1x2x3x4") is None


def test_clips_go_to_video_presets_and_images_to_image_presets():
    config = parse_config(_raw(workloads=[VIDEO, IMAGE], resolutions=[256, "9x64x96"]))
    got = {(r.workload, r.frames, r.height, r.width) for r in config.runs}
    assert got == {(VIDEO, 9, 64, 96), (IMAGE, 0, 256, 256)}
    (video,) = [r for r in config.runs if r.frames]
    assert video.label() == f"{VIDEO} 9x64x96 none[single]"


def test_run_identity_keeps_image_runs_and_tells_clip_lengths_apart():
    image = parse_config(_raw(workloads=[IMAGE], resolutions=[256])).runs[0]
    assert "frames" not in image.identity()  # image run ids are what they were before video
    a, b = (parse_config(_raw(resolutions=[r])).runs[0] for r in ("9x64x64", "13x64x64"))
    assert a.identity()["frames"] == 9 and a.run_id != b.run_id


def test_bad_clips_name_the_allowed_values():
    out = _problems(resolutions=["8x64x64", "9x60x64"])
    assert "8x64x64 for tiny-wan2.1-t2v-1.3b: frames=8" in out and "nearest: 5 or 9" in out
    assert "height=60" in out and "multiple of 16 pixels" in out
    out = _problems(resolutions=[256])
    assert "is a video model and no resolution is a clip" in out and "'9x128x128'" in out
    out = _problems(workloads=[IMAGE])
    assert "tiny-pixart-alpha is an image model and every resolution is a" in out
    assert "or 'FxHxW' (frames x height x width" in _problems(resolutions=["9x64y64"])


@pytest.mark.parametrize(
    "name, degrees, why",
    [
        ("pipefusion", {"pipefusion": 2}, "update the text stream from every video token"),
        ("cfg+pipefusion", {"cfg": 2, "pipefusion": 2}, "pipefusion: PipeFusion pipelines"),
    ],
)
def test_strategies_that_cannot_run_video_say_why_before_start(name, degrees, why):
    video = "tiny-cogvideox-5b"
    out = _problems(workloads=[video], strategies=[{"name": name, "degrees": degrees}])
    assert f"strategy '{name}' cannot run video model '{video}'" in out and why in out


def test_library_context_parallelism_splits_video_tokens_only():
    # 9x64x64 on tiny Wan: 3 latent frames x 4x4 tokens = 48 video tokens (the text stays whole)
    (run,) = parse_config(
        _raw(strategies=[{"name": "diffusers_cp", "degrees": {"ulysses": 4}}])
    ).runs
    assert run.world_size == 4
    out = _problems(strategies=[{"name": "diffusers_cp", "degrees": {"ring": 5}}])
    assert "48 video tokens do not split into ring x ulysses = 5 equal parts" in out


def test_tensor_degrees_on_video_follow_the_heads():
    # tiny-wan2.1-t2v-1.3b attends with 4 heads: 2 and 4 split them, 3 does not
    for n in (2, 4):
        (run,) = parse_config(_raw(strategies=[{"name": "tensor", "degrees": {"tensor": n}}])).runs
        assert run.world_size == n
    out = _problems(strategies=[{"name": "tensor", "degrees": {"tensor": 3}}])
    assert "tensor degree 3 does not divide the attention head count(s) [4]" in out
    assert "allowed tensor degrees: 1, 2, 4" in out
    # ulysses splits the heads a tensor rank holds: 4 heads / tensor 2 = 2 per rank, not 4 ways
    out = _problems(strategies=[{"name": "ulysses+tensor", "degrees": {"ulysses": 4, "tensor": 2}}])
    assert "ulysses degree 4 does not divide the 2 heads a rank holds under tensor degree 2" in out


def test_video_runs_are_stored_with_frames_and_matched_by_them():
    from suite.worlds.record import _spec_columns

    spec = parse_config(_raw()).runs[0]
    assert _spec_columns(spec)["frames"] == 9
    image = parse_config(_raw(workloads=[IMAGE], resolutions=[256])).runs[0]
    assert _spec_columns(image)["frames"] is None
    common = dict(workload=VIDEO, height=64, width=64, steps=2, scheduler="s", guidance=5.0,
                  batch=1, seed=0, dtype="float32", status="ok", world_mode="real",
                  device="cpu", created_at="t")  # fmt: skip
    runs = pd.DataFrame(
        [
            common | dict(run_id="base9", frames=9, strategy="none", world_size=1),
            common | dict(run_id="ring13", frames=13, strategy="ring", world_size=2),
            common | dict(run_id="ring9", frames=9, strategy="ring", world_size=2),
        ]
    )
    assert find_baseline(runs, runs.iloc[2])["run_id"] == "base9"
    assert find_baseline(runs, runs.iloc[1]) is None  # another clip length is no baseline


def test_memory_estimate_grows_with_the_clip():
    from suite.config.memory import estimate

    short, long = (
        estimate(parse_config(_raw(resolutions=[r])).runs[0]) for r in ("9x64x64", "33x64x64")
    )
    assert short.params == long.params > 0
    # 9 latent frames against 3: activations grow at least linearly in the tokens
    assert long.activations > 2.5 * short.activations


def test_sequence_degrees_are_checked_against_video_tokens_and_heads():
    out = _problems(strategies=[{"name": "ring", "world_sizes": [5]}])
    assert "3x4x4 = 48 video tokens at 9x64x64 do not split into ring x ulysses = 5" in out
    out = _problems(strategies=[{"name": "ulysses", "world_sizes": [8]}])
    assert "ulysses degree 8 does not divide the 4 attention heads" in out
    ok = parse_config(_raw(strategies=[{"name": "usp", "degrees": {"ring": 2, "ulysses": 4}}]))
    assert ok.runs[0].world_size == 8  # 48 tokens over 8 ranks, 4 heads over 4


def test_sequence_split_counts_tokens_at_the_presets_own_patch():
    # trained-tiny-video patches 4x4 pixels (its family, Wan, 2x2 latents): 8 frames x 8 x 8
    raw = {"experiment": "x", "workloads": ["trained-tiny-video"], "resolutions": ["8x32x32"],
           "strategies": [{"name": "ring", "world_sizes": [3]}]}  # fmt: skip
    with pytest.raises(ConfigError, match=r"8x8x8 = 512 video tokens at 8x32x32 do not split"):
        parse_config(raw)
    raw["strategies"] = [{"name": "ring", "world_sizes": [4]}]
    assert parse_config(raw).runs[0].world_size == 4
