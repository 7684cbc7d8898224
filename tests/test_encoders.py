"""Pretrained encoders as reward-model backbones (CLIP/PickScore, SigLIP, CLAP through transformers),
tested on tiny configs built here: loading, features, refusals, and a reward model trained, stored,
reloaded and used from the CLI without the generator."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from alignment.rewards import service
from app.cli import main
from modalities.encoders import Encoder, decode_audio
from modalities.loading import ModelLoadError
from storage import Store
from tests.conftest import png_bytes
from tests.tiny_encoders import tiny_clap, tiny_clip, tiny_siglip


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    return {"clip": tiny_clip(root / "clip"), "siglip": tiny_siglip(root / "siglip"), "clap": tiny_clap(root / "clap")}


def _wav(hz: float, seconds: float = 1.5, rate: int = 22050) -> bytes:
    import soundfile

    buf = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(buf, (0.5 * np.sin(2 * np.pi * hz * t)).astype("float32"), rate, format="WAV")
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["clip", "siglip", "clap"])
def test_each_encoder_embeds_its_media_and_the_prompt(encoders, kind):
    enc = Encoder(str(encoders[kind]))
    media = ([png_bytes((250, 10, 10), 40), png_bytes((10, 10, 250), 40), png_bytes((10, 250, 10), 20)]
             if kind != "clap" else [_wav(440), _wav(880), _wav(220, seconds=0.3)])
    prompts = ["a red circle", "a blue square", "a red circle"]
    x = enc.features(prompts, media)
    dim = x.shape[1] // 3
    assert x.shape == (3, 3 * dim) and torch.isfinite(x).all()
    assert torch.equal(x, enc.features(prompts, media))  # deterministic
    m, t, prod = x[:, :dim], x[:, dim:2 * dim], x[:, 2 * dim:]
    assert torch.allclose(m.norm(dim=1), torch.ones(3), atol=1e-5) and torch.allclose(prod, m * t)
    assert not torch.equal(m[0], m[1])  # different candidates, different embeddings
    assert torch.allclose(t[0], t[2], atol=1e-5) and not torch.allclose(t[0], t[1])  # same prompt, same text part
    assert enc.media == ("audio/" if kind == "clap" else "image/")


def test_decode_audio_resamples_to_the_encoders_rate():
    samples = decode_audio(_wav(440, seconds=1.0, rate=22050), 16000)
    assert samples.dtype == np.float32 and abs(len(samples) - 16000) <= 1
    # still a 440 Hz tone: the strongest frequency of the resampled signal
    spectrum = np.abs(np.fft.rfft(samples))
    assert abs(np.argmax(spectrum) * 16000 / len(samples) - 440) < 3


def test_what_is_not_a_reward_encoder_is_refused(tmp_path, encoders):
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(llama)
    with pytest.raises(ModelLoadError, match="is a llama model; a reward model's encoder is one of clip, siglip, clap"):
        Encoder(str(llama))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="no .safetensors weights"):
        Encoder(str(empty))
    custom = tmp_path / "custom"
    custom.mkdir()
    for f in encoders["clip"].iterdir():
        (custom / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((custom / "config.json").read_text())
    (custom / "config.json").write_text(json.dumps({**cfg, "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(ModelLoadError, match="needs custom code"):
        Encoder(str(custom))
    with pytest.raises(ModelLoadError, match="neither a local folder nor a hub id"):
        Encoder(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="clap encoder of audio and cannot read Images candidates"):
        Encoder(str(encoders["clap"])).check_reads("image/", "Images")


def _judged_store(path, n=8):
    """Candidates of one prompt, each pair voted by redness (the reward model's taste to learn)."""
    s = Store.open(path)
    reds = [int(x) for x in np.linspace(0, 255, n)]
    gens = [s.add_generation(prompt="a circle", modality="image", model="gen", media=png_bytes((r, 40, 255 - r), 16),
                             seed=i) for i, r in enumerate(reds)]
    for i in range(n):
        for j in range(i + 1, n):
            s.vote(gens[i].id, gens[j].id, "b")  # the redder one (later) wins
    return s, gens


def test_a_reward_model_on_a_clip_backbone_trains_without_the_generator(tmp_path, encoders, capsys):
    store, gens = _judged_store(tmp_path / "data")
    with store:
        record, metrics = service.train(store, None, modality="image", name="clip-taste", model="gen", folds=4,
                                        backbone=str(encoders["clip"]))
        assert record.backbone == f"encoder:{encoders['clip']}" and record.base_model == "gen"
        assert metrics["votes"] == 28 and metrics["heldout_accuracy"] is not None
        reward = service.load(store, "clip-taste", "image")  # no model loaded: the encoder reads the images
        media = [store.media_bytes(g) for g in gens]
        scores = reward.overall("a circle", media)
        assert len(scores) == len(gens) and metrics["train_accuracy"] > 0.9
        assert np.corrcoef(scores, np.arange(len(gens)))[0, 1] > 0.8  # it learned "redder is better"
        row = next(r for r in service.offered(store, "image") if r["name"] == "clip-taste@v1")
        assert str(encoders["clip"]) in row["about"]
        # an encoder of audio does not fit images; nor does an image encoder fit text
        with pytest.raises(ValueError, match="cannot read Images candidates"):
            service.train(store, None, modality="image", name="x", model="gen", backbone=str(encoders["clap"]))
        with pytest.raises(ValueError, match="cannot read"):
            service.train(store, None, modality="text", name="x", model="gen", backbone=str(encoders["siglip"]))
    base = ["--data-dir", str(tmp_path / "data")]
    assert main(["reward", "train", "cli-clip", "--model", "gen", "--folds", "4", "--backbone",
                 str(encoders["siglip"]), *base]) == 0
    assert "reward model cli-clip@v1: 28 votes" in capsys.readouterr().out
    assert main(["reward", "score", "cli-clip", *(str(g.id) for g in gens[:3]), "--json", *base]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["generation"] for r in rows] == [g.id for g in gens[:3]] and all("overall" in r for r in rows)


def test_a_reward_model_trains_as_a_queued_run_that_stops_and_resumes(tmp_path, encoders):
    """A reward model's training is a run: progress in its record, stopped between steps (as a cancel
    does), resumed by the queue reading the candidates' features back, the reward model recorded."""
    import subprocess
    import time

    from alignment.rewards.run import FEATURES
    from app import runs
    from tests.conftest import SLOW

    data = tmp_path / "data"
    store, _ = _judged_store(data)
    with store:
        run, run_dir = runs.create_reward_run(store, {"modality": "image", "model": "gen", "name": "queued", "folds": 4,
                                                      "backbone": str(encoders["clip"])})
        assert run.method == "reward-model" and run.status == "queued"
        with pytest.raises(ValueError, match="fewer than the 40 folds"):
            runs.create_reward_run(store, {"modality": "image", "model": "gen", "name": "q", "folds": 40})
        with pytest.raises(ValueError, match="not 'motion'"):
            runs.create_reward_run(store, {"modality": "image", "model": "gen", "name": "q", "dimensions": ["motion"]})
    cmd = runs.train_command(run_dir)
    assert cmd[1:3] == ["-m", "alignment.rewards.run"]
    stopped = subprocess.run([*cmd, "--stop-after", "2"], capture_output=True, text=True, timeout=SLOW)
    assert stopped.returncode == 130, stopped.stderr
    with Store.open(data) as s:
        r = s.get_run(run.id)
        assert (r.status, r.step, r.total_steps) == ("cancelled", 2, 5) and "resume" in r.error
        assert s.list_reward_models() == [] and (run_dir / FEATURES).is_file()
        q = runs.RunQueue(data, poll=0.05).start()
        try:
            assert "reads its candidates' features back" in q.resume(run.id)
            deadline = time.monotonic() + SLOW
            while s.get_run(run.id).status in ("queued", "running") and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            q.stop()
        r = s.get_run(run.id)
        assert r.status == "completed" and r.step == 5 and r.last_metrics["reward_model"] == "queued@v1", r.error
        assert "read the features of 8 candidates back" in runs.log_tail(run_dir, 50)
        (rec,) = s.list_reward_models()
        assert rec.label == "queued@v1" and rec.metrics["votes"] == 28
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 5] and lines[-1]["phase"] == "final fit"


