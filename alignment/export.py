"""Export a trained adapter for the tools people use, loaded back and checked.

The formats belong to the adapter's modality (its spec's ``export_formats``, the default first); the
modality's adapter class writes them and checks the result by loading it as the target tool would.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def formats(modality: str) -> list[str]:
    """The formats an adapter of ``modality`` exports to, the default first (its spec says)."""
    from modalities import registry

    return list(registry.spec(modality).export_formats)


def export_adapter(modality: str, adapter_dir: str | Path, out: str | Path, fmt: str, *, base_model: str,
                   metadata: dict[str, Any], verify: bool = True) -> tuple[Path, float | None]:
    """Write the adapter in ``adapter_dir`` to ``out`` as ``fmt``; with ``verify`` (the default),
    load it back and compare. Returns (the folder or file written, the largest difference)."""
    from modalities import registry

    allowed = formats(modality)
    if fmt not in allowed:
        raise ValueError(f"{modality} adapters export as {', '.join(allowed)}, not {fmt!r}")
    cls = registry.get(modality)
    path = cls.export_adapter(Path(adapter_dir), Path(out), fmt, base_model=base_model, metadata=metadata)
    diff = cls.verify_export(base_model, Path(adapter_dir), path, fmt) if verify else None
    return path, diff
