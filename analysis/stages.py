"""What a pipeline call runs besides the denoising loop: the VAE decode and the text encoders,
recorded on the meta device (`suite.measure.op_recorder.OpRecorder`) and priced with the operator model.

diffscale times the denoising loop (as DistriFusion does); PipeFusion / xDiT time the pipeline
call, so a projection compared with their numbers adds these stages. Nothing here is measured:
every number is PROJECTED on a profile, like the loop's.

The VAE is diffusers' AutoencoderKL with the architecture in `workloads.vae` (its decode: the
post-quant conv and the decoder, un-tiled, at the run's batch; a video model's 3-D VAE with the
library's default decode: Wan's and CogVideoX's frame by frame with cached causal context,
HunyuanVideo's in overlapping windows of 16 frames, none spatially tiled); the text encoders are
transformers' models with the configs in `workloads.text_encoders`, each run on its tokens for
every prompt the pipeline encodes. Both in the projection's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from analysis import opmodel
from suite.measure.calibrate_ops import TORCH_DTYPES
from suite.measure.optrace import OP_DTYPE


def record(fn) -> np.ndarray:
    """The operators `fn()` runs on the meta device, as one signature (`suite.measure.optrace.OP_DTYPE`
    rows, sig 0)."""
    from suite.measure.op_recorder import OpRecorder

    rec = OpRecorder()
    rec.start_rank()
    with torch.inference_mode(), rec.recording():
        fn()
    rec.boundary()
    ops = rec.ops()
    return ops if len(ops) else np.zeros(0, dtype=OP_DTYPE)


def vae_decode_ops(
    preset: str, height: int, width: int, batch: int = 1, dtype: str = "fp16", frames: int = 0
):
    """Operators of one VAE decode of `batch` latents of a height x width px image, or of
    `frames`-frame clips for a video preset (its causal 3-D VAE over F' latent frames)."""
    from workloads.presets import get_preset
    from workloads.vae import meta_vae

    p = get_preset(preset)
    vae = meta_vae(p, TORCH_DTYPES[opmodel.dtype_key(dtype)])
    shape = (batch, p.latent_channels, height // p.vae_scale_factor, width // p.vae_scale_factor)
    if p.video:
        from workloads.video_size import latent_frames

        shape = (*shape[:2], latent_frames(p, frames), *shape[2:])
    latents = torch.empty(shape, device="meta", dtype=vae.dtype)
    return record(lambda: vae.decode(latents, return_dict=False))


def text_encoder_ops(preset: str, batch: int = 1, cfg: bool = True, dtype: str = "fp16"):
    """Operators of the text encoders of one pipeline call (empty if the preset names none)."""
    from workloads.text_encoders import meta_text_encoder, text_encoders

    parts = []
    for cls, config, tokens, prompts in text_encoders(preset):
        model = meta_text_encoder(cls, config, TORCH_DTYPES[opmodel.dtype_key(dtype)])
        ids = torch.zeros((batch, tokens), dtype=torch.long, device="meta")
        ops = record(lambda m=model, i=ids: m(input_ids=i))
        ops["count"] *= prompts if cfg else 1
        parts.append(ops)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=OP_DTYPE)


@dataclass(frozen=True)
class StageCost:
    """A stage on a profile (PROJECTED): seconds, and how they split."""

    time_s: float
    compute_bound_s: float
    memory_bound_s: float
    launch_s: float
    flops: float  # per call of the stage
    bytes: float
    ops: int  # operator calls


def price_stage(profile, ops: np.ndarray, dtype: str | None = None) -> StageCost:
    """Seconds of one call of a recorded stage on `profile` (operator model)."""
    if not len(ops):
        return StageCost(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
    priced = opmodel.price(profile, ops, dtype)
    count = ops["count"].astype(float)
    return StageCost(
        float(priced.time_s.sum()),
        float(priced.compute_bound_s.sum()),
        float(priced.memory_bound_s.sum()),
        float(priced.launch_s.sum()),
        float((ops["flops"] * count).sum()),
        float((ops["bytes"] * count).sum()),
        int(count.sum()),
    )
