"""The text encoders a preset's pipeline runs once per call, as architecture configs (transformers).

Not part of the denoising loop diffscale times; a paper that times the whole pipeline call has
them in its number. `analysis.stages` records them on the meta device and prices them with the
operator model. Each entry: (transformers class, config, tokens per prompt, prompts encoded per
call with classifier-free guidance).
"""

from __future__ import annotations

from types import MappingProxyType

import torch

from .presets import Preset, get_preset

# google/t5-v1_1-xxl encoder (PixArt-alpha's text encoder; 4.76 B parameters), 120 tokens
_T5_XXL = {"d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24,
           "vocab_size": 32128, "feed_forward_proj": "gated-gelu", "is_encoder_decoder": False}  # fmt: skip
# openai/clip-vit-large-patch14 text tower (SDXL's text_encoder; 123 M)
_CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
           "num_attention_heads": 12, "max_position_embeddings": 77, "vocab_size": 49408,
           "hidden_act": "quick_gelu"}  # fmt: skip
# laion CLIP ViT-bigG/14 text tower with projection (SDXL's text_encoder_2; 695 M)
_CLIP_BIGG = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
              "num_attention_heads": 20, "max_position_embeddings": 77, "vocab_size": 49408,
              "hidden_act": "gelu", "projection_dim": 1280}  # fmt: skip

# google/umt5-xxl encoder (Wan 2.1's text encoder; 5.7 B parameters with its 256k vocabulary)
_UMT5_XXL = {**_T5_XXL, "vocab_size": 256384}
# xtuner/llava-llama-3-8b-v1_1-transformers' language model (HunyuanVideo's text_encoder; Llama 3
# 8B: GQA with 8 key/value heads)
_LLAMA3_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128320,
              "max_position_embeddings": 8192, "rope_theta": 500000.0}  # fmt: skip

# family -> encoders: (class, config, tokens, prompts per call under CFG); tokens None: the
# preset's own text length (Flux: 256 T5 tokens for schnell, 512 for dev)
# PixArtAlphaPipeline encodes the prompt and the (empty) negative prompt, 120 tokens each;
# StableDiffusionXLPipeline zeroes an empty negative prompt (force_zeros_for_empty_prompt) and
# encodes only the prompt, with both towers; FluxPipeline encodes one prompt (no CFG branch)
# with CLIP-L (pooled, 77 tokens) and T5-XXL. The video pipelines: WanPipeline encodes prompt and
# negative prompt with umT5 (512 tokens each); HunyuanVideoPipeline one prompt (guidance-distilled)
# with Llama 3 (its 256 tokens after a 95-token template that is cropped after the encoder: 351
# run through all 32 layers, the third-last layer's states kept) and CLIP-L (pooled);
# CogVideoXPipeline prompt and negative prompt with T5-XXL (226 tokens).
TEXT_ENCODERS = MappingProxyType(
    {
        "pixart": (("T5EncoderModel", MappingProxyType(_T5_XXL), 120, 2),),
        "unet": (
            ("CLIPTextModel", MappingProxyType(_CLIP_L), 77, 1),
            ("CLIPTextModelWithProjection", MappingProxyType(_CLIP_BIGG), 77, 1),
        ),
        "flux": (
            ("CLIPTextModel", MappingProxyType(_CLIP_L), 77, 1),
            ("T5EncoderModel", MappingProxyType(_T5_XXL), None, 1),
        ),
        "wan": (("UMT5EncoderModel", MappingProxyType(_UMT5_XXL), None, 2),),
        "hunyuanvideo": (
            ("LlamaModel", MappingProxyType(_LLAMA3_8B), 256 + 95, 1),
            ("CLIPTextModel", MappingProxyType(_CLIP_L), 77, 1),
        ),
        "cogvideox": (("T5EncoderModel", MappingProxyType(_T5_XXL), None, 2),),
    }
)
# the transformers config class of each encoder class
_CONFIGS = {"T5EncoderModel": "T5Config", "UMT5EncoderModel": "UMT5Config",
            "LlamaModel": "LlamaConfig", "CLIPTextModel": "CLIPTextConfig",
            "CLIPTextModelWithProjection": "CLIPTextConfig"}  # fmt: skip


def text_encoders(preset: Preset | str) -> tuple:
    """The (class, config, tokens, prompts) entries of `preset`'s pipeline (empty if unknown)."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    if p.tiny:
        return ()
    return tuple(
        (cls, config, p.text_len if tokens is None else tokens, prompts)
        for cls, config, tokens, prompts in TEXT_ENCODERS.get(p.family, ())
    )


def meta_text_encoder(cls_name: str, config, dtype: torch.dtype) -> torch.nn.Module:
    """A transformers text encoder on the meta device (shapes only), in `dtype`."""
    import transformers

    cls = getattr(transformers, cls_name)
    config_cls = getattr(transformers, _CONFIGS[cls_name])
    with torch.device("meta"):
        model = cls(config_cls(**dict(config)))
    return model.to(dtype).eval()
