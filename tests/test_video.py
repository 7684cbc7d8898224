"""Wan (2.1, and 2.2 TI2V's per-token timesteps) and LTX-Video in the video modality, from tiny configs as
diffusers' own tests build them (offline, random weights): loading through the video entry point (and
refusals across modalities), deterministic H.264 MP4 clips carrying the latent they were sampled as, the
frame counts and sizes each family takes, the training denoiser call equal to the pipeline's own, the
modality contract, Flow-DPO / Flow-RWR / SFT through the trainer, and the diffusers and PEFT exports (the
pipeline's own ``load_lora_weights`` makes Palate's tuned clip)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from alignment.config import TrainConfig
from alignment.train import train
from app.generation import generate_candidates
from modalities.contract import check_adapter
from modalities.loading import ModelLoadError
from modalities.protocol import GenerationRequest, Group, ModelRef, ScoreKind
from modalities.video import mp4
from modalities.video.adapter import VideoAdapter
from storage import Store
from tests import tiny_pipelines

PROMPT = "a red circle moving quickly to the left on a white background"
FAMILIES = {
    "wan": (tiny_pipelines.tiny_wan, {"frames": 5, "width": 16, "height": 16, "steps": 2}),
    "ltx": (tiny_pipelines.tiny_ltx, {"frames": 5, "width": 32, "height": 32, "steps": 2}),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    torch.set_num_threads(1)
    build, params = FAMILIES[request.param]
    folder = tiny_pipelines.save(build(), tmp_path_factory.mktemp(request.param) / "model")
    return request.param, folder, params


@pytest.fixture(scope="module")
def adapter(family):
    return VideoAdapter.load(ModelRef(str(family[1])), device="cpu")


def _gen(adapter, family, n=2, seeds=(0, 1), **params):
    return adapter.generate(GenerationRequest(PROMPT, n, seeds=seeds, params={**family[2], **params}))


def test_clips_are_mp4_deterministic_per_seed_and_carry_their_latent(adapter, family):
    name, folder, params = family
    assert adapter.score_kind == ScoreKind.FLOW and adapter.fam.media == "video"
    a, b = _gen(adapter, family), _gen(adapter, family, n=1, seeds=(1,))
    assert a[1].data == b[0].data and a[0].data != a[1].data
    frames, fps = mp4.decode(a[0].data)
    assert a[0].mime == "video/mp4" and frames.shape == (params["frames"], params["height"], params["width"], 3)
    assert fps == adapter.fam.defaults["fps"] and a[0].provenance.params["frames"] == params["frames"]
    kw = adapter._call_kwargs(adapter._params(GenerationRequest(PROMPT, 1, params=params)))
    out = adapter.pipe(prompt=PROMPT, generator=torch.Generator().manual_seed(0), output_type="latent", **kw).frames
    assert torch.allclose(adapter.stored_latent(a[0].data)[None], adapter.to_latent_layout(out.float(), params), atol=1e-5)
    bare = mp4.encode(frames, fps)  # the same pixels, imported: the VAE encodes them
    assert adapter.stored_latent(bare) is None
    assert adapter._latent(bare).shape == adapter.stored_latent(a[0].data).shape


def test_frames_sizes_and_settings_are_checked(adapter, family, tmp_path):
    for params, match in (({"frames": 6}, "6 frames is impossible for this model .* 4k\\+1"),
                          ({"width": 24}, "width 24 is impossible"), ({"steps": 0}, "steps must be"),
                          ({"guidance": float("nan")}, "finite"), ({"fps": 0}, "fps must be"),
                          ({"seconds": 2}, "unknown video setting")):
        with pytest.raises(ValueError, match=match):
            _gen(adapter, family, n=1, seeds=(0,), **params)
    from modalities.image.adapter import ImageAdapter

    with pytest.raises(ModelLoadError, match="video pipeline: load it in the video modality"):
        ImageAdapter.load(ModelRef(str(family[1])))
    sd = tiny_pipelines.save(tiny_pipelines.tiny_sd(), tmp_path / "sd")
    with pytest.raises(ModelLoadError, match="StableDiffusionPipeline, an image pipeline: load it in the image modality, not video"):
        VideoAdapter.load(ModelRef(str(sd)))
    with pytest.raises(ValueError, match="not a video"):
        adapter._latent(b"\x89PNG\r\n\x1a\n not a clip")
    wrong = mp4.encode(np.zeros((4, 16, 16, 3), np.uint8), 8)
    with pytest.raises(ValueError, match="a clip of 4 frames cannot train this model"):
        adapter._latent(wrong)


def test_the_training_call_is_the_pipelines_own(adapter, family):
    """Conditioning built for training reproduces the transformer call the pipeline makes (first step,
    guidance off), in Palate's latent layout [N, C, F, h, w]."""
    seen = []
    tr = adapter.pipe.transformer
    hook = tr.register_forward_hook(lambda m, args, kw, out: seen.append((kw, out[0])), with_kwargs=True)
    try:
        _gen(adapter, family, n=1, seeds=(5,), guidance=1.0)
    finally:
        hook.remove()
    kw, out = seen[0]
    params = family[2]
    x = adapter.to_latent_layout(kw["hidden_states"].float(), params)
    t = kw["timestep"].float().reshape(kw["timestep"].shape[0], -1)[:, 0] / 1000
    cond = adapter._conditioning([PROMPT], x.shape[-2:])
    ours = adapter.fam.predict(adapter.pipe, tr, x, t, cond, adapter.dtype)
    assert torch.allclose(ours, adapter.to_latent_layout(out.float(), params), atol=1e-5)


