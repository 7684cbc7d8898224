"""ACE-Step (diffusers' AceStepPipeline) in the music modality, from a tiny config as diffusers' own tests
build it (offline, random weights): loading through the music entry point (and refusals across
modalities), deterministic stereo WAV clips, the training denoiser call equal to the pipeline's own, the
modality contract, Flow-DPO and Flow-RWR on the user's votes through the trainer, and the diffusers and
PEFT exports (a plain ``AceStepPipeline.load_lora_weights`` makes Palate's tuned clip)."""
from __future__ import annotations

import io

import pytest
import soundfile as sf
import torch

from alignment.config import TrainConfig
from alignment.train import train
from app.generation import generate_candidates
from modalities.contract import check_adapter
from modalities.diffusion.families import FAMILIES
from modalities.loading import ModelLoadError
from modalities.music import adapter as music
from modalities.music import wav
from modalities.music.acestep import AceStepAdapter
from modalities.protocol import GenerationRequest, Group, ModelRef, ScoreKind
from storage import Store
from tests import tiny_pipelines

SECONDS = 0.5  # 50 latent frames at the tiny VAE's 100 frames/s, 400 samples at 800 Hz


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_pipelines.save(tiny_pipelines.tiny_acestep(), tmp_path_factory.mktemp("acestep") / "model")


@pytest.fixture(scope="module")
def adapter(tiny_dir):
    return music.MusicAdapter.load(ModelRef(str(tiny_dir)), device="cpu")


def _gen(adapter, n=2, seeds=(0, 1), **params):
    return adapter.generate(GenerationRequest("a calm piano piece", n, seeds=seeds,
                                              params={"duration": SECONDS, "steps": 2, **params}))


def test_loaded_through_the_music_entry_point_and_refused_elsewhere(adapter, tiny_dir, tmp_path):
    assert music.family_of(str(tiny_dir)) == "acestep"
    assert isinstance(adapter, AceStepAdapter) and adapter.score_kind == ScoreKind.FLOW
    assert adapter.fam is FAMILIES["AceStepPipeline"] and adapter.sample_rate == 800 and adapter.audio_channels == 2
    from modalities.image.adapter import ImageAdapter

    with pytest.raises(ModelLoadError, match="music pipeline: load it in the music modality"):
        ImageAdapter.load(ModelRef(str(tiny_dir)))
    sd = tiny_pipelines.save(tiny_pipelines.tiny_sd(), tmp_path / "sd")
    with pytest.raises(ModelLoadError, match="StableDiffusionPipeline; the music modality loads ACE-Step"):
        music.MusicAdapter.load(ModelRef(str(sd)))


def test_clips_are_stereo_wav_deterministic_per_seed(adapter):
    a, b = _gen(adapter), _gen(adapter, n=1, seeds=(1,))
    assert a[1].data == b[0].data and a[0].data != a[1].data  # a seed's clip whatever n and position
    audio, rate = sf.read(io.BytesIO(a[0].data), always_2d=True)
    assert rate == 800 and audio.shape == (400, 2) and abs(audio).max() > 0.1
    p = a[0].provenance.params
    assert a[0].mime == "audio/wav" and p["steps"] == 2 and p["seconds"] == SECONDS and p["guidance"] == 7.0


def test_setting_errors(adapter, tmp_path):
    for params, match in (({"temperature": 1.0}, "no temperature setting"), ({"steps": 0}, "steps must be"),
                          ({"steps": 2.5}, "whole number"), ({"guidance": 0.5}, "guidance must be between 1"),
                          ({"duration": -1}, "duration must be"), ({"seed_count": 3}, "unknown ACE-Step setting"),
                          ({"top_k": 5}, "no top_k setting"), ({"top_p": 0.9}, "no top_p setting"),
                          ({"melody": "tune.wav"}, "takes no melody file")):
        with pytest.raises(ValueError, match=match):
            _gen(adapter, **params)
    turbo = music.MusicAdapter.load(ModelRef(str(tiny_pipelines.save(tiny_pipelines.tiny_acestep(turbo=True),
                                                                    tmp_path / "turbo"))))
    assert turbo.default_params()["guidance"] == 1.0
    with pytest.raises(ValueError, match="turbo ACE-Step checkpoint"):
        _gen(turbo, guidance=5.0)


