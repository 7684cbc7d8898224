"""The text modality: one adapter over Hugging Face causal language models.

Any ``AutoModelForCausalLM`` checkpoint loads, by hub id or local folder
(safetensors only; custom modelling code only with ``trust_remote_code=True``).
Score (see :mod:`modalities.protocol`): the sum of the response tokens'
log-probabilities given the prompt, prompt and padding masked -- or their
per-token mean when :attr:`TextAdapter.length_normalized` is set (SimPO).
The score draws no random numbers: the generator is accepted and unused.

Prompt format, the same for ``generate`` and ``encode``: with a chat template
in the tokenizer, the prompt is one user message rendered with
``add_generation_prompt=True``; without one, the prompt text as it is (a small
model trained on plain "Q: ...\\nA:" text is given exactly what the user typed,
so its own data decides the format). A response is the answer's tokens plus the
tokenizer's end-of-sequence token, so the score includes the choice to stop.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Sequence

import torch

from storage import conversation

from .. import loading
from ..loading import (ModelLoadError, adapter_mismatch, check_adapter_base, check_device, folder_revision,
                       hub_unavailable, read_json, refuse_remote_code)
from ..protocol import GenerationRequest, Group, ModalityAdapter, ModelRef, Provenance, Sample, ScoreKind, TrainingBatch
from ..scoring import token_logprob_score

__all__ = ["TextAdapter", "ModelLoadError", "BUILTIN_MODELS", "DEFAULT_PARAMS", "lora_targets_for"]

REPO_ROOT = Path(__file__).resolve().parents[2]
# alias -> folder of a built-in model shipped in this repository
BUILTIN_MODELS: dict[str, Path] = {"arith-reasoner": REPO_ROOT / "models" / "arith-reasoner"}
DEFAULT_MODEL = "arith-reasoner"  # the arithmetic-world reasoning model (scripts/train_text_default.py)

DEFAULT_PARAMS: dict[str, Any] = {"temperature": 0.7, "top_p": 0.95, "max_tokens": 256}
PARAM_ALIASES = {"max_new_tokens": "max_tokens"}
MAX_TOKENS = 4096
MAX_TEMPERATURE = 10.0
SCORE_CHUNK = 8  # rows (samples) per forward pass in ``score``

# Attention projections LoRA wraps, per architecture (``config.model_type``).
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    **{t: ("q_proj", "k_proj", "v_proj", "o_proj") for t in (
        "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text",
        "olmo", "olmo2", "granite", "smollm3", "starcoder2", "cohere", "stablelm")},
    "gpt2": ("c_attn", "c_proj"),
    "gpt_neox": ("query_key_value", "dense"),
    "falcon": ("query_key_value", "dense"),
    "bloom": ("query_key_value", "dense"),
    "phi": ("q_proj", "k_proj", "v_proj", "dense"),
    "phi3": ("qkv_proj", "o_proj"),
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj"),
    "gptj": ("q_proj", "k_proj", "v_proj", "out_proj"),
}
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length", "max_sequence_length", "max_seq_len")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                    "sentencepiece.bpe.model", "tokenizer_config.json")


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------


def resolve_model(model: str) -> tuple[str, Path | None]:
    """(name to record, local folder or None for a hub id); the built-in alias included."""
    return loading.resolve_model(model, BUILTIN_MODELS)


def _check_model_folder(folder: Path, trust_remote_code: bool) -> None:
    if not folder.exists():
        raise ModelLoadError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise ModelLoadError(f"{folder} is a file; point at the folder a model was saved to with save_pretrained()")
    if not (folder / "config.json").is_file():
        hint = " It is a diffusers pipeline, not a language model." if (folder / "model_index.json").is_file() else ""
        raise ModelLoadError(
            f"{folder} is not a transformers model folder (no config.json).{hint} Use a folder saved with "
            "model.save_pretrained() and tokenizer.save_pretrained(), or a hub id such as Qwen/Qwen2.5-0.5B-Instruct."
        )
    configs = {"config.json": read_json(folder / "config.json")}
    if (folder / "tokenizer_config.json").is_file():
        configs["tokenizer_config.json"] = read_json(folder / "tokenizer_config.json")
    refuse_remote_code(str(folder), configs, trust_remote_code)
    if not any(folder.glob("*.safetensors")):
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth")):
            raise ModelLoadError(
                f"{folder} holds only pickle weights (.bin/.pt); Palate loads safetensors only, since unpickling "
                "can run arbitrary code. Convert it once with model.save_pretrained(..., safe_serialization=True)."
            )
        raise ModelLoadError(f"model folder {folder} has no weights (*.safetensors)")
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelLoadError(
            f"model folder {folder} has no tokenizer (none of {', '.join(_TOKENIZER_FILES[:4])}, ...); "
            "save it beside the weights with tokenizer.save_pretrained(folder)"
        )


def _hub_config(ref: ModelRef, trust_remote_code: bool) -> str | None:
    """Fetch (or find in the cache) the hub model's config; refuse custom code; return its commit."""
    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(ref.id, "config.json", revision=ref.revision))
    except Exception as e:  # huggingface_hub raises many types; all mean "cannot get it"
        raise hub_unavailable(ref.id, e) from None
    configs = {"config.json": read_json(path)}
    try:
        tok_path = Path(hf_hub_download(ref.id, "tokenizer_config.json", revision=ref.revision))
        configs["tokenizer_config.json"] = read_json(tok_path)
    except ModelLoadError:
        raise
    except Exception:
        pass  # not every model has one; the tokenizer load below says so if it has no tokenizer at all
    refuse_remote_code(ref.id, configs, trust_remote_code)
    # the cache keeps files under snapshots/<commit>/: record the exact commit the weights come from
    if path.parent.parent.name == "snapshots":
        return path.parent.name
    return ref.revision


