"""Which modalities exist, by name, and what each declares (:class:`~modalities.spec.ModalitySpec`).

Built-in modalities are ``"module:SPEC"`` strings imported on first use; a spec names its adapter
class the same way, so nothing heavy (torch, diffusers, transformers) is imported until a model is
loaded. :func:`spec` is what the app and the CLI read; :func:`get` gives the adapter class.

Adding a modality: a folder with a spec and an adapter, and one line -- a ``_BUILTIN`` entry, or a
:func:`register` call (a plugin, a test)::

    register(ModalitySpec(name="toy", adapter="mypkg.toy:ToyAdapter", ...))
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .protocol import ModalityAdapter
    from .spec import ModalitySpec

# name -> "module:SPEC". The modality issues add their line here.
_BUILTIN: dict[str, str] = {
    "image": "modalities.image:SPEC",
    "text": "modalities.text:SPEC",
    "music": "modalities.music:SPEC",
    "video": "modalities.video:SPEC",
}
_SPECS: dict[str, Any] = dict(_BUILTIN)  # name -> ModalitySpec | "module:SPEC"
_ADAPTERS: dict[str, Any] = {}  # name -> adapter class | "module:Class" for modalities registered without a spec
_SOURCES: dict[str, str] = {}  # name -> "module:SPEC" of a plugin registered by its path


def _import(target: str, what: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ImportError(f"{what} points at {target!r}, which cannot be imported: {e}") from e


def register(target: "ModalitySpec | str", adapter: "str | type[ModalityAdapter] | None" = None, *,
             replace: bool = False) -> None:
    """Register a modality: ``register("package.module:SPEC")`` (a plugin: other processes -- the
    trainer -- find it by that path too), ``register(spec)``, or ``register(name, adapter)`` for an
    adapter alone (enough to train and score; the app and CLI need a spec)."""
    from .spec import ModalitySpec

    if isinstance(target, str) and ":" in target and adapter is None:
        spec_obj = _import(target, f"modality spec {target!r}")
        if not isinstance(spec_obj, ModalitySpec):
            raise TypeError(f"{target!r} is {spec_obj!r}, not a ModalitySpec")
        register(spec_obj, replace=replace)
        _SOURCES[spec_obj.name] = target
        return
    if isinstance(target, ModalitySpec):
        name, entry = target.name, target
        if adapter is not None:
            raise ValueError("register(spec) takes the adapter from spec.adapter")
    else:
        name = target
        if not name or not str(name).isidentifier():
            raise ValueError(f"modality names are identifiers like 'image'; got {name!r}")
        if adapter is None:
            raise ValueError(f"register({name!r}, adapter): name the adapter class or 'module:Class'")
        entry = None
    for t in ([adapter] if adapter is not None else []) + ([entry.adapter] if entry is not None else []):
        if isinstance(t, str) and ":" not in t:
            raise ValueError(f"lazy targets look like 'package.module:ClassName'; got {t!r}")
    if (name in _SPECS or name in _ADAPTERS) and not replace:
        raise ValueError(f"modality {name!r} is already registered (pass replace=True to override)")
    _SPECS.pop(name, None)
    _ADAPTERS.pop(name, None)
    if entry is not None:
        _SPECS[name] = entry
    else:
        _ADAPTERS[name] = adapter


def unregister(name: str) -> None:
    _SPECS.pop(name, None)
    _ADAPTERS.pop(name, None)
    _SOURCES.pop(name, None)


def source(name: str) -> str | None:
    """Where another process imports modality ``name`` from: None for a built-in one, "module:SPEC" for
    a plugin registered by its path (the app writes it into a run's config for the trainer)."""
    return None if name in _BUILTIN else _SOURCES.get(name)


def ensure(name: str, spec_source: str | None) -> None:
    """Make sure modality ``name`` is registered in this process, importing ``spec_source`` if need be."""
    if name in _SPECS or name in _ADAPTERS:
        return
    if not spec_source:
        raise KeyError(f"unknown modality {name!r}; available: {', '.join(available()) or 'none registered yet'}")
    register(spec_source)


def available() -> list[str]:
    """Every registered modality, built-in ones first."""
    names = list(_BUILTIN) + sorted(n for n in (*_SPECS, *_ADAPTERS) if n not in _BUILTIN)
    return [n for n in dict.fromkeys(names) if n in _SPECS or n in _ADAPTERS]


def with_spec() -> list[str]:
    """The modalities the app and the CLI offer (those that declare a spec)."""
    return [n for n in available() if n in _SPECS]


def media_families() -> dict[str, str]:
    """Each offered modality's MIME family (what storage checks imported media against)."""
    return {n: spec(n).media for n in with_spec()}


def spec(name: str) -> "ModalitySpec":
    """What modality ``name`` declares."""
    from .spec import ModalitySpec

    if name not in _SPECS:
        if name in _ADAPTERS:
            raise KeyError(f"modality {name!r} was registered without a ModalitySpec; the app and the CLI need one "
                           "(register(ModalitySpec(...)))")
        raise KeyError(f"unknown modality {name!r}; available: {', '.join(available()) or 'none registered yet'}")
    entry = _SPECS[name]
    if isinstance(entry, str):
        entry = _import(entry, f"modality {name!r}")
        if not isinstance(entry, ModalitySpec) or entry.name != name:
            raise TypeError(f"modality {name!r} resolves to {entry!r}, not a ModalitySpec named {name!r}")
        _SPECS[name] = entry
    return entry


def get(name: str) -> "type[ModalityAdapter]":
    """The adapter class of modality ``name``."""
    from .protocol import ModalityAdapter

    if name in _SPECS:
        s = spec(name)
        target = s.adapter
    elif name in _ADAPTERS:
        target = _ADAPTERS[name]
    else:
        raise KeyError(f"unknown modality {name!r}; available: {', '.join(available()) or 'none registered yet'}")
    cls = _import(target, f"modality {name!r}") if isinstance(target, str) else target
    if not (isinstance(cls, type) and issubclass(cls, ModalityAdapter)):
        raise TypeError(f"modality {name!r} resolves to {cls!r}, which is not a ModalityAdapter subclass")
    if name in _ADAPTERS:
        _ADAPTERS[name] = cls
    return cls
