"""workloads: presets, seeded builds, call conventions, schedulers, stats, validation."""

from __future__ import annotations

import time

import pytest
import torch

import workloads as W
from workloads.models import reinit_zero_parameters
from workloads.schedulers import allowed_schedulers
from workloads.stats import flop_counter

torch.set_num_threads(1)

# trained presets (packaged weights, 32 px pixel space) are tested in tests/unit/test_fidelity.py
TINY = [name for name, p in W.PRESETS.items() if p.tiny and not p.weights_file]
FULL = [
    name
    for name, p in W.PRESETS.items()
    if not p.tiny and not name.startswith("small-") and not p.weights_file
]
PX = 256  # tiny presets run at a 32 x 32 latent

# diffusers' parameter counts of the public architectures (DiT-XL/2 is 750 M rather than the
# paper's 675 M: diffusers gives each of the 28 blocks its own timestep and label embedder).
EXPECTED_PARAMS = {
    "sdxl": 2.567e9,
    "pixart-alpha": 0.6113e9,
    "dit-xl-2": 0.7498e9,
    "sd3-medium": 2.028e9,
    "flux-dev": 11.90e9,
    "flux-schnell": 11.89e9,  # flux-dev less its guidance embedder (2 x 3072-wide linears)
    # video: diffusers' counts of the published configs (Wan "1.3B" / "14B", HunyuanVideo "13B",
    # CogVideoX "5B")
    "wan2.1-t2v-1.3b": 1.419e9,
    "wan2.1-t2v-14b": 14.29e9,
    "hunyuanvideo": 12.82e9,
    "cogvideox-5b": 5.570e9,
}

SMALL = [name for name in W.PRESETS if name.startswith("small-")]


@pytest.mark.parametrize("name", SMALL)
def test_small_benchmark_presets_keep_their_model_class(name):
    preset = W.get_preset(name)
    full = W.get_preset(name.removeprefix("small-"))
    assert preset.model_class == full.model_class and preset.family == full.family
    stats = W.model_stats(name, 256, 256)
    # between the tiny test models and the full ones: compute dominates a CPU step
    assert 5e6 < stats.params < 1e8 and stats.flops_per_forward > 1e10


BLOCKS = ("BasicTransformerBlock", "JointTransformerBlock", "FluxTransformerBlock")
BLOCKS += ("FluxSingleTransformerBlock", "WanTransformerBlock", "CogVideoXBlock")
BLOCKS += ("HunyuanVideoTransformerBlock", "HunyuanVideoSingleTransformerBlock")
# blocks returning (image, text); the image models' dual-stream blocks return (text, image)
IMAGE_FIRST = ("CogVideoXBlock", "HunyuanVideoTransformerBlock")
IMAGE_FIRST += ("HunyuanVideoSingleTransformerBlock",)


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if type(m).__name__ in BLOCKS]


def _cfg_batch(w: W.Workload) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = w.inputs.latents
    return (x if w.inputs.uncond is None else torch.cat([x, x])), w.inputs.model_cond()


@pytest.fixture(scope="module")
def tiny() -> dict[str, W.Workload]:
    return {name: W.build(name, height=PX, width=PX, seed=0) for name in TINY}


# --- full-size presets, on meta --------------------------------------------------------------


@pytest.mark.parametrize("name", FULL)
def test_full_preset_builds_on_meta_with_public_size(name):
    p = W.get_preset(name)
    w = W.build(name, height=p.native_resolution, width=p.native_resolution, device="meta")
    params = sum(t.numel() for t in w.model.parameters())
    assert params == pytest.approx(EXPECTED_PARAMS[name], rel=0.01)
    assert all(t.device.type == "meta" for t in w.model.parameters())
    assert w.inputs.latents.device.type == "meta"


@pytest.mark.parametrize("name", list(W.PRESETS))
def test_preset_heads_and_layers_match_the_model(name):
    p = W.get_preset(name)
    model = W.build(
        name, height=p.native_resolution, width=p.native_resolution, device="meta"
    ).model
    assert len(_blocks(model)) == p.layers
    assert min(m.heads for m in model.modules() if hasattr(m, "heads")) == p.heads
    assert model.config.in_channels == p.latent_channels * (4 if p.family == "flux" else 1)


