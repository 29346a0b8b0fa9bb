"""The one equivalence check every transformation runs: candidate outputs against the masked model's."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .errors import SvdcompressError, VerificationError

__all__ = ["check_outputs", "compare_outputs"]


def _leaves(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out.detach()]
    if isinstance(out, np.ndarray):
        return [torch.from_numpy(out)]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _leaves(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _leaves(v)]
    return []


def compare_outputs(
    reference: Callable[[torch.Tensor], Any],
    candidate: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    what: str,
    *,
    error: type[SvdcompressError] = VerificationError,
) -> tuple[float, float]:
    """Run both on ``x``; return ``(max |candidate - reference|, max(1, max |reference|))``.

    The error is measured against the output scale so that logits in the hundreds are not held to an
    absolute 1e-4. Nested outputs (tuples, dicts) are compared leaf by leaf; NaN in the candidate gives
    an infinite difference.

    Raises:
        error: the output shapes differ.
    """
    with torch.no_grad():
        ref = _leaves(reference(x.clone()))  # clones: a model may modify its input in place
        got = _leaves(candidate(x.clone()))
    if len(ref) != len(got) or any(r.shape != g.shape for r, g in zip(ref, got, strict=True)):
        raise error(
            f"{what}: output shapes {[tuple(g.shape) for g in got]} differ from the reference's "
            f"{[tuple(r.shape) for r in ref]}"
        )
    pairs = [(r, g) for r, g in zip(ref, got, strict=True) if r.numel()]
    diff = max((float((r.double() - g.double()).abs().max()) for r, g in pairs), default=0.0)
    scale = max([1.0] + [float(r.double().abs().max()) for r, _ in pairs])
    return (diff if math.isfinite(diff) else math.inf), scale


def check_outputs(
    diff: float,
    scale: float,
    tolerance: float,
    what: str,
    *,
    error: type[SvdcompressError] = VerificationError,
    hint: str = "",
) -> None:
    """Raise ``error`` unless ``diff <= tolerance * scale`` (the rule every stage verifies with)."""
    if not diff <= tolerance * scale:
        raise error(
            f"{what}: outputs differ from the reference: max abs diff {diff:.4g} > tolerance {tolerance:g} "
            f"× output scale {scale:.4g}{hint}"
        )
