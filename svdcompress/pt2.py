"""Save a pruned model as a ``torch.export`` program (.pt2) that loads without the model's source."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ._inputs import example_inputs
from ._io import atomic_path
from .errors import ExportError

__all__ = ["load_pruned", "save_pruned"]


def save_pruned(model: nn.Module, path: str | os.PathLike[str], *, input_shape: tuple[int, ...]) -> Path:
    """Export ``model`` with a dynamic batch axis and save it atomically.

    The file is a standard ``torch.export`` archive: ``torch.export.load(path).module()`` runs it
    with nothing but torch installed.
    """
    example = example_inputs(input_shape, 2)  # batch 2: a batch of 1 would be specialised
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
        torch.export.save(program, tmp)
    return Path(path)


def load_pruned(path: str | os.PathLike[str]) -> nn.Module:
    """Load a program written by :func:`save_pruned` as a callable module."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # same internal torch.export warnings as at save time
        program = torch.export.load(str(path))
    module: nn.Module = program.module()
    return module
