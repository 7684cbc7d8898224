"""Tiny random diffusers pipelines of each family, built from configs (no downloads).

Used by the image modality tests to exercise the real-pipeline code paths:
SD-like (UNet + VAE + one CLIP text encoder, epsilon or v prediction),
SDXL-like (two text encoders, added time/text conditioning) and SD3-like
(an MMDiT transformer with flow matching).
"""
from __future__ import annotations

from pathlib import Path

import torch


def _tokenizer(max_len: int = 16):
    from modalities.image.default_model import build_tokenizer

    return build_tokenizer(max_len)


def _clip(vocab: int, hidden: int = 32, projection: int | None = None, max_len: int = 16):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=max_len, projection_dim=projection or hidden, pad_token_id=0, bos_token_id=2,
        eos_token_id=3,
    )
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def _vae(latent_channels: int = 4, **kw):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8, sample_size=32, **kw,
    )


def tiny_sd(prediction_type: str = "epsilon"):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    tok = _tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8,
    )
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          prediction_type=prediction_type, clip_sample=False, set_alpha_to_one=False,
                          steps_offset=1)
    return StableDiffusionPipeline(
        vae=_vae(), text_encoder=_clip(len(tok)), tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )


def tiny_sdxl():
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    tok = _tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=(2, 4), norm_num_groups=8, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=32 + 6 * 8,
        use_linear_projection=True,
    )
    sched = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                   timestep_spacing="leading", steps_offset=1)
    return StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=_clip(len(tok)), text_encoder_2=_clip(len(tok), projection=32), tokenizer=tok,
        tokenizer_2=_tokenizer(), unet=unet, scheduler=sched,
    )


def tiny_sd3():
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(0)
    tok = _tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae(scaling_factor=1.5, shift_factor=0.1),
        text_encoder=_clip(len(tok), projection=32), tokenizer=tok, text_encoder_2=_clip(len(tok), projection=32),
        tokenizer_2=_tokenizer(), text_encoder_3=None, tokenizer_3=None,
    )


def tiny_flux(guidance_embeds: bool = True):
    """FLUX.1-like (dev: guidance embedded), sized as diffusers' own FLUX tests build it: a CLIP and a T5
    text encoder (configs, random weights), a one-level VAE, packed latents."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    tok = _tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=guidance_embeds,
    )
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                 pad_token_id=0, eos_token_id=3, decoder_start_token_id=0))
    vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                        latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5035)
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=_clip(len(tok)),
                        tokenizer=tok, text_encoder_2=t5, tokenizer_2=_tokenizer(), transformer=transformer)


def _qwen_tokenizer():
    """A byte-level BPE tokenizer with Qwen's special tokens (no merges: one token per byte)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {c: i for i, c in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    for t in specials:
        vocab[t] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   model_max_length=1024)


def tiny_qwen_image():
    """Qwen-Image-like, sized as diffusers' own tests build it: a Qwen2.5-VL text encoder (config, random
    weights), the Qwen-Image video VAE, packed latents."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=3,
        joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
    )
    vae = AutoencoderKLQwenImage(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    tok = _qwen_tokenizer()
    config = Qwen2_5_VLConfig(
        text_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "num_key_value_heads": 2, "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default",
                                                                "type": "default"}, "rope_theta": 1000000.0,
                     "vocab_size": len(tok), "bos_token_id": 0, "eos_token_id": len(tok) - 1},
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        hidden_size=16, vocab_size=len(tok), vision_end_token_id=len(tok) + 1, vision_start_token_id=len(tok) + 2,
        vision_token_id=len(tok) + 3, image_token_id=len(tok) + 4, video_token_id=len(tok) + 5,
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    return QwenImagePipeline(transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
                             text_encoder=text_encoder, tokenizer=tok)


def tiny_acestep(turbo: bool = False):
    """ACE-Step-like, sized as diffusers' own tests build it, with a VAE whose latent width matches the
    transformer's (as the real checkpoints' do: training re-encodes clips) at 800 Hz, 100 latent frames/s,
    stereo; a Qwen3 text encoder from config with a byte-level tokenizer."""
    from diffusers import AceStepPipeline, AutoencoderOobleck, FlowMatchEulerDiscreteScheduler
    from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel
    from diffusers.pipelines.ace_step import AceStepConditionEncoder
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(0)
    tok = _qwen_tokenizer()
    transformer = AceStepTransformer1DModel(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, in_channels=24, audio_acoustic_hidden_dim=8, patch_size=2, rope_theta=10000.0, sliding_window=16,
        is_turbo=turbo)
    text_encoder = Qwen3Model(Qwen3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                          vocab_size=len(tok), max_position_embeddings=512)).eval()
    condition_encoder = AceStepConditionEncoder(
        hidden_size=32, intermediate_size=64, text_hidden_dim=32, timbre_hidden_dim=8, num_lyric_encoder_hidden_layers=2,
        num_timbre_encoder_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        rope_theta=10000.0, sliding_window=16)
    vae = AutoencoderOobleck(encoder_hidden_size=16, downsampling_ratios=[2, 4], decoder_channels=8,
                             decoder_input_channels=8, audio_channels=2, channel_multiples=[2, 4], sampling_rate=800)
    return AceStepPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, transformer=transformer,
                           condition_encoder=condition_encoder,
                           scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0))


def save(pipe, path: Path) -> Path:
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def tiny_pixel(seed: int = 0):
    """The built-in model's architecture, shrunk (another seed: another model of the same shape)."""
    from modalities.image.default_model import DefaultModelConfig, build_pipeline

    cfg = DefaultModelConfig(resolution=16, block_out_channels=(16, 32, 32), text_hidden=32, text_heads=2,
                             attention_heads=2)
    return build_pipeline(cfg, seed=seed)


