"""What a video pipeline call runs besides the denoising loop, PROJECTED: the text encoders and the
VAE decode of one clip, recorded on the meta device (analysis.stages) and priced with the
operator model on one GPU of each profile, in bf16, unanchored -> reports/video_projected/stages.md.

    .venv/bin/python benchmarks/video_stages.py [--out reports/video_projected/stages.md]

Nothing is measured: no GPU, no weights. The VAE decode is the library's default call (no
spatial tiling; HunyuanVideo's in overlapping windows of 16 frames), the clip's frames at once.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analysis.hardware import load_profile  # noqa: E402
from analysis.stages import price_stage, text_encoder_ops, vae_decode_ops  # noqa: E402

# (preset, clip, prompts encoded with CFG): each preset's default clip (README, Video models)
CLIPS = [
    ("wan2.1-t2v-1.3b", "81x480x832", True),
    ("wan2.1-t2v-14b", "81x720x1280", True),
    ("hunyuanvideo", "129x720x1280", False),  # guidance-distilled: one prompt
    ("cogvideox-5b", "49x480x720", True),
]
PROFILES = ["8xH100-NVLink", "8xL40-PCIe4"]
DTYPE = "bf16"


def rows() -> list[dict]:
    """One row per preset, stage and profile: seconds on one GPU and how they split."""
    profiles = {name: load_profile(name) for name in PROFILES}
    out = []
    for preset, clip, cfg in CLIPS:
        frames, height, width = map(int, clip.split("x"))
        stages = {
            "text encoders": text_encoder_ops(preset, 1, cfg, DTYPE),
            "VAE decode": vae_decode_ops(preset, height, width, 1, DTYPE, frames),
        }
        for stage, ops in stages.items():
            for name, profile in profiles.items():
                cost = price_stage(profile, ops, DTYPE)
                out.append(
                    dict(
                        preset=preset,
                        clip=clip,
                        stage=stage,
                        profile=name,
                        tflop=cost.flops / 1e12,
                        gb=cost.bytes / 1e9,
                        seconds=cost.time_s,
                        compute_bound=cost.compute_bound_s / cost.time_s,
                        memory_bound=cost.memory_bound_s / cost.time_s,
                    )  # fmt: skip
                )
    return out


def markdown(table: list[dict], took_s: float) -> str:
    head = [
        "# Video pipeline stages outside the loop: PROJECTED, not measured",
        "",
        "Text encoders and the VAE decode of one clip per pipeline call, recorded on the meta "
        "device and priced by the operator model on **one GPU** of each profile, **bf16**, "
        "**unanchored** (`benchmarks/video_stages.py`; architectures: `workloads/vae.py`, "
        "`workloads/text_encoders.py`). The decode is the library's default call: no spatial "
        "tiling, Wan's and CogVideoX's VAEs frame by frame with cached causal context, "
        "HunyuanVideo's in overlapping windows of 16 frames. Prompts: Wan and CogVideoX encode the "
        "prompt and the negative prompt, HunyuanVideo one prompt (Llama 3 on 351 tokens, CLIP-L on "
        f"77). Recorded and priced in {took_s:.0f} s on this machine.",
        "",
        "| preset | clip | stage | TFLOP | GB moved | "
        + " | ".join(f"{p} [s]" for p in PROFILES)
        + " | compute-bound | memory-bound |",
        "| --- | --- | --- | ---: | ---: | "
        + " | ".join("---:" for _ in PROFILES)
        + " | ---: | ---: |",
    ]
    lines = []
    keys = sorted({(r["preset"], r["clip"], r["stage"]) for r in table}, key=_order)
    for preset, clip, stage in keys:
        by = {
            r["profile"]: r
            for r in table
            if (r["preset"], r["clip"], r["stage"]) == (preset, clip, stage)
        }
        first = by[PROFILES[0]]
        lines.append(
            f"| {preset} | {clip} | {stage} | {first['tflop']:.1f} | {first['gb']:.0f} | "
            + " | ".join(f"{by[p]['seconds']:.3g}" for p in PROFILES)
            + f" | {first['compute_bound']:.0%} | {first['memory_bound']:.0%} |"
        )
    foot = [
        "",
        f"compute-bound / memory-bound: shares of the {PROFILES[0]} time spent in operators "
        "limited by FLOPs / by bytes (the rest is launch overhead).",
    ]
    return "\n".join(head + lines + foot) + "\n"


def _order(key):
    preset, clip, stage = key
    return [c[0] for c in CLIPS].index(preset), ["text encoders", "VAE decode"].index(stage)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "reports/video_projected/stages.md")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    table = rows()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(table, time.perf_counter() - start))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
