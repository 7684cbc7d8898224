"""Tiny CLIP, SigLIP and CLAP folders built from configs (random weights, a character-level tokenizer),
the sizes transformers' own tests use: loading code is tested on them, nothing is downloaded."""
from __future__ import annotations

import string
from pathlib import Path

TEXT = dict(vocab_size=100, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64, pad_token_id=0, bos_token_id=2, eos_token_id=3)


def _tokenizer(folder: Path, pad: str = "<pad>") -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([pad, "<unk>", "<s>", "</s>", *string.ascii_lowercase, *string.digits, *" +-.,?"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>", model_max_length=64).save_pretrained(folder)


def tiny_clip(folder: Path) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(text_config=TEXT, projection_dim=16,
                        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                                           num_hidden_layers=2, num_attention_heads=4))
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    _tokenizer(folder)
    return folder


def tiny_siglip(folder: Path) -> Path:
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(0)
    config = SiglipConfig(text_config={**TEXT, "projection_size": 32},
                          vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                                             num_hidden_layers=2, num_attention_heads=4))
    SiglipModel(config).save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    _tokenizer(folder)
    return folder


def tiny_clap(folder: Path) -> Path:
    import torch
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    torch.manual_seed(0)
    config = ClapConfig(
        text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=70, type_vocab_size=1, pad_token_id=0),
        audio_config=dict(spec_size=64, window_size=4, num_mel_bins=64, patch_stride=(4, 4), patch_embeds_hidden_size=16,
                          hidden_size=32, depths=[2, 2], num_attention_heads=[2, 2], enable_fusion=False),
        projection_dim=16)
    ClapModel(config).save_pretrained(folder)
    ClapFeatureExtractor(feature_size=64, sampling_rate=16000, max_length_s=1).save_pretrained(folder)
    _tokenizer(folder)
    return folder
