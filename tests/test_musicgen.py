"""The MusicGen adapter on a tiny random MusicGen built from configs (T5 text encoder, EnCodec codec,
2-codebook decoder) with an offline character tokenizer: nothing is downloaded.

Exercises: loading from a folder and its refusals, generation (WAV at the codec's rate carrying its
codes, deterministic per seed, duration limit and parameter errors), encode (stored codes, imported
audio re-encoded), the score (equal to MusicGen's own training loss on delayed labels, padding
masked, the modality contract), features, two LoRA steps, and the PEFT / merged exports.
"""
from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import torch

from modalities import lora
from modalities.contract import check_adapter
from modalities.music import wav
from modalities.music.musicgen import ModelLoadError, MusicGenAdapter, codebook_delays, delayed_sequence
from modalities.protocol import GenerationRequest, Group, ModelRef, ScoreKind

from tests.tiny_encoders import _tokenizer

RATE, HOP, CODEBOOK, C, MAX_POS = 8000, 80, 64, 2, 100  # 100 frames/s, limit (100 - 1) / 100 = 0.99 s


def save_tiny_musicgen(folder):
    from transformers import (EncodecConfig, EncodecFeatureExtractor, MusicgenConfig, MusicgenDecoderConfig,
                              MusicgenForConditionalGeneration, T5Config)

    torch.manual_seed(0)
    text = T5Config(vocab_size=99, d_model=16, d_ff=32, num_layers=2, num_heads=2, d_kv=8,
                    relative_attention_num_buckets=8)
    codec = EncodecConfig(sampling_rate=RATE, upsampling_ratios=[10, 8], hidden_size=16, num_filters=4,
                          codebook_size=CODEBOOK, codebook_dim=16, target_bandwidths=[1.2], num_lstm_layers=1)
    assert codec.frame_rate == RATE // HOP and codec.num_quantizers == C  # 1.2 kbps = 2 codebooks of 6 bits at 100 Hz
    decoder = MusicgenDecoderConfig(vocab_size=CODEBOOK, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    ffn_dim=64, num_codebooks=C, max_position_embeddings=MAX_POS, dropout=0.0,
                                    pad_token_id=CODEBOOK, bos_token_id=CODEBOOK, decoder_start_token_id=CODEBOOK)
    config = MusicgenConfig(text_encoder=text, audio_encoder=codec, decoder=decoder, pad_token_id=CODEBOOK,
                            decoder_start_token_id=CODEBOOK)
    model = MusicgenForConditionalGeneration(config)
    with torch.no_grad():  # a sharper random decoder, so sampled codes are clearly likelier than shuffled ones
        for head in model.decoder.lm_heads:
            head.weight.mul_(40)
    model.save_pretrained(folder)
    _tokenizer(folder)
    EncodecFeatureExtractor(feature_size=1, sampling_rate=RATE).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add waiting on a busy machine
    yield save_tiny_musicgen(tmp_path_factory.mktemp("musicgen") / "tiny")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def adapter(tiny_dir):
    return MusicGenAdapter.load(ModelRef(str(tiny_dir)))


@pytest.fixture(scope="module")
def clips(adapter):
    """Clips of two prompts, of different lengths (0.1 s and 0.2 s)."""
    a = adapter.generate(GenerationRequest("calm piano", n=2, seeds=(1, 2), params={"duration": 0.1}))
    b = adapter.generate(GenerationRequest("fast drums", n=2, seeds=(3, 4), params={"duration": 0.2}))
    return a, b


def _codes(sample) -> torch.Tensor:
    return torch.tensor(wav.read_tokens(sample.data)["codes"])


# -- loading --------------------------------------------------------------------


