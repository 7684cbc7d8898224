"""SPO (``alignment.spo``, ``alignment.losses.spo``): the loss and its clip against hand-computed values,
pair selection with the threshold, the step-wise resampler (the trajectory continues from a candidate
chosen independently of the pair), training through the real trainer with an exact resume, on the
built-in model's architecture and on tiny SD, SDXL, SD3 and FLUX configs, and clear refusals."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from alignment.config import TrainConfig
from alignment.losses import spo
from alignment.methods import LOSSES
from alignment.spo import StepwiseResampler, softmax_gap
from alignment.train import train
from modalities.image.adapter import ImageAdapter
from modalities.protocol import ModelRef
from storage import Store
from tests import tiny_pipelines

SMALL = {"sample_steps": 4, "shared_steps": 1, "pool": 3, "threshold": 0.05}


def test_spo_loss_and_clip_by_hand():
    lo, hi = math.log(0.9), math.log(1.1)
    policy = torch.tensor([[0.02, -0.01], [0.5, -0.5]], requires_grad=True)
    reference = torch.zeros(2, 2)
    loss, m = spo(policy, reference, beta=10.0, clip=0.1)
    # row 0 inside the band: -log sigmoid(10 * 0.03); row 1 clipped both ways: -log sigmoid(10 * (hi - lo))
    want = (-math.log(1 / (1 + math.exp(-0.3))) - math.log(1 / (1 + math.exp(-10 * (hi - lo))))) / 2
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert m["clip_fraction"] == pytest.approx(0.5) and m["reward_accuracy"] == 1.0
    loss.backward()
    assert policy.grad[1].abs().sum() == 0 and policy.grad[0, 0] < 0 < policy.grad[0, 1]
    # at the reference (a fresh LoRA) every ratio is 1: log 2 and a gradient that raises the winner
    loss, m = spo(torch.zeros(3, 2), torch.zeros(3, 2), beta=10.0)
    assert loss.item() == pytest.approx(math.log(2)) and m["clip_fraction"] == 0.0
    with pytest.raises(ValueError, match="clip"):
        spo(torch.zeros(1, 2), torch.zeros(1, 2), beta=1.0, clip=1.5)
    with pytest.raises(ValueError, match="reference"):
        spo(torch.zeros(1, 2), None, beta=1.0)


def test_softmax_gap():
    best, worst, gap = softmax_gap(np.array([0.0, 2.0, 1.0]))
    p = np.exp([0.0, 2.0, 1.0]) / np.exp([0.0, 2.0, 1.0]).sum()
    assert (best, worst) == (1, 0) and gap == pytest.approx(p[1] - p[0])
    assert softmax_gap(np.zeros(4))[2] == 0.0


class Scripted:
    """A reward model whose scores are given per call (order of candidates), to watch the source."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0
        self.meta = {}

    def overall(self, prompt, media):
        self.calls += 1
        return np.asarray(self.fn(self.calls, len(media)), dtype=float)


@pytest.fixture(scope="module")
def pixel():
    torch.set_num_threads(1)
    return ImageAdapter(tiny_pipelines.tiny_pixel(), model="tiny-pixel")


def _source(adapter, reward_fn, **kw):
    cfg = TrainConfig(modality="image", method="spo", model="tiny", data_dir=".", reward_model="taste-saturated",
                      prompts=["a red circle"], loss_kwargs={**SMALL, **kw})
    src = StepwiseResampler(None, cfg, LOSSES["spo"], None)
    src.bind(adapter, adapter.trainable_module())
    src.reward = Scripted(reward_fn)
    return src


def test_threshold_skips_pairs_and_the_resampler_ignores_the_pair(pixel):
    # 1. equal rewards: no pair passes any threshold; a clear gap: a pair at every pooled step
    flat = _source(pixel, lambda _c, n: [0.0] * n)
    pairs, pools = flat.trajectory("a red circle", torch.Generator().manual_seed(0))
    assert pools == SMALL["sample_steps"] - SMALL["shared_steps"] and pairs == []
    up = _source(pixel, lambda _c, n: list(range(n)))  # the last candidate is the best
    down = _source(pixel, lambda _c, n: list(range(n))[::-1])  # the first is the best
    a, _ = up.trajectory("a red circle", torch.Generator().manual_seed(0))
    b, _ = down.trajectory("a red circle", torch.Generator().manual_seed(0))
    assert [e.payload["step"] for e in a] == [1, 2, 3] == [e.payload["step"] for e in b]
    # 2. the trajectory does not depend on which candidates won: the same latents whatever the reward
    for ea, eb in zip(a, b):
        assert torch.equal(ea.payload["x"], eb.payload["x"])
        assert torch.equal(ea.payload["next"][0], eb.payload["next"][1])  # winner and loser swapped
    # 3. a threshold above the gap skips them all
    high = _source(pixel, lambda _c, n: [0.0] * (n - 1) + [0.1], threshold=0.9)
    assert high.trajectory("a red circle", torch.Generator().manual_seed(0))[0] == []


