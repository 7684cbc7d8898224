"""Loading models, the same for every modality: where a model is, which weights it is, what is refused.

- **Where**: a built-in alias (a folder shipped in ``models/``), a local folder, or a hub id
  (``org/name``), see :func:`resolve_model`.
- **Which weights**: a hub model's commit, or for a folder a short content hash of its weights and
  configs (:func:`folder_revision`), recorded with every sample and every adapter.
- **Policies**: safetensors only (a folder of pickle weights is refused, since unpickling runs code);
  no model-shipped code (``auto_map``) unless the user opts in (:func:`refuse_remote_code`); an adapter
  trained on another base is refused (:func:`check_adapter_base`), and one whose shapes do not fit is
  one line that says so (:func:`adapter_mismatch`).
- **Errors** are :class:`ModelLoadError` with a message that says what was passed and what to do.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

__all__ = [
    "ModelLoadError", "resolve_model", "looks_like_hub_id", "folder_revision", "check_device", "read_json",
    "refuse_remote_code", "hub_unavailable", "check_adapter_base", "adapter_mismatch", "ADAPTER_INFO",
]

ADAPTER_INFO = "palate.json"  # beside every adapter Palate saves: its base model and revision, method, ...


class ModelLoadError(ValueError):
    """A model reference that cannot be loaded; the message says why and what to do."""


def looks_like_hub_id(model: str) -> bool:
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not model.startswith((".", "/"))


def resolve_model(model: str, builtins: Mapping[str, Path] | None = None) -> tuple[str, Path | None]:
    """(name to record, local folder or None for a hub id). ``builtins``: alias -> shipped folder."""
    if builtins and model in builtins:
        return model, Path(builtins[model])
    p = Path(model).expanduser()
    local = p.exists() or model.startswith((".", "/", "~")) or ("/" in model and not looks_like_hub_id(model))
    if local:
        return str(p.resolve()), p.resolve()
    return model, None


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


def folder_revision(folder: Path) -> str:
    """A short content hash of a local model's weights and configs (tells fine-tunes and retrained
    models apart; cached per file by size and mtime)."""
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".json", ".txt", ".model"):
            h.update(f.relative_to(folder).as_posix().encode())
            h.update(_file_sha256(f).encode())
    return h.hexdigest()[:12]


def check_device(device: str | None) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``; None picks CUDA when there is one."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} asked for, but no CUDA GPU is available here; use --device cpu")
        return device
    raise ModelLoadError(f"unknown device {device!r}; use cpu or cuda (cuda:N for another GPU)")


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path} is not readable JSON ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} does not hold a JSON object")
    return data


def refuse_remote_code(source: str, configs: Mapping[str, Mapping[str, Any]], trust_remote_code: bool) -> None:
    """Custom modelling/tokenizer code (``auto_map``) runs only when the user opts in."""
    if trust_remote_code:
        return
    needing = [name for name, cfg in configs.items() if cfg.get("auto_map")]
    if needing:
        raise ModelLoadError(
            f"{source!r} needs custom code shipped with the model ({' and '.join(needing)} name an auto_map); "
            "Palate does not run a model's own code unless you opt in with trust_remote_code=True "
            "(--trust-remote-code) after reading that code"
        )


def hub_unavailable(model_id: str, e: Exception, what: str = "model folder") -> ModelLoadError:
    """The error for a hub id the hub did not give (offline, unknown, gated)."""
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    first = str(e).splitlines()[0][:200] if str(e) else ""
    return ModelLoadError(
        f"cannot load model {model_id!r}: "
        + ("the hub is switched off (HF_HUB_OFFLINE=1) and it is not in the local cache; "
           if offline else "it is not a local folder, and the hub did not give it (unknown id, no network, "
           "or a gated model needing `huggingface-cli login`); ")
        + f"pass a local {what} instead. ({type(e).__name__}: {first})"
    )


def check_adapter_base(path: Path, model: str, revision: str | None) -> None:
    """Refuse an adapter trained on another base model. Palate's adapters carry a ``palate.json``
    naming their base (its revision: a hub commit or a folder's content hash); adapters from
    elsewhere have none and are tried as they are."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"adapter {str(path)!r} does not exist")
    info_file = (path if path.is_dir() else path.parent) / ADAPTER_INFO
    if not info_file.is_file():
        return
    try:
        info = json.loads(info_file.read_text())
    except ValueError:
        raise ModelLoadError(f"{info_file} is not valid JSON") from None
    base, base_rev = info.get("base_model"), info.get("base_revision")
    same = base_rev == revision if (base_rev and revision) else base == model
    if not same:
        raise ModelLoadError(
            f"adapter {str(path)!r} was trained on {base!r} (revision {base_rev}), not on {model!r} "
            f"(revision {revision}); load it with the model it was trained on"
        )


def adapter_mismatch(adapter: str, model: str, e: Exception) -> ModelLoadError:
    """One line for an adapter that does not fit the model: which base it was trained on (when it says),
    the model given, and the start of the loader's error (size mismatches list every weight)."""
    path = Path(adapter).expanduser()
    info_file = (path if path.is_dir() else path.parent) / ADAPTER_INFO
    base = None
    try:
        base = json.loads(info_file.read_text()).get("base_model") if info_file.is_file() else None
    except (OSError, ValueError):
        pass
    trained = f"it was trained on {base!r}" if base else "it does not say which model it was trained on"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    first = " ".join(lines[:2])[:240]
    more = f" ... and {len(lines) - 2} more lines like it" if len(lines) > 2 else ""
    return ModelLoadError(f"adapter {adapter!r} does not fit {model!r}; {trained}. Load it with the model it was "
                          f"trained on. ({type(e).__name__}: {first}{more})")
