"""Threshold log alpha and replace SVDO layers by deterministic plain modules with zeroed weights.

The masked model is the reference every later stage (structural pruning, export, runtime)
must reproduce.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .conventions import PYTORCH_ARD, SVDCOMPRESS, keep_mask
from .errors import UnsupportedOpError
from .svdo import DEFAULT_THRESHOLD, SVDOModule

__all__ = ["apply_masks_", "is_svdo_like", "mask_model", "masked_weight_of"]


def is_svdo_like(module: nn.Module) -> bool:
    """True for svdcompress's SVDO layers and foreign ones that keep ``weight`` + ``log_sigma2``
    (pytorch-ard's ``LinearARD`` / ``Conv2dARD``, numenta-style layers named alike)."""
    if isinstance(module, SVDOModule):
        return True
    w = getattr(module, "weight", None)
    ls2 = getattr(module, "log_sigma2", None)
    return isinstance(w, torch.Tensor) and isinstance(ls2, torch.Tensor) and w.shape == ls2.shape


@torch.no_grad()
def masked_weight_of(module: nn.Module, threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """theta * (log alpha < threshold) for an SVDO-like module.

    svdcompress's layers use their own log alpha; foreign ``weight`` + ``log_sigma2`` layers use
    pytorch-ard's formula, the same one :func:`svdcompress.analyze` applies to their state_dicts.
    """
    w: torch.Tensor = module.weight  # type: ignore[assignment]  # checked by is_svdo_like
    ls2: torch.Tensor = module.log_sigma2  # type: ignore[assignment]  # checked by is_svdo_like
    keep = keep_mask(w, ls2, threshold, SVDCOMPRESS if isinstance(module, SVDOModule) else PYTORCH_ARD)
    return (w * keep.to(w.dtype)).detach().clone()


def _plain_from(module: nn.Module, threshold: float) -> nn.Module:
    w = masked_weight_of(module, threshold)
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
    cannot be swapped in place; use :func:`mask_model`."""
    for name, child in list(model.named_children()):
        if is_svdo_like(child):
            setattr(model, name, _plain_from(child, threshold))
        else:
            apply_masks_(child, threshold)
    return model.eval()


def mask_model(model: nn.Module, threshold: float = DEFAULT_THRESHOLD) -> nn.Module:
    """Return a masked, eval-mode deep copy of ``model``; ``model`` is left untouched.

    Example:
        >>> from svdcompress.zoo import lenet300
        >>> masked = mask_model(lenet300(svdo=True))
        >>> type(masked.fc1).__name__
        'Linear'
    """
    if is_svdo_like(model):
        return _plain_from(model, threshold).eval()
    return apply_masks_(copy.deepcopy(model), threshold)