def _default_dtype(device: str) -> torch.dtype:
    if device == "cpu":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_causal_lm(ref: ModelRef, *, device: str | None = None, dtype: torch.dtype | None = None,
                   trust_remote_code: bool = False, builtins: dict[str, Path] | None = None,
                   retrain: str = "scripts/train_text_default.py"):
    """(model, tokenizer, name to record, revision) for a causal LM by hub id or local folder (or an alias of
    ``builtins``, the text modality's built-in models by default; ``retrain`` names the script that makes them)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = check_device(device)
    builtins = BUILTIN_MODELS if builtins is None else builtins
    name, folder = loading.resolve_model(ref.id, builtins)
    if folder is not None:
        if name in builtins and not folder.exists():
            raise ModelLoadError(f"the built-in model {name!r} is missing from {folder}; restore it with "
                                 f"`git checkout -- models/` or retrain it with `python {retrain}`")
        _check_model_folder(folder, trust_remote_code)
        source, revision = str(folder), ref.revision
    else:
        source, revision = ref.id, _hub_config(ref, trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise ModelLoadError(
            f"cannot load the tokenizer of {source!r}, and a language model cannot be used without one: "
            f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        ) from None
    if tokenizer is None or not callable(getattr(tokenizer, "encode", None)):
        raise ModelLoadError(f"{source!r} has no usable tokenizer")
    dtype = dtype or _default_dtype(device)
    try:
        # safetensors only: never unpickle .bin weights from a folder or the hub
        model = AutoModelForCausalLM.from_pretrained(
            source, revision=revision, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except Exception as e:
        msg = str(e).splitlines()[0][:300] if str(e) else ""
        if "Unrecognized configuration class" in msg or "does not recognize this architecture" in msg:
            raise ModelLoadError(f"{source!r} is not a causal language model this version of transformers can "
                                 f"load ({msg})") from None
        raise ModelLoadError(f"cannot load the model {source!r}: {type(e).__name__}: {msg}") from None
    revision = revision or (folder_revision(folder) if folder is not None else None)
    if ref.adapter:
        model = _merge_lora(model, ref.adapter, name, revision)
    model.to(device)
    model.eval()
    return model, tokenizer, name, revision


def _merge_lora(model, adapter: str, name: str, revision: str | None):
    """Apply a PEFT LoRA folder and merge it into the weights. The loaded adapter then
    belongs to the base: "adapter disabled" (the reference of a run on top of it) is
    base + this adapter, the choice the protocol asks for when training on top."""
    from peft import PeftModel

    path = Path(adapter).expanduser()
    check_adapter_base(path, name, revision)
    if not path.is_dir() or not (path / "adapter_config.json").is_file():
        raise ModelLoadError(f"adapter {adapter!r} is not a PEFT adapter folder (no adapter_config.json)")
    if not (path / "adapter_model.safetensors").is_file():
        raise ModelLoadError(f"adapter {adapter!r} has no adapter_model.safetensors (only safetensors adapters load)")
    try:
        peft_model = PeftModel.from_pretrained(model, str(path), adapter_name="palate", is_trainable=False)
        return peft_model.merge_and_unload()
    except Exception as e:
        raise adapter_mismatch(adapter, name, e) from None


def render_prompt(tokenizer, prompt: str) -> str:
    """The text a model sees before its answer, the same for generation, scoring and exports.

    With a chat template: the prompt's messages (one user message, or a whole conversation
    stored by :mod:`storage.conversation`) rendered with ``add_generation_prompt=True``.
    Without one: a plain prompt as it is (a small model trained on plain "Q: ...\\nA:" text is
    given exactly what the user typed); a conversation is refused, having no text form."""
    msgs = conversation.decode(prompt)
    if getattr(tokenizer, "chat_template", None):
        try:
            return tokenizer.apply_chat_template(msgs or [{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
        except Exception as e:
            raise ValueError(f"the model's chat template failed on this prompt: {type(e).__name__}: {e}") from None
    if msgs is not None:
        raise ValueError("this prompt is a conversation (system message or several turns), and the model has no "
                         "chat template to render it; use a chat model, or import the data with the prompt as text")
    return prompt


def lora_targets_for(model: torch.nn.Module) -> list[str]:
    """LoRA target module names for ``model``: the attention projections of known
    architectures, else every linear layer's name except the output head."""
    from torch import nn

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n}
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    known = [t for t in LORA_TARGETS.get(model_type, ()) if t in names]
    if known:
        return known
    for group in (("q_proj", "k_proj", "v_proj", "o_proj"), ("c_attn", "c_proj"), ("query_key_value", "dense")):
        if all(t in names for t in group):
            return list(group)
    linear_types: tuple[type, ...] = (nn.Linear,)
    try:
        from transformers.pytorch_utils import Conv1D

        linear_types += (Conv1D,)
    except ImportError:  # pragma: no cover
        pass
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    leaves = []
    for n, m in model.named_modules():
        leaf = n.rsplit(".", 1)[-1]
        if isinstance(m, linear_types) and m is not out_emb and leaf != "lm_head" and leaf not in leaves:
            leaves.append(leaf)
    return leaves


