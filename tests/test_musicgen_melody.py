"""MusicGen-Melody on a tiny random model built from configs (T5, EnCodec, a decoder with the chroma prefix):
the chroma of a melody file (validated on rendered melodies of known notes), generation conditioned on it
and kept with each clip, the score equal to the model's own loss under that melody, training on votes, and
the bad inputs (a melody file that is not audio, a melody for a text-only model or the built-in one)."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from modalities.music import chroma, melody as world, wav
from modalities.music.musicgen import MusicGenAdapter, codebook_delays, delayed_sequence
from modalities.protocol import GenerationRequest, Group, ModelRef
from tests.tiny_encoders import _tokenizer

RATE, CODEBOOK, C, MAX_POS, CHROMA = 8000, 64, 2, 150, 20
FEATURES = {"feature_extractor_type": "MusicgenMelodyFeatureExtractor", "sampling_rate": 16000, "n_fft": 2048,
            "hop_length": 1024, "chunk_length": 4, "feature_size": 12}


def save_tiny_melody(folder):
    from transformers import (EncodecConfig, MusicgenMelodyConfig, MusicgenMelodyDecoderConfig,
                              MusicgenMelodyForConditionalGeneration, T5Config)

    torch.manual_seed(0)
    text = T5Config(vocab_size=99, d_model=16, d_ff=32, num_layers=2, num_heads=2, d_kv=8,
                    relative_attention_num_buckets=8)
    codec = EncodecConfig(sampling_rate=RATE, upsampling_ratios=[10, 8], hidden_size=16, num_filters=4,
                          codebook_size=CODEBOOK, codebook_dim=16, target_bandwidths=[1.2], num_lstm_layers=1)
    decoder = MusicgenMelodyDecoderConfig(vocab_size=CODEBOOK, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=4, ffn_dim=64, num_codebooks=C,
                                          max_position_embeddings=MAX_POS, dropout=0.0, pad_token_id=CODEBOOK,
                                          bos_token_id=CODEBOOK)
    config = MusicgenMelodyConfig(text_encoder=text, audio_encoder=codec, decoder=decoder, num_chroma=12,
                                  chroma_length=CHROMA)
    config.decoder_start_token_id = config.pad_token_id = CODEBOOK
    model = MusicgenMelodyForConditionalGeneration(config)
    with torch.no_grad():  # a sharper random decoder and a strong melody projection: the melody shows in the codes
        for head in model.decoder.lm_heads:
            head.weight.mul_(40)
        model.audio_enc_to_dec_proj.weight.mul_(20)
    model.save_pretrained(folder)
    _tokenizer(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(FEATURES))
    return folder


def _tune(pitches, rate=16000):
    """Quarter notes at 120 bpm (0.5 s each, legato) on the melody world's organ, as WAV bytes."""
    m = world.Melody(instrument="organ", tone=1, art=3, bpm=120, notes=tuple((p, 4) for p in pitches))
    return wav.encode_wav(world.render(m, rate), rate)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return save_tiny_melody(tmp_path_factory.mktemp("melody") / "tiny")


@pytest.fixture(scope="module")
def adapter(tiny_dir):
    return MusicGenAdapter.load(ModelRef(str(tiny_dir)))


@pytest.fixture(scope="module")
def tunes(tmp_path_factory):
    root = tmp_path_factory.mktemp("tunes")
    up, down = root / "up.wav", root / "down.wav"
    up.write_bytes(_tune([60, 64, 67, 72]))
    down.write_bytes(_tune([71, 69, 65, 62]))
    return up, down


def test_the_chroma_follows_the_notes_of_a_rendered_melody():
    """Each note's frames (its middle) are dominated by its pitch class (bin 0 = C), on random melodies."""
    settings = chroma.ChromaSettings.of(FEATURES, 12)
    rng, hits, total = random.Random(0), 0, 0
    for _ in range(8):
        pitches = [rng.randrange(55, 80) for _ in range(6)]
        bins = chroma.melody_indices(_tune(pitches), settings)
        frame_s = settings.hop_length / settings.sampling_rate
        for i, p in enumerate(pitches):
            for f in range(int((i * 0.5 + 0.15) / frame_s), int((i * 0.5 + 0.35) / frame_s) + 1):
                hits += bins[f] == p % 12
                total += 1
    assert hits / total >= 0.9, (hits, total)
    assert chroma.frames([3, 4], 5).tolist() == [3, 4, 3, 4, 3] and chroma.frames(None, 3).tolist() == [0, 0, 0]
    assert chroma.frames(list(range(10)), 4).tolist() == [0, 1, 2, 3]


def test_generation_follows_the_melody_file_and_keeps_its_chroma(adapter, tunes):
    up, down = tunes
    assert adapter.melody is not None and adapter.melody.sampling_rate == 16000
    assert adapter.max_frames == MAX_POS - 1 - CHROMA  # the melody prefix takes positions

    def gen(melody=None, seed=5):
        params = {"duration": 0.2, **({"melody": str(melody)} if melody else {})}
        return adapter.generate(GenerationRequest("a waltz", n=1, seeds=(seed,), params=params))[0]

    a, a2, b, none = gen(up), gen(up), gen(down), gen()
    assert a.data == a2.data  # deterministic per seed and melody
    codes = {k: wav.read_tokens(x.data)["codes"] for k, x in (("up", a), ("down", b), ("none", none))}
    assert codes["up"] != codes["down"] and codes["up"] != codes["none"]  # the melody conditions the clip
    tokens = wav.read_tokens(a.data)
    assert tokens["melody"] == chroma.melody_indices(up.read_bytes(), adapter.melody)
    assert a.provenance.params["melody"]["file"] == "up.wav" and len(a.provenance.params["melody"]["sha256"]) == 64
    assert "melody" not in wav.read_tokens(none.data) and "melody" not in none.provenance.params
    assert adapter.clip_melody(a.data) == tokens["melody"] and adapter.clip_melody(none.data) is None


