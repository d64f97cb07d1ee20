"""The trained-tiny presets: their data set, training recipe pieces and packaged weights."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import workloads as W
from workloads.models import WEIGHTS_DIR, packaged_weights_path
from workloads.shapes import CLASSES, reference_images, shapes_batch
from workloads.train_tiny import RECIPES, learning_rate, noise_schedule

# image presets; trained-tiny-video (rectified flow, clips) has tests/unit/test_train_tiny_video.py
TRAINED = [name for name, p in W.PRESETS.items() if p.weights_file and not p.video]


def test_shapes_are_a_pure_function_of_the_seed():
    a, la = shapes_batch(8, 32, generator=torch.Generator().manual_seed(3))
    b, lb = shapes_batch(8, 32, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert a.shape == (8, 3, 32, 32) and a.min() >= 0 and a.max() <= 1
    ref = reference_images(8)
    assert ref.shape == (8, 3, 32, 32)  # two of each class


def test_each_class_draws_its_own_shape():
    # same placement and colours, different class: the foreground masks must differ pairwise
    masks = []
    for c in range(len(CLASSES)):
        x, _ = shapes_batch(
            1, 32, generator=torch.Generator().manual_seed(0), labels=torch.tensor([c])
        )
        masks.append((x - x.amin(dim=(2, 3), keepdim=True)).sum(1) > 0.3)
    for i in range(len(masks)):
        for j in range(i):
            assert (masks[i] ^ masks[j]).sum() > 10


def test_constant_schedule_makes_a_short_run_a_prefix_of_a_longer_one():
    recipe = RECIPES["trained-tiny-dit"]
    longer = replace(recipe, steps=recipe.steps * 2)
    assert [learning_rate(recipe, s) for s in range(recipe.steps)] == [
        learning_rate(longer, s) for s in range(recipe.steps)
    ]
    cosine = RECIPES["trained-tiny-unet"]
    assert learning_rate(cosine, cosine.steps - 1) == pytest.approx(0.1 * cosine.lr, rel=1e-2)


@pytest.mark.parametrize("name", TRAINED)
def test_training_noise_matches_the_preset_solvers(name):
    p = W.get_preset(name)
    train = noise_schedule(p)
    solver = W.make_scheduler(p.default_scheduler, p, 4, 32, 32)
    assert train.config.prediction_type == solver.config.prediction_type == "v_prediction"
    torch.testing.assert_close(train.alphas_cumprod, solver.alphas_cumprod)


def test_packaged_weights_stay_small():
    files = list(WEIGHTS_DIR.glob("*.safetensors"))
    assert all(f.stat().st_size <= 10e6 for f in files)
    assert sum(f.stat().st_size for f in files) <= 16e6  # unet 5.6 + dit 4.2 + video 3.5 MB


@pytest.mark.parametrize("name", TRAINED)
def test_trained_preset_loads_its_weights_and_denoises(name):
    p = W.get_preset(name)
    if not packaged_weights_path(p).is_file():
        pytest.skip(f"{packaged_weights_path(p)} not trained yet")
    from safetensors.torch import load_file

    w = W.build(name, height=32, width=32, steps=4, batch=2)
    state = load_file(str(packaged_weights_path(p)))
    for key, value in w.model.state_dict().items():
        assert torch.equal(value, state[key].float()), key
    out = W.denoise(w)
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()


def test_train_state_resumes_what_it_saved(tmp_path):
    from workloads.train_tiny import TrainState

    preset, recipe = W.get_preset("trained-tiny-dit"), RECIPES["trained-tiny-dit"]
    first = TrainState(preset, tmp_path, 0, recipe)
    assert first.step == 0 and first.losses == [] and not first.ckpt.exists()
    with torch.no_grad():
        next(first.model.parameters()).add_(1.0)  # a trained model differs from its init
    first.elapsed, first.losses = 12.5, [0.5, 0.25]
    first.save(step=7)
    again = TrainState(preset, tmp_path, 0, recipe)
    assert (again.step, again.elapsed, again.losses) == (7, 12.5, [0.5, 0.25])
    for a, b in zip(first.model.parameters(), again.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not (tmp_path / "ckpt.tmp").exists()  # written aside, then moved into place
