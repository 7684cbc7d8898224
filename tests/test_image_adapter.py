"""The image adapter on tiny random pipelines of each family, built from configs.

Exercises the real diffusers code paths (SD-like epsilon and v prediction,
SDXL-like with two text encoders, SD3-like flow transformer): save, load,
generate (deterministic per seed), encode (with its cache), score (the
modality contract: shape, dtype, shared noise and t, generator use,
gradients), and policy == reference at a fresh LoRA.
"""
from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

from modalities.contract import check_adapter
from modalities.image.adapter import ImageAdapter, ModelLoadError
from modalities.protocol import GenerationRequest, Group, ModelRef, ScoreKind
from tests import tiny_pipelines

FAMILIES = {
    "pixel": tiny_pipelines.tiny_pixel,
    "sd-epsilon": lambda: tiny_pipelines.tiny_sd("epsilon"),
    "sd-v": lambda: tiny_pipelines.tiny_sd("v_prediction"),
    "sdxl": tiny_pipelines.tiny_sdxl,
    "sd3": tiny_pipelines.tiny_sd3,
}
SETTINGS = {"steps": 2, "width": 32, "height": 32}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def saved(request, tmp_path_factory):
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp(request.param) / "pipe"
    tiny_pipelines.save(FAMILIES[request.param](), path)
    return request.param, path


@pytest.fixture(scope="module")
def adapter(saved, tmp_path_factory):
    name, path = saved
    return ImageAdapter.load(ModelRef(str(path)), cache_dir=tmp_path_factory.mktemp(name + "-cache"))


def test_family_and_kind(saved, adapter):
    name, _ = saved
    assert adapter.family == ("flow" if name == "sd3" else "unet")
    assert adapter.score_kind == (ScoreKind.FLOW if name == "sd3" else ScoreKind.DIFFUSION)
    assert adapter.is_pixel_space == (name == "pixel")
    assert adapter.dtype == torch.float32 and adapter.device.type == "cpu"
    assert adapter.revision and len(adapter.revision) == 12


def test_generate_is_deterministic_per_seed_and_records_provenance(adapter):
    req = GenerationRequest("two small red circles on a blue background", n=2, seeds=(7, 8), params=SETTINGS,
                            negative_prompt="blurry")
    a = adapter.generate(req)
    b = adapter.generate(req)
    assert [s.data for s in a] == [s.data for s in b]
    assert a[0].data != a[1].data
    img = Image.open(io.BytesIO(a[0].data))
    assert img.size == (32, 32) and img.format == "PNG"
    assert "Seed: 7" in img.text["parameters"] and "Negative prompt: blurry" in img.text["parameters"]
    meta = json.loads(img.text["palate"])
    assert meta["seed"] == 7 and meta["steps"] == 2 and meta["negative_prompt"] == "blurry"
    kw = a[0].provenance.storage_kwargs()
    assert kw["modality"] == "image" and kw["seed"] == 7 and kw["params"]["width"] == 32
    assert kw["params"]["dtype"] == "float32" and kw["params"]["device"] == "cpu"
    # the same seed alone gives the same image as inside a batch
    alone = adapter.generate(GenerationRequest(req.prompt, n=1, seeds=(8,), params=SETTINGS, negative_prompt="blurry"))
    assert _pixels(alone[0].data) == pytest.approx(_pixels(a[1].data), abs=2)


def _pixels(data: bytes) -> list[int]:
    return list(Image.open(io.BytesIO(data)).convert("RGB").tobytes())


def _batch(adapter, B=2, K=2):
    samples = adapter.generate(GenerationRequest("a red circle", n=B * K, seeds=tuple(range(B * K)), params=SETTINGS))
    groups = [Group(f"prompt {b}", tuple(s.data for s in samples[b * K:(b + 1) * K])) for b in range(B)]
    return adapter.encode(groups)


