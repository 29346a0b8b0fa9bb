"""Save a pruned model as a ``torch.export`` program (.pt2) that loads without the model's source."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._inputs import example_inputs as example_batch
from .._io import atomic_path
from ..errors import ExportError

__all__ = ["METADATA_FILE", "load_pruned", "pruned_metadata", "save_pruned"]

METADATA_FILE = "svdcompress.json"
"""The archive's extra file holding svdcompress's metadata (threshold, how it was chosen), as JSON."""


def save_pruned(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    input_shape: tuple[int, ...],
    metadata: dict[str, Any] | None = None,
    example_inputs: torch.Tensor | None = None,
) -> Path:
    """Export ``model`` with a dynamic batch axis and save it atomically.

    ``example_inputs`` (e.g. int64 token ids) is what the program is captured with; default seeded floats.

    The file is a standard ``torch.export`` archive: ``torch.export.load(path).module()`` runs it
    with nothing but torch installed. ``metadata`` (JSON-able: the threshold, how it was chosen) is stored
    as the archive's extra file :data:`METADATA_FILE`; :func:`pruned_metadata` reads it back.
    """
    try:
        extra = None if metadata is None else {METADATA_FILE: json.dumps(metadata, sort_keys=True)}
    except (TypeError, ValueError) as e:
        raise ExportError(f"{path}: metadata must be JSON-serialisable ({e})") from None
    # batch 2: a batch of 1 would be specialised
    example = (
        example_batch(input_shape, 2)
        if example_inputs is None
        else example_inputs[torch.arange(2) % len(example_inputs)]
    )
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    try:
        with warnings.catch_warnings():
            # torch.export warns about its own internals (e.g. deprecated pytree registrations); not actionable here.
            warnings.simplefilter("ignore")
            program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))
    except Exception as e:  # torch.export raises many internal error types; report them as one
        raise ExportError(
            f"{path}: torch.export could not capture the pruned model ({str(e).splitlines()[0]})"
        ) from None
    with atomic_path(path) as tmp:
        torch.export.save(program, tmp, extra_files=extra)
    return Path(path)


def load_pruned(path: str | os.PathLike[str]) -> nn.Module:
    """Load a program written by :func:`save_pruned` as a callable module."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # same internal torch.export warnings as at save time
        program = torch.export.load(str(path))
    module: nn.Module = program.module()
    return module


def pruned_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata :func:`save_pruned` stored in ``path`` (``{}`` when there is none).

    Raises:
        ExportError: the stored metadata is not a JSON object.
    """
    extra: dict[str, Any] = {METADATA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # same internal torch.export warnings as at save time
        torch.export.load(str(path), extra_files=extra)
    text = extra[METADATA_FILE]
    if not text:
        return {}
    try:
        meta = json.loads(text)
    except ValueError as e:
        raise ExportError(f"{path}: {METADATA_FILE} is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ExportError(f"{path}: {METADATA_FILE} must hold a JSON object, got {type(meta).__name__}")
    return meta
