"""The fused single-example pass: a plan's steps, when they form a plain sequence of convolutions, reshapes
and at most one Linear chain (last), packed into one :func:`kernels.net_single` call.

The packing concatenates the layers' arrays once, at load. Anything else in the graph (pooling on its own,
add, cat, softmax, ...) leaves the plan without a fused pass; it then runs step by step, as at every batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from . import kernels as K
from ._builder import Plan
from .kernels import layout as L

__all__ = ["single_pass"]

_NO_CHAIN = (
    np.zeros((0, L.CHAIN_LEN), np.int64),
    np.zeros((0, L.FP_LEN), np.float32),
    np.zeros(1, np.int64),
    np.zeros(0, np.uint16),
    np.zeros(0, np.float32),
    np.zeros(0, np.float32),
    np.zeros(0, np.bool_),
)


def single_pass(plan: Plan) -> Callable[[np.ndarray], np.ndarray] | None:
    """``f(x) -> y`` for ``x`` of shape ``(1, *input_shape)``, or None when the plan is not a plain sequence."""
    if not plan.steps or len(plan.fragments) != len(plan.steps):
        return None
    convs: list[tuple[Any, ...]] = []
    chain: tuple[np.ndarray, ...] | None = None
    cur = 0  # the input's slot
    for i in range(len(plan.steps)):
        f = plan.fragments[i]
        if f.src != cur or (f.kind == "conv" and chain is not None) or (f.kind == "chain" and chain is not None):
            return None
        if f.kind == "conv":
            convs.append(f.arrays)
        elif f.kind == "chain":
            chain = f.arrays
        cur = f.dst
    if cur != plan.output_slot:
        return None
    if not convs:
        # Reshapes and one chain: the chain's own batch-1 step is already one kernel call, and the fused pass
        # would only add a dispatch of ~18 arrays after compiling every convolution kernel it can run (slow on a
        # cold numba cache).
        return None
    packed = _pack_convs(convs)
    kernel = K.net_single({int(c[0]) for c in convs})  # compiled with only the variants the layers use
    chain_arrays = chain if chain is not None else _NO_CHAIN
    out_size = math.prod(plan.output_shape)
    out_shape = (1, *plan.output_shape)

    def run(x: np.ndarray) -> np.ndarray:
        y = np.empty((1, out_size), np.float32)
        kernel(x.reshape(1, -1), y, *packed, *chain_arrays)
        return y.reshape(out_shape)

    return run


def _pack_convs(convs: list[tuple[Any, ...]]) -> tuple[np.ndarray, ...]:
    """``net_single``'s convolution arrays: ``cmeta`` (see :mod:`kernels.net`), ``cip``, ``cfp`` and the
    concatenated indptrs, taps, used columns, values, biases and scratch sizes."""
    meta = np.zeros((len(convs), L.NET_LEN), np.int64)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("ptr", "off", "used", "vals", "bias", "sizes")}
    base = dict.fromkeys(parts, 0)
    ips: list[np.ndarray] = []
    fps: list[np.ndarray] = []
    for k, (code, indptr, off, used, vals, bias, ip, fp, sizes) in enumerate(convs):
        ips.append(ip)
        fps.append(fp)
        cout = indptr.size - 1
        arrays = {"ptr": indptr, "off": off, "used": used, "vals": vals, "bias": bias, "sizes": sizes}
        row = meta[k]
        row[L.NET_VARIANT], row[L.NET_OUT_SIZE] = code, cout * int(ip[L.IP_PH]) * int(ip[L.IP_PW])
        row[L.NET_PTR_BASE], row[L.NET_PTR_LEN] = base["ptr"], indptr.size
        row[L.NET_TAP_BASE], row[L.NET_TAP_LEN] = base["off"], off.size
        row[L.NET_USED_BASE], row[L.NET_USED_LEN] = base["used"], used.size
        row[L.NET_BIAS_BASE], row[L.NET_COUT] = base["bias"], cout
        row[L.NET_SIZES_BASE], row[L.NET_SIZES_LEN] = base["sizes"], sizes.size
        for key, arr in arrays.items():
            parts[key].append(arr)
            base[key] += arr.size
    ip_all = np.stack(ips) if ips else np.zeros((0, L.IP_LEN), np.int64)
    fp_all = np.stack(fps) if fps else np.zeros((0, L.FP_LEN), np.float32)

    def cat(key: str, dtype: Any) -> np.ndarray:
        return np.concatenate(parts[key]).astype(dtype) if parts[key] else np.zeros(0, dtype)

    return (
        meta,
        np.ascontiguousarray(ip_all, np.int64),
        np.ascontiguousarray(fp_all, np.float32),
        cat("ptr", np.int64),
        cat("off", np.int32),
        cat("used", np.int32),
        cat("vals", np.float32),
        cat("bias", np.float32),
        cat("sizes", np.int64),
    )
