"""Pipeline stages outside the denoising loop (analysis.stages): the VAE decode and the text
encoders recorded on meta, their FLOPs against torch's own counter, their price on a profile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.stages import price_stage, record, text_encoder_ops, vae_decode_ops
from suite.measure.optrace import OP_CLASSES
from workloads.stats import flop_counter
from workloads.text_encoders import meta_text_encoder, text_encoders
from workloads.vae import meta_vae


def _flops(ops: np.ndarray, classes=("matmul", "conv", "attention")) -> float:
    sel = np.isin(ops["cls"], [OP_CLASSES.index(c) for c in classes])
    return float((ops["flops"][sel] * ops["count"][sel]).sum())


def test_sd_vae_has_the_published_size():
    vae = meta_vae("sdxl")
    # AutoencoderKL of SD / SDXL: 83.65 M parameters, 49.49 M of them in the decoder
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    assert sum(p.numel() for p in vae.decoder.parameters()) == 49_490_179
    with pytest.raises(ValueError, match="denoises pixels"):
        meta_vae("trained-tiny-unet")


@pytest.mark.parametrize("preset", ["sdxl", "flux-dev"])
def test_vae_decode_flops_match_torchs_counter(preset):
    # 64 x 64 px (8 x 8 latent): the mid-block attention, the convs and the upsamplers all run
    ops = vae_decode_ops(preset, 64, 64, batch=2, dtype="fp32")
    vae = meta_vae(preset)
    from workloads.presets import get_preset

    latents = torch.empty((2, get_preset(preset).latent_channels, 8, 8), device="meta")
    with torch.no_grad(), flop_counter() as counter:
        vae.decode(latents, return_dict=False)
    # exact: the recorder takes conv / matmul FLOPs from the same formulas and counts the
    # attention as one op with Q K^T + P V, which is what the counter sums over its two bmm
    assert _flops(ops) == counter.get_total_flops() > 0
    assert {OP_CLASSES[c] for c in ops["cls"]} >= {"conv", "attention", "norm", "memory"}


def test_vae_decode_grows_with_the_pixels():
    small = _flops(vae_decode_ops("pixart-alpha", 64, 64))
    big = _flops(vae_decode_ops("pixart-alpha", 128, 128))
    # convs scale with pixels (x4); the mid-block attention with pixels^2: between x4 and x16
    assert 4 * small < big < 16 * small


def test_text_encoders_are_recorded_per_prompt():
    ops = text_encoder_ops("pixart-alpha", cfg=True, dtype="fp16")
    one = text_encoder_ops("pixart-alpha", cfg=False, dtype="fp16")
    assert _flops(ops) == pytest.approx(2 * _flops(one))  # prompt + negative prompt
    (cls, config, tokens, _), = text_encoders("pixart-alpha")  # fmt: skip
    model = meta_text_encoder(cls, config, torch.float16)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(4.76e9, rel=0.01)
    # an encoder pass over 120 tokens: ~2 FLOPs per parameter per token (embeddings excluded)
    assert _flops(one) == pytest.approx(2 * 120 * 4.63e9, rel=0.1)
    assert len(text_encoder_ops("tiny-pixart-alpha")) == 0  # tiny presets name no encoder


def test_flux_encodes_its_own_t5_length():
    # FluxPipeline: CLIP-L on 77 tokens and T5-XXL on the preset's 256 (schnell) / 512 (dev)
    assert [(c, t) for c, _, t, _ in text_encoders("flux-schnell")] == [
        ("CLIPTextModel", 77),
        ("T5EncoderModel", 256),
    ]
    assert text_encoders("flux-dev")[1][2] == 512
    schnell, dev = (_flops(text_encoder_ops(p, cfg=False)) for p in ("flux-schnell", "flux-dev"))
    assert 1.9 < dev / schnell < 2.1  # T5 dominates and scales with its tokens (CLIP fixed)


def test_price_stage_sums_the_operator_model():
    from tests.unit.test_opmodel import _profile

    ops = record(lambda: torch.empty(64, 64, device="meta") @ torch.empty(64, 64, device="meta"))
    cost = price_stage(_profile(), ops)
    # one 64^3 GEMM: 2 * 64^3 FLOPs at the tiny profile's 0.5 TFLOP/s (below its 1e6 point),
    # or its 3 x 16 KiB at the copy curve (1 GB/s at 1 kB, 10 from 1 MB, linear in log size):
    # the bytes win, 49152 B at 6.07 GB/s
    assert cost.ops == 1 and cost.flops == 2 * 64**3 and cost.bytes == 3 * 64 * 64 * 4
    rate = 1 + 9 * np.log10(49152 / 1e3) / 3
    assert cost.time_s == pytest.approx(max(2 * 64**3 / 0.5e12, 49152 / (rate * 1e9)))
    assert cost.memory_bound_s == cost.time_s and cost.compute_bound_s == 0
    assert price_stage(_profile(), ops[:0]).time_s == 0.0


@pytest.mark.parametrize("preset", ["wan2.1-t2v-1.3b", "hunyuanvideo", "cogvideox-5b"])
def test_video_vae_decode_flops_match_torchs_counter(preset):
    # a 9x64x64 clip: 3 latent frames of 8x8, every temporal and spatial upsampler runs
    from workloads.presets import get_preset
    from workloads.vae import vae_config

    ops = vae_decode_ops(preset, 64, 64, dtype="fp32", frames=9)
    vae = meta_vae(preset)
    assert type(vae).__name__ == vae_config(preset)[0]
    latents = torch.empty((1, get_preset(preset).latent_channels, 3, 8, 8), device="meta")
    with torch.no_grad(), flop_counter() as counter:
        (video,) = vae.decode(latents, return_dict=False)
    assert video.shape == (1, 3, 9, 64, 64)  # 4 (F' - 1) + 1 frames, 8x in space
    assert _flops(ops) == counter.get_total_flops() > 0
    # at least linear in the frames (17 / 9 decoded = 1.89, 5 / 3 latent = 1.67): Wan 1.86,
    # CogVideoX about the same; HunyuanVideo 2.41 (its mid-block attention spans all frames, and
    # a clip over 16 frames is decoded in overlapping windows)
    longer = _flops(vae_decode_ops(preset, 64, 64, dtype="fp32", frames=17)) / _flops(ops)
    assert 1.6 < longer < 2.6


def test_video_text_encoders_have_their_published_sizes():
    def params(preset, i=0):
        cls, config, tokens, prompts = text_encoders(preset)[i]
        return sum(p.numel() for p in meta_text_encoder(cls, config, torch.bfloat16).parameters())

    # Llama 3 8B without its LM head (8.03 B - 0.53 B); umT5-XXL's encoder: T5-XXL's 4.76 B with
    # a 256k instead of a 32k vocabulary (+ 0.92 B of embedding)
    assert params("hunyuanvideo") == pytest.approx(7.50e9, rel=0.01)
    assert params("wan2.1-t2v-14b") == pytest.approx(4.76e9 + (256384 - 32128) * 4096, rel=0.01)
    assert [t[2:] for t in text_encoders("hunyuanvideo")] == [(351, 1), (77, 1)]
    assert text_encoders("tiny-wan2.1-t2v-1.3b") == ()
