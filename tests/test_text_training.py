"""The same trainer on the text modality: a tiny random Llama, answers judged in the store."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignment.config import TrainConfig
from alignment.train import train
from storage import Store
from tests import tiny_pipelines

PROMPTS = ["Q: Tom has 3 apples and buys 4 more. How many apples?", "Q: A box holds 12 pens; 5 are taken."]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from app.generation import generate_candidates

    root = tmp_path_factory.mktemp("text-trainer")
    model = tiny_pipelines.save_tiny_lm(root / "lm")
    data = root / "data"
    with Store.open(data) as store:
        for p in PROMPTS:
            g = generate_candidates(store, modality="text", prompt=p, n=4, model=str(model), seed=0,
                                    params={"max_tokens": 10})
            store.vote(g[0].id, g[1].id, "a")
            store.vote(g[0].id, g[1].id, "b")  # a second annotator disagrees: a soft label of 0.5
            store.rank([g[1].id, g[3].id, g[0].id, g[2].id])
    return model, data


def _run(tmp_path, world, name, **overrides):
    model, data = world
    cfg = {"modality": "text", "method": "dpo", "model": str(model), "data_dir": str(data), "steps": 3,
           "batch_size": 2, "lr": 1e-2, "lora_rank": 4, "lora_alpha": 8.0, "validation_count": 1,
           "validation_seeds": 1, **overrides}
    run_dir = tmp_path / name
    TrainConfig.from_dict(cfg).save(run_dir)
    return run_dir


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["dpo", "ipo", "simpo", "irepo", "conservative-dpo"])
def test_text_methods_train_and_save_a_peft_adapter(tmp_path, world, method):
    from modalities.protocol import Group, ModelRef
    from modalities.text.adapter import TextAdapter

    model, data = world
    run_dir = _run(tmp_path, world, method, method=method)
    assert train(run_dir) == 0
    rows = _metrics(run_dir)
    assert len(rows) == 3 and all(math.isfinite(r["loss"]) for r in rows)
    if method == "dpo":
        assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at LoRA init
    out = run_dir / "adapter"
    weights = load_file(out / "adapter_model.safetensors")
    assert weights and all(k.startswith("base_model.model.") and "lora_" in k for k in weights)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
    assert json.loads((out / "palate.json").read_text())["method"] == method
    # the saved adapter loads through the modality's own loader and changes the model's scores
    base = TextAdapter.load(ModelRef(str(model)), device="cpu")
    tuned = TextAdapter.load(ModelRef(str(model), adapter=str(out)), device="cpu")
    batch = base.encode([Group(PROMPTS[0], (b"3 + 4 = 7", b"7"))])
    with torch.no_grad():
        s0 = base.score(base.trainable_module(), batch, None)
        s1 = tuned.score(tuned.trainable_module(), tuned.encode([Group(PROMPTS[0], (b"3 + 4 = 7", b"7"))]), None)
    assert not torch.allclose(s0, s1)


def test_trl_style_ipo_and_nll_per_token_train(tmp_path, world):
    """TRL's IPO (per-token mean scores) with TRL's rpo_alpha NLL (per chosen token): the first step's
    loss is the closed form at policy == reference, (0 - 1/(2 beta))^2 + nll * token-NLL, where the
    token-NLL is recomputed here from the base model."""
    from modalities.protocol import Group, ModelRef
    from modalities.text.adapter import TextAdapter

    model, data = world
    run_dir = _run(tmp_path, world, "trl-ipo", method="ipo", beta=0.5, score_reduction="mean",
                   nll_reduction="token", loss_kwargs={"nll": 0.7}, steps=1, lr=1e-9)
    assert train(run_dir) == 0
    row = _metrics(run_dir)[0]
    assert row["margin"] == pytest.approx(0.0, abs=1e-5) and math.isfinite(row["chosen_nll"])
    assert row["loss"] == pytest.approx(1.0 + 0.7 * row["chosen_nll"], rel=1e-4)
    # the NLL is per token: between the per-token NLLs of the answers, not the summed one
    base = TextAdapter.load(ModelRef(str(model)), device="cpu")
    with Store.open(data) as store:
        pairs = store.preference_pairs(modality="text", model=str(model))
        chosen = [store.media_bytes(store.get_generation(p.winner_id)) for p in pairs]
        batch = base.encode([Group(p.prompt, (c, c)) for p, c in zip(pairs, chosen)])
    with torch.no_grad():
        per_token = -base.score(base.model, batch, None, mean=True)[:, 0]
    assert per_token.min().item() - 1e-4 <= row["chosen_nll"] <= per_token.max().item() + 1e-4


def test_text_continues_from_an_adapter(tmp_path, world):
    first = _run(tmp_path, world, "first")
    assert train(first) == 0
    second = _run(tmp_path, world, "second", init_adapter=str(first / "adapter"))
    assert train(second) == 0
    rows = _metrics(second)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # reference = the earlier adapter = start
    a = load_file(first / "adapter" / "adapter_model.safetensors")
    b = load_file(second / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)


def test_lora_targets_choose_the_wrapped_modules(tmp_path, world, capsys):
    """lora_targets: the MLP as well as attention; a continued run keeps its reference's targets; a name the
    model lacks is a clear error."""
    run_dir = _run(tmp_path, world, "mlp", lora_targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                         "up_proj", "down_proj"])
    assert train(run_dir) == 0
    keys = load_file(run_dir / "adapter" / "adapter_model.safetensors").keys()
    assert any(".mlp.gate_proj.lora_A" in k for k in keys) and any(".self_attn.q_proj.lora_B" in k for k in keys)
    more = _run(tmp_path, world, "more", init_adapter=str(run_dir / "adapter"), lora_targets=["q_proj"])
    assert train(more) == 0
    assert "using its LoRA targets down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj" in \
        capsys.readouterr().err
    assert load_file(more / "adapter" / "adapter_model.safetensors").keys() == keys
    assert train(_run(tmp_path, world, "typo", lora_targets=["q_proj", "up_prj"])) == 1  # one typo among good names
    assert "LoRA targets up_prj not found in the model; its linear layers are named down_proj, gate_proj" in \
        capsys.readouterr().err
    with pytest.raises(ValueError, match="lora_targets must be a non-empty list"):
        _run(tmp_path, world, "str", lora_targets="q_proj")


def test_text_from_the_cli(tmp_path):
    from tests.conftest import run_cli

    model = tiny_pipelines.save_tiny_lm(tmp_path / "lm")
    d = tmp_path / "data"
    rows = json.loads(run_cli("generate", "--modality", "text", "--model", str(model), "--prompt", PROMPTS[0], "-n",
                              "3", "--seed", "0", "--max-tokens", "8", "--temperature", "1.0", "--json",
                              data_dir=d, check=True).stdout)
    assert len(rows) == 3 and all(r["params"]["max_tokens"] == 8 for r in rows)
    assert (d / rows[0]["path"].split(str(d) + "/")[-1]).read_bytes()  # the answer text is stored
    run_cli("vote", "--ranking", str(rows[0]["id"]), str(rows[1]["id"]), str(rows[2]["id"]), data_dir=d, check=True)
    proc = run_cli("train", "--modality", "text", "--model", str(model), "--method", "simpo", "--steps", "2",
                   "--batch-size", "2", "--lora-targets", "q_proj,v_proj,down_proj", data_dir=d)
    assert proc.returncode == 0, proc.stderr
    with Store.open(d) as store:
        adapter_dir = Path(store.list_runs()[-1].run_dir) / "adapter"
    assert sorted(json.loads((adapter_dir / "adapter_config.json").read_text())["target_modules"]) == \
        ["down_proj", "q_proj", "v_proj"]
    # the judged answers export as TRL preference rows (prompt, chosen, rejected)
    out = tmp_path / "pairs.jsonl"
    run_cli("export", "dataset", str(out), "--format", "trl-jsonl", data_dir=d, check=True)
    rows_out = [json.loads(line) for line in out.read_text().splitlines()]
    answers = {r["id"]: (d / r["path"].split(str(d) + "/")[-1]).read_text() for r in rows}
    assert len(rows_out) == 3  # a ranking of 3 is 3 pairs
    best = rows_out[0]
    assert best["prompt"] == PROMPTS[0] and best["chosen"] in answers.values() and best["rejected"] in answers.values()
    # the adapter exports as a PEFT folder and as merged weights; plain peft / transformers load them
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from modalities.protocol import ModelRef
    from modalities.text.adapter import TextAdapter

    ours = TextAdapter.load(ModelRef(str(model), adapter=str(adapter_dir)))
    ids = ours.tokenizer(PROMPTS[1], return_tensors="pt")["input_ids"]
    want = ours.model(ids).logits
    for fmt in ("peft", "merged"):
        got = json.loads(run_cli("export", "adapter", "1", str(tmp_path / fmt), "--format", fmt, "--json",
                                 data_dir=d, check=True).stdout)
        assert got["format"] == fmt and got["max_difference"] <= 1e-4
        if fmt == "peft":
            assert json.loads((tmp_path / fmt / "adapter_config.json").read_text())["base_model_name_or_path"] == \
                str(model)
            loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), str(tmp_path / fmt))
        else:
            assert not (tmp_path / fmt / "adapter_config.json").exists()
            loaded = AutoModelForCausalLM.from_pretrained(tmp_path / fmt)
        assert (loaded(ids).logits - want).abs().max() < 1e-4
    default = json.loads(run_cli("export", "adapter", "1", str(tmp_path / "default"), "--json", data_dir=d,
                                 check=True).stdout)
    assert default["format"] == "peft"
    wrong = run_cli("export", "adapter", "1", str(tmp_path / "k.safetensors"), "--format", "kohya", data_dir=d)
    assert wrong.returncode == 2 and "text adapters export as peft, merged" in wrong.stderr
    bad = run_cli("generate", "--modality", "text", "--model", str(model), "--prompt", "x", "--steps", "3", data_dir=d)
    assert bad.returncode == 2 and "--steps do not apply to text models" in bad.stderr
    # without --model the built-in reasoning model is trained; this data dir holds no judgment of it
    none = run_cli("train", "--modality", "text", "--method", "dpo", "--batch-size", "2", data_dir=tmp_path / "d2")
    assert none.returncode != 0 and "too few preference pairs" in none.stderr


def test_dto_from_the_cli_says_when_there_is_nothing_to_learn(tmp_path):
    """A random model solves nothing: DTO stores no pair and says so."""
    from tests.conftest import run_cli

    model = tiny_pipelines.save_tiny_lm(tmp_path / "lm", context=512)  # word problems need the room
    d = tmp_path / "data"
    proc = run_cli("train", "--modality", "text", "--method", "dto", "--model", str(model), "--problems", "2",
                   "--samples", "2", "--mc-samples", "1", "--max-tokens", "16", "--steps", "1", data_dir=d)
    assert proc.returncode == 2, proc.stderr
    assert "DTO round 0: 0 of 4 traces correct, 0 pairs" in proc.stdout
    assert "found no pair to learn from" in proc.stderr
    image = run_cli("train", "--method", "dto", data_dir=d)
    assert image.returncode == 2 and "use --modality text" in image.stderr
    zero = run_cli("train", "--modality", "text", "--method", "dto", "--rounds", "0", data_dir=d)
    assert zero.returncode == 2 and "--rounds must be at least 1, got 0" in zero.stderr
    none = run_cli("train", "--modality", "text", "--method", "dto", "--problems", "4,0", data_dir=d)
    assert none.returncode == 2 and "--problems must be at least 1 per round, got 4,0" in none.stderr
    clash = run_cli("train", "--modality", "text", "--method", "dto", "--problems", "4,8", "--rounds", "3", data_dir=d)
    assert clash.returncode == 2 and "gives 2 per-round counts but --rounds is 3" in clash.stderr
    word = run_cli("train", "--modality", "text", "--method", "dto", "--problems", "many", data_dir=d)
    assert word.returncode == 2 and "expected a number or comma-separated numbers" in word.stderr


def test_dto_round_schedule():
    """--problems N repeats N for --rounds rounds (default 1); a list gives one count per round."""
    from alignment.rounds import _problem_counts, dto_schedule

    def schedule(problems, rounds=None):
        return dto_schedule(_problem_counts(problems), rounds)

    assert schedule("64") == [64] and schedule("64", 3) == [64, 64, 64]
    assert schedule("64,64,256") == [64, 64, 256] and schedule("8,4", 2) == [8, 4]
    with pytest.raises(ValueError, match="gives 2 per-round counts but --rounds is 3"):
        schedule("8,4", 3)


@pytest.mark.slow
def test_dto_rounds_from_the_cli(tmp_path):
    """The whole DTO loop on the shipped reasoning model, two rounds (`--problems 2,3`: one count per round):
    its answers, concise-but-correct traces, pairs stored as votes, SimPO training; round 1 answers the stream's
    next 3 problems with round 0's adapter and continues from it; --rollout-pairs adds correct-over-incorrect
    Monte-Carlo completions. The pairs export as TRL rows and the adapter loads."""
    from modalities.protocol import GenerationRequest, ModelRef
    from modalities.text import arithmetic as world
    from modalities.text.adapter import TextAdapter
    from storage import Store
    from tests.conftest import run_cli

    d = tmp_path / "data"
    proc = run_cli("train", "--modality", "text", "--method", "dto", "--problems", "2,3", "--samples", "2",
                   "--mc-samples", "2", "--steps", "1", "--batch-size", "2", "--rollout-pairs",
                   "--nll", "1", data_dir=d)
    assert proc.returncode == 0, proc.stderr
    assert "DTO round 0:" in proc.stdout and "DTO round 1:" in proc.stdout
    stream = world.problems(5, "train", seed=0)
    with Store.open(d) as store:
        runs = store.list_runs()
        assert [r.status for r in runs] == ["completed", "completed"]
        assert runs[0].config.get("init_adapter") is None
        assert runs[1].config["init_adapter"] == runs[0].run_dir + "/adapter"
        assert runs[1].config["loss_kwargs"] == {"nll": 1.0} and all(r.method == "simpo" for r in runs)
        pairs = store.preference_pairs(modality="text")
        gens = store.list_generations(modality="text")
        by_round = {}
        for g in gens:
            if g.params.get("dto") == "sample":
                by_round.setdefault(g.params.get("adapter") is not None, set()).add(g.prompt)
    # round 0: the first two problems of the stream, by the base model; round 1: the next three, by the adapter
    assert by_round[False] == {p.prompt for p in stream[:2]}
    assert by_round[True] == {p.prompt for p in stream[2:]}
    assert pairs
    out = tmp_path / "dto.jsonl"
    run_cli("export", "dataset", str(out), "--format", "trl-jsonl", data_dir=d, check=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(pairs)
    questions = {p.prompt: p for p in stream}
    for row in rows:  # the built-in model has a chat template: conversational rows, TRL renders them
        (user,), (chosen,), (rejected,) = row["prompt"], row["chosen"], row["rejected"]
        assert user["role"] == "user" and user["content"] in questions and chosen["role"] == "assistant"
        assert chosen["content"] != rejected["content"]
        assert world.judge(questions[user["content"]], chosen["content"]).correct  # never an incorrect trace preferred
    # templated: the prompt exactly as the model saw it when it answered
    run_cli("export", "dataset", str(tmp_path / "t.jsonl"), "--format", "trl-jsonl", "--prompt-style", "templated",
            data_dir=d, check=True)
    templated = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert {r["prompt"] for r in templated} == {f"<bos>Q: {q}\nA:" for q in
                                                {r["prompt"][0]["content"] for r in rows}}
    lm = TextAdapter.load(ModelRef("arith-reasoner", adapter=runs[1].run_dir + "/adapter"))
    (s,) = lm.generate(GenerationRequest(stream[0].prompt, n=1, seeds=(0,)))
    assert "Answer:" in s.text
