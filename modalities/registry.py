"""Which modality adapters exist, by name.

Entries are ``"module.path:ClassName"`` strings imported on first use, so
nothing heavy (torch, diffusers, transformers) is imported until a modality is
actually asked for. Built-in modalities add their line to ``_BUILTIN`` as they
land; others call :func:`register`.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .protocol import ModalityAdapter

# name -> "module:Class". Filled in by the modality issues (image, text, ...).
_BUILTIN: dict[str, str] = {
    "image": "modalities.image.adapter:ImageAdapter",
    "text": "modalities.text.adapter:TextAdapter",
}
_REGISTRY: dict[str, str | type] = dict(_BUILTIN)


def register(name: str, target: "str | type[ModalityAdapter]", *, replace: bool = False) -> None:
    """Make ``name`` resolve to an adapter class (or a lazy "module:Class")."""
    if not name or not name.isidentifier():
        raise ValueError(f"modality names are identifiers like 'image'; got {name!r}")
    if isinstance(target, str) and ":" not in target:
        raise ValueError(f"lazy targets look like 'package.module:ClassName'; got {target!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"modality {name!r} is already registered (pass replace=True to override)")
    _REGISTRY[name] = target


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def available() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> "type[ModalityAdapter]":
    """The adapter class registered under ``name``."""
    from .protocol import ModalityAdapter

    if name not in _REGISTRY:
        known = ", ".join(available()) or "none registered yet"
        raise KeyError(f"unknown modality {name!r}; available: {known}")
    target = _REGISTRY[name]
    if isinstance(target, str):
        module_name, _, attr = target.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ImportError(f"modality {name!r} points at {target!r}, which cannot be imported: {e}") from e
        _REGISTRY[name] = cls
        target = cls
    if not (isinstance(target, type) and issubclass(target, ModalityAdapter)):
        raise TypeError(f"modality {name!r} resolves to {target!r}, which is not a ModalityAdapter subclass")
    return target
