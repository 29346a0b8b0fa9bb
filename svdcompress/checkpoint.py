"""Read checkpoints from disk: .pt/.pth (torch.save), safetensors, and Lasagne positional .npy lists.

The result is a flat ``{name: tensor}`` mapping plus whatever svdcompress metadata the
file carries. Recognising SVDO layers in it is :mod:`svdcompress.conventions`' job.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._io import atomic_path
from .errors import CheckpointError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LoadedCheckpoint",
    "load_checkpoint",
    "save_checkpoint",
]

FORMAT_NAME = "svdcompress-checkpoint"
FORMAT_VERSION = 1

# Keys under which training scripts nest a state_dict, in the order we look for them.
_NEST_KEYS = ("state_dict", "model_state_dict", "net", "model", "state", "params", "weights")


@dataclass
class LoadedCheckpoint:
    """A checkpoint read from disk.

    Attributes:
        path: the file it came from.
        tensors: flat ``{name: tensor}``; for Lasagne lists the names are ``"0"``, ``"1"``, ...
        source: "torch", "safetensors" or "lasagne-npy".
        meta: svdcompress metadata (arch, arch_kwargs, input_shape, threshold, provenance) if the
            file was written by :func:`save_checkpoint`, else empty.
        module: a whole pickled ``nn.Module``, only when loaded with ``trust_pickle=True``.
    """

    path: Path
    tensors: dict[str, torch.Tensor]
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    module: nn.Module | None = None

    @property
    def arch(self) -> str | None:
        a = self.meta.get("arch")
        return a if isinstance(a, str) else None


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    arch: str,
    arch_kwargs: Mapping[str, Any] | None = None,
    input_shape: tuple[int, ...] | None = None,
    threshold: float = 3.0,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``model`` with the architecture and provenance needed to rebuild it without code.

    The file is a plain ``torch.save`` dict that loads with ``weights_only=True``.
    """
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs or {}),
        "input_shape": list(input_shape) if input_shape is not None else None,
        "threshold": float(threshold),
        "provenance": dict(provenance or {}),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)
