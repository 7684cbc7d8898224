"""Architecture of the built-in moving-shapes video model, built from configs.

Wan 2.1's denoiser (``WanTransformer3DModel``) made small and run in pixel space: 8 frames of 32x32 RGB
cut into 2x4x4 patches (256 tokens), 4 blocks of width 128 with 3-D rotary positions; a 2-layer CLIP
text encoder over a word-level tokenizer of the world's words; flow matching (t = 1 noise), sampled
with Euler steps. See ``models/moving-shapes-video/README.md`` for how it was trained and how well.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .moving import FRAMES, SIZE, vocabulary


@dataclass(frozen=True)
class DefaultModelConfig:
    frames: int = FRAMES
    size: int = SIZE
    patch: tuple[int, int, int] = (2, 4, 4)
    heads: int = 4
    head_dim: int = 32
    ffn: int = 384
    layers: int = 4
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    max_tokens: int = 16
    shift: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def build_tokenizer(max_tokens: int):
    from ..wordlevel import word_level_tokenizer

    return word_level_tokenizer(vocabulary(), max_tokens)


def build_pipeline(cfg: DefaultModelConfig = DefaultModelConfig(), *, seed: int = 0):
    """A freshly initialised pipeline (random weights)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .pixel_pipeline import ShapesVideoPipeline

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(cfg.max_tokens)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden, intermediate_size=cfg.text_hidden * 2,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads, max_position_embeddings=cfg.max_tokens,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    transformer = WanTransformer3DModel(
        patch_size=cfg.patch, num_attention_heads=cfg.heads, attention_head_dim=cfg.head_dim, in_channels=3,
        out_channels=3, text_dim=cfg.text_hidden, freq_dim=64, ffn_dim=cfg.ffn, num_layers=cfg.layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=64)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=cfg.shift)
    return ShapesVideoPipeline(transformer=transformer, text_encoder=text_encoder, tokenizer=tokenizer,
                               scheduler=scheduler)
