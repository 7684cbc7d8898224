"""Shared plumbing for modalities built on diffusers pipelines (image now, video next).

:mod:`.families` is the table of model families (what differs per pipeline class), :mod:`.pipeline`
loads a pipeline and its LoRA, and :mod:`.adapter` holds :class:`.adapter.DiffusersAdapter`, the
modality contract over a pipeline that a modality subclasses with its own generation and media.
"""
