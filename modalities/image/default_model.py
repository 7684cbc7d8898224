"""Architecture of the built-in shapes-world model, built from configs.

A pixel-space UNet2DConditionModel (32x32 RGB; attention only at 16x16 and
8x8, where it is cheap), a 2-layer CLIP text encoder and a word-level
tokenizer made offline with ``tokenizers``. v-prediction on a cosine noise
schedule: epsilon-prediction models that are undertrained drift to grey
backgrounds, v-prediction does not (see the model card).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .shapes import RESOLUTION, vocabulary


@dataclass(frozen=True)
class DefaultModelConfig:
    resolution: int = RESOLUTION
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    attention_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    max_tokens: int = 16
    num_train_timesteps: int = 1000

    def to_dict(self) -> dict:
        return asdict(self)


def build_tokenizer(max_tokens: int):
    """A word-level tokenizer over the shapes world's words (others map to [UNK])."""
    from ..wordlevel import word_level_tokenizer

    return word_level_tokenizer(vocabulary(), max_tokens)


def build_pipeline(cfg: DefaultModelConfig = DefaultModelConfig(), *, seed: int = 0):
    """A freshly initialised pipeline (random weights)."""
    from diffusers import DPMSolverMultistepScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .pixel_pipeline import ShapesPixelPipeline

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(cfg.max_tokens)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.text_hidden,
            intermediate_size=cfg.text_hidden * 2,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads,
            max_position_embeddings=cfg.max_tokens,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=cfg.resolution,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.text_hidden,
        attention_head_dim=cfg.attention_heads,
        norm_num_groups=16,
    )
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        timestep_spacing="trailing",
    )
    return ShapesPixelPipeline(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
