"""modalities: one adapter per modality (image, video, music, text reasoning)
behind the contract in :mod:`modalities.protocol`.

Importing this package imports no model code; :func:`modalities.registry.get`
loads an adapter on first use.
"""
import logging

# see alignment/__init__.py: a bitsandbytes import warning about 4-bit CPU kernels Palate never uses
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from .protocol import (
    GenerationRequest,
    Group,
    ModalityAdapter,
    ModelRef,
    Provenance,
    Sample,
    ScoreKind,
    TrainingBatch,
)

__all__ = [
    "GenerationRequest",
    "Group",
    "ModalityAdapter",
    "ModelRef",
    "Provenance",
    "Sample",
    "ScoreKind",
    "TrainingBatch",
]