def test_the_training_call_is_the_pipelines_own(adapter):
    """Conditioning and context built for training reproduce the transformer call the pipeline makes
    when it generates (captured at its first step, guidance off)."""
    seen = []
    tr = adapter.pipe.transformer
    hook = tr.register_forward_hook(lambda m, args, kw, out: seen.append((kw, out[0])), with_kwargs=True)
    try:
        _gen(adapter, n=1, seeds=(5,), guidance=1.0)
    finally:
        hook.remove()
    kw, out = seen[0]
    x, t = kw["hidden_states"], kw["timestep"]
    cond = adapter._conditioning(["a calm piano piece"], x.shape[-2:])
    ours = adapter.fam.predict(adapter.pipe, tr, x, t, cond, adapter.dtype)
    assert torch.allclose(ours, out, atol=1e-5)


def test_prompts_of_different_lengths_condition_as_each_alone(adapter):
    """No padding reaches the transformer (its cross-attention has no mask): a batch of prompts of different
    lengths predicts what each prompt alone does."""
    prompts = ["a calm piano piece", "a very long and winding prompt about a slow sad waltz on an old organ"]
    x, t = torch.randn(2, 50, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0.3, 0.7])
    tr = adapter.pipe.transformer
    together = adapter.fam.predict(adapter.pipe, tr, x, t, adapter._conditioning(prompts, (50, 8)), adapter.dtype)
    alone = torch.cat([adapter.fam.predict(adapter.pipe, tr, x[i:i + 1], t[i:i + 1],
                                           adapter._conditioning([p], (50, 8)), adapter.dtype)
                       for i, p in enumerate(prompts)])
    mask = adapter._conditioning(prompts, (50, 8))["encoder_mask"]
    assert mask[0].sum() < mask[1].sum()  # the prompts really differ in length
    assert torch.allclose(together, alone, atol=1e-5)


def test_training_uses_the_sampled_latent(adapter):
    """A clip keeps the latent it was sampled as (the pipeline rescales the audio before it is stored); an
    imported clip is encoded by the VAE."""
    clip = _gen(adapter, n=1, seeds=(9,))[0]
    out = adapter.pipe(prompt="a calm piano piece", lyrics="", audio_duration=SECONDS, num_inference_steps=2,
                       guidance_scale=7.0, generator=torch.Generator("cpu").manual_seed(9), output_type="latent")
    assert torch.allclose(adapter.stored_latent(clip.data), out.audios[0].float(), atol=1e-6)
    assert torch.equal(adapter._latent(clip.data), adapter.stored_latent(clip.data))
    bare = wav.encode_wav(wav.decode(clip.data, channels=2)[0], 800)  # the same audio, imported
    assert adapter.stored_latent(bare) is None and adapter._latent(bare).shape == (50, 8)


def test_contract_and_scores(adapter):
    a = _gen(adapter, n=3, seeds=(0, 1, 2))
    batch = adapter.encode([Group("a calm piano piece", (a[0].data, a[1].data)),
                            Group("a fast drum solo", (a[2].data, a[0].data))])
    assert batch.tensors["latents"].shape == (2, 2, 50, 8)
    check_adapter(adapter, batch)
    features = adapter.reward_features(["a calm piano piece"] * 2, [a[0].data, a[1].data])
    assert features.shape[0] == 2 and torch.isfinite(features).all()


