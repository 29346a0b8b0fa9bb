"""Direct 2-D convolution over a CSR weight, with bias, activation and pooling fused.

The weight is CSR of the ``[out, in/groups · kh · kw]`` matrix. Each nonzero's column is turned, once at load,
into an offset into one zero-padded input image: ``((g·cin_g + ci)·Hp + kh·dil_h)·Wp + kw·dil_w`` for the
row's group ``g``. For stride 1 the kernel adds ``w · x[off : off + L]`` into a "wide" accumulator that uses
the input's row pitch ``Wp`` (``L = (OH - 1)·Wp + OW``, rounded up to whole vectors): one contiguous,
vectorised multiply-add per nonzero and no im2col copy; the ``Wp - OW`` columns on the right of each row are
computed and dropped. Other strides walk the output rows with a strided load. The epilogue adds the bias,
applies the activation, pools (if the graph has a pool right after) and writes one output plane; for a
non-decreasing activation followed by max pooling it pools the raw sums first.

Everything is per image, so the working set (one image, one accumulator plane, the weight) stays in L1/L2 at
any batch size, and the parallel variant splits the batch across threads, each chunk with its own scratch.

The "dense" kernel is the same loop over a weight whose CSR holds every entry (zeros included): the direct
convolution without sparsity, for layers where skipping zeros does not pay.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._scalar import FASTMATH, MONOTONE_ACTS, POOL_MAX, POOL_NONE, VEC, act_bias_row, max_pool_inside, pool_plane

__all__ = ["CONV_PARAMS", "conv2d_parallel", "conv2d_serial", "conv_offsets", "conv_scratch_sizes"]

CONV_PARAMS = ("cin", "h", "w", "pad_h", "pad_w", "stride_h", "stride_w", "hp", "wp", "oh", "ow", "act", "ph",
               "pw")
"""Order of the integer parameter vector ``ip[0:14]``; ``ip[14:25]`` is the pool spec (see ``pool_plane``)."""

_MONOTONE = np.array(sorted(MONOTONE_ACTS), np.int64)


def conv_offsets(indices: np.ndarray, indptr: np.ndarray, cin_g: int, kh: int, kw: int, hp: int, wp: int,
                 dil_h: int, dil_w: int, rows_per_group: int) -> np.ndarray:
    """Offsets into a padded ``(cin, hp, wp)`` image of each nonzero's tap (int32; validated by the caller)."""
    rows = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
    g = rows // max(1, rows_per_group)
    ci, rest = np.divmod(indices.astype(np.int64), kh * kw)
    a, b = np.divmod(rest, kw)
    off = ((g * cin_g + ci) * hp + a * dil_h) * wp + b * dil_w
    return off.astype(np.int32)