def test_contract_and_reward_features(adapter, family):
    a = _gen(adapter, family, n=3, seeds=(0, 1, 2))
    batch = adapter.encode([Group(PROMPT, (a[0].data, a[1].data)), Group("two blue squares", (a[2].data, a[0].data))])
    assert batch.tensors["latents"].shape[:2] == (2, 2) and batch.tensors["latents"].dim() == 6
    check_adapter(adapter, batch)
    feats = adapter.reward_features([PROMPT] * 2, [a[0].data, a[1].data])
    assert feats.shape[0] == 2 and torch.isfinite(feats).all()


def test_wan_22_ti2v_takes_a_timestep_per_token(tmp_path):
    folder = tiny_pipelines.save(tiny_pipelines.tiny_wan(expand_timesteps=True), tmp_path / "ti2v")
    adapter = VideoAdapter.load(ModelRef(str(folder)), device="cpu")
    fam = ("wan", folder, FAMILIES["wan"][1])
    seen = []
    hook = adapter.pipe.transformer.register_forward_hook(lambda m, a, kw, out: seen.append((kw, out[0])),
                                                          with_kwargs=True)
    try:
        clip = _gen(adapter, fam, n=1, seeds=(3,), guidance=1.0)[0]
    finally:
        hook.remove()
    kw, out = seen[0]
    assert kw["timestep"].dim() == 2  # [N, tokens]
    t = kw["timestep"][:, 0].float() / 1000
    ours = adapter.fam.predict(adapter.pipe, adapter.pipe.transformer, kw["hidden_states"].float(), t,
                               adapter._conditioning([PROMPT], (2, 2)), adapter.dtype)
    assert torch.allclose(ours, out.float(), atol=1e-5)
    assert adapter.stored_latent(clip.data) is not None


@pytest.mark.parametrize("method", ["flow-rwr", "sft"])
def test_methods_train_through_the_trainer(family, tmp_path, method):
    """Flow-RWR and SFT through the trainer (Flow-DPO trains in the export test below); on Wan only: the score
    is the shared flow score, which the LTX export test trains too."""
    name, folder, params = family
    if name == "ltx":
        pytest.skip("Wan only (see the docstring)")
    data = tmp_path / "data"
    with Store.open(data) as store:
        g = generate_candidates(store, modality="video", prompt=PROMPT, n=3, model=str(folder), seed=0, params=params)
        store.rank([x.id for x in g])
        run_id = store.create_run(modality="video", method=method, base_model=str(folder), config={}).id
    run_dir = tmp_path / "run"
    TrainConfig.from_dict({"modality": "video", "method": method, "model": str(folder), "data_dir": str(data),
                           "steps": 2, "batch_size": 2, "lr": 5e-2, "lora_rank": 4, "lora_alpha": 4.0,
                           "run_id": run_id, "validation_count": 0}).save(run_dir)
    assert train(run_dir) == 0
    base = VideoAdapter.load(ModelRef(str(folder)), device="cpu")
    tuned = VideoAdapter.load(ModelRef(str(folder), adapter=str(run_dir / "adapter")), device="cpu")
    fam = (name, folder, params)
    assert _gen(tuned, fam, n=1, seeds=(0,))[0].data != _gen(base, fam, n=1, seeds=(0,))[0].data