def test_the_continuation_is_uniform_over_the_pool(pixel):
    """Over many steps the next latent is each candidate about equally often, the winner included."""
    src = _source(pixel, lambda _c, n: list(range(n)), pool=2, sample_steps=6, shared_steps=0)
    chosen = []
    for seed in range(8):
        pairs, _ = src.trajectory("a red circle", torch.Generator().manual_seed(seed))
        for prev, nxt in zip(pairs, pairs[1:]):
            chosen.append(int(torch.equal(nxt.payload["x"], prev.payload["next"][0])))  # continued from the winner
    assert 0.2 < np.mean(chosen) < 0.8, chosen


def _store_run(data, model, settings):
    from app.runs import create_run

    with Store.open(data) as store:
        run, run_dir = create_run(store, modality="image", method="spo", settings={
            "model": str(model), "validation_count": 0, "batch_size": 1, "reward_model": "taste-saturated",
            "prompts": ["a red circle", "two blue squares on a white background"], **settings})
    return run, run_dir


def test_spo_trains_and_resumes_exactly(tmp_path):
    torch.set_num_threads(1)
    model = tiny_pipelines.save(tiny_pipelines.tiny_pixel(), tmp_path / "model")
    loss_kwargs = {**SMALL, "guidance": 2.0}
    runs = []
    for name in ("straight", "resumed"):
        _, run_dir = _store_run(tmp_path / name, model, {"steps": 4, "lr": 5e-3, "loss_kwargs": loss_kwargs,
                                                           "checkpoint_every": 1})
        if name == "straight":
            assert train(run_dir) == 0
        else:
            assert train(run_dir, stop_after=2) == 130
            assert train(run_dir, resume=True) == 0
        runs.append(run_dir)
    recs = [[json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()] for r in runs]
    keys = ("loss", "pairs", "pair_reward", "sample_forwards")
    assert [[r.get(k) for k in keys] for r in recs[0]] == [[r.get(k) for k in keys] for r in recs[1]]
    assert recs[0][0]["margin"] == 0.0  # a fresh LoRA: policy and reference agree exactly
    assert sum(r["pairs"] for r in recs[0]) > 0 and recs[0][-1]["margin"] != 0.0
    from safetensors.torch import load_file

    a, b = (load_file(str(r / "adapter" / "pytorch_lora_weights.safetensors")) for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_step_without_pairs_leaves_the_adapter_alone(tmp_path):
    torch.set_num_threads(1)
    model = tiny_pipelines.save(tiny_pipelines.tiny_pixel(), tmp_path / "model")
    _, run_dir = _store_run(tmp_path / "data", model, {"steps": 2, "lr": 1e-2, "loss_kwargs": {
        **SMALL, "pool": 2, "threshold": 0.999999}})  # no two candidates are 14 units of a taste apart
    assert train(run_dir) == 0
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["pairs"] == 0 and r["no_examples"] and "loss" not in r for r in recs)
    from safetensors.torch import load_file

    lora = load_file(str(run_dir / "adapter" / "pytorch_lora_weights.safetensors"))
    assert any("lora_B" in k for k in lora)
    assert all(float(v.abs().sum()) == 0 for k, v in lora.items() if "lora_B" in k or "lora.up" in k)


FAMILIES = {"sd": tiny_pipelines.tiny_sd, "sdxl": tiny_pipelines.tiny_sdxl, "sd3": tiny_pipelines.tiny_sd3,
            "flux": tiny_pipelines.tiny_flux}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_spo_trains_on_tiny_families(family, tmp_path):
    torch.set_num_threads(1)
    model = tiny_pipelines.save(FAMILIES[family](), tmp_path / "model")
    _, run_dir = _store_run(tmp_path / "data", model, {"steps": 2, "loss_kwargs": {**SMALL, "pool": 2}})
    assert train(run_dir) == 0
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(r["sample_forwards"] > 0 for r in recs)
    adapter = ImageAdapter.load(ModelRef(str(model), adapter=str(run_dir / "adapter")))
    assert adapter.adapter_name  # the diffusers LoRA file loads back into the pipeline


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match="reward model"):
        TrainConfig(modality="image", method="spo", model="m", data_dir=".")
    for bad, msg in (({"pool": 1}, "pool must be 2"), ({"threshold": 0.0}, r"threshold must be in \(0, 1\)"),
                     ({"threshold": 1.0}, "threshold"), ({"shared_steps": 20}, "fewer than sample_steps")):
        with pytest.raises(ValueError, match=msg):
            TrainConfig(modality="image", method="spo", model="m", data_dir=".", reward_model="taste-large",
                        loss_kwargs=bad)
    with pytest.raises(ValueError, match="online methods"):
        TrainConfig(modality="image", method="diffusion-dpo", model="m", data_dir=".", reward_model="taste-large")
    from app.runs import create_run

    with Store.open(tmp_path / "d") as store:
        with pytest.raises(ValueError, match="no reward model 'nope'"):
            create_run(store, modality="image", method="spo", settings={"reward_model": "nope", "prompts": ["a"]})
        with pytest.raises(ValueError, match="generate candidates for a few prompts first"):
            create_run(store, modality="image", method="spo", settings={"reward_model": "taste-large"})