# -- a tiny causal LM (text modality) ------------------------------------------

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
CORPUS = [
    "Q: Tom has 3 apples and buys 4 more. How many apples?\nA: 3 + 4 = 7. Check: 7 - 4 = 3. The answer is 7.",
    "Q: A box holds 12 pens; 5 are taken. How many are left?\nA: 12 - 5 = 7. The answer is 7.",
    "user: assistant: what is the sum of 2 and 9? 11. double check 9 + 2 = 11",
]
CONTEXT = 64


def tiny_lm_tokenizer(chat_template: str | None = None, context: int = CONTEXT):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 5, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=context)
    if chat_template:
        fast.chat_template = chat_template
    return fast


def tiny_lm_model(vocab: int, context: int = CONTEXT):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # a peakier random model, so sampled answers differ visibly across seeds
        model.lm_head.weight.mul_(8.0)
    return model


def save_tiny_lm(path, chat_template: str | None = None, context: int = CONTEXT):
    tok = tiny_lm_tokenizer(chat_template, context)
    tiny_lm_model(len(tok), context).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _t5(vocab: int, d_model: int = 32, umt5: bool = False):
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    config, model = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    return model(config(vocab_size=vocab, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                        pad_token_id=0, eos_token_id=3, decoder_start_token_id=0)).eval()


def tiny_wan(expand_timesteps: bool = False):
    """Wan 2.1-like (2.2 TI2V-like with ``expand_timesteps``), sized as diffusers' own Wan tests build it: the
    Wan video VAE (4x temporal, 8x spatial), a T5 text encoder from config, a 2-block transformer."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(0)
    tok = _tokenizer(32)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32)
    return WanPipeline(tokenizer=tok, text_encoder=_t5(len(tok), umt5=True), vae=vae, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), expand_timesteps=expand_timesteps)


def tiny_ltx():
    """LTX-Video-like, sized as diffusers' own LTX tests build it: the LTX video VAE (two levels of 2x in time
    and space, its decoder the mirror of its encoder), a T5 text encoder from config, a 1-block transformer."""
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel

    torch.manual_seed(0)
    tok = _tokenizer(32)
    transformer = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                        num_attention_heads=4, attention_head_dim=8, cross_attention_dim=32,
                                        num_layers=1, caption_channels=32)
    vae = AutoencoderKLLTXVideo(latent_channels=8, block_out_channels=(8, 8, 8, 8),
                                decoder_block_out_channels=(8, 8, 8, 8), spatio_temporal_scaling=(True, True, False, False),
                                decoder_spatio_temporal_scaling=(True, True, False, False), layers_per_block=(1, 1, 1, 1, 1),
                                decoder_layers_per_block=(1, 1, 1, 1, 1), patch_size=1, patch_size_t=1,
                                encoder_causal=True, decoder_causal=False)
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    return LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=_t5(len(tok)),
                       tokenizer=tok, transformer=transformer)
