"""The text adapter on a tiny random Llama built from a config, with a tokenizer
trained offline by the ``tokenizers`` library (no weights are downloaded).

Exercises the real transformers code paths: save/load from a folder (with and
without a chat template), refusals (remote code, missing tokenizer, pickle-only
weights, unknown id offline), generation (deterministic per seed, parameter
errors), encode (prompt and padding masked), score (hand-computed sum and mean,
the modality contract), policy == reference at a fresh LoRA, and a PEFT adapter
applied at load.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from modalities import registry
from modalities.contract import check_adapter
from modalities.protocol import GenerationRequest, Group, ModelRef, ScoreKind
from modalities.text.adapter import ModelLoadError, TextAdapter, lora_targets_for

from tests.tiny_pipelines import CHAT_TEMPLATE, CONTEXT
from tests.tiny_pipelines import save_tiny_lm as _save


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return _save(tmp_path_factory.mktemp("plain") / "lm")


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("chat") / "lm", CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def plain(plain_dir):
    return TextAdapter.load(ModelRef(str(plain_dir)), cache_dir="/nonexistent/ignored")


@pytest.fixture(scope="module")
def chat(chat_dir):
    return TextAdapter.load(ModelRef(str(chat_dir)))


def _groups():
    return [
        Group("Q: Tom has 3 apples. How many?\nA:", (b" 3 apples.", b" The answer is 7, check 7 - 4 = 3.")),
        Group("Q: 2 + 9?\nA:", (b" 11", b" double check 9 + 2 = 11")),
    ]


# -- loading --------------------------------------------------------------------


def test_registered_and_loaded_from_a_folder(plain, plain_dir):
    assert registry.get("text") is TextAdapter
    assert plain.score_kind == ScoreKind.AUTOREGRESSIVE and TextAdapter.name == "text"
    assert plain.model_name == str(plain_dir.resolve())
    assert plain.revision and len(plain.revision) == 12
    assert plain.device.type == "cpu" and plain.dtype == torch.float32
    assert plain.context_length == CONTEXT and not plain.has_chat_template
    assert plain.trainable_module() is plain.model
    assert plain.lora_target_modules() == ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_lora_targets_per_architecture():
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=16,
                                                bos_token_id=0, eos_token_id=0))
    neox = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                            num_attention_heads=2, intermediate_size=32,
                                            bos_token_id=0, eos_token_id=0))
    assert lora_targets_for(gpt2) == ["c_attn", "c_proj"]
    assert lora_targets_for(neox) == ["query_key_value", "dense"]

    class Odd(torch.nn.Module):  # unknown architecture: every linear but the head
        def __init__(self):
            super().__init__()
            self.block = torch.nn.ModuleDict({"mix": torch.nn.Linear(4, 4), "gate": torch.nn.Linear(4, 4)})
            self.lm_head = torch.nn.Linear(4, 9)

    assert lora_targets_for(Odd()) == ["mix", "gate"]


def test_remote_code_is_refused_unless_asked(plain_dir, tmp_path):
    folder = tmp_path / "custom"
    shutil.copytree(plain_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="custom code.*trust_remote_code=True"):
        TextAdapter.load(ModelRef(str(folder)))


def test_missing_tokenizer_pickle_weights_and_bad_folders_are_refused(plain_dir, tmp_path):
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(plain_dir / name, no_tok / name)
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        TextAdapter.load(ModelRef(str(no_tok)))
    pickled = tmp_path / "pickled"
    shutil.copytree(plain_dir, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="safetensors only"):
        TextAdapter.load(ModelRef(str(pickled)))
    with pytest.raises(ModelLoadError, match="does not exist"):
        TextAdapter.load(ModelRef(str(tmp_path / "nothing-here")))
    with pytest.raises(ModelLoadError, match="no config.json"):
        TextAdapter.load(ModelRef(str(tmp_path)))


def test_unknown_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="cannot load model 'nobody-palate/no-such-model'"):
        TextAdapter.load(ModelRef("nobody-palate/no-such-model"))


def test_peft_adapter_is_applied_at_load(plain, plain_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(plain_dir, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "lora")
    tuned = TextAdapter.load(ModelRef(str(plain_dir), adapter=str(tmp_path / "lora")))
    assert tuned.adapter_name == str(tmp_path / "lora")
    assert not any("lora_" in n for n, _ in tuned.model.named_parameters())  # merged into the weights
    batch = plain.encode(_groups())
    with torch.no_grad():
        expected = peft_model(input_ids=batch.tensors["input_ids"][0, :1],
                              attention_mask=batch.tensors["attention_mask"][0, :1]).logits
        got = tuned.model(input_ids=batch.tensors["input_ids"][0, :1],
                          attention_mask=batch.tensors["attention_mask"][0, :1]).logits
        assert torch.allclose(got, expected, atol=1e-4)
        assert not torch.allclose(tuned.score(tuned.model, batch), plain.score(plain.model, batch), atol=1e-4)
    with pytest.raises(ModelLoadError, match="not a PEFT adapter folder"):
        TextAdapter.load(ModelRef(str(plain_dir), adapter=str(tmp_path)))


def _fake_hub(monkeypatch, tmp_path, folder, repo="palate-test/tiny-lm"):
    """A hub cache holding ``folder`` as ``repo`` at one commit, with the hub switched off."""
    import huggingface_hub

    sha = "0123456789abcdef0123456789abcdef01234567"
    root = tmp_path / "hub" / ("models--" + repo.replace("/", "--"))
    shutil.copytree(folder, root / "snapshots" / sha)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(sha)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return repo, sha, root / "snapshots" / sha


def test_hub_id_from_the_cache_records_its_commit(plain_dir, monkeypatch, tmp_path):
    repo, sha, snapshot = _fake_hub(monkeypatch, tmp_path, plain_dir)
    adapter = TextAdapter.load(ModelRef(repo))
    assert adapter.model_name == repo and adapter.revision == sha
    config = json.loads((snapshot / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (snapshot / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="custom code"):
        TextAdapter.load(ModelRef(repo))


# -- generation -------------------------------------------------------------------


def test_generate_is_deterministic_per_seed(plain):
    req = GenerationRequest("Q: Tom has 3 apples and buys 4 more. How many apples?\nA:", n=3, seeds=(1, 2, 1),
                            params={"max_tokens": 12, "temperature": 1.0})
    a = plain.generate(req)
    assert [s.mime for s in a] == ["text/plain"] * 3
    assert a[0].data == a[2].data  # same seed, same text, wherever it sits in the request
    assert a[0].data != a[1].data
    b = plain.generate(GenerationRequest(req.prompt, n=1, seeds=(2,), params=req.params))
    assert b[0].data == a[1].data
    p = a[0].provenance
    assert p.modality == "text" and p.seed == 1 and p.revision == plain.revision and p.model == plain.model_name
    assert p.params["temperature"] == 1.0 and p.params["top_p"] == 0.95 and p.params["max_tokens"] == 12
    assert p.params["dtype"] == "float32" and p.params["device"] == "cpu"
    assert 0 <= p.params["response_tokens"] <= 12 and p.params["finish_reason"] in ("stop", "length")
    assert isinstance(a[0].text, str)


def test_greedy_ignores_the_seed(chat):
    req = GenerationRequest("what is 2 and 9?", n=2, seeds=(5, 6), params={"temperature": 0, "max_new_tokens": 8})
    a, b = chat.generate(req)
    assert a.data == b.data and a.provenance.params["chat_template"] is True


def test_greedy_generation_with_the_cache_matches_full_forward_passes(plain):
    prompt = "Q: A box holds 12 pens; 5 are taken. How many are left?\nA:"
    (s,) = plain.generate(GenerationRequest(prompt, n=1, seeds=(0,), params={"temperature": 0, "max_tokens": 10}))
    ids = plain.prompt_ids(prompt)
    expected = []
    with torch.no_grad():
        for _ in range(10):
            tok = int(plain.model(input_ids=torch.tensor([ids + expected])).logits[0, -1].argmax())
            if tok in plain.eos_token_ids:
                break
            expected.append(tok)
    assert s.provenance.params["response_tokens"] == len(expected) > 0
    assert s.text == plain.tokenizer.decode(expected, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def test_generation_parameter_errors(plain):
    def gen(**params):
        return plain.generate(GenerationRequest("Q: 2 + 9?\nA:", n=1, seeds=(0,), params=params))

    with pytest.raises(ValueError, match=r"unknown text setting\(s\) \['steps'\]; use temperature, top_p, max_tokens"):
        gen(steps=3)
    with pytest.raises(ValueError, match="between 1 and 4096"):
        gen(max_tokens=0)
    with pytest.raises(ValueError, match="between 1 and 4096"):
        gen(max_tokens=5000)
    with pytest.raises(ValueError, match="beyond this model's context of 64"):
        gen(max_tokens=100)
    with pytest.raises(ValueError, match="lower max_tokens"):
        gen(max_tokens=60)
    with pytest.raises(ValueError, match="temperature"):
        gen(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        gen(top_p=0)
    with pytest.raises(ValueError, match="prompt is too long"):
        plain.generate(GenerationRequest("Q: " + "apples and pens " * 40, n=1, seeds=(0,)))
    # the default max_tokens (256) shrinks to the room the context leaves
    (s,) = gen(temperature=0)
    assert s.provenance.params["max_tokens"] == CONTEXT - s.provenance.params["prompt_tokens"]


def test_sampling_defaults_come_from_the_models_generation_config(tmp_path):
    from transformers import GenerationConfig

    d = _save(tmp_path / "lm")
    assert TextAdapter.load(ModelRef(str(d))).default_params() == {"temperature": 0.7, "top_p": 0.95,
                                                                   "max_tokens": 256}
    GenerationConfig(do_sample=True, temperature=0.5, top_p=0.8, max_new_tokens=20).save_pretrained(d)
    lm = TextAdapter.load(ModelRef(str(d)))
    assert lm.default_params() == {"temperature": 0.5, "top_p": 0.8, "max_tokens": 20}
    (s,) = lm.generate(GenerationRequest("Q: 2 + 9?\nA:", n=1, seeds=(0,)))
    assert {k: s.provenance.params[k] for k in ("temperature", "top_p", "max_tokens")} == lm.default_params()
    (s,) = lm.generate(GenerationRequest("Q: 2 + 9?\nA:", n=1, seeds=(0,), params={"temperature": 1.0}))
    assert s.provenance.params["temperature"] == 1.0 and s.provenance.params["max_tokens"] == 20
    GenerationConfig(do_sample=True, temperature=1.0).save_pretrained(d)  # 1.0 is HF's default: not in the diff
    assert TextAdapter.load(ModelRef(str(d))).default_params() == {"temperature": 1.0, "top_p": 1.0,
                                                                   "max_tokens": 256}
    GenerationConfig(do_sample=False, max_new_tokens=7).save_pretrained(d)
    assert TextAdapter.load(ModelRef(str(d))).default_params()["temperature"] == 0.0


def test_batched_sampling_matches_one_seed_at_a_time(plain):
    ids = plain.prompt_ids("Q: Tom has 3 apples and buys 4 more. How many apples?\nA:")
    settings = {"temperature": 1.0, "top_p": 0.9, "max_tokens": 12}
    seeds = [3, 1, 4, 1, 5]
    assert plain._sample_batch(ids, settings, seeds) == [plain._sample(ids, settings, s) for s in seeds]


# -- encode and score ---------------------------------------------------------------


def test_encode_masks_prompt_and_padding(plain, chat):
    for adapter in (plain, chat):
        groups = _groups()
        batch = adapter.encode(groups)
        t = batch.tensors
        B, K, L = t["input_ids"].shape
        assert (B, K) == (2, 2) and set(t) == {"input_ids", "attention_mask", "labels", "response_mask"}
        for b, g in enumerate(groups):
            n_prompt = len(adapter.prompt_ids(g.prompt))
            assert adapter.tokenizer.decode(t["input_ids"][b, 0, :n_prompt]) == adapter.format_prompt(g.prompt)
            for k, answer in enumerate(g.samples):
                n = n_prompt + len(adapter.answer_ids(answer.decode()))
                assert t["attention_mask"][b, k].tolist() == [1] * n + [0] * (L - n)
                assert t["response_mask"][b, k].tolist() == [0] * n_prompt + [1] * (n - n_prompt) + [0] * (L - n)
                assert t["input_ids"][b, k, n - 1] == adapter.tokenizer.eos_token_id
                assert (t["input_ids"][b, k, n:] == adapter.pad_token_id).all()
        assert L == max(int(t["attention_mask"][b, k].sum()) for b in range(B) for k in range(K))
    assert chat.format_prompt("hi") == "<s>user: hi\nassistant:"
    assert plain.format_prompt("Q: hi\nA:") == "Q: hi\nA:"


def test_score_equals_hand_computed_log_probs(plain):
    batch = plain.encode(_groups())
    with torch.no_grad():
        s = plain.score(plain.model, batch, torch.Generator().manual_seed(0))
        m = plain.score(plain.model, batch, None, mean=True)
        plain.length_normalized = True
        try:
            m2 = plain.score(plain.model, batch, None)
        finally:
            plain.length_normalized = False
        g = _groups()[1]
        prompt, answer = plain.prompt_ids(g.prompt), plain.answer_ids(g.samples[1].decode())
        ids = torch.tensor([prompt + answer])
        logp = torch.log_softmax(plain.model(input_ids=ids).logits[0].float(), dim=-1)
        by_hand = [logp[len(prompt) + i - 1, tok].item() for i, tok in enumerate(answer)]
    assert s.shape == (2, 2) and s.dtype == torch.float32
    assert s[1, 1].item() == pytest.approx(sum(by_hand), abs=1e-4)
    assert m[1, 1].item() == pytest.approx(sum(by_hand) / len(by_hand), abs=1e-5)
    assert torch.equal(m, m2)
    plain.score_chunk = 1  # chunked forward passes give the same scores
    try:
        with torch.no_grad():
            assert torch.allclose(plain.score(plain.model, batch, None), s, atol=1e-5)
    finally:
        plain.score_chunk = 8


def test_contract_and_reference_equals_policy_at_a_fresh_lora(chat_dir):
    from peft import LoraConfig

    from modalities import lora

    adapter = TextAdapter.load(ModelRef(str(chat_dir)))  # its own copy: LoRA is added in place
    batch = adapter.encode(_groups())
    module = adapter.trainable_module()
    module.requires_grad_(False)
    lora.add(module, LoraConfig(r=4, lora_alpha=8, target_modules=adapter.lora_target_modules(),
                                init_lora_weights=True), "default")
    for n, p in module.named_parameters():
        p.requires_grad_("lora_" in n)
    policy = check_adapter(adapter, batch)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad(), lora.disabled(module):
        reference = adapter.score(module, batch, gen)
    assert torch.allclose(policy, reference, atol=1e-6)
    assert any("lora_" in n for n, _ in module.named_parameters())
