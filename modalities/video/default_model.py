"""Architecture of the built-in moving-shapes video model, built from configs.

A pixel-space ``UNet2DConditionModel`` that sees the 8 frames of a 32x32 clip stacked as 24 channels (as
the built-in image model's UNet, with attention at 16x16 and 8x8; two more input channels give each pixel's x
and y), a 2-layer CLIP text encoder over a word-level tokenizer of the world's words; flow matching (t = 1
noise, velocity target), sampled with Euler steps. See ``models/moving-shapes-video/README.md`` for how it was trained and how well.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .moving import FRAMES, SIZE, vocabulary


@dataclass(frozen=True)
class DefaultModelConfig:
    frames: int = FRAMES
    size: int = SIZE
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    attention_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    max_tokens: int = 16
    shift: float = 1.0
    # The prompt also enters every block through the time embedding (diffusers' addition_embed_type "text":
    # attention-pooled text states added to the timestep embedding), not only through cross-attention at
    # 16x16 and 8x8; colour and direction are properties of the whole clip.
    text_time_embedding: bool = True
    # Two more input channels hold each pixel's x and y (see ``velocity``): near pure noise the model must place
    # frame f's shape where a track in the prompt's direction puts it, an absolute position.
    coordinates: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def build_tokenizer(max_tokens: int):
    from ..wordlevel import word_level_tokenizer

    return word_level_tokenizer(vocabulary(), max_tokens)


def build_pipeline(cfg: DefaultModelConfig = DefaultModelConfig(), *, seed: int = 0):
    """A freshly initialised pipeline (random weights)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .pixel_pipeline import ShapesVideoPipeline

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(cfg.max_tokens)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden, intermediate_size=cfg.text_hidden * 2,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads, max_position_embeddings=cfg.max_tokens,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    unet = UNet2DConditionModel(
        sample_size=cfg.size, in_channels=3 * cfg.frames + (2 if cfg.coordinates else 0), out_channels=3 * cfg.frames,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.text_hidden, attention_head_dim=cfg.attention_heads, norm_num_groups=16,
        addition_embed_type="text" if cfg.text_time_embedding else None,
        addition_embed_type_num_heads=cfg.attention_heads)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=cfg.shift)
    return ShapesVideoPipeline(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
