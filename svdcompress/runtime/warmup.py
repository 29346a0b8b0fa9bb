"""Compile the runtime's kernels into numba's on-disk cache ahead of the first request (a Dockerfile step).

``warmup(["model.csr"])`` loads each bundle and runs it at batch 1 and in a batch, so every kernel its plan
runs (the bundle's recorded plan on this CPU, else the plan chosen now) is compiled and cached. ``warmup()``
with no bundle compiles every kernel in the forms the runtime calls them with (that takes minutes). Either
way it reports where the cache is and its size on disk.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np

from . import kernels as K
from .executor import BATCHED

__all__ = ["WarmupReport", "cache_dir", "cache_size", "kernel_stats", "warmup"]


@dataclass
class WarmupReport:
    """What :func:`warmup` did: the cache folder, its size, and how many kernels were compiled or loaded."""

    cache_dir: Path
    cache_bytes: int
    cache_files: int
    compiled: int
    loaded: int
    seconds: float
    bundles: list[str]

    def summary(self) -> str:
        what = ", ".join(self.bundles) if self.bundles else "every kernel"
        return (
            f"warmup ({what}): {self.compiled} kernels compiled, {self.loaded} loaded from the cache, "
            f"in {self.seconds:.1f} s; cache {self.cache_dir}: {self.cache_files} files, "
            f"{self.cache_bytes / 1e6:.1f} MB"
        )


def cache_dir() -> Path:
    """The folder numba caches the runtime's kernels in (as this process configured it)."""
    base = getattr(numba.config, "CACHE_DIR", "")
    kernels_dir = Path(K.__file__).parent
    if base:
        return K._numba_subdir(base)
    return kernels_dir / "__pycache__"


def cache_size(d: Path | None = None) -> tuple[int, int]:
    """(bytes, files) of compiled kernels (``*.nbi``, ``*.nbc``) in ``d`` (default :func:`cache_dir`),
    the pure-numba twins' subfolder included."""
    d = cache_dir() if d is None else d
    total = files = 0
    for pattern in ("*.nbi", "*.nbc", "*/*.nbi", "*/*.nbc"):
        for f in d.glob(pattern):
            try:
                total += f.stat().st_size
                files += 1
            except OSError:
                continue
    return total, files


def kernel_stats() -> tuple[int, int]:
    """(compiled, loaded from the cache) signatures of the runtime's kernels in this process so far."""
    compiled = loaded = 0
    for d in K.dispatchers():
        compiled += sum(d.stats.cache_misses.values())
        loaded += sum(d.stats.cache_hits.values())
    return compiled, loaded


def warmup(bundles: Iterable[str | os.PathLike[str]] = (), *, threads: int = 1) -> WarmupReport:
    """Compile the kernels ``bundles`` run (every kernel when none is given) into the on-disk cache.

    Raises:
        BundleError: A bundle is missing or invalid.
    """
    from . import load

    paths = [str(p) for p in bundles]
    c0, l0 = kernel_stats()
    t0 = time.perf_counter()
    if paths:
        for p in paths:
            model = load(p, threads=threads)
            for n in (1, BATCHED):
                model(np.zeros((n, *model.input_shape), np.float32))
            model.close()
    else:
        _compile_all()
    seconds = time.perf_counter() - t0
    c1, l1 = kernel_stats()
    d = cache_dir()
    size, files = cache_size(d)
    return WarmupReport(d, size, files, c1 - c0, l1 - l0, seconds, paths)


def _compile_all() -> None:
    """Every kernel, in the argument types the executor calls it with."""
    from numba import types as T

    f32, i32, i64, b1 = T.float32[::1], T.int32[::1], T.int64[::1], T.bool_[::1]
    f32_2, i64_2 = T.float32[:, ::1], T.int64[:, ::1]
    conv = (f32_2, f32_2, i64, i32, f32, f32, i64, f32, i64)
    sigs: list[tuple[Any, tuple[Any, ...]]] = [
        (K.conv2d, conv),
        (K.conv2d_blocked, conv),
        (K.conv2d_shifted, conv),
        (K.conv2d_im2col, (f32_2, f32_2, i64, i32, i32, f32, f32, i64, f32, i64)),
        (K.activation, (f32, f32, T.int64, T.float64, T.float64)),
        (K.pool2d, (f32_2, f32_2, T.int64, T.int64, T.int64, T.int64, i64)),
        (K.adaptive_avg_pool2d, (f32_2, f32_2, T.int64, T.int64, T.int64, T.int64)),
    ]
    for itype in (T.uint16[::1], T.uint32[::1]):
        chain = (f32_2, f32_2, i64_2, f32_2, i64, itype, f32, f32)
        sigs += [
            (K.chain_single, (*chain, b1)),
            (K.chain_batched, (*chain, i64, T.int64)),
            (K.chain_batched_parallel, (*chain, i64, T.int64, T.int64)),
        ]
    net_chain = (i64_2, f32_2, i64, T.uint16[::1], f32, f32, b1)
    net = (f32_2, f32_2, i64_2, i64_2, f32_2, i64, i32, i32, f32, f32, i64, *net_chain)
    for mask in range(1, 8):
        variants = {code for bit, code in enumerate((K.CONV_WIDE, K.CONV_SHIFTED, K.CONV_IM2COL)) if mask >> bit & 1}
        sigs.append((K.net_single(variants), net))
    for dispatcher, sig in sigs:
        dispatcher.compile(sig)