def test_flow_dpo_and_rwr_on_votes_then_compare_and_exports(tiny_dir, tmp_path):
    """The app's loop on ACE-Step: votes on generated clips train a LoRA with Flow-DPO and Flow-RWR
    through the trainer; the adapter loads back through the music entry point and changes the clip; the
    Compare tab's services make base and tuned clips on the same seeds and a blind trial of them; the
    Adapters tab's export (diffusers, PEFT) reproduces the tuned clip, and a plain diffusers
    ``AceStepPipeline.load_lora_weights`` of the diffusers export makes Palate's tuned clip."""
    from app import services

    data = tmp_path / "data"
    with Store.open(data) as store:
        for prompt in ("a calm piano piece", "a fast drum solo"):
            g = generate_candidates(store, modality="music", prompt=prompt, n=3, model=str(tiny_dir), seed=0,
                                    params={"duration": SECONDS, "steps": 2})
            store.rank([x.id for x in g])
        runs = {m: store.create_run(modality="music", method=m, base_model=str(tiny_dir), config={}).id
                for m in ("flow-dpo", "flow-rwr")}
    base = music.MusicAdapter.load(ModelRef(str(tiny_dir)), device="cpu")
    for method, run_id in runs.items():
        run_dir = tmp_path / method
        TrainConfig.from_dict({"modality": "music", "method": method, "model": str(tiny_dir), "data_dir": str(data),
                               "steps": 2, "batch_size": 2, "lr": 5e-2, "lora_rank": 4, "lora_alpha": 4.0,
                               "run_id": run_id, "validation_count": 0}).save(run_dir)
        assert train(run_dir) == 0, method
        tuned = music.MusicAdapter.load(ModelRef(str(tiny_dir), adapter=str(run_dir / "adapter")), device="cpu")
        assert _gen(tuned, n=1, seeds=(0,))[0].data != _gen(base, n=1, seeds=(0,))[0].data, method
    with Store.open(data) as store:
        adapter = next(a for a in store.list_adapters(modality="music") if a.method == "flow-dpo")
        rows = services.compare_generate(store, modality="music", model=str(tiny_dir), adapter_ids=[adapter.id],
                                         prompts=["a calm piano piece"], seeds=[7, 8],
                                         params={"duration": SECONDS, "steps": 2}, device="cpu")
        assert len(rows) == 2 and all(r["base"].seed == r["adapters"][adapter.id].seed for r in rows)
        assert store.media_bytes(rows[0]["base"]) != store.media_bytes(rows[0]["adapters"][adapter.id])
        trial = services.blind_trials(rows, adapter.id, seed=0)[0]
        services.blind_vote(store, trial, "left")
        assert services.win_rate(store, adapter.id)["n"] == 1
        assert "diffusers" in services.export_formats("music")
        exported = {fmt: services.export_adapter(store, adapter.id, fmt, out=tmp_path / fmt) for fmt in ("diffusers", "peft")}
    for fmt, (path, diff) in exported.items():
        assert diff is not None and diff < 1e-4, fmt
    with pytest.raises(ValueError, match="ACE-Step adapters export as diffusers or peft"):
        music.MusicAdapter.export_adapter(adapter.path, tmp_path / "m", "merged", base_model=str(tiny_dir), metadata={})
    from diffusers import AceStepPipeline

    plain = AceStepPipeline.from_pretrained(str(tiny_dir))
    plain.load_lora_weights(str(exported["diffusers"][0]))
    tuned = music.MusicAdapter.load(ModelRef(str(tiny_dir), adapter=str(adapter.path)), device="cpu")

    def clip(pipe):
        return pipe(prompt="a calm piano piece", lyrics="", audio_duration=SECONDS, num_inference_steps=2,
                    generator=torch.Generator().manual_seed(0), output_type="pt").audios.float()

    assert (clip(plain) - clip(tuned.pipe)).abs().max() < 1e-5


def test_autoregressive_methods_are_refused_for_acestep(tiny_dir, tmp_path, capsys):
    with Store.open(tmp_path / "data") as store:
        g = generate_candidates(store, modality="music", prompt="a calm piano piece", n=2, model=str(tiny_dir),
                                seed=0, params={"duration": SECONDS, "steps": 2})
        store.vote(g[0].id, g[1].id, "a")
    run_dir = tmp_path / "run"
    TrainConfig.from_dict({"modality": "music", "method": "simpo", "model": str(tiny_dir),
                           "data_dir": str(tmp_path / "data"), "steps": 1, "batch_size": 1,
                           "validation_count": 0}).save(run_dir)
    assert train(run_dir) != 0
    err = capsys.readouterr().err
    assert "method 'simpo' is not for music models with flow scores" in err and "flow-dpo" in err
