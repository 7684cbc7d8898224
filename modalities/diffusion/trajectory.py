"""Sampling trajectories step by step with log-probabilities: the stochastic step of a diffusers model.

:class:`StochasticSampler` holds a schedule (DDIM timesteps for UNet models, the flow scheduler's
sigmas for flow models, with the family's own shift) and answers, for a latent at step ``i``: the
guided prediction, the Gaussian of the next latent (:mod:`.stochastic`), the predicted clean
latent, and the log-probability of a given next latent under any module (the trained one with its
LoRA, or the same with it disabled: the reference). Online methods (SPO's step-wise resampler) drive
it; generation keeps the pipeline's own samplers.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from . import stochastic
from .families import decode_latent, vae_scale


class StochasticSampler:
    """A stochastic sampler over ``adapter``'s pipeline (see the module docstring). ``eta``: DDIM's
    eta for UNet models, the SDE's noise scale for flow models (> 0: log-probabilities need noise)."""

    def __init__(self, adapter: Any, *, steps: int, guidance: float, eta: float, size: int | None = None,
                 negative_prompt: str = ""):
        fam = adapter.fam
        if not fam.stochastic:
            raise ValueError(f"{fam.name} models have no stochastic step with log-probabilities in Palate yet; "
                             "online methods such as SPO run on SD 1.5/2.x, SDXL, SD3, FLUX and the built-in model")
        if steps < 2:
            raise ValueError(f"a trajectory needs 2 or more steps, got {steps}")
        if not eta > 0:
            raise ValueError(f"eta (the step's noise) must be > 0 for log-probabilities, got {eta}")
        self.adapter, self.pipe, self.fam = adapter, adapter.pipe, fam
        self.steps, self.guidance, self.eta, self.negative = int(steps), float(guidance), float(eta), negative_prompt
        self.cfg = fam.cfg and self.guidance > 1.0
        size = int(size or adapter.native_size)
        if size % adapter.size_multiple:
            raise ValueError(f"size {size} is not a multiple of {adapter.size_multiple} for this model")
        scale = vae_scale(self.pipe)
        self.hw = (size // scale, size // scale)
        vae = getattr(self.pipe, "vae", None)
        self.channels = int(vae.config.latent_channels) if vae is not None else \
            int(adapter.trainable_module().config.in_channels)
        if adapter.family == "unet":
            from diffusers import DDIMScheduler

            sched = DDIMScheduler.from_config(self.pipe.scheduler.config)
            sched.set_timesteps(self.steps)
            ts = sched.timesteps.long()
            alphas = adapter._alphas_cumprod
            self.t_model = ts  # what the UNet gets
            self.a_t = alphas[ts]
            # each step lands on the next step's timestep; the last on the first training step's alpha (not 1):
            # it keeps a little noise, so it has a log-probability too
            self.a_prev = torch.cat([alphas[ts[1:]], alphas[:1]])
        else:
            from diffusers import FlowMatchEulerDiscreteScheduler

            sched = FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)
            kwargs: dict[str, Any] = {}
            if sched.config.get("use_dynamic_shifting", False):  # FLUX: the shift depends on the image size
                seq = (self.hw[0] // fam.patch) * (self.hw[1] // fam.patch)
                c = sched.config
                slope = (c.get("max_shift", 1.15) - c.get("base_shift", 0.5)) / (
                    c.get("max_image_seq_len", 4096) - c.get("base_image_seq_len", 256))
                kwargs["mu"] = seq * slope + c.get("base_shift", 0.5) - slope * c.get("base_image_seq_len", 256)
                kwargs["sigmas"] = np.linspace(1.0, 1.0 / self.steps, self.steps)
            sched.set_timesteps(self.steps, **kwargs)
            sig = sched.sigmas.float()
            self.t_model = sig[:-1]  # the predict functions take sigma (SD3's scales it by 1000 itself)
            self.sigma, self.sigma_next = sig[:-1], sig[1:]
            below = sig[(sig < 1) & (sig > 0)]
            self.sigma_cap = float(below.max()) if len(below) else stochastic.SIGMA_CAP
        self.forwards = 0  # denoiser rows evaluated (a guided row counts twice)

    # -- noise and predictions ----------------------------------------------------------------------------
    def noise(self, generator: torch.Generator, n: int = 1) -> torch.Tensor:
        """Initial latents [n, C, h, w] from ``generator``."""
        x = torch.randn((n, self.channels, *self.hw), generator=generator, device=generator.device)
        return x.to(self.adapter.device)

    def _index(self, i: int | torch.Tensor, n: int) -> torch.Tensor:
        idx = torch.as_tensor(i, dtype=torch.long).reshape(-1)
        if idx.numel() == 1:
            idx = idx.expand(n)
        if bool(((idx < 0) | (idx >= self.steps)).any()):
            raise ValueError(f"step index out of range 0..{self.steps - 1}")
        return idx

    def predict(self, module: torch.nn.Module, x: torch.Tensor, i: int | torch.Tensor,
                prompts: Sequence[str]) -> torch.Tensor:
        """The guided denoiser output (epsilon, v or velocity) for latents ``x`` at step(s) ``i``."""
        n = x.shape[0]
        idx = self._index(i, n)
        dev = self.adapter.device
        t = self.t_model[idx].to(dev)
        if self.cfg:
            neg = self.negative or (" " if self.fam.true_cfg else "")
            cond = self.adapter._conditioning([neg] * n + list(prompts), self.hw)
            inp, t = torch.cat([x, x]), torch.cat([t, t])
        else:
            cond = self.adapter._conditioning(list(prompts), self.hw)
            inp = x
        cond = {k: v.to(dev) for k, v in cond.items()}
        self.forwards += inp.shape[0]
        out = self.fam.predict(self.pipe, module, inp, t, cond, self.adapter.dtype).float()
        if self.cfg:
            uncond, text = out.chunk(2)
            out = uncond + self.guidance * (text - uncond)
        return out

    def moments(self, pred: torch.Tensor, x: torch.Tensor, i: int | torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, std, predicted x0) of the next latent after ``x`` at step(s) ``i``."""
        idx = self._index(i, x.shape[0])
        if self.adapter.family == "unet":
            return stochastic.ddim_moments(pred, x, self.a_t[idx].to(x.device), self.a_prev[idx].to(x.device),
                                           self.eta, self.adapter.prediction_type)
        return stochastic.flow_sde_moments(pred, x, self.sigma[idx].to(x.device), self.sigma_next[idx].to(x.device),
                                           self.eta, self.sigma_cap)

    def time_after(self, i: int, n: int = 1) -> torch.Tensor:
        """The model time of a latent drawn at step ``i`` (the next step's; 0 after the last step)."""
        t = self.t_model[i + 1] if i + 1 < self.steps else torch.zeros((), dtype=self.t_model.dtype)
        return t.expand(n).to(self.adapter.device)

    def draw(self, mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator, n: int = 1) -> torch.Tensor:
        """``n`` next latents per row from N(mean, std^2): [n * N, ...]."""
        return stochastic.sample(mean, std, generator, n)

    def x0(self, pred: torch.Tensor, x: torch.Tensor, i: int | torch.Tensor) -> torch.Tensor:
        """The clean latent the prediction at step(s) ``i`` points to."""
        idx = self._index(i, x.shape[0])
        if self.adapter.family == "unet":
            return stochastic.x0_eps(pred, x, self.a_t[idx].to(x.device), self.adapter.prediction_type)[0]
        s = self.sigma[idx].to(x.device).reshape(-1, *([1] * (x.dim() - 1)))
        return x.float() - s * pred.float()

    def logprob(self, module: torch.nn.Module, x: torch.Tensor, i: torch.Tensor, nxt: torch.Tensor,
                prompts: Sequence[str]) -> torch.Tensor:
        """Log-probabilities [B, K] of the next latents ``nxt`` [B, K, ...] after ``x`` [B, ...] at steps
        ``i`` [B] under ``module`` (one guided forward per row; gradients flow when enabled)."""
        pred = self.predict(module, x, i, prompts)
        mean, std, _ = self.moments(pred, x, i)
        K = nxt.shape[1]
        return torch.stack([stochastic.gaussian_logprob(nxt[:, k].to(mean.device), mean, std) for k in range(K)], dim=1)

    def to_pixels(self, x0: torch.Tensor) -> torch.Tensor:
        """Clean latents -> images [N, 3, H, W] in [-1, 1] (through the VAE for latent models)."""
        return decode_latent(self.pipe, self.fam, x0)
