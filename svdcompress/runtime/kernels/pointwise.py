"""Stand-alone activations and pooling, for graphs where they cannot be fused into a convolution."""

from __future__ import annotations

import numpy as np
from numba import njit

from ._scalar import act, pool_plane

__all__ = ["activation", "adaptive_avg_pool2d", "pool2d"]


@njit(cache=True, nogil=True)
def activation(x: np.ndarray, y: np.ndarray, kind: int, a0: float, a1: float) -> None:
    """``y = act(x)`` elementwise over flat float32 arrays."""
    for i in range(x.size):
        y[i] = act(x[i], kind, a0, a1)


@njit(cache=True, nogil=True)
def pool2d(x: np.ndarray, y: np.ndarray, h: int, w: int, oh: int, ow: int, ip: np.ndarray) -> None:
    """Pool every ``(h, w)`` plane of ``x`` (``(planes, h·w)``) into ``y`` (``(planes, oh·ow)``)."""
    for p in range(x.shape[0]):
        pool_plane(x[p], h, w, y[p], oh, ow, ip)


@njit(cache=True, nogil=True)
def adaptive_avg_pool2d(x: np.ndarray, y: np.ndarray, h: int, w: int, oh: int, ow: int) -> None:
    """PyTorch's adaptive average pooling: window ``[floor(i·h/oh), ceil((i+1)·h/oh))`` per output row."""
    for p in range(x.shape[0]):
        src = x[p]
        for i in range(oh):
            y0 = (i * h) // oh
            y1 = -((-(i + 1) * h) // oh)
            for j in range(ow):
                x0 = (j * w) // ow
                x1 = -((-(j + 1) * w) // ow)
                s = 0.0
                for a in range(y0, y1):
                    for b in range(x0, x1):
                        s += src[a * w + b]
                y[p, i * ow + j] = s / ((y1 - y0) * (x1 - x0))