def test_encode_shapes_and_cache(adapter):
    batch = _batch(adapter)
    lat = batch.tensors["latents"]
    assert lat.shape[:2] == (2, 2) and lat.dtype == torch.float32
    files = list(adapter.latent_cache.rglob("*.safetensors"))
    assert len(files) == 4
    again = _batch(adapter)  # read back from the cache
    assert torch.equal(again.tensors["latents"], lat)


def test_score_contract(adapter):
    scores = check_adapter(adapter, _batch(adapter))
    assert scores.shape == (2, 2)


def test_policy_equals_reference_at_fresh_lora(adapter):
    from peft import LoraConfig, get_peft_model

    batch = _batch(adapter)
    module = adapter.trainable_module()
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    with torch.no_grad():
        base = adapter.score(module, batch, g())
    peft_model = get_peft_model(module, LoraConfig(r=4, lora_alpha=4, target_modules=adapter.lora_target_modules()))
    try:
        with torch.no_grad():
            policy = adapter.score(peft_model, batch, g())
            with peft_model.disable_adapter():
                reference = adapter.score(peft_model, batch, g())
        assert torch.allclose(policy, base, atol=1e-6) and torch.allclose(reference, base, atol=1e-6)
        # and a LoRA that moved changes the policy but not the reference
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.add_(0.05)
            moved = adapter.score(peft_model, batch, g())
            with peft_model.disable_adapter():
                still = adapter.score(peft_model, batch, g())
        assert not torch.allclose(moved, base, atol=1e-6)
        assert torch.allclose(still, base, atol=1e-6)
    finally:
        peft_model.unload()  # give the module back without LoRA layers


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": "p", "params": {"width": 31, "height": 32, "steps": 2}}, "width 31 is impossible"),
        ({"prompt": "p", "params": {"scheduler": "magic", "steps": 2, "width": 32, "height": 32}}, "unknown scheduler"),
        ({"prompt": "p", "params": {"steps": 0}}, "steps must be between"),
        ({"prompt": "p", "params": {"cfg": 3}}, "unknown image setting"),
    ],
)
def test_bad_settings(adapter, kwargs, message):
    with pytest.raises(ValueError, match=message):
        adapter.generate(GenerationRequest(**kwargs))


def test_scheduler_switch(adapter):
    name = next(iter(adapter.schedulers()))
    out = adapter.generate(GenerationRequest("p", n=1, seeds=(1,), params={**SETTINGS, "scheduler": name}))
    assert json.loads(Image.open(io.BytesIO(out[0].data)).text["palate"])["scheduler"] == name


