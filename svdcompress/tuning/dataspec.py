"""Data specs: which examples a command evaluates on, named as ``NAME:SPLIT`` or a file.

- ``fashion-mnist:train`` is the first 55,000 of the 60,000 training images, ``fashion-mnist:val`` the last
  5,000 and ``fashion-mnist:test`` the 10,000 test images.
- ``mnist5k:train`` is the first 3,500 of the 4,000 digits :func:`~svdcompress.tuning.datasets.load_mnist5k` calls its
  training split, ``mnist5k:val`` the last 500 and ``mnist5k:test`` its 1,000 test digits.
- ``FILE.npz`` holds ``x`` (float inputs, ``(N, ...)``, preprocessed as the model expects) and ``y`` (integer
  class labels, ``(N,)``); it is read with ``allow_pickle=False``.
- Accepted where they were before: a bare ``fashion-mnist`` / ``mnist5k`` (the test split) and ``FILE.npy``
  (inputs only, no labels).

A test split may be evaluated on, but never choose a hyperparameter: :func:`check_selectable` refuses it.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidInputError


def _DataSpecError(message: str) -> InvalidInputError:
    """An :class:`InvalidInputError` about the ``data`` parameter (the CLI's ``--data``)."""
    return InvalidInputError(message, param="data")


__all__ = [
    "DATASETS",
    "FASHION_MNIST_VAL",
    "MNIST5K_VAL",
    "SPLITS",
    "DataSpec",
    "check_selectable",
    "load_data",
    "parse_data_spec",
]

SPLITS = ("train", "val", "test")
FASHION_MNIST_VAL = 5000
"""Fashion-MNIST's validation split: the last 5,000 of its 60,000 training images."""
MNIST5K_VAL = 500
"""MNIST-5k's validation split: the last 500 of the 4,000 digits of its training split."""

_ALIASES = {"fashion-mnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "fmnist": "fashion-mnist"}
_ALIASES |= {"mnist5k": "mnist5k", "mnist-5k": "mnist5k"}
DATASETS = ("fashion-mnist", "mnist5k")

_SPEC_HELP = (
    "use fashion-mnist:SPLIT or mnist5k:SPLIT (SPLIT is train, val or test), or FILE.npz holding x (inputs) "
    "and y (integer labels)"
)


@dataclass(frozen=True)
class DataSpec:
    """A parsed data spec.

    Attributes:
        text: the spec as written (``"fashion-mnist:val"``, ``"fashion-mnist"``, ``"data/val.npz"``).
        name: the data set (``"fashion-mnist"``, ``"mnist5k"``), or None for a file.
        split: ``"train"``, ``"val"`` or ``"test"``, or None for a file.
        path: the file, or None for a named data set.
        bare: a data set named without a split (the test split, as before data specs had splits).
    """

    text: str
    name: str | None = None
    split: str | None = None
    path: Path | None = None
    bare: bool = False

    @property
    def labelled(self) -> bool:
        """False for a ``.npy`` file, which holds inputs only."""
        return self.path is None or self.path.suffix.lower() != ".npy"

    def __str__(self) -> str:
        """The canonical form: ``fashion-mnist:test`` for a bare ``fashion-mnist``, the path for a file."""
        return str(self.path) if self.path is not None else f"{self.name}:{self.split}"


def parse_data_spec(text: str | DataSpec) -> DataSpec:
    """Parse ``NAME:SPLIT``, a bare ``NAME`` (its test split), ``FILE.npz`` or ``FILE.npy``.

    Raises:
        InvalidInputError: an unknown data set or split, or a file that is neither .npz nor .npy.

    Example:
        >>> spec = parse_data_spec("fashion-mnist:val")
        >>> spec.name, spec.split
        ('fashion-mnist', 'val')
        >>> str(parse_data_spec("mnist5k"))
        'mnist5k:test'
    """
    if isinstance(text, DataSpec):
        return text
    if not isinstance(text, str) or not text.strip():
        raise _DataSpecError(f"data spec {text!r} is empty or not a string; {_SPEC_HELP}")
    s = text.strip()
    suffix = Path(s).suffix.lower()
    if suffix in (".npz", ".npy"):
        return DataSpec(s, path=Path(s))
    name, sep, split = s.partition(":")
    canonical = _ALIASES.get(name.lower())
    if canonical is None:
        if "." in Path(s).name or "/" in s:
            raise _DataSpecError(f"data spec {s!r}: a data file must end in .npz (x and y arrays); {_SPEC_HELP}")
        raise _DataSpecError(f"unknown data set {name!r} in data spec {s!r}; {_SPEC_HELP}")
    if not sep:
        return DataSpec(s, canonical, "test", bare=True)
    if split.lower() not in SPLITS:
        raise _DataSpecError(f"unknown split {split!r} in data spec {s!r}; use {canonical}:train, :val or :test")
    return DataSpec(s, canonical, split.lower())


def check_selectable(spec: str | DataSpec) -> DataSpec:
    """``spec``, if it may choose a hyperparameter (the threshold): labelled, and not a test split.

    Raises:
        InvalidInputError: a test split (also a bare ``fashion-mnist``, which means the test split), or a
            ``.npy`` file (no labels to score against).

    Example:
        >>> check_selectable("mnist5k:test")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        svdcompress.errors.InvalidInputError: data spec 'mnist5k:test' is a test split, which may be evaluated on ...
    """
    ds = parse_data_spec(spec)
    if ds.split == "test":
        bare = f" (without a split, {ds.name!r} means its test split)" if ds.bare else ""
        raise _DataSpecError(
            f"data spec {ds.text!r} is a test split{bare}, which may be evaluated on but cannot choose the "
            "threshold: data that picks a hyperparameter no longer measures it, so its accuracy would be "
            f"optimistic. Choose on {ds.name}:val and keep {ds.name}:test for the final evaluation"
        )
    if not ds.labelled:
        raise _DataSpecError(
            f"data spec {ds.text!r}: a .npy file holds inputs without labels, so it cannot score a threshold; "
            "save inputs and labels with numpy.savez(FILE.npz, x=inputs, y=labels)"
        )
    return ds


def load_data(spec: str | DataSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The examples a spec names: inputs as float32 ``(N, ...)`` and labels as int64 ``(N,)`` (None for .npy).

    Raises:
        InvalidInputError: a bad spec, or a file that is missing or holds unusable arrays (the message says
            which and how to save a usable one).
        SvdcompressError: a named data set that is not installed (the message says how to install it).
    """
    ds = parse_data_spec(spec)
    if ds.path is not None:
        return _load_npz(ds.path) if ds.labelled else _load_npy(ds.path)
    return _load_named(str(ds.name), str(ds.split))


def _load_named(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from .datasets import load_fashion_mnist, load_mnist5k

    if name == "fashion-mnist":
        if split == "test":
            return load_fashion_mnist("test")
        x, y = load_fashion_mnist("train")  # (60000, 1, 28, 28)
        cut = len(x) - FASHION_MNIST_VAL
    else:
        if split == "test":
            return load_mnist5k("test")
        x, y = load_mnist5k("train")  # (4000, 1, 28, 28)
        cut = len(x) - MNIST5K_VAL
    return (x[:cut], y[:cut]) if split == "train" else (x[cut:].clone(), y[cut:].clone())


def _load_npy(path: Path) -> tuple[torch.Tensor, None]:
    try:
        arr = np.load(path, allow_pickle=False)
        x = torch.from_numpy(np.asarray(arr)).float()
    except (OSError, ValueError, TypeError) as e:  # missing, not .npy, object or non-numeric arrays
        raise _DataSpecError(f"data spec {path}: cannot read inputs ({e}); give a float .npy array (N, ...)") from None
    if x.dim() < 2 or x.shape[0] == 0:
        raise _DataSpecError(f"data spec {path}: expected a batch of inputs (N, ...), got shape {tuple(x.shape)}")
    return x, None


_NPZ_FIX = "save it with numpy.savez(path, x=inputs, y=labels): x float (N, ...), y integer class labels (N,)"


def _load_npz(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    if not path.is_file():
        raise _DataSpecError(f"data spec {path}: no such file; {_NPZ_FIX}")
    if not zipfile.is_zipfile(path):  # numpy would try to unpickle it, and say so
        raise _DataSpecError(f"data spec {path}: not an .npz archive (a zip of .npy arrays); {_NPZ_FIX}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            missing = [k for k in ("x", "y") if k not in names]
            if missing:
                found = ", ".join(names) if names else "none"
                raise _DataSpecError(
                    f"data spec {path}: no array {' or '.join(repr(k) for k in missing)} "
                    f"(arrays found: {found}); {_NPZ_FIX}"
                )
            x, y = npz["x"], npz["y"]
    except InvalidInputError:
        raise
    except ValueError as e:  # object arrays refused by allow_pickle=False, or a corrupt member
        raise _DataSpecError(f"data spec {path}: cannot read its arrays ({e}); {_NPZ_FIX}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise _DataSpecError(f"data spec {path}: not a readable .npz file ({e}); {_NPZ_FIX}") from None
    if not np.issubdtype(x.dtype, np.floating):
        hint = " (e.g. x.astype('float32') / 255 for 8-bit images)" if np.issubdtype(x.dtype, np.integer) else ""
        raise _DataSpecError(
            f"data spec {path}: x has dtype {x.dtype}; store the inputs as floats, preprocessed as the model "
            f"expects{hint}"
        )
    if x.ndim < 2 or x.shape[0] == 0:
        raise _DataSpecError(f"data spec {path}: x must be a batch of inputs (N, ...) with N >= 1, got shape {x.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise _DataSpecError(
            f"data spec {path}: y must be integer class labels of shape (N,), got dtype {y.dtype} and shape {y.shape}"
        )
    if len(y) != len(x):
        raise _DataSpecError(
            f"data spec {path}: x has {len(x):,} examples but y has {len(y):,} labels; they must match"
        )
    if (y < 0).any():
        raise _DataSpecError(
            f"data spec {path}: y has negative labels (min {int(y.min())}); labels are class indices 0..C-1"
        )
    xt = torch.from_numpy(np.ascontiguousarray(x)).float()
    if not bool(torch.isfinite(xt).all()):
        raise _DataSpecError(f"data spec {path}: x holds NaN or infinite values")
    return xt, torch.from_numpy(y.astype(np.int64))
