"""Generic checks every modality adapter must pass (run them in its tests).

``check_adapter(adapter, batch)`` raises :class:`ContractError` listing every
violated rule of :mod:`modalities.protocol`: score shape and dtype, finiteness,
determinism under a seeded generator, noise and t shared within a group
(identical samples score identically; reordering columns reorders scores),
use of the generator for noise-based scores, gradients reaching the trainable
module, and LoRA targets that exist in it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .protocol import ModalityAdapter, ScoreKind, TrainingBatch

if TYPE_CHECKING:
    from torch import nn


class ContractError(AssertionError):
    """An adapter breaks the modality contract; the message lists how."""


def _gen(seed: int, device: torch.device | str) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def lora_targets_found(module: "nn.Module", targets: list[str]) -> dict[str, list[str]]:
    """For each target pattern, the module names it matches the way peft does
    (exact name or dotted suffix)."""
    names = [n for n, _ in module.named_modules() if n]
    return {t: [n for n in names if n == t or n.endswith("." + t)] for t in targets}


def check_adapter(
    adapter: ModalityAdapter,
    batch: TrainingBatch,
    *,
    model: "nn.Module | None" = None,
    seed: int = 0,
    atol: float = 1e-5,
    check_gradients: bool = True,
) -> torch.Tensor:
    """Run every contract check; return the scores of ``batch`` on success."""
    from torch import nn

    errors: list[str] = []
    cls = type(adapter)
    if not isinstance(getattr(cls, "name", None), str) or not cls.name:
        errors.append("class attribute `name` must be a non-empty string")
    if not isinstance(getattr(adapter, "score_kind", None), ScoreKind):
        errors.append("`score_kind` must be a ScoreKind (a class attribute, or set per instance by the loaded model)")
    targets = adapter.lora_target_modules()
    if not targets or not all(isinstance(t, str) and t for t in targets):
        errors.append("lora_target_modules() must return a non-empty list of module names")

    module = adapter.trainable_module()
    if not isinstance(module, nn.Module):
        raise ContractError(f"trainable_module() returned {type(module).__name__}, not an nn.Module")
    missing = [t for t, found in lora_targets_found(module, targets).items() if not found]
    if missing:
        errors.append(f"LoRA targets {missing} match no module of the trainable module")
    model = model if model is not None else module
    device = next(model.parameters()).device if any(True for _ in model.parameters()) else torch.device("cpu")
    B, K = batch.batch_size, batch.group_size

    with torch.no_grad():
        s1 = adapter.score(model, batch, _gen(seed, device))
    if not isinstance(s1, torch.Tensor):
        raise ContractError(f"score returned {type(s1).__name__}, not a Tensor")
    if tuple(s1.shape) != (B, K):
        errors.append(f"score shape {tuple(s1.shape)} != [B, K] = {(B, K)}")
    if s1.dtype != torch.float32:
        errors.append(f"score dtype {s1.dtype} != torch.float32")
    if not torch.isfinite(s1).all():
        errors.append("score has non-finite values")
    if errors:
        raise ContractError("; ".join(errors))

    with torch.no_grad():
        s2 = adapter.score(model, batch, _gen(seed, device))
        if not torch.allclose(s1, s2, atol=atol, rtol=0):
            errors.append("score is not deterministic for a generator in the same state")
        same = batch.select([0] * K)
        s_same = adapter.score(model, same, _gen(seed, device))
        if not torch.allclose(s_same, s_same[:, :1].expand_as(s_same), atol=atol, rtol=0):
            errors.append(
                "identical samples in one group got different scores: noise and t must be drawn once per group "
                "and shared by its K samples"
            )
        perm = list(reversed(range(K)))
        s_perm = adapter.score(model, batch.select(perm), _gen(seed, device))
        if not torch.allclose(s_perm, s1[:, perm], atol=atol, rtol=0):
            errors.append("reordering a group's samples did not reorder their scores the same way")
        if adapter.score_kind in (ScoreKind.DIFFUSION, ScoreKind.FLOW):
            s_other = adapter.score(model, batch, _gen(seed + 1, device))
            if torch.allclose(s_other, s1, atol=0, rtol=0):
                errors.append("score ignores the generator: noise and t must come from it")

    if check_gradients:
        params = [p for p in model.parameters() if p.requires_grad]
        if params:
            for p in params:
                p.grad = None
            scores = adapter.score(model, batch, _gen(seed, device))
            if not scores.requires_grad:
                errors.append("no gradient reaches the model's trainable parameters through score (it has no graph)")
            else:
                scores.sum().backward()
                if not any(p.grad is not None and torch.any(p.grad != 0) for p in params):
                    errors.append("no gradient reaches the model's trainable parameters through score")
            for p in params:
                p.grad = None
    if errors:
        raise ContractError("; ".join(errors))
    return s1