def test_loading_errors(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="does not exist"):
        ImageAdapter.load(ModelRef(str(tmp_path / "nothing")))
    (tmp_path / "single").mkdir()
    (tmp_path / "single" / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="single model"):
        ImageAdapter.load(ModelRef(str(tmp_path / "single")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="cannot load model 'no-such-org/no-such-model'"):
        ImageAdapter.load(ModelRef("no-such-org/no-such-model"))


def test_missing_component_is_named(tmp_path):
    import shutil

    path = tiny_pipelines.save(tiny_pipelines.tiny_sd(), tmp_path / "pipe")
    shutil.rmtree(path / "vae")
    with pytest.raises(ModelLoadError, match="missing its 'vae' component"):
        ImageAdapter.load(ModelRef(str(path)))


class _Oracle(torch.nn.Module):
    """Predicts the exact training target, knowing x0: the score must then be ~0.

    Written from diffusers' own definitions (DDPMScheduler.get_velocity; the SD3
    training recipe x_t = (1 - s) x0 + s noise, timestep = s * 1000, target
    noise - x0), independently of the adapter's arithmetic.
    """

    def __init__(self, adapter, x0):
        super().__init__()
        from diffusers import DDPMScheduler

        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.family = adapter.family
        self.x0 = x0.flatten(0, 1)
        self.config = adapter.trainable_module().config
        self.dtype = torch.float32
        self.device = torch.device("cpu")
        if adapter.family == "unet":
            self.sched = DDPMScheduler.from_config(adapter.pipe.scheduler.config)
            self.prediction = adapter.pipe.scheduler.config.get("prediction_type", "epsilon")

    def forward(self, sample=None, timestep=None, encoder_hidden_states=None, hidden_states=None, **kw):
        from types import SimpleNamespace

        if self.family == "unet":
            a = self.sched.alphas_cumprod[timestep].view(-1, *([1] * (sample.dim() - 1)))
            eps = (sample - a.sqrt() * self.x0) / (1 - a).sqrt()
            out = eps if self.prediction == "epsilon" else self.sched.get_velocity(self.x0, eps, timestep)
        else:
            s = (timestep / 1000).view(-1, *([1] * (hidden_states.dim() - 1)))
            noise = (hidden_states - (1 - s) * self.x0) / s
            out = noise - self.x0
        return SimpleNamespace(sample=out)


def test_score_math_against_an_oracle(adapter):
    batch = _batch(adapter)
    oracle = _Oracle(adapter, batch.tensors["latents"])
    with torch.no_grad():
        s = adapter.score(oracle, batch, torch.Generator().manual_seed(0))
        base = adapter.score(adapter.trainable_module(), batch, torch.Generator().manual_seed(0))
    assert s.abs().max() < 1e-4 * max(1.0, base.abs().max().item()), s
    assert base.abs().max() > 1e-3  # a random model is far from the oracle


def test_latent_cache_key_includes_the_model(tmp_path):
    path = tiny_pipelines.save(tiny_pipelines.tiny_sd(), tmp_path / "one")
    cache = tmp_path / "cache"
    a = ImageAdapter.load(ModelRef(str(path)), cache_dir=cache)
    data = a.generate(GenerationRequest("p", n=1, seeds=(1,), params=SETTINGS))[0].data
    a._latent(data)
    other = tiny_pipelines.save(tiny_pipelines.tiny_sd("v_prediction"), tmp_path / "other")
    b = ImageAdapter.load(ModelRef(str(other)), cache_dir=cache)
    b._latent(data)
    assert len(list(cache.rglob("*.safetensors"))) == 2
    assert a.revision != b.revision


def test_unsupported_pipeline_and_device(tmp_path):
    import json as _json

    path = tiny_pipelines.save(tiny_pipelines.tiny_sd(), tmp_path / "pipe")
    index = _json.loads((path / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionImg2ImgPipeline"
    (path / "model_index.json").write_text(_json.dumps(index))
    with pytest.raises(ModelLoadError, match="cannot train yet"):
        ImageAdapter.load(ModelRef(str(path)))
    with pytest.raises(ModelLoadError, match="unknown device 'tpu'"):
        ImageAdapter.load(ModelRef(str(path)), device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA GPU"):
            ImageAdapter.load(ModelRef(str(path)), device="cuda")


def test_lora_adapter_is_really_applied(tmp_path):
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    pipe = tiny_pipelines.tiny_sd()
    path = tiny_pipelines.save(pipe, tmp_path / "pipe")
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=list(ATTENTION)))
    with torch.no_grad():
        for n, p in pipe.unet.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(pipe.unet))
    req = GenerationRequest("p", n=1, seeds=(4,), params=SETTINGS)
    base = ImageAdapter.load(ModelRef(str(path))).generate(req)[0]
    tuned = ImageAdapter.load(ModelRef(str(path), adapter=str(tmp_path / "lora"))).generate(req)[0]
    assert _pixels(base.data) != _pixels(tuned.data)
    assert tuned.provenance.adapter == str(tmp_path / "lora")
    with pytest.raises(ModelLoadError, match="adapter .* does not exist"):
        ImageAdapter.load(ModelRef(str(path), adapter=str(tmp_path / "nope")))


ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
