"""Stochastic steps with log-probabilities (``modalities.diffusion.stochastic`` and ``.trajectory``):
closed forms (a known Gaussian, the DDPM posterior), eta -> 0 is diffusers' own deterministic step,
and the sampler on a tiny UNet and tiny flow transformers (SD, SD3, FLUX), where a fresh LoRA leaves
every transition's probability exactly as the base model's."""
from __future__ import annotations

import math

import pytest
import torch

from modalities.diffusion import stochastic
from modalities.image.adapter import ImageAdapter
from tests import tiny_pipelines


def test_gaussian_logprob_is_the_mean_log_density():
    g = torch.Generator().manual_seed(0)
    mean, x = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    std = torch.tensor([0.5, 1.0, 2.0]).view(3, 1, 1, 1)
    want = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(x).flatten(1).mean(1)
    assert torch.allclose(stochastic.gaussian_logprob(x, mean, std), want, atol=1e-5)
    # a one-dimensional case by hand: x = mean + std -> -1/2 - log std - log sqrt(2 pi)
    lp = stochastic.gaussian_logprob(torch.tensor([[3.0]]), torch.tensor([[1.0]]), torch.tensor(2.0))
    assert lp.item() == pytest.approx(-0.5 - math.log(2.0) - 0.5 * math.log(2 * math.pi))
    with pytest.raises(ValueError, match="deterministic"):
        stochastic.gaussian_logprob(x, mean, torch.tensor(0.0))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_eta_zero_is_diffusers_ddim_and_eta_one_the_ddpm_posterior(prediction_type):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", prediction_type=prediction_type,
                          clip_sample=False, set_alpha_to_one=False)
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    x, pred = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = int(sched.timesteps[3])
    prev = t - 100
    a = sched.alphas_cumprod
    mean, std, _ = stochastic.ddim_moments(pred, x, a[t], a[prev], 0.0, prediction_type)
    want = sched.step(pred, t, x, eta=0.0).prev_sample
    assert float(std) == 0.0 and torch.allclose(mean, want, atol=1e-5)
    # eta = 1 over one training step is the DDPM posterior q(x_{t-1} | x_t, x0)
    mean, std, x0 = stochastic.ddim_moments(pred, x, a[t], a[t - 1], 1.0, prediction_type)
    beta = 1 - a[t] / a[t - 1]
    var = (1 - a[t - 1]) / (1 - a[t]) * beta
    post_mean = a[t - 1].sqrt() * beta / (1 - a[t]) * x0 + (1 - beta).sqrt() * (1 - a[t - 1]) / (1 - a[t]) * x
    assert float(std) == pytest.approx(float(var.sqrt()), rel=1e-5)
    assert torch.allclose(mean, post_mean, atol=1e-4)


def test_flow_sde_without_noise_is_the_euler_step_and_samples_have_its_moments():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(8)
    g = torch.Generator().manual_seed(2)
    x, v = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    s, s_next = sched.sigmas[2], sched.sigmas[3]
    mean, std, x0 = stochastic.flow_sde_moments(v, x, s, s_next, noise=0.0)
    assert float(std) == 0.0
    assert torch.allclose(mean, sched.step(v, sched.timesteps[2], x).prev_sample.float(), atol=1e-5)
    assert torch.allclose(x0, x - s * v, atol=1e-6)
    mean, std, _ = stochastic.flow_sde_moments(v, x, s, s_next, noise=0.7)
    draws = stochastic.sample(mean[:1], std, torch.Generator().manual_seed(3), n=4000)
    assert torch.allclose(draws.mean(0), mean[0], atol=0.05 * float(std) * 4)
    assert draws.std(0).mean().item() == pytest.approx(float(std), rel=0.03)
    # the log-probability of a draw is the Gaussian's
    lp = stochastic.gaussian_logprob(draws[:2], mean[:1].expand(2, -1, -1, -1), std)
    want = torch.distributions.Normal(mean[0], float(std)).log_prob(draws[:2]).flatten(1).mean(1)
    assert torch.allclose(lp, want, atol=1e-5)
    with pytest.raises(ValueError, match="less"):
        stochastic.flow_sde_moments(v, x, s_next, s)


