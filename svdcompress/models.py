"""Where a checkpoint's architecture comes from (DESIGN.md §3).

A state_dict has no graph. In order of preference the graph comes from: a live
``nn.Module`` (Python API); a checkpoint written by svdcompress, which records its zoo
architecture; ``--model package.module:factory``; a whole pickled model, only with
``--trust-pickle``.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn

from ._inputs import parse_int_list
from .checkpoint import LoadedCheckpoint, load_checkpoint
from .conventions import check_finite, find_svdo_layers
from .errors import CheckpointError, InvalidInputError, NoSVDOLayersError, SvdcompressError

__all__ = ["BUNDLED", "ResolvedModel", "bundled_checkpoint", "load_model", "parse_input_shape"]

BUNDLED = ("lenet300", "lenet5")


def bundled_checkpoint(name: str) -> Path:
    """Path of a trained SVDO checkpoint shipped with the package: ``"lenet5"`` or ``"lenet300"``.

    Example:
        >>> bundled_checkpoint("lenet5").name
        'lenet5.pt'
    """
    if name not in BUNDLED:
        raise InvalidInputError(f"no bundled checkpoint {name!r}; choose one of {', '.join(BUNDLED)}")
    path = Path(str(resources.files("svdcompress") / "checkpoints" / f"{name}.pt"))
    if not path.exists():
        raise SvdcompressError(f"{path}: bundled checkpoint missing from this installation; reinstall svdcompress")
    return path


@dataclass
class ResolvedModel:
    """A model rebuilt from a checkpoint, ready for masking and pruning."""

    module: nn.Module
    input_shape: tuple[int, ...] | None
    checkpoint: LoadedCheckpoint
    origin: str  # "svdcompress", "factory", "pickle"
    meta: dict[str, Any] = field(default_factory=dict)


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    """``"1,28,28"`` → ``(1, 28, 28)`` (per example, without the batch axis); None for None or "".

    Raises:
        InvalidInputError: not a list of positive integers.
    """
    if text is None or text == "":
        return None
    return parse_int_list(text, "input_shape")


def _import_factory(spec: str) -> Any:
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise InvalidInputError(f"model={spec!r}: expected package.module:factory, e.g. mypkg.nets:make_lenet")
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as e:
        raise InvalidInputError(f"model={spec!r}: cannot import {mod_name} ({e}); is it on PYTHONPATH?") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InvalidInputError(f"model={spec!r}: {mod_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _check_weights(ckpt: LoadedCheckpoint, require_svdo: bool) -> None:
    """load_state_dict silently casts integer tensors and accepts NaN/inf: refuse them before building the
    model, with the same per-tensor messages as ``analyze``. With ``require_svdo``, a checkpoint without SVDO
    layers is refused here too, with ``analyze``'s message, before any model is built."""
    checked: set[str] = set()
    try:
        for layer in find_svdo_layers(ckpt.tensors, file=str(ckpt.path), source=ckpt.source, own=bool(ckpt.meta)):
            checked |= {layer.theta_key, layer.variance_key}
    except NoSVDOLayersError:
        if require_svdo:
            raise
    for key, t in ckpt.tensors.items():
        if key not in checked and t.is_floating_point():
            check_finite(str(ckpt.path), key, t)


def _load_state(module: nn.Module, ckpt: LoadedCheckpoint) -> None:
    try:
        module.load_state_dict(ckpt.tensors, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) or first[0]
        raise CheckpointError(
            f"{ckpt.path}: weights do not fit the model ({detail[:300]}); "
            "check that model= builds the architecture the checkpoint was trained with"
        ) from None


def load_model(
    path: str | os.PathLike[str],
    *,
    model: str | None = None,
    trust_pickle: bool = False,
    input_shape: tuple[int, ...] | None = None,
    require_svdo: bool = False,
) -> ResolvedModel:
    """Rebuild the model a checkpoint belongs to.

    Args:
        path: checkpoint file.
        model: ``package.module:factory`` returning an ``nn.Module`` whose state_dict the file holds.
        trust_pickle: allow a whole pickled model (runs code from the file).
        input_shape: per-example input shape, if the checkpoint does not record one.
        require_svdo: refuse a checkpoint without SVDO layers (what every CLI command does), before building
            anything. Off by default: a plain checkpoint is a valid starting point for ``sparsify``.

    Raises:
        NoSVDOLayersError: ``require_svdo`` and no SVDO layer in the file (the same message as ``analyze``).
        CheckpointError / SvdcompressError: with the option that fixes it named.
    """
    ckpt = load_checkpoint(path, trust_pickle=trust_pickle)
    _check_weights(ckpt, require_svdo)
    shape = input_shape
    if shape is None and isinstance(ckpt.meta.get("input_shape"), list):
        shape = tuple(int(d) for d in ckpt.meta["input_shape"])
    if model is not None:
        factory = _import_factory(model)
        module = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
        if not isinstance(module, nn.Module):
            raise InvalidInputError(f"model={model!r} returned {type(module).__name__}, not a torch.nn.Module")
        _load_state(module, ckpt)
        return ResolvedModel(module.eval(), shape, ckpt, "factory")
    if ckpt.arch is not None:
        from .zoo import build

        try:
            module = build(ckpt.arch, **(ckpt.meta.get("arch_kwargs") or {}))
        except (ValueError, TypeError) as e:
            raise CheckpointError(
                f"{ckpt.path}: records architecture {ckpt.arch!r} that this svdcompress cannot "
                f"build ({e}); pass model=package.module:factory"
            ) from None
        _load_state(module, ckpt)
        return ResolvedModel(module.eval(), shape, ckpt, "svdcompress", dict(ckpt.meta))
    if ckpt.module is not None:
        return ResolvedModel(ckpt.module.eval(), shape, ckpt, "pickle")
    raise CheckpointError(
        f"{ckpt.path}: holds weights but no architecture. Pass model=package.module:factory (a function "
        "returning the nn.Module), or trust_pickle=True if the file is a whole pickled model you trust"
    )
