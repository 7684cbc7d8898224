"""Installed package combinations known not to work with Palate, said in one line at start-up.

The two README commands install ``requirements/*.lock`` (what CI tested). People who install Palate
into an environment of their own get whatever pip resolves within ``pyproject.toml``'s ranges; a few
combinations inside those ranges are known to fail, and this module names them at start-up (every
``python -m app`` command, the web app included) before they fail somewhere deep. Each entry says which
two packages, which versions, what breaks, and which versions work; every entry was reproduced (see
the README's "Dependencies" section for how).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, Mapping


@dataclass(frozen=True)
class Conflict:
    """``a`` at ``a_versions`` together with ``b`` at ``b_versions`` (PEP 440 specifiers) fails;
    ``b`` None: ``a`` at those versions fails whatever else is installed."""

    a: str
    a_versions: str
    b: str | None
    b_versions: str
    breaks: str  # what fails, in a few words
    works: str  # the versions that work, as advice


# Each reproduced on 2026-11-29 against the test suite, with every other package at the lock's version.
KNOWN: tuple[Conflict, ...] = (
    Conflict("peft", "<0.18", "transformers", ">=5", "no peft.functional, which Palate puts LoRA on models with "
             "(peft 0.16-0.17 also fail to import under transformers 5: HybridCache)", "use peft>=0.18"),
    Conflict("diffusers", "<0.35.2", "transformers", ">=5", "diffusers fails to import (FLAX_WEIGHTS_NAME is gone "
             "from transformers 5)", "use diffusers>=0.40"),
    Conflict("diffusers", ">=0.35.2,<0.40", None, "", "loading a LoRA from a local folder fails offline "
             "(HF_HUB_OFFLINE=1: 'you must specify a weight_name')", "use diffusers>=0.40"),
    Conflict("gradio", "<5.7", "huggingface-hub", ">=1.0", "gradio fails to import (HfFolder is gone from "
             "huggingface_hub 1.x)", "use gradio>=6"),
    Conflict("gradio", "<6", None, "", "the web app cannot start (Blocks.launch() takes no head= in gradio 5)",
             "use gradio>=6"),
    Conflict("transformers", "<5", None, "", "a model's shipped greedy decoding (do_sample: false) is read as "
             "sampling, and transformers 4 cannot share an environment with the diffusers and gradio Palate needs "
             "(huggingface-hub<1)", "use transformers>=5"),
)


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def conflicts(versions: Mapping[str, str | None] | Callable[[str], str | None] | None = None,
              known: tuple[Conflict, ...] = KNOWN) -> list[str]:
    """One line per known-bad combination among the installed packages (or ``versions``)."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    lookup = versions if callable(versions) else (versions.get if versions is not None else _installed)
    lines = []
    for c in known:
        va = lookup(c.a)
        vb = lookup(c.b) if c.b is not None else None
        if va is None or (c.b is not None and vb is None):
            continue
        try:
            hit = Version(va) in SpecifierSet(c.a_versions) and (
                c.b is None or Version(vb) in SpecifierSet(c.b_versions))
        except InvalidVersion:
            continue
        if hit:
            which = f"{c.a} {va}" + (f" with {c.b} {vb}" if c.b is not None else "")
            lines.append(f"{which} is known not to work with Palate ({c.breaks}); {c.works}. "
                         "`bash scripts/start.sh` installs the tested versions (requirements/app.lock).")
    return lines


def warn(stream=None) -> int:
    """Print the known-bad combinations installed here as warnings; returns how many."""
    lines = conflicts()
    for line in lines:
        print(f"warning: {line}", file=stream or sys.stderr)
    return len(lines)