CASES = {"sd": (tiny_pipelines.tiny_sd, 32), "sdxl": (tiny_pipelines.tiny_sdxl, 32), "sd3": (tiny_pipelines.tiny_sd3, 32), "flux": (tiny_pipelines.tiny_flux, 16),
         "pixel-v": (tiny_pipelines.tiny_pixel, 16)}


@pytest.mark.parametrize("case", list(CASES))
def test_sampler_steps_and_logprobs_on_tiny_models(case):
    from alignment.lora_setup import adapter_disabled, add_lora
    from alignment.config import TrainConfig

    torch.set_num_threads(1)
    build, side = CASES[case]
    adapter = ImageAdapter(build(), model=f"tiny-{case}")
    sampler = adapter.stochastic_sampler(steps=4, guidance=3.0, eta=1.0, size=side)
    module = adapter.trainable_module()
    g = torch.Generator().manual_seed(0)
    x = sampler.noise(g, 2)
    with torch.no_grad():
        pred = sampler.predict(module, x, 0, ["a red circle"] * 2)
        mean, std, x0 = sampler.moments(pred, x, 0)
        nxt = stochastic.sample(mean, std, g, 3).view(2, 3, *x.shape[1:])
        lp = sampler.logprob(module, x, torch.tensor([0, 0]), nxt, ["a red circle"] * 2)
    assert lp.shape == (2, 3) and torch.isfinite(lp).all()
    assert sampler.to_pixels(x0).shape == (2, 3, side, side)
    # a fresh LoRA: the policy's transition probabilities are the reference's, exactly
    cfg = TrainConfig(modality="image", method="spo", model="tiny", data_dir=".", reward_model="taste-saturated")
    add_lora(module, cfg, adapter.lora_target_modules())
    with torch.no_grad():
        policy = sampler.logprob(module, x, torch.tensor([0, 0]), nxt, ["a red circle"] * 2)
        with adapter_disabled(module):
            reference = sampler.logprob(module, x, torch.tensor([0, 0]), nxt, ["a red circle"] * 2)
    assert torch.equal(policy, reference)
    with pytest.raises(ValueError, match="eta"):
        adapter.stochastic_sampler(steps=4, guidance=3.0, eta=0.0, size=side)


def test_qwen_image_has_no_stochastic_step():
    adapter = ImageAdapter(tiny_pipelines.tiny_qwen_image(), model="tiny-qwen")
    with pytest.raises(ValueError, match="no stochastic step"):
        adapter.stochastic_sampler(steps=4, guidance=3.0, eta=1.0)


def test_schedules_chain_and_the_flow_sde_caps_pure_noise_as_flow_grpo():
    # a UNet trajectory lands each step on the next step's timestep, whatever the spacing and step count
    adapter = ImageAdapter(tiny_pipelines.tiny_pixel(), model="tiny-pixel")  # trailing spacing
    for steps in (7, 20):
        s = adapter.stochastic_sampler(steps=steps, guidance=1.0, eta=1.0)
        assert torch.equal(s.a_prev[:-1], s.a_t[1:]) and s.a_prev[-1] == adapter._alphas_cumprod[0]
        assert float(s.time_after(steps - 1)) == 0 and torch.equal(s.time_after(0, 2), s.t_model[1].expand(2))
    # at sigma = 1 the noise scale uses the schedule's largest sigma below 1
    v, x = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    _, std, _ = stochastic.flow_sde_moments(v, x, 1.0, 0.9, noise=0.7, sigma_cap=0.95)
    assert float(std) == pytest.approx(0.7 * math.sqrt(1 / 0.05) * math.sqrt(0.1), rel=1e-5)
    flow = ImageAdapter(tiny_pipelines.tiny_sd3(), model="tiny-sd3").stochastic_sampler(steps=6, guidance=1.0, eta=0.7)
    assert flow.sigma[0] == 1.0 and flow.sigma_cap == pytest.approx(float(flow.sigma[1]))
