"""Train the `trained-tiny-video` preset on moving shapes, so video fidelity has real clips offline.

    nice -n 10 python -m workloads.train_tiny_video --minutes 30 --threads 1 --report

Run by hand, never in CI. The model (Wan's transformer in pixel space, 8 x 32 x 32 RGB) learns
rectified flow on the clips of `workloads.moving_shapes`, drawn on the fly: x_t = (1 - s) x0 +
s noise, target velocity noise - x0 (what FlowMatchEulerDiscreteScheduler integrates), s drawn
logit-normal (SD3) and shifted by the preset's sampling shift, timestep 1000 s. The prompt of a
clip is its class's fixed embedding (workloads.inputs.class_prompts), replaced by the null
prompt 10% of the time, so classifier-free guidance has an unconditional branch. The learning
rate is constant after warm-up, so training stops when its time budget (`--minutes`) is spent
and any stopping point is a prefix of a longer run; every draw comes from (seed, step), so a run
is reproducible, also across a resume from its checkpoint (same thread count). The EMA weights
are written in bf16 to workloads/weights/trained-tiny-video.safetensors; a strip of samples
(one clip a row, frames left to right) from the preset's own solver, steps and guidance is saved
beside the checkpoint and, with --report, to reports/trained_tiny_video/.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .build import Workload
from .denoiser import Denoiser
from .inputs import Inputs, class_prompts
from .loop import denoise
from .moving_shapes import VIDEO_CLASSES, moving_shapes_batch
from .presets import Preset, get_preset
from .train_tiny import (
    LABEL_DROPOUT,
    Recipe,
    TrainState,
    export,
    learning_rate,
    update_ema,
)

NAME = "trained-tiny-video"
# constant lr: the budget, not a step count, ends the run (steps is only a ceiling)
RECIPE = Recipe(steps=100_000, batch=16, lr=5e-4, warmup=100, ema=0.995, schedule="constant")
REPORT_DIR = Path("reports") / "trained_tiny_video"


def shifted_sigma(u: torch.Tensor, shift: float) -> torch.Tensor:
    """FlowMatchEulerDiscreteScheduler's time shift of sigma in [0, 1]."""
    return shift * u / (1 + (shift - 1) * u)