def test_the_score_is_the_models_own_loss_under_the_clips_melody(adapter, tunes):
    up, _ = tunes
    clips = adapter.generate(GenerationRequest("a waltz", n=2, seeds=(1, 2),
                                               params={"duration": 0.15, "melody": str(up)}))
    batch = adapter.encode([Group("a waltz", tuple(c.data for c in clips))])
    T = 15
    codes = batch.tensors["codes"][0]
    seq, _ = delayed_sequence(codes, torch.tensor([T, T]), CODEBOOK, codebook_delays(C))
    labels = seq[..., 1:].transpose(1, 2)
    features = chroma.one_hot(chroma.frames(wav.read_tokens(clips[0].data)["melody"], CHROMA), 12)[None].expand(2, -1, -1)
    with torch.no_grad():
        loss = adapter.model(input_ids=batch.conditioning["input_ids"].expand(2, -1),
                             attention_mask=batch.conditioning["attention_mask"].expand(2, -1),
                             input_features=features, labels=labels).loss
        scores = adapter.score(adapter.model, batch)
        # the same codes under the null melody score differently: the melody is part of the condition
        null = adapter.encode([Group("a waltz", tuple(c.data for c in clips))])
        null.tensors["chroma"].zero_()
        other = adapter.score(adapter.model, null)
    assert scores.sum().item() == pytest.approx(-loss.item() * C * 2 * T, rel=1e-5)
    assert not torch.allclose(scores, other)
    assert torch.isfinite(adapter.reward_features(["a waltz"] * 2, [c.data for c in clips])).all()


def test_prompts_of_different_lengths_score_as_each_alone(adapter, tunes):
    """The prefix has no padding mask: a batch of prompts of different lengths scores each clip as its group
    alone does (and as generated, with its own unpadded prompt)."""
    up, down = tunes
    a = adapter.generate(GenerationRequest("a waltz", n=2, seeds=(1, 2), params={"duration": 0.1, "melody": str(up)}))
    b = adapter.generate(GenerationRequest("a very long and slow funeral march in a minor key", n=2, seeds=(3, 4),
                                           params={"duration": 0.1, "melody": str(down)}))
    groups = [Group("a waltz", (a[0].data, a[1].data)),
              Group("a very long and slow funeral march in a minor key", (b[0].data, b[1].data))]
    with torch.no_grad():
        together = adapter.score(adapter.model, adapter.encode(groups))
        alone = torch.cat([adapter.score(adapter.model, adapter.encode([g])) for g in groups])
    assert torch.allclose(together, alone, atol=1e-4)


def test_trains_on_votes_and_exports(tiny_dir, tunes, tmp_path):
    from alignment.config import TrainConfig
    from alignment.train import train
    from app.generation import generate_candidates
    from storage import Store

    up, down = tunes
    data = tmp_path / "data"
    with Store.open(data) as store:
        for prompt, tune in (("a waltz", up), ("a march", down)):
            g = generate_candidates(store, modality="music", prompt=prompt, n=2, model=str(tiny_dir), seed=0,
                                    params={"duration": 0.1, "melody": str(tune)})
            store.vote(g[0].id, g[1].id, "a")
    run_dir = tmp_path / "run"
    TrainConfig.from_dict({"modality": "music", "method": "dpo", "model": str(tiny_dir), "data_dir": str(data),
                           "steps": 2, "batch_size": 2, "lr": 5e-2, "lora_rank": 4, "lora_alpha": 8.0,
                           "validation_count": 0}).save(run_dir)
    assert train(run_dir) == 0
    out = MusicGenAdapter.export_adapter(run_dir / "adapter", tmp_path / "peft", "peft", base_model=str(tiny_dir),
                                         metadata={})
    assert MusicGenAdapter.verify_export(str(tiny_dir), run_dir / "adapter", out, "peft") < 1e-4


def test_bad_melody_inputs(adapter, tmp_path):
    from modalities.music.adapter import MusicAdapter
    from tests.test_musicgen import save_tiny_musicgen

    junk = tmp_path / "notes.txt"
    junk.write_text("not audio at all")
    with pytest.raises(ValueError, match="the melody file is not usable audio"):
        adapter.generate(GenerationRequest("a waltz", n=1, params={"duration": 0.1, "melody": str(junk)}))
    silent = tmp_path / "silent.wav"
    silent.write_bytes(wav.encode_wav(np.zeros(8000, np.float32), 8000))
    with pytest.raises(ValueError, match="silent"):
        adapter.generate(GenerationRequest("a waltz", n=1, params={"duration": 0.1, "melody": str(silent)}))
    with pytest.raises(ValueError, match="beyond this MusicGen-Melody's limit"):
        adapter.generate(GenerationRequest("a waltz", n=1, params={"duration": (MAX_POS - 1 - CHROMA) / 100}))
    with pytest.raises(ValueError, match="does not exist"):
        adapter.generate(GenerationRequest("a waltz", n=1, params={"duration": 0.1, "melody": str(tmp_path / "x")}))
    text_only = MusicGenAdapter.load(ModelRef(str(save_tiny_musicgen(tmp_path / "mg"))))
    with pytest.raises(ValueError, match="takes no melody"):
        text_only.generate(GenerationRequest("a waltz", n=1, params={"duration": 0.1, "melody": str(junk)}))
    builtin = MusicAdapter.load(ModelRef("melody-lm"))
    with pytest.raises(ValueError, match="no melody setting .it is MusicGen-Melody's"):
        builtin.generate(GenerationRequest("a slow sad melody in A minor on a harp", n=1, params={"melody": str(junk)}))
