"""One call for a whole single-example pass of a sequential network: convolutions, then a Linear chain.

At batch 1 on a small network, Python is a large part of a step-by-step pass: each step has its closures,
reshapes, an output allocation and a numba dispatch. Here the executor hands the whole pass to
:func:`net_single`, which runs the very kernels the steps would have run (the per-image convolution variant
each layer picked at load, then :func:`chain_single`), in one dispatch.

Layer ``k``'s arrays sit in concatenations; ``cmeta[k]`` holds the variant and where the layer's slice of
each concatenation starts and how long it is (``NET_*`` of :mod:`.layout`). Scratch is allocated per call, so
concurrent calls share nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from ._scalar import FASTMATH, aligned_zeros
from .conv import _conv_image, _im2col_image, _shifted_image, shifted_buffers
from .layout import (
    IM2COL_ACC,
    IM2COL_COLS,
    IM2COL_DIL_H,
    IM2COL_DIL_W,
    IM2COL_IMAGE,
    IM2COL_KH,
    IM2COL_KW,
    IM2COL_PITCH,
    NET_BIAS_BASE,
    NET_COUT,
    NET_OUT_SIZE,
    NET_PTR_BASE,
    NET_PTR_LEN,
    NET_SIZES_BASE,
    NET_SIZES_LEN,
    NET_TAP_BASE,
    NET_TAP_LEN,
    NET_USED_BASE,
    NET_USED_LEN,
    NET_VARIANT,
    SHIFTED_DIL_W,
    SHIFTED_KW,
    WIDE_ACC,
    WIDE_IMAGE,
    WIDE_PLANE,
)
from .linear import chain_single

__all__ = ["CONV_IM2COL", "CONV_SHIFTED", "CONV_WIDE", "net_single"]

CONV_WIDE, CONV_SHIFTED, CONV_IM2COL = 0, 1, 2
"""Per-image convolution variants (:func:`conv.conv2d`, :func:`conv.conv2d_shifted`, :func:`conv.conv2d_im2col`)."""


def _make(wide: bool, shifted: bool, im2col: bool) -> Any:
    """:func:`net_single` compiled with only the per-image variants a plan runs: numba prunes a branch on a
    closure constant before typing, so an unused variant is never compiled (each costs tens of seconds)."""

    @njit(cache=True, fastmath=FASTMATH, nogil=True)
    def _net_single(
        x: np.ndarray,
        y: np.ndarray,
        cmeta: np.ndarray,
        cip: np.ndarray,
        cfp: np.ndarray,
        cptr: np.ndarray,
        coff: np.ndarray,
        cused: np.ndarray,
        cvals: np.ndarray,
        cbias: np.ndarray,
        csizes: np.ndarray,
        meta: np.ndarray,
        fpar: np.ndarray,
        ptr: np.ndarray,
        idx: np.ndarray,
        vals: np.ndarray,
        bias: np.ndarray,
        dense: np.ndarray,
    ) -> None:
        """``y = chain(conv_K(… conv_1(x)))`` for one example: ``x`` ``(1, in)``, ``y`` ``(1, out)``, flat.

        ``meta`` … ``dense`` are :func:`chain_single`'s arrays; with no Linear layers ``meta`` has no rows and the
        last convolution's output is ``y``.
        """
        cur = x.reshape(-1)
        for k in range(cmeta.shape[0]):
            code, pb, pn, ob, on, ub, un, bb, bn, sb, sn, osize = (
                cmeta[k, NET_VARIANT],
                cmeta[k, NET_PTR_BASE],
                cmeta[k, NET_PTR_LEN],
                cmeta[k, NET_TAP_BASE],
                cmeta[k, NET_TAP_LEN],
                cmeta[k, NET_USED_BASE],
                cmeta[k, NET_USED_LEN],
                cmeta[k, NET_BIAS_BASE],
                cmeta[k, NET_COUT],
                cmeta[k, NET_SIZES_BASE],
                cmeta[k, NET_SIZES_LEN],
                cmeta[k, NET_OUT_SIZE],
            )
            indptr, off, w, b = cptr[pb : pb + pn], coff[ob : ob + on], cvals[ob : ob + on], cbias[bb : bb + bn]
            ip, fp, sz = cip[k], cfp[k], csizes[sb : sb + sn]
            out = np.empty(osize, np.float32)
            if wide and code == CONV_WIDE:
                acc = aligned_zeros(sz[WIDE_ACC])
                plane = np.empty(sz[WIDE_PLANE], np.float32)
                src = aligned_zeros(sz[WIDE_IMAGE])
                _conv_image(cur, out, indptr, off, w, b, ip, fp, acc, plane, src)
            elif shifted and code == CONV_SHIFTED:
                src, sh, acc = shifted_buffers(sz)
                _shifted_image(cur, out, indptr, off, w, b, ip, fp, src, sh, acc, sz[SHIFTED_KW], sz[SHIFTED_DIL_W])
            else:
                src = aligned_zeros(sz[IM2COL_IMAGE])
                col = aligned_zeros(sz[IM2COL_COLS])
                acc = aligned_zeros(sz[IM2COL_ACC])
                used = cused[ub : ub + un]
                pitch, kh, kw, dh, dw = (
                    sz[IM2COL_PITCH],
                    sz[IM2COL_KH],
                    sz[IM2COL_KW],
                    sz[IM2COL_DIL_H],
                    sz[IM2COL_DIL_W],
                )
                _im2col_image(cur, out, indptr, off, used, w, b, ip, fp, src, col, acc, pitch, kh, kw, dh, dw)
            cur = out
        if meta.shape[0] > 0:
            chain_single(cur.reshape(1, -1), y, meta, fpar, ptr, idx, vals, bias, dense)
        else:
            for i in range(cur.size):
                y[0, i] = cur[i]

    return _net_single


_VARIANTS: dict[tuple[bool, bool, bool], Any] = {}


def net_single(variants: frozenset[int] | set[int]) -> Any:
    """The fused single-example kernel for the per-image variants ``variants`` (``CONV_*`` codes)."""
    key = (CONV_WIDE in variants, CONV_SHIFTED in variants, CONV_IM2COL in variants)
    if key not in _VARIANTS:
        _VARIANTS[key] = _make(*key)
    return _VARIANTS[key]
