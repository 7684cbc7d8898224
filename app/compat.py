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
    """``a`` at ``a_versions`` together with ``b`` at ``b_versions`` (PEP 440 specifiers) fails."""

    a: str
    a_versions: str
    b: str
    b_versions: str
    breaks: str  # what fails, in a few words
    works: str  # the versions that work, as advice


KNOWN: tuple[Conflict, ...] = ()


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
        va, vb = lookup(c.a), lookup(c.b)
        if va is None or vb is None:
            continue
        try:
            hit = Version(va) in SpecifierSet(c.a_versions) and Version(vb) in SpecifierSet(c.b_versions)
        except InvalidVersion:
            continue
        if hit:
            lines.append(f"{c.a} {va} with {c.b} {vb} is known not to work with Palate ({c.breaks}); "
                         f"{c.works}. `bash scripts/start.sh` installs the tested versions (requirements/app.lock).")
    return lines


def warn(stream=None) -> int:
    """Print the known-bad combinations installed here as warnings; returns how many."""
    lines = conflicts()
    for line in lines:
        print(f"warning: {line}", file=stream or sys.stderr)
    return len(lines)
