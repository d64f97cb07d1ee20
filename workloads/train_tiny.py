"""Train the `trained-tiny-*` presets on generated shapes, so fidelity has real images offline.

    nice -n 19 python -m workloads.train_tiny --model trained-tiny-unet
    nice -n 19 python -m workloads.train_tiny --model trained-tiny-dit

Run by hand, never in CI. Each model trains in pixel space (32x32 RGB) on the class-labelled
shapes of `workloads.shapes`, drawn on the fly, with v-prediction on the preset's noise schedule,
min-SNR-5 loss weighting and 10% label dropout (the null label), so classifier-free guidance has
an unconditional branch to work with. Everything random derives from `--seed` and the step index,
so a run is reproducible, also across a resume from its checkpoint (same thread count). The EMA
weights are written in bf16 to workloads/weights/<preset>.safetensors, which the preset loads;
a sample grid (one row per class) is saved beside the checkpoints so you can look at it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from .build import Workload
from .denoiser import Denoiser
from .inputs import Inputs
from .loop import denoise
from .models import model_class, packaged_weights_path
from .presets import Preset, get_preset
from .shapes import CLASSES, shapes_batch

MIN_SNR_GAMMA = 5.0  # Hang et al. 2023: caps the weight of low-noise steps, faster convergence
LABEL_DROPOUT = 0.1


@dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters of one preset (the defaults are what the shipped weights used)."""

    steps: int
    batch: int
    lr: float  # AdamW peak learning rate, after linear warm-up
    warmup: int  # steps of linear learning-rate warm-up
    ema: float  # EMA decay of the exported weights
    weight_decay: float = 0.0
    # "cosine": decay to lr / 10 at the last step; "constant": lr after warm-up, so a run of
    # N steps is exactly the first N steps of any longer run (it can be stopped and exported)
    schedule: str = "cosine"


RECIPES: dict[str, Recipe] = {
    "trained-tiny-unet": Recipe(steps=700, batch=64, lr=1e-3, warmup=50, ema=0.995),
    # "constant": a run of N steps is exactly the first N of a longer one, so training could
    # be stopped and resumed (600 steps, then resumed to this default)
    "trained-tiny-dit": Recipe(
        steps=1000, batch=64, lr=8e-4, warmup=100, ema=0.998, schedule="constant"
    ),
}


def noise_schedule(preset: Preset) -> DDPMScheduler:
    """The training noise process: the preset's schedule, as its inference solvers see it."""
    from .schedulers import _NOISE

    cfg = {**_NOISE[preset.family], **preset.scheduler_config}
    cfg.pop("timestep_spacing", None)  # a sampling choice, not part of the forward process
    return DDPMScheduler.from_config({"num_train_timesteps": 1000, **cfg})


def new_model(preset: Preset, seed: int) -> torch.nn.Module:
    """The preset's model, seeded init, label dropout of diffusers' DiT embedding switched off
    (we drop labels ourselves, with the same null index for both families)."""
    torch.manual_seed(seed)
    model = model_class(preset).from_config(dict(preset.config))
    for module in model.modules():
        if hasattr(module, "dropout_prob") and hasattr(module, "embedding_table"):
            module.dropout_prob = 0.0
    return model


def model_call(preset: Preset, model: torch.nn.Module, x, t, labels) -> torch.Tensor:
    """The model's prediction (N, 3, H, W); the same call convention as `Denoiser`."""
    out = Denoiser(model, preset)(x, t, {"class_labels": labels})
    return out