def test_a_noise_aware_reward_model_scores_the_trajectory_itself(tmp_path):
    """Trained with --noise-aware, a reward model scores noisy latents at their level (SPO's default
    step-aware model); one trained on clean samples is refused for that, with the way out."""
    from alignment.errors import TrainingError
    from alignment.rewards import service
    from alignment.rewards.learned import NOISE_AWARE_LEVELS, HeadConfig
    from tests.test_rewards import _saturation_votes

    torch.set_num_threads(1)
    adapter = ImageAdapter.load(ModelRef("shapes-diffusion"), device="cpu", cache_dir=tmp_path / "cache")
    with Store.open(tmp_path / "data") as store:
        _saturation_votes(store, n_images=24, n_votes=40)
        record, metrics = service.train(store, adapter, modality="image", name="aware", folds=4,
                                        cfg=HeadConfig(epochs=150), noise_aware=True)
        assert metrics["votes"] == 40 and metrics["heldout_accuracy"] > 0.6, metrics
        service.train(store, adapter, modality="image", name="clean", folds=4, cfg=HeadConfig(epochs=50))
        aware = service.load(store, "aware", "image", adapter)
        assert aware.noise_aware and aware.meta["noise_levels"] == list(NOISE_AWARE_LEVELS)
        # the features of a noised candidate are the latent features of the same noisy latent
        gen = store.list_generations()[0]
        media = store.media_bytes(gen)
        f = adapter.reward_features([gen.prompt], [media], noise_level=0.4, seed=0, predicted_x0=True)
        x0 = adapter._latent(media)[None]
        noise = torch.randn(x0.shape[1:], generator=torch.Generator("cpu").manual_seed(0))[None]
        step = round(0.4 * (len(adapter._alphas_cumprod) - 1))
        a = adapter._alphas_cumprod[step]
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        g = adapter.latent_reward_features([gen.prompt], noisy, torch.tensor([step]))
        assert torch.allclose(f, g, atol=1e-5)
        scores = aware.score_latents([gen.prompt], noisy, torch.tensor([step]))
        assert scores["overall"].shape == (1,)
        # a run pins the learned reward model's version; a taste is refused for noisy latents
        from app.runs import create_run

        run, _ = create_run(store, modality="image", method="spo", settings={"reward_model": "aware+taste-large",
                                                                             "prompts": ["a red circle"]})
        assert run.config["reward_model"] == "aware@v1+taste-large"
        cfg = TrainConfig(modality="image", method="spo", model="shapes-diffusion", data_dir=str(tmp_path / "data"),
                          reward_model="taste-large", reward_mode="noisy", prompts=["a red circle"])
        with pytest.raises(TrainingError, match="scores finished media"):
            StepwiseResampler(store, cfg, LOSSES["spo"], None).bind(adapter, adapter.trainable_module())
        # SPO picks the noisy mode for it, and refuses it for the clean one
        for name, mode, expect in (("aware", "auto", "noisy"), ("clean", "auto", "x0"), ("clean", "noisy", None)):
            cfg = TrainConfig(modality="image", method="spo", model="shapes-diffusion", data_dir=str(tmp_path / "data"),
                              reward_model=name, reward_mode=mode, prompts=["a red circle"],
                              loss_kwargs={**SMALL, "pool": 2})
            src = StepwiseResampler(store, cfg, LOSSES["spo"], None)
            if expect is None:
                with pytest.raises(TrainingError, match="not noise-aware.*--noise-aware"):
                    src.bind(adapter, adapter.trainable_module())
                continue
            src.bind(adapter, adapter.trainable_module())
            assert src.mode == expect
            pairs, pools = src.trajectory("a red circle", torch.Generator().manual_seed(0))
            assert pools == 3 and all(e.payload["next"].shape[0] == 2 for e in pairs)


def test_spo_from_the_cli_on_the_built_in_model(tmp_path):
    """`python -m app train --method spo` on the built-in model: the user's prompts, a taste as the reward,
    options as --option; the run completes with an adapter and its step metrics."""
    from tests.conftest import run_cli

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle on a white background\n\ntwo blue squares\n")
    proc = run_cli("train", "--method", "spo", "--steps", "2", "--batch-size", "1", "--reward-model",
                   "taste-centered", "--prompts-file", str(prompts), "--option", "sample_steps=4",
                   "--option", "shared_steps=1", "--option", "pool=2", "--option", "threshold=0.01",
                   data_dir=tmp_path / "data", check=True)
    run_dir = tmp_path / "data" / "runs" / "run-0001"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["prompts"] == ["a red circle on a white background", "two blue squares"]
    assert config["reward_model"] == "taste-centered" and config["loss_kwargs"]["pool"] == 2.0
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2] and all(r["pools"] == 3 for r in recs)
    assert (run_dir / "adapter" / "pytorch_lora_weights.safetensors").is_file(), proc.stderr[-500:]
    bad = run_cli("train", "--method", "spo", "--reward-model", "taste-centered", "--option", "pool", data_dir=tmp_path / "data")
    assert bad.returncode != 0 and "KEY=NUMBER" in bad.stderr
