"""The music modality on the built-in melody model: generate, encode, score, export; MusicRL and
DPO on reward-ranked self-samples; the family dispatch and its refusals."""
from __future__ import annotations

import json
import math

import pytest
import torch

from alignment.config import TrainConfig
from alignment.train import train
from modalities import registry
from modalities.contract import check_adapter
from modalities.music import adapter as music, events, melody as world, wav
from modalities.protocol import GenerationRequest, Group, ModelRef
from storage import Store

PROMPT = "a moderate happy melody in G major on a harp in a middle register, ascending"


@pytest.fixture(scope="module")
def lm():
    return music.MusicAdapter.load(ModelRef("melody-lm"), device="cpu")


def test_the_spec_is_registered_and_the_family_is_read_from_the_model():
    spec = registry.spec("music")
    assert spec.display == "audio" and spec.media == "audio/" and spec.default_model == "melody-lm"
    assert {"melody-judge", "taste-legato", "taste-staccato", "taste-bright", "taste-dark", "taste-stepwise",
            "taste-leaping", "taste-consonant", "taste-tense"} <= {r.name for r in spec.rewards}
    assert music.family_of("melody-lm") == "melody-events"


def test_the_built_in_model_generates_playable_clips_with_their_words(lm):
    assert isinstance(lm, events.MelodyLMAdapter)
    a = lm.generate(GenerationRequest(PROMPT, n=3, seeds=(1, 2, 3)))
    b = lm.generate(GenerationRequest(PROMPT, n=1, seeds=(2,)))
    assert [s.mime for s in a] == ["audio/wav"] * 3
    assert a[1].data == b[0].data  # a seed gives the same clip whatever n
    assert len({s.data for s in a}) == 3
    for s in a:
        audio, rate = wav.decode(s.data)
        tokens = wav.read_tokens(s.data)
        assert rate == world.RATE and tokens["family"] == "melody-events"
        m = world.parse_words(tokens["text"])
        assert abs(audio.size / rate - (m.seconds + 0.3)) < 0.05  # the audio is the melody of the stored words
        assert s.provenance.params["seconds"] == pytest.approx(m.seconds, abs=1e-3)
    (short,) = lm.generate(GenerationRequest(PROMPT, n=1, seeds=(1,), params={"duration": 2.0}))
    assert world.parse_words(wav.read_tokens(short.data)["text"]).seconds <= 2.0 + 1e-6


def test_bad_settings_are_refused(lm):
    with pytest.raises(ValueError, match="between 0.5 and 10"):
        lm.generate(GenerationRequest(PROMPT, n=1, params={"duration": 60}))
    with pytest.raises(ValueError, match="no guidance setting"):
        lm.generate(GenerationRequest(PROMPT, n=1, params={"guidance": 3.0}))
    with pytest.raises(ValueError, match="no steps setting .it is ACE-Step's"):
        lm.generate(GenerationRequest(PROMPT, n=1, params={"steps": 3}))
    with pytest.raises(ValueError, match="unknown music setting"):
        lm.generate(GenerationRequest(PROMPT, n=1, params={"shift": 3}))


def test_scores_use_the_stored_words_and_imported_clips_are_transcribed(lm):
    clips = [s.data for s in lm.generate(GenerationRequest(PROMPT, n=2, seeds=(5, 6)))]
    batch = lm.encode([Group(PROMPT, tuple(clips))])
    scores = check_adapter(lm, batch)
    assert scores.shape == (1, 2) and torch.isfinite(scores).all()
    # the same audio without its words: transcribed by the judge, and scored as that melody
    bare = [wav.encode_wav(wav.decode(c)[0], world.RATE) for c in clips]
    assert wav.read_tokens(bare[0]) is None
    words = lm.words_of_clip(bare[0])
    heard, written = world.parse_words(words), world.parse_words(wav.read_tokens(clips[0])["text"])
    assert [p for p, _ in heard.notes] == [p for p, _ in written.notes]  # lengths are approximate
    assert torch.isfinite(lm.score(lm.trainable_module(), lm.encode([Group(PROMPT, tuple(bare))]), None)).all()


