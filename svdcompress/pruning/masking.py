"""Threshold log alpha and replace SVDO layers by deterministic plain modules with zeroed weights.

The masked model is the reference every later stage (structural pruning, export, runtime)
must reproduce.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings

import torch
from torch import nn

from ..checkpoint import DEFAULT_THRESHOLD
from ..checkpoint.conventions import (
    SVDOLayer,
    central_data_layers,
    keep_mask,
    known_pairs,
    module_layer,
    module_layers,
)
from ..errors import InvalidInputError, UnsupportedOpError
from ..nn.layers import SVDOModule

__all__ = [
    "apply_masks_",
    "check_threshold",
    "dense_copy",
    "is_svdo_like",
    "layers_of_model",
    "mask_model",
    "masked_weight_of",
]


def is_svdo_like(module: nn.Module) -> bool:
    """True for svdcompress's SVDO layers and foreign ones that keep ``weight`` + ``log_sigma2``
    (pytorch-ard's ``LinearARD`` / ``Conv2dARD``, numenta-style layers named alike).

    That family only: :func:`svdcompress.checkpoint.conventions.module_layer` reads a layer of every convention (and the
    formula a loaded file settled), which is what masking, pruning and export use."""
    if isinstance(module, SVDOModule):
        return True
    w = getattr(module, "weight", None)
    ls2 = getattr(module, "log_sigma2", None)
    return isinstance(w, torch.Tensor) and isinstance(ls2, torch.Tensor) and w.shape == ls2.shape


def check_threshold(threshold: object) -> float:
    """``threshold`` as a float, refused unless it is a finite number.

    Raises:
        InvalidInputError: NaN, ±inf or not a number (NaN would keep nothing, +inf everything, silently).
    """
    try:
        value = float(threshold)  # type: ignore[arg-type]  # anything else is refused below
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"threshold must be a finite number like 3.0, got {threshold!r}", param="threshold"
        ) from None
    if not math.isfinite(value):
        raise InvalidInputError(f"threshold must be a finite number like 3.0, got {threshold!r}", param="threshold")
    return value


@torch.no_grad()
def masked_weight_of(
    module: nn.Module, threshold: float = DEFAULT_THRESHOLD, convention: str | None = None
) -> torch.Tensor:
    """theta · keep-mask of an SVDO layer, in PyTorch layout ((out, in) or (out, in, kh, kw)).

    Each layer uses its convention's formula, eps, clip and comparison
    (:func:`svdcompress.checkpoint.conventions.module_layer`:
    ``convention``, the tag a loaded file left, the class, else the names); ``weight`` + ``log_sigma2`` layers that
    nothing decides are read as pytorch-ard, as :func:`svdcompress.analyze` reads them.

    Raises:
        InvalidInputError: ``threshold`` is not a finite number, or ``module`` holds no SVDO layer of its own.
    """
    layer = module_layer(module, type(module).__name__, convention)
    if layer is None:
        raise InvalidInputError(
            f"{type(module).__name__} holds no SVDO weight + log-variance pair of its own; known: {known_pairs()}"
        )
    return _masked(layer, check_threshold(threshold))


def _masked(layer: SVDOLayer, threshold: float) -> torch.Tensor:
    w = layer.theta
    keep = keep_mask(w, layer.log_sigma2, threshold, layer.convention)
    return (w * keep.to(w.dtype)).detach().clone()


def _plain_from(module: nn.Module, threshold: float, layer: SVDOLayer) -> nn.Module:
    """The plain Linear / Conv1d / Conv2d / Embedding a layer computes in eval mode: ``layer``'s θ masked by its
    convention, its bias; a conv's stride, padding, dilation and groups, an embedding's padding_idx,
    scale_grad_by_freq and sparse are read from the module's attributes of those names."""
    w = _masked(layer, threshold)
    bias = layer.bias
    has_bias = bias is not None
    new: nn.Module
    if layer.kind == "embedding":
        new = nn.Embedding(
            w.shape[0],
            w.shape[1],
            padding_idx=getattr(module, "padding_idx", None),
            scale_grad_by_freq=bool(getattr(module, "scale_grad_by_freq", False)),
            sparse=bool(getattr(module, "sparse", False)),
        )
        with torch.no_grad():
            new.weight.copy_(w)
        return new.to(w.device)
    if w.dim() == 2:
        new = nn.Linear(w.shape[1], w.shape[0], bias=has_bias)
    elif w.dim() == 3:
        new = nn.Conv1d(
            w.shape[1] * int(getattr(module, "groups", 1)),
            w.shape[0],
            w.shape[2],
            stride=getattr(module, "stride", 1),
            padding=getattr(module, "padding", 0),
            dilation=getattr(module, "dilation", 1),
            groups=int(getattr(module, "groups", 1)),
            bias=has_bias,
        )
    elif w.dim() == 4:
        new = nn.Conv2d(
            w.shape[1] * int(getattr(module, "groups", 1)),
            w.shape[0],
            (w.shape[2], w.shape[3]),
            stride=getattr(module, "stride", 1),
            padding=getattr(module, "padding", 0),
            dilation=getattr(module, "dilation", 1),
            groups=int(getattr(module, "groups", 1)),
            bias=has_bias,
        )
    else:
        raise UnsupportedOpError(
            f"cannot mask {type(module).__name__}: its weight has {w.dim()} dims; svdcompress masks SVDO-like "
            "Linear / Embedding (2-D weight), Conv1d (3-D) and Conv2d (4-D weight) layers and LSTMSVDO"
        )
    with torch.no_grad():
        new.weight.copy_(w)
        if bias is not None and new.bias is not None:
            new.bias.copy_(bias.detach().reshape(-1))
    new.to(w.device)
    return new


def _plain_lstm(module: nn.Module, threshold: float, layers: list[SVDOLayer]) -> nn.LSTM:
    """The plain ``nn.LSTM`` an ``LSTMSVDO`` computes in eval mode: each weight matrix θ · mask, the biases as
    they are; input size, layers, bias, batch_first and dropout from the module."""
    by_name = {layer.name.rsplit(".", 1)[-1]: layer for layer in layers}
    num_layers = sum(1 for n in by_name if n.startswith("weight_ih_l"))
    first = by_name.get("weight_ih_l0")
    if first is None or any(f"weight_{k}_l{i}" not in by_name for i in range(num_layers) for k in ("ih", "hh")):
        raise UnsupportedOpError(
            f"cannot mask {type(module).__name__}: its LSTM weights are {sorted(by_name)}; expected weight_ih_l{{k}} "
            "and weight_hh_l{k} with their log_sigma2_* for every layer k from 0"
        )
    has_bias = first.bias is not None
    new = nn.LSTM(
        first.theta.shape[1],
        first.theta.shape[0] // 4,
        num_layers=num_layers,
        bias=has_bias,
        batch_first=bool(getattr(module, "batch_first", False)),
        dropout=float(getattr(module, "dropout", 0.0)) if num_layers > 1 else 0.0,  # eval: no effect either way
    )
    with torch.no_grad():
        for name, layer in by_name.items():
            getattr(new, name).copy_(_masked(layer, threshold))
            if has_bias:
                if layer.bias is None:
                    raise UnsupportedOpError(f"cannot mask {type(module).__name__}: '{layer.theta_key}' has no bias")
                getattr(new, name.replace("weight", "bias")).copy_(layer.bias.detach())
    return new.to(first.theta.device)


def apply_masks_(model: nn.Module, threshold: float = DEFAULT_THRESHOLD, *, convention: str | None = None) -> nn.Module:
    """In place: swap every SVDO layer of ``model`` (any convention :func:`svdcompress.analyze` reads) for a
    plain masked ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Embedding`` / ``nn.LSTM``. Returns
    ``model`` in eval mode. A model that *is* a single SVDO layer cannot be swapped in place; use
    :func:`mask_model`.

    Args:
        model: the model.
        threshold: log α threshold.
        convention: the project the layers come from, for ``weight`` + ``log_sigma2`` layers whose class does
            not say (see :data:`svdcompress.checkpoint.conventions.CONVENTION_NAMES`).

    Raises:
        InvalidInputError: ``threshold`` is not a finite number; ``convention`` is unknown or reads no layer.
    """
    return _apply_masks(model, check_threshold(threshold), convention)


def _apply_masks(model: nn.Module, threshold: float, convention: str | None = None) -> nn.Module:
    found = _layers(model, convention, threshold)
    layers = {layer.name: layer for layer in found if layer.kind != "lstm"}
    lstms: dict[str, list[SVDOLayer]] = {}
    for layer in found:
        if layer.kind == "lstm":
            lstms.setdefault(layer.name.rpartition(".")[0], []).append(layer)
    _swap(model, "", threshold, layers, lstms)
    _drop_unused_central_data(model)
    return model.eval()


def _layers(model: nn.Module, convention: str | None, threshold: float) -> list[SVDOLayer]:
    """The SVDO layers of ``model`` (as :func:`svdcompress.analyze` reads them); a :class:`ConventionWarning`
    when the names leave the formula open and the candidates keep different weights."""
    from ..checkpoint.analysis import ambiguity_warnings
    from ..checkpoint.conventions import _by_name
    from ..errors import ConventionWarning

    _by_name(convention)  # an unknown name is refused even when the model has no layer it could read
    layers = layers_of_model(model, convention)
    if convention is not None and layers and not any(layer.convention.name == convention for layer in layers):
        raise InvalidInputError(
            f"{type(model).__name__}: convention={convention!r} reads none of the model's SVDO layers"
        )
    if math.isfinite(threshold):  # dense_copy (threshold inf) keeps every weight under every formula
        for note in ambiguity_warnings(type(model).__name__, layers, threshold):
            warnings.warn(note, ConventionWarning, stacklevel=2)
    return layers


def layers_of_model(model: nn.Module, convention: str | None = None) -> list[SVDOLayer]:
    """Every SVDO layer of ``model`` keyed by its module's qualified name ("" for the model itself), numenta's
    VDropCentralData layers included."""
    out = []
    for name, m in model.named_modules():
        for layer in module_layers(m, name, convention):
            # an LSTM's matrices keep their names ("lstm.weight_ih_l0"); the others are named by their module
            out.append(layer if layer.kind == "lstm" else dataclasses.replace(layer, name=name))
    return out + central_data_layers(model)


def _swap(
    module: nn.Module,
    prefix: str,
    threshold: float,
    layers: dict[str, SVDOLayer],
    lstms: dict[str, list[SVDOLayer]],
) -> None:
    for name, child in list(module.named_children()):
        qualified = f"{prefix}{name}"
        if qualified in layers:
            setattr(module, name, _plain_from(child, threshold, layers[qualified]))
        elif qualified in lstms:
            setattr(module, name, _plain_lstm(child, threshold, lstms[qualified]))
        else:
            _swap(child, f"{qualified}.", threshold, layers, lstms)


def _drop_unused_central_data(model: nn.Module) -> None:
    """Remove a VDropCentralData holder once every layer reading it is a plain copy: it is no longer called,
    and its flat z_mu / z_logvar would count as parameters of the masked model."""
    users: dict[int, int] = {}
    for m in model.modules():
        holder = getattr(m, "central_data", None)
        if isinstance(holder, list) and len(holder) == 1 and isinstance(holder[0], nn.Module):
            users[id(holder[0])] = users.get(id(holder[0]), 0) + 1
    for name, m in list(model.named_modules()):
        if name and isinstance(getattr(m, "z_chunk_sizes", None), list) and id(m) not in users:
            parent, _, attr = name.rpartition(".")
            delattr(model.get_submodule(parent), attr)


def mask_model(model: nn.Module, threshold: float = DEFAULT_THRESHOLD, *, convention: str | None = None) -> nn.Module:
    """Return a masked, eval-mode deep copy of ``model``; ``model`` is left untouched.

    Every SVDO layer (each convention :func:`svdcompress.analyze` reads) becomes the plain ``nn.Linear`` /
    ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Embedding`` / ``nn.LSTM`` it computes in eval mode: θ where its own
    formula, eps, clip and comparison keep the weight.

    Raises:
        InvalidInputError: ``threshold`` is not a finite number; ``convention`` is unknown or reads no layer.

    Example:
        >>> from svdcompress.nn.zoo import lenet300
        >>> masked = mask_model(lenet300(svdo=True))
        >>> type(masked.fc1).__name__
        'Linear'
    """
    return _masked_copy(model, check_threshold(threshold), convention)


def _masked_copy(model: nn.Module, threshold: float, convention: str | None = None) -> nn.Module:
    roots = module_layers(model, "", convention)
    if roots:
        _layers(model, convention, threshold)  # the same checks and warning as for a whole model
        if roots[0].kind == "lstm":
            return _plain_lstm(model, threshold, roots).eval()
        return _plain_from(model, threshold, roots[0]).eval()
    return _apply_masks(copy.deepcopy(model), threshold, convention)


def dense_copy(model: nn.Module, *, convention: str | None = None) -> nn.Module:
    """A plain, eval-mode copy of an SVDO ``model`` that keeps every weight: the network as trained, before
    any pruning (what the benchmark's dense contenders run)."""
    return _masked_copy(model, math.inf, convention)