def train_step(preset: Preset, model, opt, recipe: Recipe, step: int, seed: int) -> float:
    """One optimizer step on a fresh batch of clips; every draw comes from (seed, step)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    clips, labels = moving_shapes_batch(
        recipe.batch, preset.native_frames, preset.native_resolution, generator=gen
    )
    x0 = clips * 2 - 1
    noise = torch.randn(x0.shape, generator=gen)
    sigma = shifted_sigma(torch.sigmoid(torch.randn(recipe.batch, generator=gen)), _shift(preset))
    drop = torch.rand(recipe.batch, generator=gen) < LABEL_DROPOUT
    labels = torch.where(drop, torch.full_like(labels, preset.prompt_classes), labels)
    s = sigma.view(-1, 1, 1, 1, 1)
    xt = (1 - s) * x0 + s * noise
    pred = Denoiser(model, preset)(
        xt, sigma * 1000, {"encoder_hidden_states": class_prompts(preset)[labels]}
    )
    loss = (pred - (noise - x0)).square().mean()
    for group in opt.param_groups:
        group["lr"] = learning_rate(recipe, step)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def _shift(preset: Preset) -> float:
    return float(preset.scheduler_config.get("shift", 1.0))


@torch.no_grad()
def sample_clips(
    preset: Preset, model: torch.nn.Module, per_class: int = 2, seed: int = 0, steps: int = 0
) -> torch.Tensor:
    """(classes * per_class, 3, F, H, W) clips in [0, 1], class after class, through the
    preset's solver, guidance and steps (steps 0) in the benchmark's loop (workloads.denoise)."""
    model.eval()
    n = len(VIDEO_CLASSES) * per_class
    size = preset.native_resolution
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(VIDEO_CLASSES)).repeat_interleave(per_class)
    table = class_prompts(preset)
    inputs = Inputs(
        latents=torch.randn(n, 3, preset.native_frames, size, size, generator=gen),
        cond={"encoder_hidden_states": table[labels]},
        uncond={"encoder_hidden_states": table[torch.full_like(labels, preset.prompt_classes)]},
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
        steps=steps or preset.default_steps,
        frames=preset.native_frames,
    )
    out = denoise(workload)
    return ((out.clamp(-1, 1) + 1) / 2).float()


def save_strip(clips: torch.Tensor, path: Path, scale: int = 3) -> None:
    """Clips (N, 3, F, H, W) in [0, 1] as one PNG: a row per clip, its frames left to right."""
    import torchvision

    n, _, f = clips.shape[:3]
    frames = clips.transpose(1, 2).flatten(0, 1)  # (N F, 3, H, W), clip after clip
    big = torch.nn.functional.interpolate(frames, scale_factor=scale, mode="nearest")
    path.parent.mkdir(parents=True, exist_ok=True)
    torchvision.utils.save_image(big, str(path), nrow=f, padding=2, pad_value=1.0)


def train(out: Path, seed: int, recipe: Recipe, minutes: float, ckpt_every: int, report: bool):
    """Train until `minutes` of training time are spent (resuming from out/ckpt.pt), export
    the EMA weights, save sample strips."""
    preset = get_preset(NAME)
    ts = TrainState(preset, out, seed, recipe)
    model, ema, opt, losses, step, elapsed = (
        ts.model,
        ts.ema,
        ts.opt,
        ts.losses,
        ts.step,
        ts.elapsed,
    )
    params = ts.params
    print(f"{NAME}: {params / 1e6:.2f} M parameters, {minutes} min, {asdict(recipe)}", flush=True)

    def checkpoint() -> None:
        ts.step, ts.elapsed = step, elapsed
        ts.save()

    model.train()
    t_last = time.perf_counter()
    while elapsed < minutes * 60 and step < recipe.steps:
        losses.append(train_step(preset, model, opt, recipe, step, seed))
        update_ema(ema, model, recipe.ema, step)
        step += 1
        now = time.perf_counter()
        elapsed += now - t_last
        t_last = now
        if step % 10 == 0:
            recent = sum(losses[-50:]) / len(losses[-50:])
            print(f"step {step}  loss {recent:.4f}  {elapsed / 60:.1f} min", flush=True)
        if step % ckpt_every == 0:
            checkpoint()
    checkpoint()

    final_loss = sum(losses[-100:]) / len(losses[-100:])
    meta = {
        "preset": NAME,
        "seed": seed,
        "params": params,
        "steps_done": step,
        "final_loss": f"{final_loss:.5f}",
        "train_minutes": f"{elapsed / 60:.1f}",
        "threads": torch.get_num_threads(),
        **asdict(recipe),
    }
    path = export(preset, ema, meta)
    clips = sample_clips(preset, ema)
    save_strip(clips, out / "samples_final.png")
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    if report:
        save_strip(clips, REPORT_DIR / "samples.png")
        gen = torch.Generator().manual_seed(seed)
        labels = torch.arange(len(VIDEO_CLASSES)).repeat_interleave(2)
        data = moving_shapes_batch(len(labels), preset.native_frames, 32, generator=gen,
                                   labels=labels)[0]  # fmt: skip
        save_strip(data, REPORT_DIR / "data.png")
        (REPORT_DIR / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB); samples in {out}", flush=True)
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="training time budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="intra-op CPU threads")
    parser.add_argument(
        "--out", type=Path, help="checkpoint and samples (default results/train_tiny/" + NAME + ")"
    )
    parser.add_argument("--ckpt-every", type=int, default=50)
    parser.add_argument(
        "--report", action="store_true", help=f"also write the sample strips to {REPORT_DIR}/"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or Path("results") / "train_tiny" / NAME
    train(out, args.seed, RECIPE, args.minutes, args.ckpt_every, args.report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
