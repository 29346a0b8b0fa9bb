"""Threshold log alpha and replace SVDO layers by deterministic plain modules with zeroed weights.

The masked model is the reference every later stage (structural pruning, export, runtime)
must reproduce.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .conventions import convention_of_module, keep_mask
from .errors import InvalidInputError, UnsupportedOpError
from .svdo import DEFAULT_THRESHOLD, SVDOModule

__all__ = ["apply_masks_", "check_threshold", "dense_copy", "is_svdo_like", "mask_model", "masked_weight_of"]


def is_svdo_like(module: nn.Module) -> bool:
    """True for svdcompress's SVDO layers and foreign ones that keep ``weight`` + ``log_sigma2``
    (pytorch-ard's ``LinearARD`` / ``Conv2dARD``, numenta-style layers named alike)."""
    if isinstance(module, SVDOModule):
        return True
    w = getattr(module, "weight", None)
    ls2 = getattr(module, "log_sigma2", None)
    return isinstance(w, torch.Tensor) and isinstance(ls2, torch.Tensor) and w.shape == ls2.shape


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float, refused unless it is a finite number.

    Raises:
        InvalidInputError: NaN, ±inf or not a number (NaN would keep nothing, +inf everything, silently).
    """
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise InvalidInputError(f"threshold must be a finite number like 3.0, got {threshold!r}") from None
    if not math.isfinite(value):
        raise InvalidInputError(f"threshold must be a finite number like 3.0, got {threshold!r}")
    return value


@torch.no_grad()
def masked_weight_of(module: nn.Module, threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """theta * (log alpha < threshold) for an SVDO-like module.

    Each layer uses its convention's formula, clip and comparison, known from its class (svdcompress's
    layers, pytorch-ard's ``LinearARD``/``Conv2dARD``, BayesWatch's ``Linear``/``Conv2d``); other
    ``weight`` + ``log_sigma2`` layers are read as pytorch-ard, as :func:`svdcompress.analyze` reads them.

    Raises:
        InvalidInputError: ``threshold`` is not a finite number.
    """
    return _masked_weight(module, check_threshold(threshold))


@torch.no_grad()
def _masked_weight(module: nn.Module, threshold: float) -> torch.Tensor:
    w: torch.Tensor = module.weight  # type: ignore[assignment]  # checked by is_svdo_like
    ls2: torch.Tensor = module.log_sigma2  # type: ignore[assignment]  # checked by is_svdo_like
    keep = keep_mask(w, ls2, threshold, convention_of_module(module)[0])
    return (w * keep.to(w.dtype)).detach().clone()


def _plain_from(module: nn.Module, threshold: float) -> nn.Module:
    w = _masked_weight(module, threshold)
    bias = getattr(module, "bias", None)
    has_bias = isinstance(bias, torch.Tensor)
    new: nn.Module
    if w.dim() == 2:
        new = nn.Linear(w.shape[1], w.shape[0], bias=has_bias)
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
            "Linear (2-D weight) and Conv2d (4-D weight) layers"
        )
    with torch.no_grad():
        new.weight.copy_(w)
        if has_bias and new.bias is not None:
            new.bias.copy_(torch.as_tensor(bias).detach().reshape(-1))
    new.to(w.device)
    return new


def apply_masks_(model: nn.Module, threshold: float = DEFAULT_THRESHOLD) -> nn.Module:
    """In place: swap every SVDO-like submodule of ``model`` for a plain masked ``nn.Linear`` /
    ``nn.Conv2d``. Returns ``model`` in eval mode. A model that *is* a single SVDO layer
    cannot be swapped in place; use :func:`mask_model`.

    Raises:
        InvalidInputError: ``threshold`` is not a finite number.
    """
    return _apply_masks(model, check_threshold(threshold))


def _apply_masks(model: nn.Module, threshold: float) -> nn.Module:
    for name, child in list(model.named_children()):
        if is_svdo_like(child):
            setattr(model, name, _plain_from(child, threshold))
        else:
            _apply_masks(child, threshold)
    return model.eval()


def mask_model(model: nn.Module, threshold: float = DEFAULT_THRESHOLD) -> nn.Module:
    """Return a masked, eval-mode deep copy of ``model``; ``model`` is left untouched.

    Raises:
        InvalidInputError: ``threshold`` is not a finite number.

    Example:
        >>> from svdcompress.zoo import lenet300
        >>> masked = mask_model(lenet300(svdo=True))
        >>> type(masked.fc1).__name__
        'Linear'
    """
    return _masked_copy(model, check_threshold(threshold))


def _masked_copy(model: nn.Module, threshold: float) -> nn.Module:
    if is_svdo_like(model):
        return _plain_from(model, threshold).eval()
    return _apply_masks(copy.deepcopy(model), threshold)


def dense_copy(model: nn.Module) -> nn.Module:
    """A plain, eval-mode copy of an SVDO ``model`` that keeps every weight: the network as trained, before
    any pruning (what the benchmark's dense contenders run)."""
    return _masked_copy(model, math.inf)
