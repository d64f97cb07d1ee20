"""Video presets: clip sizes and their errors, tokens and FLOPs on meta, schedulers, call
conventions (the generic preset tests in test_workloads.py cover builds, seeds and loops)."""

from __future__ import annotations

import pytest
import torch

import workloads as W
from workloads.schedulers import allowed_schedulers
from workloads.video_size import check_size, check_video_size, latent_frames, video_tokens

torch.set_num_threads(1)

VIDEO = [name for name, p in W.PRESETS.items() if p.video]
FULL = [name for name in VIDEO if not W.get_preset(name).tiny]  # trained-tiny-video is tiny

# (latent frames, tokens per latent frame) at each full preset's default clip
NATIVE_TOKENS = {
    "wan2.1-t2v-1.3b": (21, 30 * 52),  # 81x480x832
    "wan2.1-t2v-14b": (21, 45 * 80),  # 81x720x1280
    "hunyuanvideo": (33, 45 * 80),  # 129x720x1280
    "cogvideox-5b": (13, 30 * 45),  # 49x480x720
}


def test_every_full_video_preset_has_a_tiny_variant_of_its_class():
    assert sorted(FULL) == sorted(NATIVE_TOKENS)
    for name in FULL:
        full, tiny = W.get_preset(name), W.get_preset(f"tiny-{name}")
        assert (tiny.model_class, tiny.family) == (full.model_class, full.family)
        assert tiny.heads % 4 == 0 and tiny.layers >= 4


@pytest.mark.parametrize("name", FULL)
def test_native_clip_tokens_per_frame_and_flops_on_meta(name):
    p = W.get_preset(name)
    (row,) = W.describe_presets(names=[name])
    frames, per_frame = NATIVE_TOKENS[name]
    assert (row["frames"], row["height"], row["width"]) == (
        p.native_frames,
        p.native_resolution,
        p.native_width,
    )
    assert (row["latent_frames"], row["tokens_per_frame"]) == (frames, per_frame)
    # between attention over the video tokens alone (4 S^2 hidden per layer: QK^T and PV) and
    # attention over video + text plus every weight applied to every token (2 P (S + T))
    hidden = p.config["num_attention_heads"] * p.config["attention_head_dim"]
    s, t, branches = frames * per_frame, p.text_len, 2 if p.cfg else 1
    low = 4 * s * s * hidden * p.layers * branches
    high = (4 * (s + t) ** 2 * hidden * p.layers + 2 * row["params_M"] * 1e6 * (s + t)) * branches
    assert low < row["gflops_per_step"] * 1e9 < high


def test_clip_sizes_are_checked_with_the_allowed_values_named():
    wan, cog = W.get_preset("wan2.1-t2v-14b"), W.get_preset("cogvideox-5b")
    check_video_size(wan, 81, 720, 1280)
    assert latent_frames(wan, 81) == 21 and video_tokens(cog, 49, 480, 720) == 13 * 30 * 45
    with pytest.raises(ValueError, match=r"frames=80 .*4k\+1 frames .*nearest: 77 or 81"):
        check_video_size(wan, 80, 720, 1280)
    with pytest.raises(ValueError, match=r"height=700 .*multiple of 16 pixels"):
        check_video_size(cog, 49, 700, 720)
    # Wan reads rope rows from a table of 1024 positions per axis
    with pytest.raises(ValueError, match=r"1025 token columns exceed its rope table"):
        check_video_size(wan, 81, 480, 16400)
    with pytest.raises(
        ValueError, match=r"video model: give frames x height x width .*81x720x1280"
    ):
        check_size(wan, (720, 1280))
    with pytest.raises(ValueError, match=r"image model"):
        check_size(W.get_preset("tiny-pixart-alpha"), (9, 256, 256))
    with pytest.raises(ValueError, match=r"frames=8 .*nearest: 5 or 9"):
        W.build("tiny-hunyuanvideo", frames=8, height=64, width=64)
    with pytest.raises(ValueError, match=r"image model"):
        W.build("tiny-pixart-alpha", frames=9, height=256, width=256)