# ---------------------------------------------------------------------------
# the adapter
# ---------------------------------------------------------------------------


class TextAdapter(ModalityAdapter):
    """Causal language models behind the modality contract.

    Scores (``score``) are the sum of the response tokens' log-probabilities,
    [B, K] float32. **Length normalisation**: set ``adapter.length_normalized =
    True`` (e.g. from the loss registry's ``LossSpec.length_normalized``, for
    SimPO) and every ``score`` call -- policy and reference alike -- returns the
    per-token mean instead; ``score(..., mean=True/False)`` overrides it for one
    call.
    """

    name = "text"
    score_kind = ScoreKind.AUTOREGRESSIVE
    BUILTIN_MODELS = BUILTIN_MODELS  # alias -> shipped folder (exports resolve base models with it)
    default_lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __init__(self, model, tokenizer, *, model_name: str, revision: str | None = None,
                 adapter: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.revision = revision
        self.adapter_name = adapter
        #: per-token mean instead of the sum in ``score`` (length-normalised losses such as SimPO)
        self.length_normalized = False
        #: rows (samples) per forward pass in ``score``; lower it for long answers on a big model
        self.score_chunk = SCORE_CHUNK

    @classmethod
    def load(cls, ref: ModelRef, *, device: str | None = None, dtype: torch.dtype | None = None,
             cache_dir: Path | None = None, trust_remote_code: bool = False) -> "TextAdapter":
        """Load a causal LM (hub id or local folder) and its tokenizer: fp32 on CPU,
        bf16 (fp16 without bf16 support) on CUDA. ``ref.adapter`` (a PEFT LoRA folder)
        is merged into the weights. ``cache_dir`` is unused (token ids are cheap).
        ``trust_remote_code``: allow a model's own modelling code (``auto_map``); off
        unless the user opts in."""
        del cache_dir
        model, tokenizer, name, revision = load_causal_lm(ref, device=device, dtype=dtype,
                                                          trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, model_name=name, revision=revision, adapter=ref.adapter)

    @classmethod
    def export_adapter(cls, adapter_dir: Path, out: Path, fmt: str, *, base_model: str,
                       metadata: dict[str, Any]) -> Path:
        """``peft`` (the PEFT folder) or ``merged`` (a full model folder); see :mod:`.export`."""
        from .export import export_adapter

        return export_adapter(adapter_dir, out, fmt, base_model=base_model, metadata=metadata, adapter_cls=cls)

    @classmethod
    def verify_export(cls, base_model: str, adapter_dir: Path, exported: Path, fmt: str) -> float:
        from .export import verify_export

        return verify_export(base_model, adapter_dir, exported, fmt, adapter_cls=cls)

    @classmethod
    def prompt_renderer(cls):
        """Each answering model's chat template, for TRL exports (tokenizers only)."""
        from .prompts import TokenizerPrompts

        return TokenizerPrompts()

    # -- properties ----------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def context_length(self) -> int:
        """Most tokens (prompt + response) the model takes."""
        config = self.model.config
        getter = getattr(config, "get_text_config", None)
        text_config = getter() if callable(getter) else config
        for key in _CONTEXT_KEYS:
            value = getattr(text_config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        value = getattr(self.tokenizer, "model_max_length", None)
        return value if isinstance(value, int) and 0 < value < 1_000_000 else 2048

    @property
    def eos_token_ids(self) -> set[int]:
        """Tokens that end an answer: the tokenizer's EOS and the generation config's."""
        ids: set[int] = set()
        for value in (self.tokenizer.eos_token_id, getattr(getattr(self.model, "generation_config", None),
                                                           "eos_token_id", None)):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids

    @property
    def pad_token_id(self) -> int:
        for value in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if isinstance(value, int):
                return value
        return 0

    def default_params(self) -> dict[str, Any]:
        """The sampling settings used where a request gives none: :data:`DEFAULT_PARAMS`,
        overridden by what the model ships in its ``generation_config.json``
        (``temperature``, ``top_p``, ``max_new_tokens``; ``do_sample: false`` is greedy)."""
        params = dict(DEFAULT_PARAMS)
        gc = getattr(self.model, "generation_config", None)
        if gc is None or getattr(gc, "_from_model_config", True):
            return params  # no generation_config.json: HF's generic values are not the model's choice
        shipped = gc.to_diff_dict() if hasattr(gc, "to_diff_dict") else {}
        for key, ours in (("temperature", "temperature"), ("top_p", "top_p"), ("max_new_tokens", "max_tokens")):
            value = shipped.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                params[ours] = int(value) if ours == "max_tokens" else float(value)
        if shipped.get("do_sample") is True:  # sampling as shipped: HF's 1.0 where a value is left out
            for key in ("temperature", "top_p"):
                value = getattr(gc, key, None)
                value = 1.0 if value is None else value  # unset: no scaling, no nucleus cut
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    params[key] = float(value)
        if shipped.get("do_sample") is False:
            params["temperature"] = 0.0
        return params

    # -- prompt format (shared by generate and encode) --------------------------
    def format_prompt(self, prompt: str) -> str:
        """The text the model sees before its answer (see :func:`render_prompt`)."""
        return render_prompt(self.tokenizer, prompt)

    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of the formatted prompt (a chat template writes its own special tokens)."""
        text = self.format_prompt(prompt)
        return list(self.tokenizer(text, add_special_tokens=not self.has_chat_template, verbose=False)["input_ids"])

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of an answer, ending with EOS (so the score includes stopping)."""
        ids = list(self.tokenizer(answer, add_special_tokens=False, verbose=False)["input_ids"])
        eos = self.tokenizer.eos_token_id
        return ids + [eos] if isinstance(eos, int) else ids

    # -- generation ----------------------------------------------------------
    def _params(self, request: GenerationRequest, prompt_len: int) -> dict[str, Any]:
        given = {}
        for key, value in dict(request.params).items():
            key = PARAM_ALIASES.get(key, key)
            if key in given and given[key] != value:
                raise ValueError(f"{key} given twice with different values ({given[key]!r}, {value!r})")
            given[key] = value
        unknown = set(given) - set(DEFAULT_PARAMS)
        if unknown:
            raise ValueError(f"unknown text setting(s) {sorted(unknown)}; use {', '.join(DEFAULT_PARAMS)} "
                             f"(max_new_tokens is accepted for max_tokens)")
        params = {**self.default_params(), **given}
        try:
            temperature, top_p = float(params["temperature"]), float(params["top_p"])
            max_tokens = params["max_tokens"]
            if isinstance(max_tokens, bool) or float(max_tokens) != int(max_tokens):
                raise ValueError
            max_tokens = int(max_tokens)
        except (TypeError, ValueError):
            raise ValueError(f"temperature and top_p must be numbers and max_tokens a whole number; got "
                             f"{params['temperature']!r}, {params['top_p']!r}, {params['max_tokens']!r}") from None
        if not 0.0 <= temperature <= MAX_TEMPERATURE:
            raise ValueError(f"temperature must be between 0 (greedy) and {MAX_TEMPERATURE:g}, got {temperature:g}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p:g}")
        ctx = self.context_length
        explicit = "max_tokens" in given
        if not 1 <= max_tokens <= MAX_TOKENS:
            raise ValueError(f"max_tokens must be between 1 and {MAX_TOKENS}, got {max_tokens}")
        if explicit and max_tokens > ctx:
            raise ValueError(f"max_tokens {max_tokens} is beyond this model's context of {ctx} tokens")
        if prompt_len >= ctx:
            raise ValueError(f"the prompt is too long: {prompt_len} tokens, and this model's context is {ctx} "
                             "tokens (prompt and answer together); shorten it")
        room = ctx - prompt_len
        if max_tokens > room:
            if explicit:
                raise ValueError(f"the prompt takes {prompt_len} of this model's {ctx} context tokens, which leaves "
                                 f"{room} for the answer: lower max_tokens ({max_tokens}) to at most {room}")
            max_tokens = room  # the default shrinks to fit; an explicit setting is never cut silently
        return {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}

    @torch.no_grad()
    def generate(self, request: GenerationRequest) -> list[Sample]:
        """``request.n`` answers, one per seed. Each candidate is sampled alone from a
        CPU generator seeded with its seed, so a seed gives the same text whatever
        ``n`` and position (temperature 0: greedy). ``negative_prompt`` is ignored."""
        ids = self.prompt_ids(request.prompt)
        params = self._params(request, len(ids))
        seeds = request.resolved_seeds()
        model = self.model
        was_training = model.training
        model.eval()
        try:
            answers = [self._sample(ids, params, seed) for seed in seeds]
        finally:
            model.train(was_training)
        out = []
        for seed, (tokens, finish) in zip(seeds, answers):
            text = self.tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            record = {**params, "response_tokens": len(tokens), "prompt_tokens": len(ids), "finish_reason": finish,
                      "chat_template": self.has_chat_template, "dtype": str(self.dtype).replace("torch.", ""),
                      "device": self.device.type}
            prov = Provenance("text", self.model_name, seed, record, revision=self.revision, adapter=self.adapter_name)
            out.append(Sample(text.encode("utf-8"), "text/plain", prov))
        return out

    def _forward_last(self, **kwargs):
        if self._keeps_last_logits():
            kwargs["logits_to_keep"] = 1
        return self.model(**kwargs)

    def _keeps_last_logits(self) -> bool:
        cached = self.__dict__.get("_logits_to_keep")
        if cached is None:
            try:
                cached = "logits_to_keep" in inspect.signature(self.model.forward).parameters
            except (TypeError, ValueError):
                cached = False
            self.__dict__["_logits_to_keep"] = cached
        return cached

    def _sample(self, prompt_ids: list[int], params: dict[str, Any], seed: int) -> tuple[list[int], str]:
        """One answer: (response tokens without EOS, "stop" or "length")."""
        gen = torch.Generator("cpu").manual_seed(int(seed))
        eos = self.eos_token_ids
        device = self.device
        out = self._forward_last(input_ids=torch.tensor([prompt_ids], device=device), use_cache=True)
        tokens: list[int] = []
        for step in range(params["max_tokens"]):
            tok = _pick(out.logits[0, -1], params["temperature"], params["top_p"], gen)
            if tok in eos:
                return tokens, "stop"
            tokens.append(tok)
            if step + 1 < params["max_tokens"]:
                out = self._forward_last(input_ids=torch.tensor([[tok]], device=device),
                                         past_key_values=out.past_key_values, use_cache=True)
        return tokens, "length"

    def _sample_batch(self, prompt_ids: list[int], params: dict[str, Any],
                      seeds: Sequence[int]) -> list[tuple[list[int], str]]:
        """Like :meth:`_sample` for several seeds at once: the rows share the prompt and
        run as one batch (one forward pass per token for all), each row drawing from its
        own seeded generator. Faster for many completions of one prefix; a row can differ
        from :meth:`_sample` with the same seed only through float rounding across batch
        sizes. Used for Monte-Carlo completions (alignment.dto)."""
        seeds = list(seeds)
        if len(seeds) <= 1:
            return [self._sample(prompt_ids, params, s) for s in seeds]
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        eos = self.eos_token_ids
        device = self.device
        n = len(seeds)
        out = self._forward_last(input_ids=torch.tensor([prompt_ids] * n, device=device), use_cache=True)
        tokens: list[list[int]] = [[] for _ in range(n)]
        finish: list[str | None] = [None] * n
        for step in range(params["max_tokens"]):
            nxt = []
            for i in range(n):
                if finish[i] is not None:
                    nxt.append(self.pad_token_id)
                    continue
                tok = _pick(out.logits[i, -1], params["temperature"], params["top_p"], gens[i])
                if tok in eos:
                    finish[i] = "stop"
                    nxt.append(self.pad_token_id)
                else:
                    tokens[i].append(tok)
                    nxt.append(tok)
            if all(f is not None for f in finish) or step + 1 >= params["max_tokens"]:
                break
            out = self._forward_last(input_ids=torch.tensor([[t] for t in nxt], device=device),
                                     past_key_values=out.past_key_values, use_cache=True)
        return [(t, f or "length") for t, f in zip(tokens, finish)]

    # -- training tensors ------------------------------------------------------
    def encode(self, groups: Sequence[Group]) -> TrainingBatch:
        """Token ids of prompt + answer (+ EOS) per sample: ``input_ids``, ``attention_mask``,
        ``labels`` and ``response_mask``, each [B, K, L], right-padded to the longest
        sample of the batch; ``response_mask`` is 1 on the answer's tokens only. An answer
        longer than the context is cut at the context."""
        if not groups:
            raise ValueError("nothing to encode")
        K = len(groups[0].samples)
        if any(len(g.samples) != K for g in groups):
            raise ValueError("every group in a batch must hold the same number of samples")
        ctx = self.context_length
        rows: list[list[tuple[list[int], int]]] = []
        for g in groups:
            p_ids = self.prompt_ids(g.prompt)
            if len(p_ids) >= ctx:
                raise ValueError(f"a prompt is too long to train on: {len(p_ids)} tokens, and this model's context "
                                 f"is {ctx} tokens")
            row = []
            for data in g.samples:
                try:
                    answer = data.decode("utf-8")
                except UnicodeDecodeError:
                    raise ValueError("a text sample is not valid UTF-8; was it generated by another modality?") from None
                ids = (p_ids + self.answer_ids(answer))[:ctx]
                row.append((ids, len(p_ids)))
            rows.append(row)
        B = len(groups)
        L = max(len(ids) for row in rows for ids, _ in row)
        input_ids = torch.full((B, K, L), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((B, K, L), dtype=torch.long)
        response = torch.zeros((B, K, L), dtype=torch.long)
        for b, row in enumerate(rows):
            for k, (ids, n_prompt) in enumerate(row):
                input_ids[b, k, :len(ids)] = torch.tensor(ids, dtype=torch.long)
                attention[b, k, :len(ids)] = 1
                response[b, k, n_prompt:len(ids)] = 1
        return TrainingBatch([g.prompt for g in groups], {
            "input_ids": input_ids, "attention_mask": attention, "labels": input_ids.clone(), "response_mask": response,
        })

    # -- score ---------------------------------------------------------------
    def score(self, model: torch.nn.Module, batch: TrainingBatch, generator: torch.Generator | None = None, *,
              mean: bool | None = None) -> torch.Tensor:
        """Sum of the response tokens' log-probabilities, [B, K] float32 -- or the per-token
        mean when ``mean`` is True (default: ``self.length_normalized``). Deterministic:
        ``generator`` is unused. Rows go through ``model`` ``score_chunk`` at a time,
        each chunk cut to its longest sample."""
        del generator
        mean = self.length_normalized if mean is None else bool(mean)
        t = batch.tensors
        B, K, L = t["input_ids"].shape
        device = next(model.parameters()).device
        ids, attn = t["input_ids"].reshape(B * K, L), t["attention_mask"].reshape(B * K, L)
        labels, resp = t["labels"].reshape(B * K, L), t["response_mask"].reshape(B * K, L)
        chunk = max(1, int(self.score_chunk))
        parts = []
        for start in range(0, B * K, chunk):
            sl = slice(start, start + chunk)
            n = int(attn[sl].sum(dim=-1).max().item()) or 1
            a = attn[sl, :n].to(device)
            logits = model(input_ids=ids[sl, :n].to(device), attention_mask=a).logits
            parts.append(token_logprob_score(
                logits[:, None], labels[sl, :n].to(device)[:, None], resp[sl, :n].to(device)[:, None], mean=mean,
            )[:, 0])
        return torch.cat(parts).reshape(B, K).float()

    @torch.no_grad()
    def reward_features(self, prompts: Sequence[str], media: Sequence[bytes], *, noise_level: float = 0.0,
                        seed: int = 0) -> torch.Tensor:
        """The language model's last hidden layer over each answer (after its prompt, as the model saw
        it): the mean over the answer's tokens and the last token's state. ``noise_level`` and ``seed``
        do not apply to text."""
        del seed
        if noise_level:
            raise ValueError("noise_level applies to denoiser features only; text features are read at 0")
        if len(prompts) != len(media):
            raise ValueError(f"{len(prompts)} prompts for {len(media)} candidates")
        groups = [Group(p, (m, m)) for p, m in zip(prompts, media)]  # a group holds two or more samples
        out = []
        for start in range(0, len(groups), max(1, int(self.score_chunk))):
            t = self.encode(groups[start:start + max(1, int(self.score_chunk))]).tensors
            ids, attn, resp = (t[k][:, 0].to(self.device) for k in ("input_ids", "attention_mask", "response_mask"))
            h = self.model(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states[-1].float()
            m = resp.unsqueeze(-1).float()
            mean = (h * m).sum(1) / m.sum(1).clamp(min=1)
            last = h[torch.arange(h.shape[0]), attn.sum(1) - 1]
            out.append(torch.cat([mean, last], dim=-1).cpu())
        return torch.cat(out)

    def trainable_module(self) -> torch.nn.Module:
        return self.model

    def configure_scores(self, *, per_token: bool) -> None:
        self.length_normalized = bool(per_token)

    def token_counts(self, batch: TrainingBatch) -> torch.Tensor:
        """Answer tokens (EOS included) each score covers, [B, K] (what ``score`` sums over)."""
        return batch.tensors["response_mask"][:, :, 1:].sum(dim=-1).float()

    def lora_target_modules(self) -> list[str]:
        return lora_targets_for(self.model)


def _pick(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> int:
    """The next token: argmax at temperature 0, else a nucleus (top-p) sample drawn
    with ``gen`` (inverse CDF over the probabilities sorted high to low)."""
    logits = logits.float()
    if temperature == 0.0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits / temperature, dim=-1).double().cpu()
    sorted_p, order = torch.sort(probs, descending=True, stable=True)
    cum = torch.cumsum(sorted_p, dim=0)
    keep = (cum - sorted_p) < top_p  # the smallest prefix reaching top_p (always the first token)
    kept = sorted_p * keep
    cdf = torch.cumsum(kept, dim=0)
    u = torch.rand((), generator=gen, dtype=torch.float64) * cdf[-1]
    idx = int(torch.searchsorted(cdf, u.reshape(1), right=True).clamp_max(int(keep.sum()) - 1).item())
    return int(order[idx].item())
