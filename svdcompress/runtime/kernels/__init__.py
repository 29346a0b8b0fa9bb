"""CPU kernels compiled with numba (``cache=True``: a second process loads machine code from disk).

Every kernel trusts its arguments: :func:`svdcompress.runtime.bundle.read_bundle` and the executor validate
indices, shapes and attributes once at load, so the kernels run without bounds checks. Each kernel has a
plain reference twin in the tests (``F.conv2d``, ``F.linear``, ``F.max_pool2d``, ...).

Parallel variants split the batch with numba's ``prange``. The runtime selects numba's ``workqueue``
threading layer (unless ``NUMBA_THREADING_LAYER`` says otherwise): its workers sleep when idle instead of
spinning, and the executor serialises parallel launches with a lock, since that layer does not accept
concurrent launches from several Python threads.
"""

from __future__ import annotations

import os

import numba

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

from ._scalar import ACT_CODES, MONOTONE_ACTS, POOL_AVG, POOL_MAX, POOL_NONE
from .conv import (
    LANES,
    blocked_scratch_sizes,
    conv2d_blocked_parallel,
    conv2d_blocked_serial,
    conv2d_parallel,
    conv2d_serial,
    conv_offsets,
    conv_scratch_sizes,
)
from .linear import dense_gemv, spmm_parallel, spmm_serial, spmm_tile, spmv
from .pointwise import activation, adaptive_avg_pool2d, pool2d

__all__ = [
    "ACT_CODES",
    "LANES",
    "MONOTONE_ACTS",
    "POOL_AVG",
    "POOL_MAX",
    "POOL_NONE",
    "activation",
    "adaptive_avg_pool2d",
    "blocked_scratch_sizes",
    "conv2d_blocked_parallel",
    "conv2d_blocked_serial",
    "conv2d_parallel",
    "conv2d_serial",
    "conv_offsets",
    "conv_scratch_sizes",
    "dense_gemv",
    "pool2d",
    "spmm_parallel",
    "spmm_serial",
    "spmm_tile",
    "spmv",
]