def test_video_latents_and_conditioning_shapes():
    wan = W.build("tiny-wan2.1-t2v-1.3b", frames=13, height=64, width=96, batch=2)
    assert wan.inputs.latents.shape == (2, 16, 4, 8, 12) and wan.frames == 13
    assert wan.inputs.uncond is not None  # CFG: a negative prompt branch
    hy = W.build("tiny-hunyuanvideo", frames=5, height=64, width=64)
    assert hy.inputs.uncond is None  # guidance-distilled
    cond = hy.inputs.cond
    assert cond["encoder_attention_mask"].tolist() == [[1.0] * 8]  # prompts fill the text
    assert cond["pooled_projections"].shape == (1, 32) and cond["guidance"].tolist() == [6.0]
    kwargs = hy.denoiser.model_kwargs(hy.inputs.latents, torch.tensor(500.0), cond)
    assert kwargs["guidance"].tolist() == [6000.0]  # the pipeline's x1000, not the model's


def test_cogvideox_takes_frames_first_and_its_rope_covers_the_video_tokens():
    w = W.build("tiny-cogvideox-5b", frames=9, height=64, width=64)
    x = w.inputs.latents
    kwargs = w.denoiser.model_kwargs(x, torch.tensor(500.0), w.inputs.model_cond())
    assert kwargs["hidden_states"].shape == (1, 3, 16, 8, 8)  # (B, F, C, h, w)
    assert torch.equal(kwargs["hidden_states"][0, 1], x[0, :, 1])
    cos, sin = kwargs["image_rotary_emb"]
    assert cos.shape == sin.shape == (3 * 4 * 4, 16)  # one row per video token, head dim
    with torch.no_grad():
        pred = w.denoiser(torch.cat([x, x]), torch.tensor(500.0), w.inputs.model_cond())
    assert pred.shape == (2, *x.shape[1:])


def test_video_schedulers():
    wan, hy = W.get_preset("wan2.1-t2v-14b"), W.get_preset("hunyuanvideo")
    cog = W.get_preset("cogvideox-5b")
    assert allowed_schedulers(wan) == allowed_schedulers(hy) == ("flow-match-euler",)
    assert allowed_schedulers(cog) == ("cogvideox-ddim", "dpm-solver++")
    assert "cogvideox-ddim" not in allowed_schedulers(W.get_preset("sdxl"))
    # static shifts: Wan 5, HunyuanVideo 7 (sigma' = s * sigma / (1 + (s - 1) * sigma), on a
    # grid whose ends are shifted too: hence the tolerance)
    plain = 2 / 3  # the unshifted second of 4 sigmas
    for preset, shift in ((wan, 5.0), (hy, 7.0)):
        sigma = W.make_scheduler("flow-match-euler", preset, 4, 720, 1280).sigmas[1].item()
        assert sigma == pytest.approx(shift * plain / (1 + (shift - 1) * plain), abs=2e-3)
    ddim = W.make_scheduler("cogvideox-ddim", cog, 50, 480, 720)
    assert type(ddim).__name__ == "CogVideoXDDIMScheduler"
    assert ddim.config.prediction_type == "v_prediction" and ddim.timesteps[0] == 999
    assert ddim.alphas_cumprod[-1] < 1e-6  # zero terminal SNR
    with pytest.raises(ValueError, match=r"'ddim' does not fit .*cogvideox-ddim, dpm-solver\+\+"):
        W.make_scheduler("ddim", cog, 4, 480, 720)


@pytest.mark.parametrize("name", [n for n in VIDEO if n.startswith("tiny-")])
def test_tiny_video_loop_with_each_scheduler_is_finite(name):
    p = W.get_preset(name)
    for scheduler in allowed_schedulers(p):
        w = W.build(name, frames=5, height=64, width=96, steps=2, scheduler=scheduler)
        out = W.denoise(w)
        assert out.shape == w.inputs.latents.shape and torch.isfinite(out).all()
        assert not torch.allclose(out, w.inputs.latents)