def conv_scratch_sizes(ip: np.ndarray) -> tuple[int, int, int]:
    """Elements of the accumulator, the activation plane and the padded image one worker needs."""
    hp, wp, oh, ow = int(ip[7]), int(ip[8]), int(ip[9]), int(ip[10])
    wide = -(-((oh - 1) * wp + ow) // VEC) * VEC
    return max(wide, oh * ow), oh * ow, int(ip[0]) * hp * wp + wide  # image + slack: whole-vector reads


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _accumulate(acc: np.ndarray, src: np.ndarray, off: np.ndarray, vals: np.ndarray, j0: int, j1: int,
                length: int) -> None:
    """``acc[:length] += Σ_j vals[j] · src[off[j] : off[j] + length]``, four nonzeros per pass.

    Four taps per pass cut the accumulator's load/store traffic 4× (measured 22-32 vs 11-16 GFMA/s on one
    Zen 5 core for one tap per pass). Unsigned indices spare the negative-index wrap-around that keeps LLVM
    from vectorising.
    """
    n = np.uint64(length)
    j = j0
    while j + 4 <= j1:
        w0, w1, w2, w3 = vals[j], vals[j + 1], vals[j + 2], vals[j + 3]
        o0, o1, o2, o3 = np.uint64(off[j]), np.uint64(off[j + 1]), np.uint64(off[j + 2]), np.uint64(off[j + 3])
        for p in range(n):
            acc[p] += w0 * src[o0 + p] + w1 * src[o1 + p] + w2 * src[o2 + p] + w3 * src[o3 + p]
        j += 4
    while j < j1:
        w0, o0 = vals[j], np.uint64(off[j])
        for p in range(n):
            acc[p] += w0 * src[o0 + p]
        j += 1


@njit(cache=True, fastmath=FASTMATH)
def _conv_image(xn: np.ndarray, outn: np.ndarray, indptr: np.ndarray, off: np.ndarray, vals: np.ndarray,
                bias: np.ndarray, ip: np.ndarray, fp: np.ndarray, acc: np.ndarray, plane: np.ndarray,
                src: np.ndarray) -> None:
    cin, h, w, pad_h, pad_w, st_h, st_w, hp, wp, oh, ow, kind, ph, pw = (
        ip[0], ip[1], ip[2], ip[3], ip[4], ip[5], ip[6], ip[7], ip[8], ip[9], ip[10], ip[11], ip[12], ip[13])
    pool = ip[14:25]
    a0, a1 = fp[0], fp[1]
    # The padded copy also gives whole-vector reads past the last row a zeroed tail to land in.
    uw = np.uint64(w)
    for c in range(cin):
        for i in range(h):
            d = np.uint64((c * hp + i + pad_h) * wp + pad_w)
            s = np.uint64((c * h + i) * w)
            for k in range(uw):
                src[d + k] = xn[s + k]
    cout = indptr.size - 1
    plane_out = ph * pw
    # Max pooling with every window inside the plane, after a non-decreasing activation, is done first.
    pool_first = (pool[0] == POOL_MAX and pool[5] == 0 and pool[6] == 0
                  and (ph - 1) * pool[3] + (pool[1] - 1) * pool[7] < oh
                  and (pw - 1) * pool[4] + (pool[2] - 1) * pool[8] < ow)
    if pool_first:
        pool_first = False
        for k in _MONOTONE:
            if kind == k:
                pool_first = True
    if st_h == 1 and st_w == 1:
        wide = (((oh - 1) * wp + ow + VEC - 1) // VEC) * VEC
        for co in range(cout):
            a = acc[:wide]
            a[:] = 0.0
            _accumulate(a, src, off, vals, indptr[co], indptr[co + 1], wide)
            b = bias[co]
            dst = outn[co * plane_out:(co + 1) * plane_out]
            if pool_first:
                # max(act(a + b)) == act(max(a) + b) for non-decreasing act: pool the wide sums directly.
                max_pool_inside(a, wp, dst, ph, pw, pool)
                act_bias_row(dst, 0, dst, 0, plane_out, b, kind, a0, a1)
            elif pool[0] == POOL_NONE:
                for y in range(oh):
                    act_bias_row(dst, y * ow, a, y * wp, ow, b, kind, a0, a1)
            else:
                for y in range(oh):
                    act_bias_row(plane, y * ow, a, y * wp, ow, b, kind, a0, a1)
                pool_plane(plane, oh, ow, dst, ph, pw, pool)
    else:
        npos = oh * ow
        for co in range(cout):
            a = acc[:npos]
            a[:] = 0.0
            for j in range(indptr[co], indptr[co + 1]):
                wv = vals[j]
                for y in range(oh):
                    s = src[off[j] + y * st_h * wp:]
                    r = a[y * ow:(y + 1) * ow]
                    for x in range(ow):
                        r[x] += wv * s[x * st_w]
            b = bias[co]
            dst = outn[co * plane_out:(co + 1) * plane_out]
            if pool[0] == POOL_NONE:
                act_bias_row(dst, 0, a, 0, npos, b, kind, a0, a1)
            else:
                act_bias_row(plane, 0, a, 0, npos, b, kind, a0, a1)
                pool_plane(plane, oh, ow, dst, ph, pw, pool)


@njit(cache=True, fastmath=FASTMATH)
def conv2d_serial(x: np.ndarray, out: np.ndarray, indptr: np.ndarray, off: np.ndarray, vals: np.ndarray,
                  bias: np.ndarray, ip: np.ndarray, fp: np.ndarray, sizes: np.ndarray) -> None:
    """``out[n] = pool(act(conv(x[n]) + bias))`` for each image, one thread.

    Args:
        x: ``(N, cin·h·w)`` float32, C-contiguous.
        out: ``(N, cout·ph·pw)`` float32, written.
        indptr, off, vals: CSR row pointers (int64), tap offsets (int32), values (float32).
        bias: ``(cout,)`` float32 (zeros when the layer has none).
        ip, fp: integer parameters (:data:`CONV_PARAMS` then the pool spec) and activation attributes.
        sizes: scratch sizes from :func:`conv_scratch_sizes`.
    """
    acc = np.empty(sizes[0], np.float32)
    plane = np.empty(sizes[1], np.float32)
    src = np.zeros(sizes[2], np.float32)
    for n in range(x.shape[0]):
        _conv_image(x[n], out[n], indptr, off, vals, bias, ip, fp, acc, plane, src)


@njit(cache=True, fastmath=FASTMATH, parallel=True)
def conv2d_parallel(x: np.ndarray, out: np.ndarray, indptr: np.ndarray, off: np.ndarray, vals: np.ndarray,
                    bias: np.ndarray, ip: np.ndarray, fp: np.ndarray, sizes: np.ndarray) -> None:
    """:func:`conv2d_serial` with the batch split across numba's threads; each chunk has its own scratch."""
    n_img = x.shape[0]
    chunk = 4
    for c in prange((n_img + chunk - 1) // chunk):
        acc = np.empty(sizes[0], np.float32)
        plane = np.empty(sizes[1], np.float32)
        src = np.zeros(sizes[2], np.float32)
        for n in range(c * chunk, min(n_img, (c + 1) * chunk)):
            _conv_image(x[n], out[n], indptr, off, vals, bias, ip, fp, acc, plane, src)