def test_the_family_dispatch_refuses_what_is_not_music(tmp_path):
    from modalities.loading import ModelLoadError
    from tests import tiny_pipelines

    text_lm = tiny_pipelines.save_tiny_lm(tmp_path / "lm")
    with pytest.raises(ModelLoadError, match="not a music model"):
        music.MusicAdapter.load(ModelRef(str(text_lm)))
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ModelLoadError, match="FluxPipeline; the music modality loads ACE-Step pipelines"):
        music.family_of(str(tmp_path / "pipe"))
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "AceStepPipeline"}))
    assert music.family_of(str(tmp_path / "pipe")) == "acestep"
    with pytest.raises(ModelLoadError, match="missing its 'vae' component"):
        (tmp_path / "pipe" / "model_index.json").write_text(json.dumps(
            {"_class_name": "AceStepPipeline", "vae": ["diffusers", "AutoencoderOobleck"]}))
        music.MusicAdapter.load(ModelRef(str(tmp_path / "pipe")))
    with pytest.raises(ModelLoadError, match="does not exist"):
        music.family_of(str(tmp_path / "nothing"))


def _run(tmp_path, data, method, **kw):
    cfg = {"modality": "music", "method": method, "model": "melody-lm", "data_dir": str(data), "steps": 2,
           "batch_size": 1, "lora_rank": 4, "lora_alpha": 8.0, "validation_count": 0,
           "prompts": [PROMPT, "a slow sad melody in D on a flute, descending"], **kw}
    run_dir = tmp_path / method
    TrainConfig.from_dict(cfg).save(run_dir)
    return run_dir


@pytest.mark.parametrize("method", ["musicrl", "dpo-self"])
def test_online_methods_train_on_their_own_samples(tmp_path, method):
    data = tmp_path / "data"
    Store.open(data).close()
    run_dir = _run(tmp_path, data, method, reward_model="taste-legato", lr=5e-3,
                   loss_kwargs={"samples": 3})
    assert train(run_dir) == 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    assert rows[0]["samples"] == 3 and "sample_reward" in rows[0]
    if method == "musicrl":
        assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the policy is the reference at LoRA init
    tuned = music.MusicAdapter.load(ModelRef("melody-lm", adapter=str(run_dir / "adapter")), device="cpu")
    base = music.MusicAdapter.load(ModelRef("melody-lm"), device="cpu")
    clips = [s.data for s in base.generate(GenerationRequest(PROMPT, n=2, seeds=(1, 2)))]
    with torch.no_grad():
        s0 = base.score(base.trainable_module(), base.encode([Group(PROMPT, tuple(clips))]), None)
        s1 = tuned.score(tuned.trainable_module(), tuned.encode([Group(PROMPT, tuple(clips))]), None)
    assert not torch.allclose(s0, s1)


def test_musicrl_needs_a_reward_model(tmp_path):
    with pytest.raises(ValueError, match="reward model"):
        TrainConfig(modality="music", method="musicrl", model="melody-lm", data_dir=".")


@pytest.mark.parametrize("fmt", ["peft", "merged"])
def test_exports_load_back(tmp_path, lm, fmt):
    data = tmp_path / "data"
    Store.open(data).close()
    run_dir = _run(tmp_path, data, "musicrl", reward_model="taste-bright", lr=1e-2, steps=1,
                   loss_kwargs={"samples": 2})
    assert train(run_dir) == 0
    out = music.MusicAdapter.export_adapter(run_dir / "adapter", tmp_path / "export", fmt, base_model="melody-lm",
                                            metadata={"method": "musicrl"})
    assert music.MusicAdapter.verify_export("melody-lm", run_dir / "adapter", out, fmt) < 1e-4
    if fmt == "merged":
        assert music.family_of(str(out)) == "melody-events"  # the merged folder is still a music model
        merged = music.MusicAdapter.load(ModelRef(str(out)), device="cpu")
        assert merged.generate(GenerationRequest(PROMPT, n=1, seeds=(0,)))[0].mime == "audio/wav"


def test_musicrl_resumes_exactly(tmp_path):
    """2 steps, a stop, 2 more == 4 straight: the samples are seeded by the step and drawn from the restored
    adapter."""
    from safetensors.torch import load_file

    runs = []
    for name in ("straight", "resumed"):
        data = tmp_path / name / "data"
        Store.open(data).close()
        run_dir = _run(tmp_path / name, data, "musicrl", reward_model="taste-staccato", lr=5e-3, steps=4,
                       checkpoint_every=1, loss_kwargs={"samples": 2})
        if name == "straight":
            assert train(run_dir) == 0
        else:
            assert train(run_dir, stop_after=2) == 130
            assert train(run_dir, resume=True) == 0
        runs.append(run_dir)
    recs = [[json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()] for r in runs]
    assert [(r["loss"], r["sample_reward"]) for r in recs[0]] == [(r["loss"], r["sample_reward"]) for r in recs[1]]
    a, b = (load_file(str(r / "adapter" / "adapter_model.safetensors")) for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
