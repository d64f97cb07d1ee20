"""Instantiate a preset's diffusers model: seeded random init, the meta device, or saved weights."""

from __future__ import annotations

from pathlib import Path

import diffusers
import torch

from .presets import Preset

# Small enough not to dominate a layer's output, large enough that a re-initialised gate or
# projection visibly moves its input (an all-zero layer makes parallel-vs-single checks vacuous).
ZERO_REINIT_STD = 0.02

# Offset between the init seed and the zero-re-init stream, so the two streams never coincide.
_REINIT_SEED_OFFSET = 0x5EED


def model_class(preset: Preset) -> type[torch.nn.Module]:
    """The diffusers class named by the preset."""
    return getattr(diffusers, preset.model_class)


def random_model(
    preset: Preset,
    seed: int,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """The preset's model with seeded random weights.

    Init runs in float32 on the target device (CPU init of a 12 B model would take minutes and
    48 GB of host memory) and is then cast, so parameters are bitwise identical for the same
    (seed, device type) in every process, and equal up to rounding across dtypes. On the meta
    device nothing is allocated: shapes only, for parameter and FLOP counts.
    """
    device = torch.device(device)
    cls = model_class(preset)
    config = dict(preset.config)
    if device.type == "meta":
        with device:
            return _cast(cls.from_config(config), dtype)
    # fork_rng keeps the caller's global RNG stream untouched by our seeding
    forked = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked, device_type=device.type), device:
        torch.manual_seed(seed)
        model = cls.from_config(config)
    reinit_zero_parameters(model, seed)
    return _cast(model, dtype)


def _cast(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    # ModelMixin.to warns on every dtype cast (diffusers 0.42 tests `[] is not None`); these
    # classes keep no modules in float32, so the plain nn.Module cast is the same operation.
    return torch.nn.Module.to(model, dtype)


@torch.no_grad()
def reinit_zero_parameters(model: torch.nn.Module, seed: int) -> list[str]:
    """Give every all-zero parameter N(0, ZERO_REINIT_STD) values; returns their names.

    A guard: zero-initialised adaLN-zero gates or output projections (as DiT-style training code
    sets them) make untrained blocks identities and outputs constant. diffusers 0.42 leaves only
    norm biases at zero (torch's default), which this perturbs harmlessly.
    """
    names = []
    generators: dict[torch.device, torch.Generator] = {}
    for name, param in model.named_parameters():
        if param.device.type == "meta" or param.any():
            continue
        gen = generators.get(param.device)
        if gen is None:
            gen = torch.Generator(param.device).manual_seed(seed + _REINIT_SEED_OFFSET)
            generators[param.device] = gen
        fresh = torch.empty(param.shape, dtype=torch.float32, device=param.device)
        param.copy_(fresh.normal_(0.0, ZERO_REINIT_STD, generator=gen))
        names.append(name)
    return names


WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def packaged_weights_path(preset: Preset) -> Path:
    """Where the preset's packaged weights live (workloads/weights/<weights_file>)."""
    return WEIGHTS_DIR / preset.weights_file


def packaged_model(
    preset: Preset,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """The preset's model with the trained weights shipped in workloads/weights/.

    The file holds bf16 tensors (to keep the repository small); they are cast to `dtype`, so
    float32 runs compute in float32 on bf16-rounded weights, identically in every process.
    """
    from safetensors.torch import load_file

    path = packaged_weights_path(preset)
    if not path.is_file():
        raise FileNotFoundError(
            f"preset {preset.name!r} needs its trained weights at {path}; train them with "
            f"`python -m workloads.train_tiny --model {preset.name}`"
        )
    state = load_file(str(path))
    # built on CPU (non-persistent buffers such as DiT's positional table are computed, not
    # stored), every parameter then overwritten: strict, so a stale file fails loudly
    with torch.random.fork_rng(devices=[]):  # the throwaway init leaves the caller's RNG alone
        model = model_class(preset).from_config(dict(preset.config))
    model.load_state_dict(state, strict=True)
    return _cast(model, dtype).to(device)


def pretrained_model(
    preset: Preset,
    weights: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """Load saved weights: a model directory (config.json inside), a pipeline directory (the
    preset's weights_subfolder inside), or a hub id (pipeline layout, needs network access).

    The architecture comes from the saved config, not from the preset.
    """
    cls = model_class(preset)
    path = Path(weights)
    if path.is_dir():
        if (path / "config.json").is_file():
            model = cls.from_pretrained(path, torch_dtype=dtype)
        elif (path / preset.weights_subfolder / "config.json").is_file():
            model = cls.from_pretrained(path, subfolder=preset.weights_subfolder, torch_dtype=dtype)
        else:
            raise ValueError(
                f"weights={weights!r} is a directory without config.json or "
                f"{preset.weights_subfolder}/config.json; allowed: a saved {preset.model_class} "
                f"directory, a pipeline directory, or a hub id"
            )
    else:
        model = cls.from_pretrained(weights, subfolder=preset.weights_subfolder, torch_dtype=dtype)
    return model.to(device)
