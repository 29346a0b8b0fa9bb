"""Input shapes: parse them, check them, and turn them into the example batches every stage runs."""

from __future__ import annotations

import operator
from collections.abc import Iterable

import torch
from torch import nn

from .errors import InvalidInputError

__all__ = ["INPUT_DTYPES", "check_input_shape", "example_inputs", "parse_int_list", "vocabulary"]

INPUT_DTYPES = {"float32": torch.float32, "int64": torch.int64}
"""What ``input_dtype`` (``--input-dtype``) takes."""

EXAMPLE_SEED = 0
"""Every example batch is drawn from this seed, so verification figures are reproducible."""


def parse_int_list(text: str, what: str, *, example: str = "1,28,28") -> tuple[int, ...]:
    """``"1,28,28"`` (or ``"1x28x28"``) → ``(1, 28, 28)``; every entry a positive integer.

    Args:
        text: the comma-separated list.
        what: the parameter's name, used in the error message ("" for none).
        example: a valid value, shown in the error message.

    Raises:
        InvalidInputError: empty, an empty entry, not integers, or an entry <= 0.

    Example:
        >>> parse_int_list("1, 16,256", "batch_sizes")
        (1, 16, 256)
    """
    prefix = f"{what} " if what else ""
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    if any(not p for p in parts):  # "1,,16" or "1,16,": a typo, not a list of two
        raise InvalidInputError(f"{prefix}{text!r} has an empty entry; give comma-separated integers like {example}")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise InvalidInputError(f"{prefix}{text!r} is not a comma-separated list of integers like {example}") from None
    if not values or any(v <= 0 for v in values):
        raise InvalidInputError(f"{prefix}{text!r} must be positive integers like {example}")
    return values


def check_input_shape(input_shape: Iterable[int]) -> tuple[int, ...]:
    """The per-example input shape as a tuple of positive ints.

    Raises:
        InvalidInputError: not a sequence of positive integers.
    """
    try:
        shape = tuple(operator.index(d) for d in input_shape)  # ints and numpy ints; floats and strings fail
    except TypeError:
        raise InvalidInputError(
            f"input_shape must be positive integers without the batch dim, e.g. (1, 28, 28); got {input_shape!r}"
        ) from None
    if not shape or any(d <= 0 for d in shape):
        raise InvalidInputError(
            f"input_shape must be positive integers without the batch dim, e.g. (1, 28, 28); got {shape!r}"
        )
    return shape


def example_inputs(
    input_shape: Iterable[int],
    batch: int,
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = EXAMPLE_SEED,
    high: int = 2,
) -> torch.Tensor:
    """A seeded batch ``(batch, *input_shape)``: what tracing, export and verification run.

    Standard normal for float dtypes; for integer dtypes (token ids) uniform in ``[0, high)``.
    Random, not zeros: a zero input hides constant-folding mistakes (every ReLU is off).

    Example:
        >>> example_inputs((1, 28, 28), 2).shape
        torch.Size([2, 1, 28, 28])
        >>> example_inputs((5,), 2, dtype=torch.int64, high=100).dtype
        torch.int64
    """
    shape = check_input_shape(input_shape)
    gen = torch.Generator().manual_seed(seed)
    if not dtype.is_floating_point:
        return torch.randint(0, max(1, int(high)), (batch, *shape), generator=gen, dtype=dtype)  # (batch, *shape)
    return torch.randn((batch, *shape), generator=gen, dtype=dtype)  # (batch, *input_shape)


def vocabulary(model: nn.Module) -> int:
    """The ids a model over int64 inputs takes: below the smallest ``num_embeddings`` of its embeddings (2 if it
    has none), so that random example ids are valid for every embedding.

    Example:
        >>> vocabulary(nn.Sequential(nn.Embedding(100, 8), nn.Embedding(30, 8)))
        30
    """
    sizes = [int(n) for m in model.modules() if isinstance(n := getattr(m, "num_embeddings", None), int)]
    return min(sizes, default=2)
