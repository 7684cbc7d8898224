"""The model families added as table entries (``modalities.diffusion.families``): FLUX.1 and Qwen-Image,
from tiny configs as diffusers' own tests build them (offline, random weights). For each: generation,
the modality contract, two training steps of Flow-DPO through the real trainer, and a diffusers-format
export that a plain ``pipeline.load_lora_weights(...)`` loads and that makes the same image as
Palate's tuned model for a fixed seed. Plus how flow models draw training times."""
from __future__ import annotations

import pytest
import torch

from alignment.config import TrainConfig
from alignment.train import train
from modalities.contract import check_adapter
from modalities.diffusion.families import FAMILIES, sample_flow_t
from modalities.image.adapter import ImageAdapter
from modalities.protocol import GenerationRequest, Group, ModelRef, ScoreKind
from storage import Store
from tests import tiny_pipelines

CASES = {  # family -> (builder, image side)
    "FluxPipeline": (tiny_pipelines.tiny_flux, 16),
    "QwenImagePipeline": (tiny_pipelines.tiny_qwen_image, 32),
}


@pytest.fixture(scope="module", params=list(CASES))
def family(request, tmp_path_factory):
    torch.set_num_threads(1)
    build, side = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    folder = tiny_pipelines.save(build(), root / "model")
    return request.param, folder, side, root


def _settings(side: int) -> dict:
    return {"steps": 2, "width": side, "height": side}


def test_generate_contract_train_and_export(family):
    name, folder, side, root = family
    adapter = ImageAdapter.load(ModelRef(str(folder)), cache_dir=root / "cache")
    assert adapter.fam is FAMILIES[name] and adapter.score_kind == ScoreKind.FLOW
    # 1. generation: deterministic per seed, at the size asked for
    req = GenerationRequest("a red circle", n=2, seeds=(3, 4), params=_settings(side))
    a, b = adapter.generate(req), adapter.generate(req)
    assert [s.data for s in a] == [s.data for s in b] and a[0].data != a[1].data
    assert a[0].provenance.params["width"] == side
    # 2. the modality contract (shapes, shared noise and t, determinism, gradients, LoRA targets)
    batch = adapter.encode([Group("a red circle", (a[0].data, a[1].data)),
                            Group("two blue squares on a white background", (a[1].data, a[0].data))])
    check_adapter(adapter, batch)
    # 3. two Flow-DPO steps through the trainer, on votes in a store
    data = root / "data"
    with Store.open(data) as store:
        for prompt, seeds in (("a red circle", (0, 1, 2)), ("two blue squares", (5, 6, 7))):
            gens = [store.add_generation(prompt=prompt, modality="image", model=adapter.model_name, media=s.data,
                                         mime=s.mime, seed=s.provenance.seed, params=dict(s.provenance.params))
                    for s in adapter.generate(GenerationRequest(prompt, n=3, seeds=seeds, params=_settings(side)))]
            store.rank([g.id for g in gens])
        run = store.create_run(modality="image", method="flow-dpo", base_model=adapter.model_name, config={})
    run_dir = root / "run"
    TrainConfig(modality="image", method="flow-dpo", model=str(folder), data_dir=str(data), steps=2, batch_size=2,
                lr=0.05, lora_rank=4, lora_alpha=4.0, run_id=run.id, validation_count=0).save(run_dir)
    assert train(run_dir) == 0
    out = run_dir / "adapter"
    # 4. the export (diffusers format) loads with a plain pipeline.load_lora_weights and makes Palate's image
    from diffusers import DiffusionPipeline

    from modalities.image.export import export_adapter

    exported = export_adapter(out, root / "exported", "diffusers", metadata={"run_id": run.id})
    plain = DiffusionPipeline.from_pretrained(str(folder))
    plain.load_lora_weights(str(exported))
    tuned = ImageAdapter.load(ModelRef(str(folder), adapter=str(out)))
    base = ImageAdapter.load(ModelRef(str(folder)))
    kwargs = dict(num_inference_steps=2, height=side, width=side, output_type="pt",
                  **FAMILIES[name].guidance_kwargs(FAMILIES[name].defaults["guidance"], None, 1))

    def image(pipe):
        return pipe(["a red circle"], generator=[torch.Generator().manual_seed(0)], **kwargs).images.float()

    ours, theirs, untuned = image(tuned.pipe), image(plain), image(base.pipe)
    assert (ours - theirs).abs().max() < 1e-5
    assert (ours - untuned).abs().max() > 1e-4  # the adapter really changes the image


def test_flow_training_times():
    """Logit-normal (the default), the scheduler's shifted density, or uniform; once per group."""
    g = torch.Generator().manual_seed(0)
    for how in ("logit-normal", "shifted", "uniform"):
        t = sample_flow_t(g, 4000, 2, how, shift=3.0)
        assert t.shape == (4000, 2) and torch.equal(t[:, 0], t[:, 1]) and 0 < t.min() and t.max() < 1
    mid = lambda t: ((t > 0.4) & (t < 0.6)).float().mean().item()  # noqa: E731
    logit = sample_flow_t(torch.Generator().manual_seed(1), 20000, 1, "logit-normal")
    uniform = sample_flow_t(torch.Generator().manual_seed(1), 20000, 1, "uniform")
    shifted = sample_flow_t(torch.Generator().manual_seed(1), 20000, 1, "shifted", shift=3.0)
    assert mid(logit) > 1.3 * mid(uniform)  # logit-normal puts more mass in the middle
    assert shifted.mean() > uniform.mean() + 0.1  # a shift > 1 moves t towards noise
    with pytest.raises(ValueError, match="flow_t must be one of"):
        sample_flow_t(g, 1, 1, "normal")


def test_flow_t_is_a_training_option(tmp_path):
    folder = tiny_pipelines.save(tiny_pipelines.tiny_sd3(), tmp_path / "sd3")
    adapter = ImageAdapter.load(ModelRef(str(folder)))
    assert adapter.flow_t == "logit-normal"
    adapter.configure_training(flow_t="uniform")
    assert adapter.flow_t == "uniform"
    with pytest.raises(ValueError, match="flow_t must be one of"):
        adapter.configure_training(flow_t="beta")
    with pytest.raises(ValueError, match="unknown image training option"):
        adapter.configure_training(steps=3)