@pytest.mark.parametrize("name", list(W.PRESETS))
def test_model_stats_positive(name):
    p = W.get_preset(name)
    stats = W.model_stats(name, p.native_resolution, p.native_resolution)
    assert stats.flops_per_forward > 0
    assert stats.param_bytes == 4 * stats.params
    assert (
        stats.param_bytes
        == 2
        * W.model_stats(name, p.native_resolution, p.native_resolution, torch.bfloat16).param_bytes
    )


def test_dit_flops_grow_at_least_quadratically_with_resolution():
    small = W.model_stats("dit-xl-2", 256, 256).flops_per_forward
    large = W.model_stats("dit-xl-2", 512, 512).flops_per_forward
    # 4x tokens: linear layers scale 4x, attention 16x
    assert 4.0 < large / small < 16.0


def test_describe_presets_rows():
    rows = W.describe_presets()
    assert [r["name"] for r in rows] == list(W.PRESETS)
    for row in rows:
        p = W.get_preset(row["name"])
        width = p.native_width or p.native_resolution  # video presets: their default clip
        stats = W.model_stats(p.name, p.native_resolution, width)
        assert row["gflops_per_step"] * 1e9 == pytest.approx(
            stats.flops_per_forward * (2 if p.cfg else 1)
        )
        assert row["params_M"] == pytest.approx(stats.params / 1e6)
        assert row["height"] == row["native_resolution"] == p.native_resolution
        assert row["frames"] == (p.native_frames or None)
    (row,) = W.describe_presets(512, names=["tiny-dit-xl-2"])
    assert (row["height"], row["width"], row["native_resolution"]) == (512, 512, 256)


