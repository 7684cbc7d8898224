"""The LoRA preference trainer on a tiny pixel pipeline and a small store of votes."""
from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignment.config import TrainConfig
from alignment.train import train
from storage import Store
from tests import tiny_pipelines

PROMPTS = ["a small red circle on a blue background", "two large green squares on a white background"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny pixel model and a store with pairwise votes and a ranking on its candidates."""
    from app.generation import generate_candidates

    root = tmp_path_factory.mktemp("trainer")
    model = tiny_pipelines.save(tiny_pipelines.tiny_pixel(), root / "model")
    data = root / "data"
    with Store.open(data) as store:
        for p in PROMPTS:
            g = generate_candidates(store, modality="image", prompt=p, n=4, model=str(model), seed=0,
                                    params={"steps": 2})
            store.vote(g[0].id, g[1].id, "a")
            store.vote(g[2].id, g[3].id, "b")
            store.vote(g[0].id, g[2].id, "tie")  # never a pair
            store.rank([g[1].id, g[3].id, g[0].id, g[2].id])
    return model, data


def _run(tmp_path, world, name, **overrides):
    model, data = world
    cfg = {"modality": "image", "method": "diffusion-dpo", "model": str(model), "data_dir": str(data), "steps": 4,
           "batch_size": 2, "lr": 1e-3, "checkpoint_every": 2, "lora_rank": 4, "lora_alpha": 4.0, **overrides}
    run_dir = tmp_path / name
    TrainConfig.from_dict(cfg).save(run_dir)
    return run_dir


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_trains_logs_and_saves_an_adapter(tmp_path, world):
    model, data = world
    with Store.open(data) as store:
        run = store.create_run(modality="image", method="diffusion-dpo", base_model=str(model), config={})
    run_dir = _run(tmp_path, world, "run", run_id=run.id)
    before = {k: v.clone() for k, v in load_file(model / "unet" / "diffusion_pytorch_model.safetensors").items()}
    assert train(run_dir) == 0
    rows = _metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("loss", "reward_accuracy", "margin", "chosen_reward", "rejected_reward", "grad_norm", "lr"):
        assert all(key in r and r[key] == r[key] for r in rows), key
    assert rows[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at LoRA init: log 2
    weights = load_file(run_dir / "adapter" / "pytorch_lora_weights.safetensors")
    assert weights and all("lora" in k for k in weights)
    assert any(v.abs().max() > 0 for k, v in weights.items() if "lora_B" in k or "lora.up" in k)
    after = load_file(model / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)  # the base model is untouched
    with Store.open(data) as store:
        r = store.get_run(run.id)
        assert r.status == "completed" and r.exit_code == 0 and r.metrics_path.endswith("metrics.jsonl")
        assert r.data_hash and len(r.data_hash) == 16
        assert r.step == r.total_steps == 4 and r.last_metrics == rows[-1]  # progress in the run record
        val = [g for g in store.list_generations(modality="image") if g.run_id == run.id]
        start = [g for g in val if g.params["validation"] == "start"]
        end = [g for g in val if g.params["validation"] == "end"]
        assert len(start) == len(end) == 2 * 2  # 2 training prompts x 2 seeds, at the start and the end
        assert {(g.prompt, g.seed) for g in start} == {(g.prompt, g.seed) for g in end}
        assert end[0].params["adapter"].endswith("adapter") and start[0].params["step"] == 0
        # the base model's own candidates with the same seeds are the start samples (LoRA starts at zero)
        (adapter_row,) = store.list_adapters()
        assert adapter_row.run_id == run.id and adapter_row.metadata["data_hash"] == r.data_hash


def test_resume_equals_an_uninterrupted_run(tmp_path, world):
    straight = _run(tmp_path, world, "straight")
    assert train(straight) == 0
    interrupted = _run(tmp_path, world, "interrupted")
    assert train(interrupted, stop_after=2) == 130
    assert len(_metrics(interrupted)) == 2
    assert train(interrupted) == 1  # a second start without --resume is refused
    assert train(interrupted, resume=True) == 0
    a, b = _metrics(straight), _metrics(interrupted)
    assert [(r["step"], r["loss"], r["margin"]) for r in a] == [(r["step"], r["loss"], r["margin"]) for r in b]
    wa = load_file(straight / "adapter" / "pytorch_lora_weights.safetensors")
    wb = load_file(interrupted / "adapter" / "pytorch_lora_weights.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_rankdpo_and_mapo_run(tmp_path, world):
    assert train(_run(tmp_path, world, "rank", method="rankdpo", steps=2, batch_size=1)) == 0
    assert train(_run(tmp_path, world, "mapo", method="mapo", steps=2)) == 0


def test_clear_errors(tmp_path, world, capsys):
    assert train(_run(tmp_path, world, "big", batch_size=50)) == 1
    assert "too few preference pairs" in capsys.readouterr().err
    assert train(_run(tmp_path, world, "dpo", method="dpo")) == 1
    assert "not for image models" in capsys.readouterr().err
    changed = _run(tmp_path, world, "changed")
    assert train(changed, stop_after=1) == 130
    cfg = json.loads((changed / "config.json").read_text())
    cfg["lr"] = 0.5
    (changed / "config.json").write_text(json.dumps(cfg))
    assert train(changed, resume=True) == 1
    assert "changed since the checkpoint" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown config key"):
        TrainConfig.from_dict({"modality": "image", "method": "dpo", "model": "m", "data_dir": "d", "stpes": 3})
    with pytest.raises(ValueError, match="not a training run directory"):
        TrainConfig.load(tmp_path / "nowhere")


def test_non_finite_loss_stops_and_keeps_the_checkpoint(tmp_path, world, monkeypatch, capsys):
    from alignment import losses

    spec = losses.LOSSES["diffusion-dpo"]
    real = spec.fn
    calls = {"n": 0}

    def flaky(policy, reference, **kw):
        calls["n"] += 1
        loss, m = real(policy, reference, **kw)
        return (loss * float("nan") if calls["n"] > 2 else loss), m

    monkeypatch.setitem(losses.FUNCTIONS, spec.function, flaky)
    run_dir = _run(tmp_path, world, "nan", checkpoint_every=2)
    assert train(run_dir) == 1
    assert "the loss became nan at step 3" in capsys.readouterr().err
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["lora"].values())


# -- precision, optimizer, reference cache, continuing, several processes ------


def test_bf16_and_fp16_autocast_train_on_cpu(tmp_path, world, capsys):
    for precision in ("bf16", "fp16"):
        run_dir = _run(tmp_path, world, precision, mixed_precision=precision, steps=3)
        assert train(run_dir) == 0, capsys.readouterr().err
        assert f"precision {precision}" in capsys.readouterr().err
        rows = _metrics(run_dir)
        assert len(rows) == 3 and all(math.isfinite(r["loss"]) for r in rows)
        assert rows[0]["loss"] == pytest.approx(math.log(2), abs=2e-2)  # policy == reference at LoRA init
        weights = load_file(run_dir / "adapter" / "pytorch_lora_weights.safetensors")
        assert all(v.dtype == torch.float32 for v in weights.values())  # LoRA weights stay float32
        assert any(v.abs().max() > 0 for k, v in weights.items() if "lora_B" in k or "lora.up" in k)
    state = torch.load(tmp_path / "fp16" / "checkpoint.pt", weights_only=True)
    assert state["scaler"] and state["scaler"]["scale"] > 0  # fp16 resumes with its gradient scaler


def test_eight_bit_optimizer(tmp_path, world, capsys, monkeypatch):
    pytest.importorskip("bitsandbytes")  # a dev dependency: installed by scripts/test.sh
    straight = _run(tmp_path, world, "8bit", optimizer="adamw8bit")
    assert train(straight) == 0
    assert "optimizer adamw8bit" in capsys.readouterr().err
    resumed = _run(tmp_path, world, "8bit-resumed", optimizer="adamw8bit")
    assert train(resumed, stop_after=2) == 130
    assert train(resumed, resume=True) == 0
    assert [r["loss"] for r in _metrics(straight)] == [r["loss"] for r in _metrics(resumed)]
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    assert train(_run(tmp_path, world, "no-bnb", optimizer="adamw8bit")) == 1
    assert "needs bitsandbytes" in capsys.readouterr().err


def test_cached_reference_scores(tmp_path, world, monkeypatch):
    from alignment import train as train_mod

    calls = {"reference": 0}
    original = train_mod.adapter_disabled

    @contextlib.contextmanager
    def counting(module):
        calls["reference"] += 1
        with original(module):
            yield module

    monkeypatch.setattr(train_mod, "adapter_disabled", counting)
    # within the first epoch a cached run is the plain run: same order, same noise, same reference
    plain = _run(tmp_path, world, "plain", steps=2)
    cached = _run(tmp_path, world, "cached", steps=2, cache_reference=True)
    assert train(plain) == 0 and train(cached) == 0
    assert [r["loss"] for r in _metrics(plain)] == [r["loss"] for r in _metrics(cached)]
    # over many epochs the reference is scored once per distinct micro-batch, and resume stays exact
    with Store.open(world[1]) as store:
        n = len(train_mod.build_examples(store, TrainConfig.load(cached), None))
    calls["reference"] = 0
    long = _run(tmp_path, world, "long", steps=3 * n, cache_reference=True)
    assert train(long) == 0
    assert calls["reference"] == n // math.gcd(n, 2)  # batch size 2: the micro-batch starts mod n
    resumed = _run(tmp_path, world, "long-resumed", steps=3 * n, cache_reference=True)
    assert train(resumed, stop_after=n) == 130 and train(resumed, resume=True) == 0
    assert [r["loss"] for r in _metrics(long)] == [r["loss"] for r in _metrics(resumed)]


def test_continue_from_an_adapter(tmp_path, world, capsys):
    from modalities.image.adapter import ImageAdapter, ModelLoadError
    from modalities.protocol import GenerationRequest, ModelRef

    model, data = world
    first = _run(tmp_path, world, "first", steps=4, lr=1e-2)
    assert train(first) == 0
    adapter_dir = first / "adapter"
    info = json.loads((adapter_dir / "palate.json").read_text())
    assert info["base_model"] and info["base_revision"] and info["method"] == "diffusion-dpo"
    second = _run(tmp_path, world, "second", steps=3, lr=1e-2, lora_rank=8, init_adapter=str(adapter_dir))
    assert train(second) == 0
    assert "using its LoRA rank 4" in capsys.readouterr().err
    rows = _metrics(second)
    # the reference is the earlier adapter and the new one starts as its copy: the first loss is log 2
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert rows[0]["margin"] == pytest.approx(0.0, abs=1e-6)
    a = load_file(adapter_dir / "pytorch_lora_weights.safetensors")
    b = load_file(second / "adapter" / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    # the saved adapter is whole (base -> tuned): it loads on the base alone and differs from the first
    request = GenerationRequest(PROMPTS[0], n=1, seeds=(3,), params={"steps": 2})
    out = {name: ImageAdapter.load(ModelRef(str(model), adapter=str(d)), device="cpu").generate(request)[0].data
           for name, d in (("first", adapter_dir), ("second", second / "adapter"))}
    assert out["first"] != out["second"]
    # an adapter of another base model is refused, by the trainer and by the loader
    other = tiny_pipelines.save(tiny_pipelines.tiny_pixel(seed=1), tmp_path / "other-model")
    with pytest.raises(ModelLoadError, match="was trained on"):
        ImageAdapter.load(ModelRef(str(other), adapter=str(adapter_dir)), device="cpu")
    wrong = _run(tmp_path, world, "wrong", model=str(other), init_adapter=str(adapter_dir))
    assert train(wrong) == 1
    assert "was trained on" in capsys.readouterr().err


def test_two_processes_under_accelerate_equal_one_with_accumulation(tmp_path, world):
    """accelerate launch --cpu --num_processes 2: each process takes half of every step, the
    gradients are averaged -- the same updates as one process accumulating two micro-batches."""
    import socket
    import subprocess

    one = _run(tmp_path, world, "one", steps=3, grad_accum=2, validation_count=0)
    assert train(one) == 0
    two = _run(tmp_path, world, "two", steps=3, grad_accum=1, validation_count=0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
         "-m", "alignment.train", str(two)],
        capture_output=True, text=True, timeout=1800, cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr
    a, b = _metrics(one), _metrics(two)
    assert [r["step"] for r in b] == [1, 2, 3]  # one writer: the first process
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4)
        assert rb["margin"] == pytest.approx(ra["margin"], rel=1e-3, abs=1e-6)
    wa = load_file(one / "adapter" / "pytorch_lora_weights.safetensors")
    wb = load_file(two / "adapter" / "pytorch_lora_weights.safetensors")
    assert wa.keys() == wb.keys()
    # float sums in another order move a few weights by ~1e-5; a wrong split would move most by ~lr (1e-3)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4
    assert max(wa[k].abs().max().item() for k in wa if "lora_B" in k or "lora.up" in k) > 1e-3


def test_one_step_changes_only_lora_weights(tmp_path, world, monkeypatch):
    """Through the real loop: after a step every base weight is bit-equal to the loaded model's,
    and the LoRA weights moved."""
    from alignment import train as train_mod
    from modalities.image.adapter import ImageAdapter
    from modalities.protocol import ModelRef

    model, _ = world
    fresh = ImageAdapter.load(ModelRef(str(model)), device="cpu").trainable_module().state_dict()
    seen = {}
    original = train_mod.save_adapter

    def capture(adapter, module, out, info=None):
        seen.update({k: v.detach().clone() for k, v in module.state_dict().items()})
        return original(adapter, module, out, info)

    monkeypatch.setattr(train_mod, "save_adapter", capture)
    assert train(_run(tmp_path, world, "one-step", steps=1, validation_count=0)) == 0
    lora = {k: v for k, v in seen.items() if "lora_" in k}
    base = {k.replace(".base_layer", ""): v for k, v in seen.items() if "lora_" not in k}
    assert lora and base.keys() == fresh.keys()
    assert all(torch.equal(base[k], fresh[k]) for k in fresh)
    assert any(v.abs().max() > 0 for k, v in lora.items() if "lora_B" in k)  # B starts at zero, so it moved


def test_resume_refuses_what_would_not_be_exact_and_drops_redone_metrics(tmp_path, world, monkeypatch, capsys):
    import shutil

    from alignment import train as train_mod

    model, data = world
    copy = tmp_path / "data-copy"
    shutil.copytree(data, copy)
    run_dir = _run(tmp_path, (model, copy), "resumable", checkpoint_every=2)
    assert train(run_dir, stop_after=2) == 130
    # a killed run may have logged steps after its checkpoint: they are redone, not repeated
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "loss": 9.9}) + "\n")
    # another precision on this machine (e.g. "auto" on a GPU) would not continue the same run
    monkeypatch.setattr(train_mod, "resolve_precision", lambda setting, device: "bf16")
    assert train(run_dir, resume=True) == 1
    assert "cannot resume exactly: precision no -> bf16" in capsys.readouterr().err
    monkeypatch.undo()
    with Store.open(copy) as store:  # new judgments since the checkpoint change the data
        g = store.list_generations(modality="image")
        store.vote(g[0].id, g[3].id, "a")
        assert train(run_dir, resume=True) == 1
        assert "cannot resume exactly: data" in capsys.readouterr().err
        store.delete_judgment(store.last_judgment_id())
    assert train(run_dir, resume=True) == 0
    assert [r["step"] for r in _metrics(run_dir)] == [1, 2, 3, 4]
    assert _metrics(run_dir)[2]["loss"] != 9.9


def test_contexts_restrict_the_training_pairs(tmp_path, world, capsys):
    """`contexts` trains on the judgments of those contexts only (pairwise and listwise), never on 'compare'."""
    import shutil

    from alignment import train as train_mod

    def examples(w, name, **kw):
        with Store.open(w[1]) as store:
            return train_mod.build_examples(store, TrainConfig.load(_run(tmp_path, w, name, **kw)), None)

    data = tmp_path / "data"
    shutil.copytree(world[1], data)
    with Store.open(data) as store:  # the copy gets one more pairwise vote, made in another context
        gens = store.list_generations(modality="image")
        a, b = gens[0].id, gens[1].id
        store.vote(a, b, "a", context="elsewhere")
    copy = (world[0], data)
    for method in ("diffusion-dpo", "rankdpo"):
        before = examples(world, method, method=method)
        every = examples(copy, method + "-all", method=method)
        same = examples(copy, method + "-c", method=method, contexts=["collect"])
        none = examples(copy, method + "-e", method=method, contexts=["elsewhere"])
        assert before and same == before  # the other context's vote is left out
        if method == "rankdpo":  # rankings only: all of them made in "collect"
            assert every == before and none == []
        else:
            assert every != before and [e["generation_ids"] for e in none] == [[a, b]]
    assert train(_run(tmp_path, world, "nowhere", contexts=["nowhere"])) == 1
    assert "too few preference pairs for this run: 0 for a batch size of 2 in the contexts nowhere" in \
        capsys.readouterr().err
    for bad in (["compare"], [], "collect"):
        with pytest.raises(ValueError, match="compare|contexts must be"):
            _run(tmp_path, world, "bad", contexts=bad)


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def plant_pickle(path: Path, marker: Path) -> None:
    torch.save({"lora": {}, "step": 1, "payload": _Payload(marker)}, path)


def test_a_planted_checkpoint_is_refused_without_running(tmp_path, world, capsys):
    """A pickle planted as checkpoint.pt must not run on --resume: weights_only unpickling refuses it."""
    run_dir = _run(tmp_path, world, "planted")
    marker = tmp_path / "pwned"
    plant_pickle(run_dir / "checkpoint.pt", marker)
    assert train(run_dir, resume=True) == 1
    assert not marker.exists()
    assert "is not a checkpoint Palate wrote" in capsys.readouterr().err
    (run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint at all")
    assert train(run_dir, resume=True) == 1
    assert "is damaged or not a checkpoint" in capsys.readouterr().err
