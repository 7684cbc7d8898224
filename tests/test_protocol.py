"""The modality protocol: request validation, score arithmetic, registry, and the contract checks.

The contract checks are exercised on a small, real flow-matching adapter (a
1-D signal world with an MLP velocity model) and on deliberately broken
variants, to show each rule can fail.
"""
from __future__ import annotations

import hashlib
import math
import struct

import pytest
import torch
from torch import nn

from modalities import registry
from modalities.contract import ContractError, check_adapter
from modalities.protocol import (
    GenerationRequest,
    Group,
    ModalityAdapter,
    ModelRef,
    Provenance,
    Sample,
    ScoreKind,
    TrainingBatch,
)
from modalities.scoring import (
    denoising_score,
    flow_interpolate,
    flow_velocity_target,
    group_noise,
    group_uniform_t,
    token_logprob_score,
)

DIM = 16


# -- a real, tiny flow-matching modality -----------------------------------


def _prompt_vec(prompt: str) -> torch.Tensor:
    h = hashlib.sha256(prompt.encode()).digest()
    return torch.tensor([b / 255.0 for b in h[:8]])


class Velocity(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj_in = nn.Linear(DIM + 8 + 1, 32)
        self.proj_out = nn.Linear(32, DIM)

    def forward(self, x, cond, t):
        return self.proj_out(torch.tanh(self.proj_in(torch.cat([x, cond, t], dim=-1))))


class SignalFlow(ModalityAdapter):
    """Samples are 16 float32 values; generation integrates the flow from t=1 (noise) to t=0."""

    name = "signal"
    score_kind = ScoreKind.FLOW
    default_lora_targets = ("proj_in", "proj_out")

    def __init__(self, model: nn.Module):
        self.model = model

    @classmethod
    def load(cls, ref, *, device=None, dtype=None, cache_dir=None):
        torch.manual_seed(int(hashlib.sha256(ref.id.encode()).hexdigest(), 16) % 2**31)
        return cls(Velocity())

    def generate(self, request):
        out = []
        for seed in request.resolved_seeds():
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(1, DIM, generator=g)
            steps = int(request.params.get("steps", 4))
            cond = _prompt_vec(request.prompt)[None]
            with torch.no_grad():
                for i in range(steps, 0, -1):
                    t = torch.full((1, 1), i / steps)
                    x = x - self.model(x, cond, t) / steps
            data = struct.pack(f"{DIM}f", *x[0].tolist())
            out.append(Sample(data, "application/octet-stream",
                              Provenance("signal", "toy", seed, {"steps": steps})))
        return out

    def encode(self, groups):
        x0 = torch.tensor([[struct.unpack(f"{DIM}f", s) for s in g.samples] for g in groups])
        cond = torch.stack([_prompt_vec(g.prompt) for g in groups])
        return TrainingBatch([g.prompt for g in groups], {"x0": x0}, {"cond": cond})

    def _noise_and_t(self, batch, generator):
        B, K = batch.batch_size, batch.group_size
        return group_noise(generator, B, K, (DIM,)), group_uniform_t(generator, B, K)

    def score(self, model, batch, generator):
        x0 = batch.tensors["x0"]
        noise, t = self._noise_and_t(batch, generator)
        xt = flow_interpolate(x0, noise, t)
        cond = batch.conditioning["cond"][:, None].expand(-1, x0.shape[1], -1)
        pred = model(xt, cond, t[..., None])
        return denoising_score(pred, flow_velocity_target(x0, noise))

    def trainable_module(self):
        return self.model


class NoisePerSample(SignalFlow):
    """Broken: draws noise for every sample instead of once per group."""

    def _noise_and_t(self, batch, generator):
        B, K = batch.batch_size, batch.group_size
        return torch.randn(B, K, DIM, generator=generator), group_uniform_t(generator, B, K)


class IgnoresGenerator(SignalFlow):
    """Broken: uses the global RNG, so policy and reference would see different noise."""

    def _noise_and_t(self, batch, generator):
        B, K = batch.batch_size, batch.group_size
        return torch.randn(B, 1, DIM).expand(B, K, DIM), torch.rand(B, 1).expand(B, K)


class Float64Scores(SignalFlow):
    def score(self, model, batch, generator):
        return super().score(model, batch, generator).double()


class WrongTargets(SignalFlow):
    default_lora_targets = ("to_q",)


def _batch(adapter, B=3, K=3):
    samples = adapter.generate(GenerationRequest("a rising tone", n=B * K, seeds=tuple(range(B * K))))
    groups = [Group(f"prompt {b}", tuple(s.data for s in samples[b * K:(b + 1) * K])) for b in range(B)]
    return adapter.encode(groups)


def test_working_adapter_passes_the_contract():
    adapter = SignalFlow.load(ModelRef("toy"))
    scores = check_adapter(adapter, _batch(adapter))
    assert scores.shape == (3, 3) and scores.dtype == torch.float32


@pytest.mark.parametrize(
    "cls, message",
    [
        (NoisePerSample, "drawn once per group"),
        (IgnoresGenerator, "not deterministic"),
        (Float64Scores, "float32"),
        (WrongTargets, "match no module"),
    ],
)
def test_broken_adapters_fail_the_contract(cls, message):
    adapter = cls.load(ModelRef("toy"))
    with pytest.raises(ContractError, match=message):
        check_adapter(adapter, _batch(adapter))


def test_generation_is_deterministic_per_seed():
    adapter = SignalFlow.load(ModelRef("toy"))
    a = adapter.generate(GenerationRequest("p", n=2, seeds=(5, 6)))
    b = adapter.generate(GenerationRequest("p", n=2, seeds=(5, 6)))
    assert [s.data for s in a] == [s.data for s in b] and a[0].data != a[1].data
    assert a[0].provenance.storage_kwargs()["seed"] == 5


# -- request validation and registry ---------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": "  "}, "prompt is empty"),
        ({"prompt": "p", "n": 0}, "between 1 and 64"),
        ({"prompt": "p", "n": 65}, "between 1 and 64"),
        ({"prompt": "p", "n": 2, "seeds": (1,)}, "one seed per candidate"),
        ({"prompt": "p", "n": 1, "seeds": (-1,)}, "seeds must be in"),
    ],
)
def test_bad_requests(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationRequest(**kwargs)


def test_random_seeds_are_recorded():
    seeds = GenerationRequest("p", n=3).resolved_seeds()
    assert len(seeds) == 3 and all(0 <= s < 2**32 for s in seeds)


def test_model_ref_and_group_validation():
    with pytest.raises(ValueError, match="hub id or a local folder"):
        ModelRef("")
    with pytest.raises(ValueError, match="at least 2 samples"):
        Group("p", (b"x",))


def test_registry_lazy_and_errors():
    with pytest.raises(KeyError, match="unknown modality 'nope'"):
        registry.get("nope")
    registry.register("signal_test", "tests.test_protocol:SignalFlow")
    try:
        assert registry.get("signal_test") is SignalFlow
        assert "signal_test" in registry.available()
        with pytest.raises(ValueError, match="already registered"):
            registry.register("signal_test", SignalFlow)
    finally:
        registry.unregister("signal_test")
    registry.register("broken_test", "tests.test_protocol:NoSuchClass")
    try:
        with pytest.raises(ImportError, match="cannot be imported"):
            registry.get("broken_test")
    finally:
        registry.unregister("broken_test")
    with pytest.raises(ValueError, match="module:ClassName"):
        registry.register("x", "no_colon_here")


# -- score arithmetic against closed forms ---------------------------------


def test_flow_conventions():
    x0, noise = torch.zeros(1, 1, 4), torch.ones(1, 1, 4)
    assert torch.equal(flow_interpolate(x0, noise, torch.ones(1, 1)), noise)  # t = 1 is pure noise
    assert torch.equal(flow_interpolate(x0, noise, torch.zeros(1, 1)), x0)
    assert torch.equal(flow_velocity_target(x0, noise), noise - x0)


def test_denoising_score_is_minus_mse():
    pred = torch.zeros(2, 3, 4, 4)
    target = torch.full((2, 3, 4, 4), 2.0)
    s = denoising_score(pred.half(), target)
    assert s.dtype == torch.float32 and torch.allclose(s, torch.full((2, 3), -4.0))


def test_group_noise_is_shared():
    g = torch.Generator().manual_seed(0)
    n = group_noise(g, 2, 4, (3,))
    assert n.shape == (2, 4, 3) and torch.equal(n[:, 0], n[:, 3]) and not torch.equal(n[0], n[1])


def test_token_logprob_score_masks_the_prompt():
    V = 5
    logits = torch.zeros(1, 1, 4, V)  # uniform: every token has log-prob -log V
    labels = torch.tensor([[[1, 2, 3, 4]]])
    mask = torch.tensor([[[0, 0, 1, 1]]])  # 2 prompt tokens, 2 response tokens
    assert torch.allclose(token_logprob_score(logits, labels, mask), torch.tensor([[-2 * math.log(V)]]))
    assert torch.allclose(token_logprob_score(logits, labels, mask, mean=True), torch.tensor([[-math.log(V)]]))
    logits[0, 0, 0, 2] = 100.0  # a confident prediction of a *prompt* token changes nothing
    assert torch.allclose(token_logprob_score(logits, labels, mask), torch.tensor([[-2 * math.log(V)]]))


class ColumnDependent(SignalFlow):
    """Broken: the score depends on a sample's column, not only on the sample."""

    def score(self, model, batch, generator):
        s = super().score(model, batch, generator)
        return s + torch.arange(s.shape[1], dtype=s.dtype)


class Detached(SignalFlow):
    """Broken: scores computed without a graph, so training could never move the model."""

    def score(self, model, batch, generator):
        with torch.no_grad():
            return super().score(model, batch, generator)


@pytest.mark.parametrize("cls, message", [(ColumnDependent, "identical samples|reorder"), (Detached, "no gradient")])
def test_more_broken_adapters(cls, message):
    adapter = cls.load(ModelRef("toy"))
    with pytest.raises(ContractError, match=message):
        check_adapter(adapter, _batch(adapter))