def learning_rate(recipe: Recipe, step: int) -> float:
    """Linear warm-up, then constant or cosine decay from lr to lr / 10 at the last step."""
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    if recipe.schedule == "constant":
        return recipe.lr
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_step(preset, model, opt, sched, recipe: Recipe, step: int, seed: int) -> float:
    """One optimizer step on a fresh batch; every draw comes from (seed, step)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    images, labels = shapes_batch(recipe.batch, preset.native_resolution, generator=gen)
    x0 = images * 2 - 1
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, sched.config.num_train_timesteps, (recipe.batch,), generator=gen)
    drop = torch.rand(recipe.batch, generator=gen) < LABEL_DROPOUT
    labels = torch.where(drop, torch.full_like(labels, preset.num_classes), labels)
    xt = sched.add_noise(x0, noise, t)
    target = sched.get_velocity(x0, noise, t)
    alpha_bar = sched.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / (snr + 1)  # min-SNR for v-prediction
    pred = model_call(preset, model, xt, t, labels)
    loss = (weight * (pred - target).square().mean(dim=(1, 2, 3))).mean()
    for group in opt.param_groups:
        group["lr"] = learning_rate(recipe, step)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    d = min(decay, (1 + step) / (10 + step))  # warm-up: early EMA follows the model closely
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1 - d)


@torch.no_grad()
def sample_grid(
    preset: Preset, model: torch.nn.Module, per_class: int = 8, seed: int = 0, steps: int = 20
) -> torch.Tensor:
    """(classes * per_class, 3, H, W) samples in [0, 1], row c = class c, through the same
    solver, CFG and denoising loop as the benchmark (workloads.denoise)."""
    model.eval()
    n = len(CLASSES) * per_class
    size = preset.native_resolution
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(CLASSES)).repeat_interleave(per_class)
    inputs = Inputs(
        latents=torch.randn(n, 3, size, size, generator=gen),
        cond={"class_labels": labels},
        uncond={"class_labels": torch.full_like(labels, preset.num_classes)},
    )
    workload = Workload(
        preset=preset,
        model=model,
        denoiser=Denoiser(model, preset),
        inputs=inputs,
        scheduler=preset.default_scheduler,
        guidance=preset.default_guidance,
        height=size,
        width=size,
        steps=steps,
    )
    out = denoise(workload)
    return ((out.clamp(-1, 1) + 1) / 2).float()


def save_grid(images: torch.Tensor, path: Path, per_row: int = 8, scale: int = 4) -> None:
    """Images (N, 3, H, W) in [0, 1] as one PNG, each pixel `scale` x `scale` (for viewing)."""
    import torchvision

    big = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    torchvision.utils.save_image(big, str(path), nrow=per_row, padding=2)


def export(preset: Preset, ema: torch.nn.Module, meta: dict) -> Path:
    """Write the EMA weights as bf16 safetensors where the preset loads them."""
    from safetensors.torch import save_file

    path = packaged_weights_path(preset)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in ema.state_dict().items()}
    save_file(state, str(path), metadata={k: str(v) for k, v in meta.items()})
    return path


class TrainState:
    """A trainer's model, EMA copy, optimizer and progress, resumed from `out`/ckpt.pt when there
    is one; `save()` writes the checkpoint atomically (a kill mid-save keeps the previous one)."""

    def __init__(self, preset: Preset, out: Path, seed: int, recipe: Recipe):
        out.mkdir(parents=True, exist_ok=True)
        self.model = new_model(preset, seed)
        self.ema = new_model(preset, seed)
        self.ema.load_state_dict(self.model.state_dict())
        self.ema.requires_grad_(False)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
        )
        self.ckpt = out / "ckpt.pt"
        self.step, self.elapsed, self.losses = 0, 0.0, []
        if self.ckpt.is_file():
            state = torch.load(self.ckpt, weights_only=False)
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.opt.load_state_dict(state["opt"])
            self.step, self.elapsed = state["step"], state["elapsed_s"]
            self.losses = state["losses"]
            print(f"resumed at step {self.step} ({self.elapsed / 60:.1f} min so far)", flush=True)
        self.params = sum(p.numel() for p in self.model.parameters())

    def save(self, step: int | None = None) -> None:
        step = self.step if step is None else step
        tmp = self.ckpt.with_suffix(".tmp")
        nets = {"model": self.model.state_dict(), "ema": self.ema.state_dict()}
        torch.save(
            {
                **nets,
                "opt": self.opt.state_dict(),
                "step": step,
                "elapsed_s": self.elapsed,
                "losses": self.losses,
            },  # fmt: skip
            tmp,
        )
        os.replace(tmp, self.ckpt)


def train(name: str, out: Path, seed: int, recipe: Recipe, ckpt_every: int, sample_every: int):
    """Train preset `name` (resuming from out/ckpt.pt), export its weights, save samples."""
    preset = get_preset(name)
    sched = noise_schedule(preset)
    ts = TrainState(preset, out, seed, recipe)
    model, ema, opt, losses, start = ts.model, ts.ema, ts.opt, ts.losses, ts.step
    elapsed = ts.elapsed
    params = ts.params
    print(f"{name}: {params / 1e6:.2f} M parameters, {asdict(recipe)}", flush=True)

    def checkpoint(step: int) -> None:
        ts.elapsed = elapsed
        ts.save(step)

    model.train()
    t_last = time.perf_counter()
    for step in range(start, recipe.steps):
        losses.append(train_step(preset, model, opt, sched, recipe, step, seed))
        update_ema(ema, model, recipe.ema, step)
        now = time.perf_counter()
        elapsed += now - t_last
        t_last = now
        done = step + 1
        if done % 10 == 0 or done == recipe.steps:
            recent = sum(losses[-50:]) / len(losses[-50:])
            print(
                f"step {done}/{recipe.steps}  loss {recent:.4f}  "
                f"lr {learning_rate(recipe, step):.2e}  {elapsed / 60:.1f} min",
                flush=True,
            )
        if done % ckpt_every == 0 or done == recipe.steps:
            checkpoint(done)
        if sample_every and done % sample_every == 0 and done != recipe.steps:
            save_grid(sample_grid(preset, ema), out / f"samples_{done:05d}.png")
            t_last = time.perf_counter()  # sampling is not training time

    final_loss = sum(losses[-100:]) / len(losses[-100:])
    meta = {
        "preset": name,
        "seed": seed,
        "params": params,
        "final_loss": f"{final_loss:.5f}",
        "train_minutes": f"{elapsed / 60:.1f}",
        "threads": torch.get_num_threads(),
        **asdict(recipe),
    }
    path = export(preset, ema, meta)
    save_grid(sample_grid(preset, ema), out / "samples_final.png")
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB); samples in {out}", flush=True)
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=sorted(RECIPES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="override the recipe's step count")
    parser.add_argument("--threads", type=int, default=2, help="intra-op CPU threads")
    parser.add_argument(
        "--out", type=Path, help="checkpoints and samples (default results/train_tiny/MODEL)"
    )
    parser.add_argument("--ckpt-every", type=int, default=50)
    parser.add_argument("--sample-every", type=int, default=0, help="0: final samples only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = RECIPES[args.model]
    if args.steps:
        recipe = Recipe(**{**asdict(recipe), "steps": args.steps})
    out = args.out or Path("results") / "train_tiny" / args.model
    train(args.model, out, args.seed, recipe, args.ckpt_every, args.sample_every)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