def test_loaded_from_a_folder(adapter, tiny_dir):
    assert MusicGenAdapter.name == "music" and adapter.score_kind is ScoreKind.AUTOREGRESSIVE
    assert adapter.model_name == str(tiny_dir.resolve()) and adapter.revision
    assert (adapter.sampling_rate, adapter.frame_rate, adapter.num_codebooks) == (RATE, 100.0, C)
    assert adapter.max_frames == MAX_POS - (C - 1) and adapter.max_duration == pytest.approx(0.99)
    assert next(adapter.model.parameters()).dtype == torch.float32
    targets = adapter.lora_target_modules()
    assert targets == ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    names = [n for n, _ in adapter.model.named_modules()]
    matched = [n for n in names if any(n.endswith("." + t) for t in targets)]
    assert matched and all(n.startswith("decoder.model.decoder.layers.") for n in matched)  # not T5, not EnCodec
    assert any(".encoder_attn.q_proj" in n for n in matched)


def test_load_refusals(tiny_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        MusicGenAdapter.load(ModelRef(str(tmp_path / "nope")))
    with pytest.raises(ModelLoadError, match="cannot load model 'facebook/musicgen-nothing'"):
        MusicGenAdapter.load(ModelRef("facebook/musicgen-nothing"))  # the hub is off in tests

    def copy(name):
        dst = tmp_path / name
        shutil.copytree(tiny_dir, dst)
        return dst

    config = json.loads((tiny_dir / "config.json").read_text())
    no_codec_config = copy("no-codec-config")
    (no_codec_config / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "audio_encoder"}))
    with pytest.raises(ModelLoadError, match="without its codec"):
        MusicGenAdapter.load(ModelRef(str(no_codec_config)))

    from safetensors.torch import load_file, save_file

    no_codec_weights = copy("no-codec-weights")
    weights = load_file(str(tiny_dir / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.startswith("audio_encoder.")},
              str(no_codec_weights / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="without its codec"):
        MusicGenAdapter.load(ModelRef(str(no_codec_weights)))

    text_only = tmp_path / "text-only"
    text_only.mkdir()
    (text_only / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10}))
    save_file({"w": torch.zeros(1)}, str(text_only / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="is a 'llama' model, not MusicGen"):
        MusicGenAdapter.load(ModelRef(str(text_only)))

    pickled = copy("pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="only pickle weights"):
        MusicGenAdapter.load(ModelRef(str(pickled)))

    no_tok = copy("no-tokenizer")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (no_tok / f).unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        MusicGenAdapter.load(ModelRef(str(no_tok)))


# -- generation -------------------------------------------------------------------


def test_generate_wav_with_codes_deterministic_per_seed(adapter, clips):
    import soundfile as sf

    a, _ = clips
    assert len(a) == 2 and all(s.mime == "audio/wav" for s in a)
    audio, sr = sf.read(io.BytesIO(a[0].data))
    assert sr == RATE and audio.shape == (10 * HOP,)  # 0.1 s = 10 frames of 80 samples
    tokens = wav.read_tokens(a[0].data)
    assert tokens["family"] == "musicgen" and tokens["model"] == adapter.model_name
    codes = _codes(a[0])
    assert codes.shape == (C, 10) and int(codes.min()) >= 0 and int(codes.max()) < CODEBOOK
    prov = a[0].provenance
    assert (prov.modality, prov.seed, prov.revision) == ("music", 1, adapter.revision)
    assert prov.params["duration"] == 0.1 and prov.params["guidance"] == 3.0 and prov.params["frames"] == 10
    assert {"temperature", "top_k", "top_p", "sampling_rate"} <= set(prov.params)
    again = adapter.generate(GenerationRequest("calm piano", n=1, seeds=(2,), params={"duration": 0.1}))
    assert torch.equal(_codes(again[0]), _codes(a[1]))  # same seed, same codes, whatever its position
    assert not torch.equal(_codes(a[0]), _codes(a[1]))
    greedy = adapter.generate(GenerationRequest("calm piano", n=1, seeds=(5,),
                                                params={"duration": 0.05, "temperature": 0, "guidance_scale": 1}))
    assert _codes(greedy[0]).shape == (C, 5)


def test_generation_parameter_errors(adapter):
    def gen(**params):
        return adapter.generate(GenerationRequest("x", n=1, seeds=(0,), params=params))

    with pytest.raises(ValueError, match=r"limit of 0\.99 s"):
        gen(duration=2)
    for params, msg in [({"tempo": 3}, "unknown music setting"), ({"temperature": -1}, "temperature"),
                        ({"top_p": 0}, "top_p"), ({"top_k": 1.5}, "top_k"), ({"top_k": -1}, "top_k"),
                        ({"guidance": 0.5}, "guidance"), ({"duration": "long"}, "duration must be a number"),
                        ({"duration": True}, "duration must be a number"), ({"duration": 0}, "positive"),
                        ({"duration": 0.001}, "shorter than one codec frame")]:
        with pytest.raises(ValueError, match=msg):
            gen(**params)


# -- encode and score -------------------------------------------------------------


def test_encode_score_and_contract(adapter, clips):
    a, b = clips
    batch = adapter.encode([Group("calm piano", (a[0].data, a[1].data)), Group("fast drums", (b[0].data, b[1].data))])
    t = batch.tensors
    assert t["codes"].shape == (2, 2, C, 20) and t["code_mask"].shape == (2, 2, 20)
    assert t["code_mask"].sum(-1).tolist() == [[10, 10], [20, 20]] and not t["reencoded"].any()
    assert torch.equal(t["codes"][0, 1, :, :10], _codes(a[1]))
    assert batch.conditioning["input_ids"].shape[0] == 2
    scores = check_adapter(adapter, batch)
    assert scores.shape == (2, 2) and scores.dtype == torch.float32 and (scores < 0).all()
    assert adapter.token_counts(batch).tolist() == [[20.0, 20.0], [40.0, 40.0]]
    # padding is masked: a short clip scores the same alone as padded beside a long one
    mixed = adapter.encode([Group("calm piano", (a[0].data, b[0].data))])
    alone = adapter.encode([Group("calm piano", (a[0].data, a[0].data))])
    with torch.no_grad():
        padded, single = adapter.score(adapter.model, mixed)[0, 0], adapter.score(adapter.model, alone)[0, 0]
        assert padded.item() == pytest.approx(single.item(), abs=1e-4)
        adapter.configure_scores(per_token=True)
        try:
            means = adapter.score(adapter.model, batch)
        finally:
            adapter.configure_scores(per_token=False)
    assert torch.allclose(means, scores / adapter.token_counts(batch), atol=1e-5)


def test_delay_pattern_matches_transformers(adapter):
    torch.manual_seed(0)
    T = 7
    codes = torch.randint(0, CODEBOOK, (1, C, T))
    seq, valid = delayed_sequence(codes, torch.tensor([T]), CODEBOOK, codebook_delays(C))
    start = torch.full((C, 1), CODEBOOK)
    _, pattern = adapter.model.decoder.build_delay_pattern_mask(torch.cat([start, codes[0]], -1), CODEBOOK,
                                                                max_length=T + C)
    assert torch.equal(seq[0], pattern)
    assert valid[0].sum(-1).tolist() == [T] * C and not valid[0, 1, 0]  # codebook 1 starts a step late
    assert codebook_delays(4, audio_channels=2) == [0, 0, 1, 1]


def test_score_equals_musicgens_own_training_loss(adapter, clips):
    _, b = clips
    batch = adapter.encode([Group("fast drums", (b[0].data, b[1].data))])
    T = 20
    codes = batch.tensors["codes"][0]  # [2 clips, C, T], equal lengths
    seq, _ = delayed_sequence(codes, torch.tensor([T, T]), CODEBOOK, codebook_delays(C))
    labels = seq[..., 1:].transpose(1, 2)  # [bsz, T + C - 1, C]; the delay slots hold the pad id, which the loss drops
    prompt = batch.conditioning
    with torch.no_grad():
        loss = adapter.model(input_ids=prompt["input_ids"].expand(2, -1),
                             attention_mask=prompt["attention_mask"].expand(2, -1), labels=labels).loss
        scores = adapter.score(adapter.model, batch)
    # MusicGen's loss: the mean over codebooks of each codebook's mean cross-entropy over 2 * T tokens
    assert scores.sum().item() == pytest.approx(-loss.item() * C * 2 * T, rel=1e-5)


def test_sampled_codes_score_higher_than_shuffled(adapter):
    clips = adapter.generate(GenerationRequest("a waltz", n=3, seeds=(7, 8, 9),
                                               params={"duration": 0.15, "temperature": 0.7, "guidance": 1}))
    g = torch.Generator().manual_seed(0)
    shuffled = []
    for s in clips:
        codes = _codes(s)
        codes = codes[:, torch.randperm(codes.shape[1], generator=g)]
        tokens = {**wav.read_tokens(s.data), "codes": codes.tolist()}
        shuffled.append(wav.encode_wav(wav.decode(s.data)[0], RATE, tokens))
    batch = adapter.encode([Group("a waltz", (s.data, x)) for s, x in zip(clips, shuffled)])
    with torch.no_grad():
        scores = adapter.score(adapter.model, batch)
    assert scores[:, 0].mean() > scores[:, 1].mean()


def test_imported_wav_is_reencoded(adapter, clips):
    import librosa

    a, _ = clips
    audio, _ = wav.decode(a[0].data)
    plain = wav.encode_wav(audio, RATE)  # no codes chunk
    other_rate = wav.encode_wav(librosa.resample(audio, orig_sr=RATE, target_sr=16000), 16000)
    assert wav.read_tokens(plain) is None
    batch = adapter.encode([Group("calm piano", (plain, other_rate, a[0].data))])
    assert batch.tensors["reencoded"].tolist() == [[1, 1, 0]]
    assert batch.tensors["code_mask"][0, :2].sum(-1).tolist() == [10, 10]
    with torch.no_grad():
        assert torch.isfinite(adapter.score(adapter.model, batch)).all()


def test_reward_features(adapter, clips):
    a, b = clips
    feats = adapter.reward_features(["calm piano", "fast drums"], [a[0].data, b[0].data])
    assert feats.shape == (2, 32) and feats.dtype == torch.float32 and feats.device.type == "cpu"
    assert torch.equal(feats, adapter.reward_features(["calm piano", "fast drums"], [a[0].data, b[0].data]))
    with pytest.raises(ValueError, match="noise_level"):
        adapter.reward_features(["x"], [a[0].data], noise_level=0.5)


# -- LoRA training and exports ------------------------------------------------------


def test_lora_steps_then_adapter_load_and_exports(tiny_dir, clips, tmp_path):
    from peft import LoraConfig

    from alignment.lora_setup import save_adapter

    a, b = clips
    ours = MusicGenAdapter.load(ModelRef(str(tiny_dir)))  # its own copy: LoRA is added in place
    batch = ours.encode([Group("calm piano", (a[0].data, a[1].data)), Group("fast drums", (b[0].data, b[1].data))])
    module = ours.trainable_module()
    module.requires_grad_(False)
    lora.add(module, LoraConfig(r=4, lora_alpha=8, target_modules=ours.lora_target_modules(), init_lora_weights=True),
             "default")
    wrapped = {n.rsplit(".lora_A", 1)[0] for n, _ in module.named_parameters() if ".lora_A." in n}
    assert wrapped and all(n.startswith("decoder.") for n in wrapped)
    params = [p for n, p in module.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    with torch.no_grad():
        before = ours.score(module, batch)
        with lora.disabled(module):
            assert torch.allclose(ours.score(module, batch), before, atol=1e-5)  # a fresh LoRA is the base
    start = lora.state_dict(module)
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(2):
        s = ours.score(module, batch)
        loss = -torch.nn.functional.logsigmoid(s[:, 0] - s[:, 1]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after_state = lora.state_dict(module)
    assert any(not torch.equal(start[k], after_state[k]) for k in start)
    with torch.no_grad():
        trained = ours.score(module, batch)
    assert not torch.allclose(trained, before, atol=1e-4)

    out = save_adapter(ours, module, tmp_path / "adapter")
    merged = MusicGenAdapter.load(ModelRef(str(tiny_dir), adapter=str(out)))
    with torch.no_grad():
        assert torch.allclose(merged.score(merged.model, batch), trained, atol=1e-3)

    for fmt in ("peft", "merged"):
        exported = MusicGenAdapter.export_adapter(out, tmp_path / f"x-{fmt}", fmt, base_model=str(tiny_dir),
                                                  metadata={"run_id": 3})
        assert MusicGenAdapter.verify_export(str(tiny_dir), out, exported, fmt) <= 1e-4
        assert json.loads((exported / "palate_adapter.json").read_text())["run_id"] == 3
    peft_config = json.loads((tmp_path / "x-peft" / "adapter_config.json").read_text())
    assert peft_config["base_model_name_or_path"] == str(tiny_dir.resolve())
    with pytest.raises(ValueError, match="unknown format"):
        MusicGenAdapter.export_adapter(out, tmp_path / "x-ckpt", "ckpt", base_model=str(tiny_dir), metadata={})

    # a wrong export is caught
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "x-bad"
    shutil.copytree(tmp_path / "x-peft", bad)
    weights = load_file(str(bad / lora.PEFT_WEIGHTS))
    save_file({k: v * 3 for k, v in weights.items()}, str(bad / lora.PEFT_WEIGHTS), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="does not reproduce"):
        MusicGenAdapter.verify_export(str(tiny_dir), out, bad, "peft")
    assert np.isfinite(trained.numpy()).all()


def test_the_music_modality_trains_musicgen_on_votes_through_the_trainer(tiny_dir, tmp_path):
    """The music modality's entry point loads the folder as MusicGen; the user's votes train a LoRA with
    DPO through the same trainer and the saved adapter loads back and changes the scores."""
    from alignment.config import TrainConfig
    from alignment.train import train
    from app.generation import generate_candidates
    from modalities.music import adapter as music
    from storage import Store

    assert music.family_of(str(tiny_dir)) == "musicgen"
    assert isinstance(music.MusicAdapter.load(ModelRef(str(tiny_dir)), device="cpu"), MusicGenAdapter)
    data = tmp_path / "data"
    with Store.open(data) as store:
        for p in ("calm piano", "fast drums"):
            g = generate_candidates(store, modality="music", prompt=p, n=2, model=str(tiny_dir), seed=0,
                                    params={"duration": 0.1})
            store.vote(g[0].id, g[1].id, "a")
    run_dir = tmp_path / "run"
    TrainConfig.from_dict({"modality": "music", "method": "dpo", "model": str(tiny_dir), "data_dir": str(data),
                           "steps": 2, "batch_size": 2, "lr": 5e-2, "lora_rank": 4, "lora_alpha": 8.0,
                           "validation_count": 0}).save(run_dir)
    assert train(run_dir) == 0
    base = music.MusicAdapter.load(ModelRef(str(tiny_dir)), device="cpu")
    tuned = music.MusicAdapter.load(ModelRef(str(tiny_dir), adapter=str(run_dir / "adapter")), device="cpu")
    with Store.open(data) as store:
        gens = [g for g in store.list_generations(modality="music") if g.run_id is None][:2]
        media = tuple(store.media_bytes(g) for g in gens)
    with torch.no_grad():
        s0 = base.score(base.trainable_module(), base.encode([Group(gens[0].prompt, media)]), None)
        s1 = tuned.score(tuned.trainable_module(), tuned.encode([Group(gens[0].prompt, media)]), None)
    assert not torch.allclose(s0, s1)
    out = music.MusicAdapter.export_adapter(run_dir / "adapter", tmp_path / "peft", "peft", base_model=str(tiny_dir),
                                            metadata={})
    assert music.MusicAdapter.verify_export(str(tiny_dir), run_dir / "adapter", out, "peft") < 1e-4