# --- tiny presets, real CPU forwards ---------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_tiny_preset_suits_parallel_strategies(name):
    p = W.get_preset(name)
    assert p.heads % 4 == 0 and p.layers >= 4
    rows = PX // p.vae_scale_factor
    # four bands of rows, each surviving every downsample / patchify
    assert (rows // 4) % p.spatial_multiple == 0
    groups = p.config.get("norm_num_groups")
    if p.family == "unet":
        assert groups % 4 == 0
        assert all(c % groups == 0 for c in p.config["block_out_channels"])


@pytest.mark.parametrize("name", TINY)
def test_tiny_same_seed_identical_other_seed_different(name, tiny):
    a = tiny[name]
    torch.rand(100)  # the global RNG state must not matter
    b = W.build(name, height=PX, width=PX, seed=0)
    c = W.build(name, height=PX, width=PX, seed=1)
    pa, pb, pc = (dict(w.model.named_parameters()) for w in (a, b, c))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not all(torch.equal(pa[k], pc[k]) for k in pa)
    assert torch.equal(a.inputs.latents, b.inputs.latents)
    assert not torch.equal(a.inputs.latents, c.inputs.latents)
    x, cond = _cfg_batch(a)
    t = torch.tensor(500.0)
    with torch.no_grad():
        assert torch.equal(a.denoiser(x, t, cond), b.denoiser(x, t, cond))
        assert not torch.equal(a.denoiser(x, t, cond), c.denoiser(x, t, cond))


@pytest.mark.parametrize("name", TINY)
def test_tiny_denoising_loop_is_finite_and_informative(name, tiny):
    w = tiny[name]
    assert w.model is w.denoiser.model and not w.model.training
    assert not any(t.requires_grad for t in w.model.parameters())
    preds: list[torch.Tensor] = []
    hook = w.denoiser.register_forward_hook(lambda mod, args, out: preds.append(out))
    try:
        latents = W.denoise(w)
    finally:
        hook.remove()
    assert len(preds) == w.steps == 4
    for pred in preds:
        assert pred.shape[1:] == w.inputs.latents.shape[1:]
        assert torch.isfinite(pred).all()
        # a random model with a sensible scale: neither vanishing nor exploding
        assert 0.1 < pred.std().item() < 10.0
    assert torch.isfinite(latents).all() and latents.std() > 0.1
    assert not torch.allclose(latents, w.inputs.latents)


@pytest.mark.parametrize("name", TINY)
def test_tiny_every_block_changes_its_input(name, tiny):
    w = tiny[name]
    changes: dict[str, float] = {}
    blocks = [(n, m) for n, m in w.model.named_modules() if type(m).__name__ in BLOCKS]
    blocks += [(n, m) for n, m in w.model.named_modules() if type(m).__name__ == "ResnetBlock2D"]

    def record(name):
        def hook(mod, args, kwargs, out):
            x = args[0] if args else kwargs["hidden_states"]
            y = out
            if isinstance(out, tuple):  # dual-stream blocks: the image stream
                y = out[0] if type(mod).__name__ in IMAGE_FIRST else out[-1]
            if x.shape == y.shape:  # channel-changing resnets change their input by construction
                changes[name] = ((y - x).norm() / x.norm()).item()

        return hook

    hooks = [m.register_forward_hook(record(n), with_kwargs=True) for n, m in blocks]
    try:
        x, cond = _cfg_batch(w)
        with torch.no_grad():
            w.denoiser(x, torch.tensor(500.0), cond)
    finally:
        for h in hooks:
            h.remove()
    assert changes
    assert min(changes.values()) > 0.01, changes


@pytest.mark.parametrize("name", TINY)
def test_tiny_forward_time_and_flops_match_meta(name, tiny):
    w = tiny[name]
    x, cond = _cfg_batch(w)
    t = torch.tensor(500.0)
    with torch.no_grad():
        w.denoiser(x, t, cond)  # warm-up
        start = time.perf_counter()
        w.denoiser(x, t, cond)
        elapsed = time.perf_counter() - start
        print(f"{name}: one forward, batch {x.shape[0]} at 32x32 latent: {elapsed * 1e3:.1f} ms")
        with flop_counter() as counter:
            w.denoiser(w.inputs.latents, t, w.inputs.cond)
    assert counter.get_total_flops() == W.model_stats(name, PX, PX).flops_per_forward


@pytest.mark.parametrize("name", TINY)
def test_tiny_every_allowed_scheduler_runs(name):
    p = W.get_preset(name)
    width = PX if p.family == "dit" else 192  # non-square where the model supports it
    for scheduler in allowed_schedulers(p):
        w = W.build(name, height=PX, width=width, steps=2, scheduler=scheduler)
        latents = W.denoise(w)
        assert latents.shape == w.inputs.latents.shape and torch.isfinite(latents).all()


# --- inputs ----------------------------------------------------------------------------------


def test_inputs_shard_model_cond_and_dtype():
    w = W.build("tiny-sdxl", height=PX, width=PX, batch=4)
    inputs = w.inputs
    assert inputs.cond["encoder_hidden_states"].shape == (4, 8, 32)
    assert inputs.cond["time_ids"][0].tolist() == [PX, PX, 0, 0, PX, PX]
    part = inputs.shard(1, 2)
    assert part.latents.shape == (2, 4, 32, 32)
    assert torch.equal(part.latents, inputs.latents[2:])
    assert torch.equal(part.uncond["text_embeds"], inputs.uncond["text_embeds"][2:])
    both = inputs.model_cond()
    assert both["encoder_hidden_states"].shape == (8, 8, 32)
    assert torch.equal(both["encoder_hidden_states"][4:], inputs.cond["encoder_hidden_states"])
    with pytest.raises(ValueError, match="count=3"):
        inputs.shard(0, 3)

    dit = W.build("tiny-dit-xl-2", height=PX, width=PX, batch=2, dtype=torch.bfloat16)
    assert dit.inputs.latents.dtype == torch.bfloat16
    labels = dit.inputs.model_cond()["class_labels"]
    assert labels.dtype == torch.int64 and labels[:2].tolist() == [10, 10]
    assert all(0 <= v < 10 for v in labels[2:].tolist())
    assert next(dit.model.parameters()).dtype == torch.bfloat16

    flux = W.build("tiny-flux-dev", height=PX, width=PX, batch=2)
    assert flux.inputs.uncond is None  # guidance-distilled: one branch
    assert flux.inputs.model_cond()["guidance"].tolist() == [3.5, 3.5]
    no_cfg = W.build("tiny-pixart-alpha", height=PX, width=PX, guidance=1.0)
    assert no_cfg.inputs.uncond is None


def test_flux_packing_round_trip():
    from workloads.denoiser import pack_latents, unpack_latents

    x = torch.randn(2, 16, 8, 12)
    tokens = pack_latents(x)
    assert tokens.shape == (2, 4 * 6, 64)
    assert torch.equal(unpack_latents(tokens, 8, 12), x)
    # token 1 is the 2x2 patch at rows 0-1, columns 2-3
    assert torch.equal(tokens[0, 1].view(16, 2, 2), x[0, :, 0:2, 2:4])


def test_zero_parameters_are_reinitialised_deterministically():
    def layer():
        lin = torch.nn.Linear(8, 8)
        torch.nn.init.zeros_(lin.weight)
        return lin

    a, b = layer(), layer()
    assert reinit_zero_parameters(a, seed=3) == ["weight"]
    reinit_zero_parameters(b, seed=3)
    assert a.weight.any() and torch.equal(a.weight, b.weight)
    assert 0.01 < a.weight.std().item() < 0.04


# --- schedulers ------------------------------------------------------------------------------


def test_schedulers_are_fresh_and_resolution_aware():
    p = W.get_preset("tiny-sdxl")
    a, b = (W.make_scheduler("dpm-solver++", p, 4, PX, PX) for _ in range(2))
    assert a is not b and len(a.timesteps) == 4
    flux = W.get_preset("flux-dev")
    small = W.make_scheduler("flow-match-euler", flux, 4, 256, 256)
    large = W.make_scheduler("flow-match-euler", flux, 4, 1024, 1024)
    # Flux shifts towards high noise for longer sequences
    assert large.sigmas[1] > small.sigmas[1]
    assert small.sigmas[0] == pytest.approx(1.0)


# --- validation ------------------------------------------------------------------------------


def test_validation_errors_name_field_value_and_allowed():
    with pytest.raises(ValueError, match=r"preset='nope'.*known presets: sdxl, tiny-sdxl"):
        W.get_preset("nope")
    with pytest.raises(ValueError, match=r"height=1000 .*multiple of 32"):
        W.build("tiny-sdxl", height=1000, width=256)
    with pytest.raises(ValueError, match=r"width=264 .*multiple of 16"):
        W.build("tiny-dit-xl-2", height=256, width=264)
    with pytest.raises(ValueError, match=r"width=128 .*must equal height=256"):
        W.build("tiny-dit-xl-2", height=256, width=128)
    with pytest.raises(ValueError, match=r"height=4096 .*at most 3072"):
        W.build("sd3-medium", height=4096, width=1024, device="meta")
    with pytest.raises(ValueError, match=r"scheduler='ddim'.*allowed for it: flow-match-euler"):
        W.build("tiny-sd3-medium", height=PX, width=PX, scheduler="ddim")
    with pytest.raises(
        ValueError, match=r"'flow-match-euler'.*allowed for it: ddim, dpm-solver\+\+"
    ):
        W.make_scheduler("flow-match-euler", W.get_preset("sdxl"), 4, 1024, 1024)
    with pytest.raises(ValueError, match=r"scheduler='heun'.*allowed: ddim, dpm-solver\+\+"):
        W.make_scheduler("heun", W.get_preset("sdxl"), 4, 1024, 1024)
    with pytest.raises(ValueError, match="steps=0"):
        W.build("tiny-sdxl", height=PX, width=PX, steps=0)


# --- saved weights ---------------------------------------------------------------------------


def test_weights_from_local_directory(tmp_path, tiny):
    w = tiny["tiny-dit-xl-2"]
    w.model.save_pretrained(tmp_path / "model")
    w.model.save_pretrained(tmp_path / "pipeline" / "transformer")
    x, cond = _cfg_batch(w)
    t = torch.tensor(500.0)
    with torch.no_grad():
        expected = w.denoiser(x, t, cond)
        for path in ("model", "pipeline"):
            # a different seed: only the loaded weights may decide the output
            loaded = W.build(
                "tiny-dit-xl-2", height=PX, width=PX, seed=5, weights=str(tmp_path / path)
            )
            assert torch.equal(loaded.denoiser(x, t, cond), expected)
    with pytest.raises(ValueError, match="weights="):
        W.build("tiny-dit-xl-2", height=PX, width=PX, weights=str(tmp_path))