def test_similarity_rewards_score_prompt_agreement_zero_shot(tmp_path, encoders):
    """``similarity:<encoder>``: the cosine of the candidate's and the prompt's embeddings (CLAP score for
    music, CLIPScore / PickScore for images), by name wherever a reward model is named, alone or mixed."""
    with Store.open(tmp_path / "data") as store:
        clap = f"similarity:{encoders['clap']}"
        clips = [_wav(440), _wav(880), _wav(220)]
        reward = service.load(store, clap, "music")
        assert reward.kind == "similarity" and reward.dimensions == ("prompt",)
        got = reward.score("a high flute", clips)["prompt"]
        x = Encoder(str(encoders["clap"])).features(["a high flute"] * 3, clips)
        d = x.shape[1] // 3
        assert np.allclose(got, (x[:, :d] * x[:, d:2 * d]).sum(1).numpy(), atol=1e-6)
        assert len(set(np.round(got, 6))) == 3 and np.all(np.abs(got) <= 1 + 1e-6)
        # CLIPScore on images
        images = [png_bytes((250, 10, 10), 40), png_bytes((10, 10, 250), 40)]
        assert service.load(store, f"similarity:{encoders['clip']}", "image").score("a red circle", images)["prompt"].shape == (2,)
        # in a weighted mix, pinned as it is, no generator needed
        mixed = f"2*melody-judge+{clap}"
        service.check_name(store, mixed, "music")
        assert service.pinned(store, mixed, "music") == mixed and not service.needs_model(store, mixed, "music")
        assert service.load(store, mixed, "music").score("a slow sad melody in A minor on a harp, descending", clips)["prompt"].shape == (3,)
        # refusals: an encoder that does not read the modality's media, a name without an encoder
        with pytest.raises(ValueError, match="is a clap encoder of audio and cannot read Images candidates"):
            service.load(store, clap, "image")
        for bad in ("similarity:", "similarity:./no-such-folder"):
            with pytest.raises(ValueError, match="name a pretrained encoder after 'similarity:'"):
                service.check_name(store, bad, "music")