def test_exports_load_in_the_pipelines_own_loader(family, tmp_path):
    """The Adapters tab's exports (diffusers, PEFT) reproduce the tuned clip, and a plain diffusers pipeline's
    ``load_lora_weights`` of the diffusers export makes Palate's tuned clip."""
    from app import services

    name, folder, params = family
    data = tmp_path / "data"
    with Store.open(data) as store:
        g = generate_candidates(store, modality="video", prompt=PROMPT, n=2, model=str(folder), seed=0, params=params)
        store.vote(g[0].id, g[1].id, "a")
        run_id = store.create_run(modality="video", method="flow-dpo", base_model=str(folder), config={}).id
    run_dir = tmp_path / "run"
    TrainConfig.from_dict({"modality": "video", "method": "flow-dpo", "model": str(folder), "data_dir": str(data),
                           "steps": 1, "batch_size": 1, "lr": 5e-2, "lora_rank": 4, "lora_alpha": 4.0,
                           "run_id": run_id, "validation_count": 0}).save(run_dir)
    assert train(run_dir) == 0
    with Store.open(data) as store:
        adapter = store.list_adapters(modality="video")[0]
        assert services.export_formats("video") == ["diffusers", "peft"]
        exported = {fmt: services.export_adapter(store, adapter.id, fmt, out=tmp_path / fmt) for fmt in ("diffusers", "peft")}
    for fmt, (path, diff) in exported.items():
        assert diff is not None and diff < 1e-4, fmt
    import diffusers

    cls = getattr(diffusers, {"wan": "WanPipeline", "ltx": "LTXPipeline"}[name])
    plain = cls.from_pretrained(str(folder))
    plain.load_lora_weights(str(exported["diffusers"][0]))
    tuned = VideoAdapter.load(ModelRef(str(folder), adapter=str(adapter.path)), device="cpu")
    kw = tuned._call_kwargs(tuned._params(GenerationRequest(PROMPT, 1, params=params)))

    def clip(pipe):
        return torch.as_tensor(np.asarray(pipe(prompt=PROMPT, generator=torch.Generator().manual_seed(0),
                                               output_type="np", **kw).frames, dtype=np.float32))

    assert (clip(plain) - clip(tuned.pipe)).abs().max() < 1e-5


def test_reward_guidance_steps_in_each_familys_latent_layout(adapter, family):
    """Flow-NRG's step callback hands the guide latents in Palate's layout [N, C, F, h, w] (LTX's pipeline
    packs them into tokens) at the step's flow time, once per step, and moves the sample."""
    seen = []

    class Push:
        def gradient(self, adapter, prompts, latents, t):
            seen.append((tuple(latents.shape), float(t[0])))
            return torch.ones_like(latents)

        def describe(self):
            return {"reward": "push", "weights": {"overall": 1.0}}

    params = family[2]
    plain = _gen(adapter, family, n=1, seeds=(4,))[0]
    guided = adapter.generate(GenerationRequest(PROMPT, 1, seeds=(4,), params=params, guide=Push()))[0]
    latent = adapter.stored_latent(guided.data)
    assert guided.data != plain.data and guided.provenance.params["guide_steps"] == params["steps"]
    assert [s for s, _ in seen] == [(1, *latent.shape)] * params["steps"]
    assert seen[0][1] == 1.0 and 0 < seen[1][1] < 1  # the first step starts from pure noise
    assert (latent - adapter.stored_latent(plain.data)).mean() > 0  # pushed up, as the gradient says
