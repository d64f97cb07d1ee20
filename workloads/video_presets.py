"""Video diffusion transformers: Wan 2.1, HunyuanVideo, CogVideoX (diffusers 3-D transformer
classes, architecture configs written out from the published `transformer/config.json` files).

Latents are (B, C, frames, h, w) with frames = (clip frames - 1) / 4 + 1: every one of these
VAEs is causal in time (the first frame is encoded alone, then 4 frames per latent frame) and
downsamples 8x in space. Each `tiny-<name>` keeps its model's class and structure (Wan's
cross-attention and across-heads q/k norm, HunyuanVideo's dual- and single-stream blocks and
token refiner, CogVideoX's joint attention over [text; video] with 3-D rope) at a size for CPU
tests: 4 heads (8 for tiny-wan2.1-t2v-14b), 4 blocks, hidden 64.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from .preset import Preset

# Wan-AI/Wan2.1-T2V-1.3B-Diffusers and Wan2.1-T2V-14B-Diffusers, transformer/config.json
_WAN_1_3B = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
}
_WAN_14B = {**_WAN_1_3B, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40}
_TINY_WAN_1_3B = {
    **_WAN_1_3B,
    "num_attention_heads": 4,
    "attention_head_dim": 16,  # rope: 8 (time) + 4 + 4 (rows, columns)
    "text_dim": 32,
    "freq_dim": 32,
    "ffn_dim": 128,
    "num_layers": 4,
}
# more, narrower heads than the 1.3B's tiny: 14B has 40 heads to 1.3B's 12
_TINY_WAN_14B = {**_TINY_WAN_1_3B, "num_attention_heads": 8, "attention_head_dim": 8}

# hunyuanvideo-community/HunyuanVideo, transformer/config.json (diffusers' defaults)
_HUNYUAN = {
    "in_channels": 16,
    "out_channels": 16,
    "num_attention_heads": 24,
    "attention_head_dim": 128,
    "num_layers": 20,
    "num_single_layers": 40,
    "num_refiner_layers": 2,
    "mlp_ratio": 4.0,
    "patch_size": 2,
    "patch_size_t": 1,
    "qk_norm": "rms_norm",
    "guidance_embeds": True,
    "text_embed_dim": 4096,
    "pooled_projection_dim": 768,
    "rope_theta": 256.0,
    "rope_axes_dim": (16, 56, 56),
}
_TINY_HUNYUAN = {
    **_HUNYUAN,
    "num_attention_heads": 4,
    "attention_head_dim": 16,
    "num_layers": 2,
    "num_single_layers": 2,
    "num_refiner_layers": 1,
    "text_embed_dim": 32,
    "pooled_projection_dim": 32,
    "rope_axes_dim": (4, 6, 6),  # must sum to the head dim
}

# THUDM/CogVideoX-5b, transformer/config.json
_COGVIDEOX_5B = {
    "num_attention_heads": 48,
    "attention_head_dim": 64,
    "in_channels": 16,
    "out_channels": 16,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "time_embed_dim": 512,
    "text_embed_dim": 4096,
    "num_layers": 42,
    "dropout": 0.0,
    "attention_bias": True,
    "sample_width": 90,
    "sample_height": 60,
    "sample_frames": 49,
    "patch_size": 2,
    "temporal_compression_ratio": 4,
    "max_text_seq_length": 226,
    "activation_fn": "gelu-approximate",
    "timestep_activation_fn": "silu",
    "norm_elementwise_affine": True,
    "norm_eps": 1e-5,
    "spatial_interpolation_scale": 1.875,
    "temporal_interpolation_scale": 1.0,
    "use_rotary_positional_embeddings": True,
}
_TINY_COGVIDEOX = {
    **_COGVIDEOX_5B,
    "num_attention_heads": 4,
    "attention_head_dim": 16,  # 3-D rope: 4 (time) + 6 + 6
    "time_embed_dim": 32,
    "text_embed_dim": 32,
    "num_layers": 4,
}

# trained-tiny-video: Wan's block structure (self-attention with 3-D rope and across-heads q/k
# RMSNorm, cross-attention to the prompt, adaLN from the timestep) in pixel space, 8 frames of
# 32x32 RGB. Patches of 1x4x4 pixels: 64 tokens a frame, 512 a clip (2x2 patches would be 2048,
# 8x the training cost on this CPU). rope: 12 (time) + 10 + 10 of the 32-dim heads.
_TRAINED_WAN = {
    **_WAN_1_3B,
    "patch_size": (1, 4, 4),
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "in_channels": 3,
    "out_channels": 3,
    "text_dim": 32,
    "freq_dim": 64,
    "ffn_dim": 512,
    "num_layers": 6,
}

_FULL_STEPS, _TINY_STEPS = 20, 4  # as the image presets (workloads/presets.py)

_COMMON: dict[str, dict[str, Any]] = {
    "wan": {
        "model_class": "WanTransformer3DModel",
        "default_scheduler": "flow-match-euler",
        "default_guidance": 5.0,  # Wan 2.1's sample_guide_scale for t2v
        "cfg": True,
        "text_len": 512,  # umT5 tokens, padded to 512 by the pipeline
        "pooled_dim": 0,
    },
    "hunyuanvideo": {
        "model_class": "HunyuanVideoTransformer3DModel",
        "default_scheduler": "flow-match-euler",
        "default_guidance": 6.0,  # embedded guidance (the pipeline's guidance_scale)
        "cfg": False,  # guidance-distilled: the scale is a model input, no unconditional pass
        "text_len": 256,  # Llava-Llama-3 prompt tokens (max_sequence_length)
    },
    "cogvideox": {
        "model_class": "CogVideoXTransformer3DModel",
        "default_scheduler": "cogvideox-ddim",
        "default_guidance": 6.0,
        "cfg": True,
        "text_len": 226,  # T5 tokens (max_text_seq_length)
        "pooled_dim": 0,
    },
}


def _video(
    name: str,
    family: str,
    config: dict[str, Any],
    size: tuple[int, int, int],
    heads: int,
    layers: int,
    description: str,
    **fields: Any,
) -> Preset:
    tiny = name.startswith("tiny-")
    frames, height, width = size
    return Preset(
        name=name,
        family=family,
        config=MappingProxyType(config),
        latent_channels=16,
        vae_scale_factor=8,
        spatial_multiple=2,  # every model here patchifies 2x2 latent pixels
        heads=heads,
        layers=layers,
        weights_subfolder="transformer",
        tiny=tiny,
        description=description,
        native_resolution=height,
        native_frames=frames,
        native_width=width,
        temporal_compression=4,
        default_steps=_TINY_STEPS if tiny else _FULL_STEPS,
        **{**_COMMON[family], **fields},
    )


_TINY_TEXT = {"text_len": 8, "text_dim": 32}

# Trained in the repository (workloads/train_tiny_video.py) on moving shapes
# (workloads/moving_shapes.py), rectified flow; prompts are fixed per-class embeddings
# (workloads.inputs.class_prompts) with the null prompt as CFG's negative.
TRAINED_TINY_VIDEO = Preset(
    name="trained-tiny-video",
    family="wan",
    model_class="WanTransformer3DModel",
    config=MappingProxyType(_TRAINED_WAN),
    latent_channels=3,
    vae_scale_factor=1,  # pixel space: no VAE, so no 4k+1 frame rule (temporal_compression 1)
    spatial_multiple=4,  # patch 4x4
    heads=4,
    layers=6,
    text_len=4,
    text_dim=32,
    pooled_dim=0,
    cfg=True,
    default_scheduler="flow-match-euler",
    default_steps=20,
    default_guidance=3.0,
    weights_subfolder="transformer",
    tiny=True,
    description="Trained Wan-structured video DiT (6 blocks, hidden 128, patch 1x4x4), pixel "
    "space 8x32x32, 3 moving-shape classes as prompts: real videos offline",
    native_resolution=32,
    weights_file="trained-tiny-video.safetensors",
    # 8 near-identical frames carry one frame's content 8 times: noise hides it later than in
    # one image, so sampling spends more steps at high noise (SD3's resolution shift)
    scheduler_config=MappingProxyType({"shift": 2.0}),
    temporal_compression=1,
    native_frames=8,
    native_width=32,
    prompt_classes=3,
)
_TINY_SIZE = (9, 128, 128)  # 3 latent frames of 16x16: 3 x 64 tokens

VIDEO_PRESETS: tuple[Preset, ...] = (
    _video(
        "wan2.1-t2v-1.3b",
        "wan",
        _WAN_1_3B,
        (81, 480, 832),
        heads=12,
        layers=30,
        text_dim=4096,
        description="Wan 2.1 T2V 1.3B: 30 blocks, hidden 1536, cross-attention to umT5 512x4096",
    ),
    _video(
        "wan2.1-t2v-14b",
        "wan",
        _WAN_14B,
        (81, 720, 1280),
        heads=40,
        layers=40,
        text_dim=4096,
        description="Wan 2.1 T2V 14B: 40 blocks, hidden 5120, cross-attention to umT5 512x4096",
    ),
    _video(
        "hunyuanvideo",
        "hunyuanvideo",
        _HUNYUAN,
        (129, 720, 1280),
        heads=24,
        layers=60,  # 20 dual-stream + 40 single-stream blocks
        text_dim=4096,
        pooled_dim=768,
        description="HunyuanVideo (13 B): 20 dual + 40 single blocks, 3-D rope, guidance-distilled",
    ),
    _video(
        "cogvideox-5b",
        "cogvideox",
        _COGVIDEOX_5B,
        (49, 480, 720),
        heads=48,
        layers=42,
        text_dim=4096,
        description="CogVideoX-5B: 42 blocks, joint attention over 226 text + video tokens, 3-D rope",
    ),
    _video(
        "tiny-wan2.1-t2v-1.3b",
        "wan",
        _TINY_WAN_1_3B,
        _TINY_SIZE,
        heads=4,
        layers=4,
        description="Wan-shaped, 4 blocks, hidden 64, 4 heads: CPU tests",
        **_TINY_TEXT,
    ),
    _video(
        "tiny-wan2.1-t2v-14b",
        "wan",
        _TINY_WAN_14B,
        _TINY_SIZE,
        heads=8,
        layers=4,
        description="Wan-shaped, 4 blocks, hidden 64, 8 heads: CPU tests",
        **_TINY_TEXT,
    ),
    _video(
        "tiny-hunyuanvideo",
        "hunyuanvideo",
        _TINY_HUNYUAN,
        _TINY_SIZE,
        heads=4,
        layers=4,
        pooled_dim=32,
        description="HunyuanVideo-shaped, 2 dual + 2 single blocks, hidden 64, 4 heads: CPU tests",
        **_TINY_TEXT,
    ),
    _video(
        "tiny-cogvideox-5b",
        "cogvideox",
        _TINY_COGVIDEOX,
        _TINY_SIZE,
        heads=4,
        layers=4,
        description="CogVideoX-shaped, 4 blocks, hidden 64, 4 heads: CPU tests",
        **_TINY_TEXT,
    ),
    TRAINED_TINY_VIDEO,
)
