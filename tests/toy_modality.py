"""A toy modality that lives only in the tests: colour strips made by a tiny flow-matching model.

It is the proof that a modality is one folder plus a registry line: registered with
``modalities.registry.register("tests.toy_modality:SPEC")`` and nothing else, it generates from the
CLI, shows in the web app (its own settings row and its own HTML renderer), is judged, trains with the
methods of its score family (flow), is compared and exported -- with no edit outside ``tests/``.

A candidate is a strip of 8 colour cells (JSON: a list of 8 numbers in [0, 1]), drawn by integrating a
prompt-conditioned velocity field from noise (t = 1) to data (t = 0). The model is built from a seed,
so the "built-in" model needs no files.
"""
from __future__ import annotations

import hashlib
import html
import json
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from modalities import lora
from modalities.protocol import (GenerationRequest, Group, ModalityAdapter, ModelRef, Provenance, Sample, ScoreKind,
                                 TrainingBatch)
from modalities.scoring import denoising_score, flow_interpolate, flow_velocity_target, group_noise, group_uniform_t
from modalities.spec import ModalitySpec, Setting

CELLS = 8
MIME = "application/json"
BUILTIN = "toy-strips"


def _prompt_vec(prompt: str) -> torch.Tensor:
    h = hashlib.sha256(prompt.encode()).digest()
    return torch.tensor([b / 255.0 for b in h[:8]])


class StripVelocity(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc_in = nn.Linear(CELLS + 8 + 1, 32)
        self.fc_out = nn.Linear(32, CELLS)

    def forward(self, x, cond, t):
        return self.fc_out(torch.tanh(self.fc_in(torch.cat([x, cond, t], dim=-1))))


def render(data: bytes, params: Mapping[str, Any]) -> str:
    """The strip as HTML: one coloured cell per value (blue to red)."""
    values = json.loads(data.decode())
    cells = "".join(
        f"<span class='toy-cell' style='display:inline-block;width:18px;height:36px;"
        f"background:rgb({int(255 * v)},40,{int(255 * (1 - v))})' title='{v:.2f}'></span>" for v in values)
    return f"<div class='toy-strip' data-cells='{html.escape(json.dumps(values))}'>{cells}</div>"


class StripAdapter(ModalityAdapter):
    name = "toy_strips"
    score_kind = ScoreKind.FLOW
    default_lora_targets = ("fc_in", "fc_out")

    def __init__(self, model: nn.Module, model_name: str, adapter: str | None = None):
        self.model = model
        self.model_name = model_name
        self.revision = "seed0"
        self.adapter_name = adapter

    @classmethod
    def load(cls, ref: ModelRef, *, device=None, dtype=None, cache_dir=None) -> "StripAdapter":
        if ref.id != BUILTIN:
            raise ValueError(f"the toy modality has one model, {BUILTIN!r}; got {ref.id!r}")
        torch.manual_seed(0)
        model = StripVelocity()
        if ref.adapter:  # a trained adapter, merged in for generation
            lora.load_folder(model, Path(ref.adapter), "loaded")
            lora.activate(model, "loaded")
        return cls(model, ref.id, ref.adapter)

    @property
    def device(self):
        return torch.device("cpu")

    @torch.no_grad()
    def generate(self, request: GenerationRequest) -> list[Sample]:
        steps = int(request.params.get("steps") or 8)
        spread = float(request.params.get("spread") or 1.0)
        out = []
        cond = _prompt_vec(request.prompt)[None]
        for seed in request.resolved_seeds():
            x = spread * torch.randn(1, CELLS, generator=torch.Generator().manual_seed(seed))
            for k in range(steps, 0, -1):  # Euler from t = 1 (noise) to t = 0
                t = torch.full((1, 1), k / steps)
                x = x - (1.0 / steps) * self.model(x, cond, t)
            values = [round(float(v), 4) for v in torch.sigmoid(x[0])]
            prov = Provenance(self.name, self.model_name, seed, {"steps": steps, "spread": spread},
                              revision=self.revision, adapter=self.adapter_name)
            out.append(Sample(json.dumps(values).encode(), MIME, prov))
        return out

    def encode(self, groups: Sequence[Group]) -> TrainingBatch:
        x = torch.tensor([[json.loads(d.decode()) for d in g.samples] for g in groups])
        x0 = torch.logit(x.clamp(1e-4, 1 - 1e-4))  # back to the model's space
        cond = torch.stack([_prompt_vec(g.prompt) for g in groups])
        return TrainingBatch([g.prompt for g in groups], {"x0": x0}, {"cond": cond})

    def score(self, model: nn.Module, batch: TrainingBatch, generator: torch.Generator) -> torch.Tensor:
        x0 = batch.tensors["x0"]
        B, K = x0.shape[:2]
        noise = group_noise(generator, B, K, (CELLS,))
        t = group_uniform_t(generator, B, K)
        xt = flow_interpolate(x0, noise, t)
        cond = batch.conditioning["cond"][:, None].expand(B, K, 8)
        pred = model(xt.reshape(B * K, CELLS), cond.reshape(B * K, 8), t.reshape(B * K, 1)).view(B, K, CELLS)
        return denoising_score(pred, flow_velocity_target(x0, noise))

    def trainable_module(self) -> nn.Module:
        return self.model

    @classmethod
    def export_adapter(cls, adapter_dir, out, fmt, *, base_model, metadata):
        if fmt != "peft":
            raise ValueError("toy strips export as peft only")
        shutil.copytree(adapter_dir, out)
        return Path(out)

    @classmethod
    def verify_export(cls, base_model, adapter_dir, exported, fmt) -> float:
        from peft import PeftModel

        ours = cls.load(ModelRef(base_model, adapter=str(adapter_dir))).model
        torch.manual_seed(0)
        theirs = PeftModel.from_pretrained(StripVelocity(), str(exported))
        x, cond, t = torch.randn(3, CELLS), torch.rand(3, 8), torch.rand(3, 1)
        diff = (ours(x, cond, t) - theirs(x, cond, t)).abs().max().item()
        if diff > 1e-5:
            raise ValueError(f"the export does not reproduce the adapter (max difference {diff:.2e})")
        return diff


SPEC = ModalitySpec(
    name="toy_strips",
    adapter=StripAdapter,
    label="Colour strips (toy)",
    media="application/",
    display="html",
    render=render,
    score_kinds=("flow",),
    export_formats=("peft",),
    default_model=BUILTIN,
    prompt_placeholder="a warm strip fading to cool",
    caption=lambda params: f"{params.get('steps')} steps",
    settings=(
        Setting("steps", int, "integration steps of the toy flow", min=1, max=50),
        Setting("spread", float, "how far the starting noise spreads", min=0.1, max=3.0),
    ),
)
