"""The built-in video model (models/moving-shapes-video) in the app's loop: generation of the default clips,
the world's rewards on them, a VideoReward-style model (noise-aware, one head per dimension) on per-dimension
votes, Flow-NRG guidance (it raises the guided score, refuses what it cannot do, and stops on non-finite
gradients), and the CLI's generate / vote / train / reward commands."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from alignment.rewards import service
from alignment.rewards.guidance import RewardGuide
from app.generation import generate_candidates
from modalities.protocol import GenerationRequest, ModelRef
from modalities.video import moving, mp4
from modalities.video.adapter import BUILTIN_MODELS, VideoAdapter
from storage import Store

PROMPTS = ["a red circle moving quickly to the left on a white background",
           "two blue squares moving slowly upwards on a black background",
           "a yellow triangle moving quickly downwards on a gray background"]
FAST = {"steps": 6}

pytestmark = pytest.mark.skipif(not (BUILTIN_MODELS["moving-shapes-video"] / "model_index.json").exists(),
                                reason="the built-in video model is not in models/")


@pytest.fixture(scope="module")
def adapter():
    torch.set_num_threads(1)
    return VideoAdapter.load(ModelRef("moving-shapes-video"), device="cpu")


def test_default_clips_are_eight_frames_of_32px_and_deterministic(adapter):
    a = adapter.generate(GenerationRequest(PROMPTS[0], n=2, seeds=(0, 1), params=FAST))
    b = adapter.generate(GenerationRequest(PROMPTS[0], n=1, seeds=(1,), params=FAST))
    assert a[1].data == b[0].data and a[0].data != a[1].data
    frames, fps = mp4.decode(a[0].data)
    assert frames.shape == (8, 32, 32, 3) and fps == 8.0
    assert adapter.stored_latent(a[0].data).shape == (3, 8, 32, 32)
    assert set(moving.judge(PROMPTS[0], frames)) == {"visual", "motion", "text"}
    with pytest.raises(ValueError, match="7 frames is impossible for this model .* exactly 8"):
        adapter.generate(GenerationRequest(PROMPTS[0], n=1, params={"frames": 7}))
    with pytest.raises(ValueError, match="width 30 is impossible"):
        adapter.generate(GenerationRequest(PROMPTS[0], n=1, params={"width": 30}))


def test_world_rewards_score_the_clips(adapter):
    from modalities import registry

    clips = [s.data for s in adapter.generate(GenerationRequest(PROMPTS[1], n=2, seeds=(3, 4), params=FAST))]
    spec = registry.spec("video")
    assert {r.dimension for r in spec.rewards} == {"overall", "visual", "motion", "text"}
    for reward in spec.rewards:
        scores = service.load(None, reward.name, "video").score(PROMPTS[1], clips)
        assert all(np.isfinite(v).all() and len(v) == 2 for v in scores.values()), reward.name
    smooth = service.load(None, "taste-smooth", "video").overall(PROMPTS[1], clips)
    jerky = service.load(None, "taste-jerky", "video").overall(PROMPTS[1], clips)
    assert np.allclose(smooth, -jerky)


@pytest.fixture(scope="module")
def voted(adapter, tmp_path_factory):
    """Per-dimension votes on pairs of the built-in model's clips (the judge and a taste as the user), and a
    noise-aware reward model with a head per dimension trained on them."""
    data = tmp_path_factory.mktemp("video-votes") / "data"
    with Store.open(data) as store:
        for i, prompt in enumerate(PROMPTS * 2):
            a, b = generate_candidates(store, modality="video", prompt=prompt, n=2, seed=100 + 2 * i, params=FAST)
            ca, cb = (mp4.decode(store.media_bytes(g))[0] for g in (a, b))
            ja, jb = moving.judge(prompt, ca), moving.judge(prompt, cb)
            for d in ("visual", "motion", "text"):
                store.vote(a.id, b.id, "tie" if ja[d] == jb[d] else ("a" if ja[d] > jb[d] else "b"), dimension=d)
            ta, tb = moving.taste("centred", [ca, cb])
            store.vote(a.id, b.id, "a" if ta > tb else "b")
        record, metrics = service.train(store, adapter, modality="video", name="videoreward", folds=2,
                                        noise_aware=True)
    return data, record, metrics


def test_a_videoreward_model_learns_a_head_per_dimension(voted):
    data, record, metrics = voted
    assert set(record.dimensions) == {"overall", "visual", "motion", "text"}
    assert set(metrics["per_dimension"]) <= set(record.dimensions) and metrics["per_dimension"]


def test_flow_nrg_raises_the_guided_score_and_refuses_what_it_cannot_do(adapter, voted):
    data, record, _ = voted
    with Store.open(data) as store:
        reward = service.load(store, "videoreward", "video", adapter)

        def own_score(clip: bytes, dim: str) -> float:  # the reward model's score of the clean sample
            return float(reward.score(PROMPTS[0], [clip])[dim][0])

        base = adapter.generate(GenerationRequest(PROMPTS[0], n=1, seeds=(7,), params=FAST))[0]
        up = adapter.generate(GenerationRequest(PROMPTS[0], n=1, seeds=(7,), params=FAST,
                                                guide=RewardGuide(reward, {"overall": 50.0})))[0]
        down = adapter.generate(GenerationRequest(PROMPTS[0], n=1, seeds=(7,), params=FAST,
                                                  guide=RewardGuide(reward, {"overall": -50.0})))[0]
        assert up.data != base.data and up.provenance.params["guide"]["weights"] == {"overall": 50.0}
        assert own_score(down.data, "overall") < own_score(base.data, "overall") < own_score(up.data, "overall")
        for weights, match in (({"overall": 0.0}, "every guidance weight is 0"), ({"colour": 1.0}, "no 'colour'"),
                               ({"overall": float("nan")}, "finite number"), ({"overall": 1e6}, "within")):
            with pytest.raises(ValueError, match=match):
                RewardGuide(reward, weights)
        clean = service.load(store, "taste-centred", "video")
        with pytest.raises(ValueError, match="cannot guide sampling"):
            RewardGuide(clean, {"overall": 1.0})

    class Broken:  # a guide whose gradient blows up
        def gradient(self, adapter, prompts, latents, t):
            return torch.full_like(latents, float("nan"))

        def describe(self):
            return {"weights": {"overall": 1.0}}

    with pytest.raises(ValueError, match="not finite here; lower the guidance weights"):
        adapter.generate(GenerationRequest(PROMPTS[0], n=1, seeds=(7,), params=FAST, guide=Broken()))


def test_guidance_settings_through_the_generation_service(voted):
    data, _, _ = voted
    with Store.open(data) as store:
        g = generate_candidates(store, modality="video", prompt=PROMPTS[2], n=1, seed=5,
                                params={**FAST, "guide_reward": "videoreward", "guide_text": 20.0, "guide_visual": 0.0})
        assert g[0].params["guide"]["weights"] == {"text": 20.0} and "min_noise" not in g[0].params["guide"]
        assert g[0].params["guide_steps"] == FAST["steps"]
        # only the steps that start at noise level 0.5 or above (of 6 steps: those at 1, 0.8 and 0.6)
        late = generate_candidates(store, modality="video", prompt=PROMPTS[2], n=1, seed=5,
                                   params={**FAST, "guide_reward": "videoreward", "guide_text": 20.0,
                                           "guide_min_noise": 0.5})
        assert late[0].params["guide"]["min_noise"] == 0.5 and late[0].params["guide_steps"] == 3
        with pytest.raises(ValueError, match=r"noise level to guide at must be in \[0, 1\)"):
            generate_candidates(store, modality="video", prompt=PROMPTS[2], n=1, seed=5,
                                params={**FAST, "guide_reward": "videoreward", "guide_text": 20.0,
                                        "guide_min_noise": 1.0})
        plain = generate_candidates(store, modality="video", prompt=PROMPTS[2], n=1, seed=5,
                                    params={**FAST, "guide_text": 0.0})
        assert "guide" not in plain[0].params
        with pytest.raises(ValueError, match="needs a reward model"):
            generate_candidates(store, modality="video", prompt=PROMPTS[2], n=1, seed=5,
                                params={**FAST, "guide_text": 5.0})


def test_a_summary_reward_model_reads_the_clip_summary_only_and_guides(adapter, voted):
    """``summary``: the head reads the (predicted) clean clip's statistics and layout (where the shapes are, how
    they move), not the denoiser's pooled block -- fewer numbers, for few votes; it guides like the full one."""
    from modalities.video.features import NAMES

    data, _, _ = voted
    with Store.open(data) as store:
        record, metrics = service.train(store, adapter, modality="video", name="where", folds=2, noise_aware=True,
                                        summary=True, dimensions=["overall"])
        assert record.backbone == "own-summary" and metrics["heldout_accuracy"] is not None
        reward = service.load(store, "where", "video", adapter)
        assert reward.summary and reward.head.mean.shape[0] == 3 * 2 + len(NAMES) + 1  # + the noise level
        base = adapter.generate(GenerationRequest(PROMPTS[0], n=1, seeds=(7,), params=FAST))[0]
        up = adapter.generate(GenerationRequest(PROMPTS[0], n=1, seeds=(7,), params=FAST,
                                                guide=RewardGuide(reward, {"overall": 50.0})))[0]
        score = lambda s: float(reward.score(PROMPTS[0], [s.data])["overall"][0])  # noqa: E731
        assert score(up) > score(base)
        full = service.load(store, "videoreward", "video", adapter)
        full.meta["backbone"] = "own-summary"  # a head that learned another width of features than it is given
        with pytest.raises(ValueError, match="features changed since.*train it again"):
            full.score(PROMPTS[0], [base.data])
        with pytest.raises(ValueError, match="features changed since.*train it again"):
            RewardGuide(full, {"overall": 1.0}).gradient(adapter, [PROMPTS[0]], torch.zeros(1, 3, 8, 32, 32),
                                                        torch.full((1,), 0.5))
