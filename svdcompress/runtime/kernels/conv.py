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
any batch size.

The "dense" kernel is the same loop over a weight whose CSR holds every entry (zeros included): the direct
convolution without sparsity, for layers where skipping zeros does not pay.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._scalar import (
    FASTMATH,
    VEC,
    accumulate_taps,
    act_bias_row,
    aligned_empty,
    aligned_zeros,
    max_pool_inside,
    pool_plane,
)
from .layout import (
    BLOCK_ACC,
    BLOCK_INPUT,
    BLOCK_LANES,
    BLOCK_LEN,
    BLOCK_OUT,
    FP_A0,
    FP_A1,
    IM2COL_ACC,
    IM2COL_COLS,
    IM2COL_DIL_H,
    IM2COL_DIL_W,
    IM2COL_IMAGE,
    IM2COL_KH,
    IM2COL_KW,
    IM2COL_LEN,
    IM2COL_PITCH,
    IP_ACT,
    IP_CIN,
    IP_H,
    IP_HP,
    IP_LEN,
    IP_OH,
    IP_OW,
    IP_PAD_H,
    IP_PAD_W,
    IP_PH,
    IP_POOL,
    IP_PW,
    IP_STRIDE_H,
    IP_STRIDE_W,
    IP_W,
    IP_WP,
    MONOTONE_ACTS,
    POOL_DIL_H,
    POOL_DIL_W,
    POOL_KERNEL_H,
    POOL_KERNEL_W,
    POOL_KIND,
    POOL_MAX,
    POOL_NONE,
    POOL_PAD_H,
    POOL_PAD_W,
    POOL_STRIDE_H,
    POOL_STRIDE_W,
    SHIFTED_ACC,
    SHIFTED_COPIES,
    SHIFTED_DIL_W,
    SHIFTED_IMAGE,
    SHIFTED_KW,
    SHIFTED_LEN,
    WIDE_ACC,
    WIDE_IMAGE,
    WIDE_LEN,
    WIDE_PLANE,
)

__all__ = [
    "LANES",
    "blocked_scratch_sizes",
    "conv2d",
    "conv2d_blocked",
    "conv2d_im2col",
    "conv2d_shifted",
    "conv_offsets",
    "conv_scratch_sizes",
    "im2col_scratch_sizes",
    "im2col_taps",
    "shifted_buffers",
    "shifted_offsets",
    "shifted_scratch_sizes",
]

_MONOTONE = np.array(sorted(MONOTONE_ACTS), np.int64)


def conv_offsets(
    indices: np.ndarray,
    indptr: np.ndarray,
    cin_g: int,
    kh: int,
    kw: int,
    hp: int,
    wp: int,
    dil_h: int,
    dil_w: int,
    rows_per_group: int,
) -> np.ndarray:
    """Offsets into a padded ``(cin, hp, wp)`` image of each nonzero's tap (int32; validated by the caller)."""
    rows = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
    g = rows // max(1, rows_per_group)
    ci, rest = np.divmod(indices.astype(np.int64), kh * kw)
    a, b = np.divmod(rest, kw)
    off = ((g * cin_g + ci) * hp + a * dil_h) * wp + b * dil_w
    return off.astype(np.int32)


def conv_scratch_sizes(ip: np.ndarray) -> tuple[int, ...]:
    """Elements of the accumulator, the activation plane and the padded image one worker needs (``WIDE_*``)."""
    hp, wp, oh, ow = int(ip[IP_HP]), int(ip[IP_WP]), int(ip[IP_OH]), int(ip[IP_OW])
    wide = -(-((oh - 1) * wp + ow) // VEC) * VEC
    sizes = [0] * WIDE_LEN
    sizes[WIDE_ACC], sizes[WIDE_PLANE] = max(wide, oh * ow), oh * ow
    sizes[WIDE_IMAGE] = int(ip[IP_CIN]) * hp * wp + wide  # image + slack: whole-vector reads
    return tuple(sizes)


@njit(cache=True, inline="always")
def _pad_copy(xn: np.ndarray, src: np.ndarray, ip: np.ndarray) -> None:
    """Copy one flat ``(cin, h, w)`` image into the zeroed ``(cin, hp, wp)`` buffer at the padding offset.

    The buffer's zero border and tail are written once, at allocation; the copy also gives whole-vector reads
    past the last row a zeroed tail to land in.
    """
    cin, h, w, pad_h, pad_w, hp, wp = ip[IP_CIN], ip[IP_H], ip[IP_W], ip[IP_PAD_H], ip[IP_PAD_W], ip[IP_HP], ip[IP_WP]
    uw = np.uint64(w)
    for c in range(cin):
        for i in range(h):
            d = np.uint64((c * hp + i + pad_h) * wp + pad_w)
            s = np.uint64((c * h + i) * w)
            for k in range(uw):
                src[d + k] = xn[s + k]


@njit(cache=True, inline="always")
def _pool_first(ip: np.ndarray) -> bool:
    """Whether to max-pool the raw sums before bias and activation: a max pool whose windows all lie inside
    the plane, after a non-decreasing activation (``max(act(a + b)) == act(max(a) + b)``)."""
    oh, ow, kind, ph, pw = ip[IP_OH], ip[IP_OW], ip[IP_ACT], ip[IP_PH], ip[IP_PW]
    pool = ip[IP_POOL:IP_LEN]
    if not (
        pool[POOL_KIND] == POOL_MAX
        and pool[POOL_PAD_H] == 0
        and pool[POOL_PAD_W] == 0
        and (ph - 1) * pool[POOL_STRIDE_H] + (pool[POOL_KERNEL_H] - 1) * pool[POOL_DIL_H] < oh
        and (pw - 1) * pool[POOL_STRIDE_W] + (pool[POOL_KERNEL_W] - 1) * pool[POOL_DIL_W] < ow
    ):
        return False
    monotone = False
    for k in _MONOTONE:
        monotone = monotone or kind == k
    return monotone


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _finish_channel(
    acc: np.ndarray,
    pitch: int,
    dst: np.ndarray,
    plane: np.ndarray,
    b: float,
    ip: np.ndarray,
    fp: np.ndarray,
    pool_first: bool,
) -> None:
    """Bias, activation and pooling of one output channel whose ``oh × ow`` sums sit in ``acc`` with row pitch
    ``pitch``; the result (``ph × pw``) goes to ``dst``. ``plane`` is ``oh·ow`` scratch for the general pooling
    path; it may be ``acc`` itself when ``pitch == ow``.
    """
    oh, ow, kind, ph, pw = ip[IP_OH], ip[IP_OW], ip[IP_ACT], ip[IP_PH], ip[IP_PW]
    pool = ip[IP_POOL:IP_LEN]
    a0, a1 = fp[FP_A0], fp[FP_A1]
    if pool_first:
        max_pool_inside(acc, pitch, dst, ph, pw, pool)
        act_bias_row(dst, 0, dst, 0, ph * pw, b, kind, a0, a1)
    elif pool[POOL_KIND] == POOL_NONE:
        for y in range(oh):
            act_bias_row(dst, y * ow, acc, y * pitch, ow, b, kind, a0, a1)
    else:
        for y in range(oh):
            act_bias_row(plane, y * ow, acc, y * pitch, ow, b, kind, a0, a1)
        pool_plane(plane, oh, ow, dst, ph, pw, pool)


@njit(cache=True, fastmath=FASTMATH)
def _conv_image(
    xn: np.ndarray,
    outn: np.ndarray,
    indptr: np.ndarray,
    off: np.ndarray,
    vals: np.ndarray,
    bias: np.ndarray,
    ip: np.ndarray,
    fp: np.ndarray,
    acc: np.ndarray,
    plane: np.ndarray,
    src: np.ndarray,
) -> None:
    st_h, st_w, wp, oh, ow = ip[IP_STRIDE_H], ip[IP_STRIDE_W], ip[IP_WP], ip[IP_OH], ip[IP_OW]
    ph, pw = ip[IP_PH], ip[IP_PW]
    _pad_copy(xn, src, ip)
    cout = indptr.size - 1
    plane_out = ph * pw
    pool_first = _pool_first(ip)
    if st_h == 1 and st_w == 1:
        wide = (((oh - 1) * wp + ow + VEC - 1) // VEC) * VEC
        for co in range(cout):
            a = acc[:wide]
            a[:] = 0.0
            accumulate_taps(
                a, np.uint64(0), src, np.uint64(0), np.uint64(1), off, vals, indptr[co], indptr[co + 1], np.uint64(wide)
            )
            dst = outn[co * plane_out : (co + 1) * plane_out]
            _finish_channel(a, wp, dst, plane, bias[co], ip, fp, pool_first)  # rows of the wide sums: pitch wp
    else:
        npos = oh * ow
        for co in range(cout):
            a = acc[:npos]
            a[:] = 0.0
            for j in range(indptr[co], indptr[co + 1]):
                wv = vals[j]
                for y in range(oh):
                    s = src[off[j] + y * st_h * wp :]
                    r = a[y * ow : (y + 1) * ow]
                    for x in range(ow):
                        r[x] += wv * s[x * st_w]
            dst = outn[co * plane_out : (co + 1) * plane_out]
            _finish_channel(a, ow, dst, plane, bias[co], ip, fp, pool_first)


@njit(cache=True, fastmath=FASTMATH, nogil=True)
def conv2d(
    x: np.ndarray,
    out: np.ndarray,
    indptr: np.ndarray,
    off: np.ndarray,
    vals: np.ndarray,
    bias: np.ndarray,
    ip: np.ndarray,
    fp: np.ndarray,
    sizes: np.ndarray,
) -> None:
    """``out[n] = pool(act(conv(x[n]) + bias))`` for each image, one thread.

    Args:
        x: ``(N, cin·h·w)`` float32, C-contiguous.
        out: ``(N, cout·ph·pw)`` float32, written.
        indptr, off, vals: CSR row pointers (int64), tap offsets (int32), values (float32).
        bias: ``(cout,)`` float32 (zeros when the layer has none).
        ip, fp: integer parameters (``IP_*`` of :mod:`.layout`) and activation attributes (``FP_*``).
        sizes: scratch sizes from :func:`conv_scratch_sizes` (``WIDE_*``).
    """
    acc = aligned_zeros(sizes[WIDE_ACC])
    plane = np.empty(sizes[WIDE_PLANE], np.float32)
    src = aligned_zeros(sizes[WIDE_IMAGE])
    for n in range(x.shape[0]):
        _conv_image(x[n], out[n], indptr, off, vals, bias, ip, fp, acc, plane, src)


# ---------------------------------------------------------------------------------------------- batched


LANES = 16
"""Default images per block in the batched kernels: one AVX-512 register (two AVX2 ones) per output position.
The executor may pick 8 for layers whose interleaved image would not fit in L1 (``sizes[BLOCK_LANES]``)."""


def blocked_scratch_sizes(ip: np.ndarray, cout: int, lanes: int = LANES) -> tuple[int, ...]:
    """Elements of the interleaved input, accumulator and output block one worker needs, and the lanes
    (``BLOCK_*``)."""
    cin, hp, wp, oh, ow, ph, pw = (int(ip[i]) for i in (IP_CIN, IP_HP, IP_WP, IP_OH, IP_OW, IP_PH, IP_PW))
    sizes = [0] * BLOCK_LEN
    sizes[BLOCK_INPUT], sizes[BLOCK_ACC] = cin * hp * wp * lanes + lanes, oh * ow * lanes
    sizes[BLOCK_OUT], sizes[BLOCK_LANES] = cout * ph * pw * lanes, lanes
    return tuple(sizes)


@njit(cache=True, fastmath=FASTMATH)
def _conv_block(
    x: np.ndarray,
    out: np.ndarray,
    n0: int,
    m: int,
    indptr: np.ndarray,
    off: np.ndarray,
    vals: np.ndarray,
    bias: np.ndarray,
    ip: np.ndarray,
    fp: np.ndarray,
    xi: np.ndarray,
    acc: np.ndarray,
    ob: np.ndarray,
    lanes: int,
) -> None:
    """One block of ``m <= lanes`` images in the image-interleaved layout ``[c, y, x, image]``.

    Every tap then multiplies whole output rows of ``ow · lanes`` contiguous floats: no wide-row waste, no
    gathers, and the epilogue (bias, activation, pooling) runs on full vectors of images.
    """
    cin, h, w, pad_h, pad_w = ip[IP_CIN], ip[IP_H], ip[IP_W], ip[IP_PAD_H], ip[IP_PAD_W]
    st_h, st_w, hp, wp = ip[IP_STRIDE_H], ip[IP_STRIDE_W], ip[IP_HP], ip[IP_WP]
    oh, ow, kind, ph, pw = ip[IP_OH], ip[IP_OW], ip[IP_ACT], ip[IP_PH], ip[IP_PW]
    pool = ip[IP_POOL:IP_LEN]
    a0, a1 = fp[FP_A0], fp[FP_A1]
    L = np.uint64(lanes)
    um = np.uint64(m)
    # Transpose the block in; the zero border (padding) was set when xi was allocated and is never written.
    for c in range(cin):
        for i in range(h):
            for j in range(w):
                d = np.uint64((c * hp + i + pad_h) * wp + j + pad_w) * L
                s = (c * h + i) * w + j
                for t in range(um):
                    xi[d + t] = x[n0 + t, s]
                for t in range(um, L):
                    xi[d + t] = 0.0
    cout = indptr.size - 1
    npos = np.uint64(oh * ow)
    plane_out = np.uint64(ph * pw)
    rowlen = np.uint64(ow) * L
    pool_first = _pool_first(ip)
    for co in range(cout):
        for p in range(npos * L):
            acc[p] = 0.0
        j0, j1 = indptr[co], indptr[co + 1]
        for y in range(oh):
            arow = np.uint64(y * ow) * L
            if st_w == 1:
                accumulate_taps(acc, arow, xi, np.uint64(y * st_h * wp) * L, L, off, vals, j0, j1, rowlen)
            else:
                for j in range(j0, j1):
                    w0 = vals[j]
                    base = (np.uint64(off[j]) + np.uint64(y * st_h * wp)) * L
                    for xo in range(ow):
                        src = base + np.uint64(xo * st_w) * L
                        dst = arow + np.uint64(xo) * L
                        for t in range(L):
                            acc[dst + t] += w0 * xi[src + t]
        b = bias[co]
        obase = np.uint64(co) * plane_out * L
        if pool_first:
            kh, kw, sh, sw = pool[POOL_KERNEL_H], pool[POOL_KERNEL_W], pool[POOL_STRIDE_H], pool[POOL_STRIDE_W]
            dh, dw = pool[POOL_DIL_H], pool[POOL_DIL_W]
            for i in range(ph):
                for jj in range(pw):
                    d = obase + np.uint64(i * pw + jj) * L
                    first = np.uint64((i * sh) * ow + jj * sw) * L
                    for t in range(L):
                        ob[d + t] = acc[first + t]
                    for a in range(kh):
                        for bb in range(kw):
                            src = np.uint64((i * sh + a * dh) * ow + jj * sw + bb * dw) * L
                            for t in range(L):
                                v = acc[src + t]
                                cur = ob[d + t]
                                ob[d + t] = v if (v > cur) | (v != v) else cur
            act_bias_row(ob, obase, ob, obase, plane_out * L, b, kind, a0, a1)
        else:
            act_bias_row(acc, 0, acc, 0, npos * L, b, kind, a0, a1)
            if pool[POOL_KIND] == POOL_NONE:
                for p in range(npos * L):
                    ob[obase + p] = acc[p]
            else:  # general pooling, one image at a time through a contiguous plane
                plane = np.empty(oh * ow, np.float32)
                res = np.empty(ph * pw, np.float32)
                for t in range(um):
                    for p in range(npos):
                        plane[p] = acc[p * L + t]
                    pool_plane(plane, oh, ow, res, ph, pw, pool)
                    for p in range(plane_out):
                        ob[obase + p * L + t] = res[p]
    # Transpose the block out.
    total = np.uint64(cout) * plane_out
    for t in range(um):
        row = out[n0 + t]
        for k in range(total):
            row[k] = ob[k * L + t]


@njit(cache=True, fastmath=FASTMATH, nogil=True)
def conv2d_blocked(
    x: np.ndarray,
    out: np.ndarray,
    indptr: np.ndarray,
    off: np.ndarray,
    vals: np.ndarray,
    bias: np.ndarray,
    ip: np.ndarray,
    fp: np.ndarray,
    sizes: np.ndarray,
) -> None:
    """:func:`conv2d`'s result through blocks of :data:`LANES` interleaved images, one thread.

    ``off`` holds tap offsets in pixels (as for :func:`conv2d`); ``sizes`` is
    :func:`blocked_scratch_sizes` (``BLOCK_*``).
    """
    xi = aligned_zeros(sizes[BLOCK_INPUT])
    acc = aligned_zeros(sizes[BLOCK_ACC])
    ob = aligned_zeros(sizes[BLOCK_OUT])
    n = x.shape[0]
    lanes = sizes[BLOCK_LANES]
    for n0 in range(0, n, lanes):
        _conv_block(x, out, n0, min(lanes, n - n0), indptr, off, vals, bias, ip, fp, xi, acc, ob, lanes)


# ---------------------------------------------------------------------------------------------- im2col


def im2col_taps(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct weight columns the taps use, each tap's position in that list), both int32."""
    used, pos = np.unique(indices, return_inverse=True)
    return used.astype(np.int32), pos.astype(np.int32).reshape(-1)


def im2col_scratch_sizes(ip: np.ndarray, n_used: int, kh: int, kw: int, dil_h: int, dil_w: int) -> tuple[int, ...]:
    """Elements of the padded image, the column matrix and the output plane, the column row pitch, then the
    kernel's size and dilation (``IM2COL_*``)."""
    cin, hp, wp, oh, ow = (int(ip[i]) for i in (IP_CIN, IP_HP, IP_WP, IP_OH, IP_OW))
    pitch = -(-(oh * ow) // VEC) * VEC
    sizes = [0] * IM2COL_LEN
    sizes[IM2COL_IMAGE], sizes[IM2COL_COLS] = cin * hp * wp, max(1, n_used) * pitch
    sizes[IM2COL_ACC], sizes[IM2COL_PITCH] = pitch, pitch
    sizes[IM2COL_KH], sizes[IM2COL_KW], sizes[IM2COL_DIL_H], sizes[IM2COL_DIL_W] = kh, kw, dil_h, dil_w
    return tuple(sizes)


@njit(cache=True, fastmath=FASTMATH)
def _im2col_image(
    xn: np.ndarray,
    outn: np.ndarray,
    indptr: np.ndarray,
    tap: np.ndarray,
    used: np.ndarray,
    vals: np.ndarray,
    bias: np.ndarray,
    ip: np.ndarray,
    fp: np.ndarray,
    src: np.ndarray,
    col: np.ndarray,
    acc: np.ndarray,
    pitch: int,
    kh: int,
    kw: int,
    dil_h: int,
    dil_w: int,
) -> None:
    st_h, st_w, hp, wp = ip[IP_STRIDE_H], ip[IP_STRIDE_W], ip[IP_HP], ip[IP_WP]
    oh, ow, ph, pw = ip[IP_OH], ip[IP_OW], ip[IP_PH], ip[IP_PW]
    _pad_copy(xn, src, ip)
    # Columns: one row of oh·ow output positions per weight column some tap uses (no wide-row waste).
    upitch = np.uint64(pitch)
    for u in range(used.size):
        k = used[u]
        ci = k // (kh * kw)
        r = k - ci * kh * kw
        a = r // kw
        b = r - a * kw
        row = np.uint64(u) * upitch
        for oy in range(oh):
            s0 = np.uint64((ci * hp + oy * st_h + a * dil_h) * wp + b * dil_w)
            d0 = row + np.uint64(oy * ow)
            if st_w == 1:
                for ox in range(np.uint64(ow)):
                    col[d0 + ox] = src[s0 + ox]
            else:
                for ox in range(np.uint64(ow)):
                    col[d0 + ox] = src[s0 + ox * np.uint64(st_w)]
    cout = indptr.size - 1
    plane_out = ph * pw
    pool_first = _pool_first(ip)
    for co in range(cout):
        for p in range(upitch):
            acc[p] = 0.0
        accumulate_taps(acc, np.uint64(0), col, np.uint64(0), upitch, tap, vals, indptr[co], indptr[co + 1], upitch)
        dst = outn[co * plane_out : (co + 1) * plane_out]
        _finish_channel(acc, ow, dst, acc, bias[co], ip, fp, pool_first)


@njit(cache=True, fastmath=FASTMATH, nogil=True)
def conv2d_im2col(
    x: np.ndarray,
    out: np.ndarray,
    indptr: np.ndarray,
    tap: np.ndarray,
    used: np.ndarray,
    vals: np.ndarray,
    bias: np.ndarray,
    ip: np.ndarray,
    fp: np.ndarray,
    sizes: np.ndarray,
) -> None:
    """:func:`conv2d`'s result through a per-image column matrix of the *used* weight columns.

    Each tap then multiplies one contiguous, 64-byte aligned row of ``oh·ow`` positions: no wide-row waste,
    any stride. ``tap[j]`` is nonzero ``j``'s row in the column matrix, ``used[u]`` the weight column of row
    ``u``; ``sizes`` is :func:`im2col_scratch_sizes` (``IM2COL_*``).
    """
    src = aligned_zeros(sizes[IM2COL_IMAGE])
    col = aligned_zeros(sizes[IM2COL_COLS])
    acc = aligned_zeros(sizes[IM2COL_ACC])
    for n in range(x.shape[0]):
        _im2col_image(
            x[n],
            out[n],
            indptr,
            tap,
            used,
            vals,
            bias,
            ip,
            fp,
            src,
            col,
            acc,
            sizes[IM2COL_PITCH],
            sizes[IM2COL_KH],
            sizes[IM2COL_KW],
            sizes[IM2COL_DIL_H],
            sizes[IM2COL_DIL_W],
        )


# ---------------------------------------------------------------------------------------------- shifted copies


def shifted_offsets(
    indices: np.ndarray,
    indptr: np.ndarray,
    cin_g: int,
    kh: int,
    kw: int,
    hp: int,
    ow: int,
    cin: int,
    dil_h: int,
    rows_per_group: int,
) -> np.ndarray:
    """Offsets of each nonzero's tap in the ``kw`` column-shifted copies ``(kw, cin, hp, ow)`` of one image."""
    rows = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
    g = rows // max(1, rows_per_group)
    ci, rest = np.divmod(indices.astype(np.int64), kh * kw)
    a, b = np.divmod(rest, kw)
    off = b * (cin * hp * ow) + ((g * cin_g + ci) * hp + a * dil_h) * ow
    return off.astype(np.int32)


def shifted_scratch_sizes(ip: np.ndarray, kw: int, dil_w: int) -> tuple[int, ...]:
    """Elements of the padded image (none without padding: the copies then read the image itself), the
    shifted copies (with a whole-vector tail) and the accumulator; then ``kw`` and the column dilation
    (``SHIFTED_*``)."""
    cin, h, w, hp, wp, oh, ow = (int(ip[i]) for i in (IP_CIN, IP_H, IP_W, IP_HP, IP_WP, IP_OH, IP_OW))
    npos = -(-(oh * ow) // VEC) * VEC
    sizes = [0] * SHIFTED_LEN
    sizes[SHIFTED_IMAGE] = 0 if (hp, wp) == (h, w) else cin * hp * wp
    sizes[SHIFTED_COPIES], sizes[SHIFTED_ACC] = kw * cin * hp * ow + VEC, npos
    sizes[SHIFTED_KW], sizes[SHIFTED_DIL_W] = kw, dil_w
    return tuple(sizes)


@njit(cache=True, inline="always")
def shifted_buffers(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scratch of :func:`_shifted_image` for one worker: the zero-bordered padded image, the copies, the sums.

    Only what is read before it is written gets zeroed: the padded image's border and the copies' vector tail
    (whole-vector reads past the last row land there, in sums that are dropped). Every copy row and every
    accumulator is written first, so they are not zeroed.
    """
    src = aligned_zeros(sizes[SHIFTED_IMAGE])
    sh = aligned_empty(sizes[SHIFTED_COPIES])
    for i in range(sizes[SHIFTED_COPIES] - VEC, sizes[SHIFTED_COPIES]):
        sh[i] = 0.0
    return src, sh, aligned_empty(sizes[SHIFTED_ACC])


@njit(cache=True, fastmath=FASTMATH)
def _shifted_image(
    xn: np.ndarray,
    outn: np.ndarray,
    indptr: np.ndarray,
    off: np.ndarray,
    vals: np.ndarray,
    bias: np.ndarray,
    ip: np.ndarray,
    fp: np.ndarray,
    src: np.ndarray,
    sh: np.ndarray,
    acc: np.ndarray,
    kw: int,
    dil_w: int,
) -> None:
    cin, hp, wp, oh, ow, ph, pw = ip[IP_CIN], ip[IP_HP], ip[IP_WP], ip[IP_OH], ip[IP_OW], ip[IP_PH], ip[IP_PW]
    if hp == ip[IP_H] and wp == ip[IP_W]:  # no padding: the copies read the image itself
        src = xn
    else:
        _pad_copy(xn, src, ip)
    # One copy per kernel column, rows ``ow`` wide: tap (ci, kh, kw) then reads oh·ow contiguous values, with
    # none of the wide rows' wasted columns.
    uow = np.uint64(ow)
    plane = np.uint64(cin * hp) * uow
    for b in range(kw):
        base = np.uint64(b) * plane
        shift = np.uint64(b * dil_w)
        for r in range(cin * hp):
            d0 = base + np.uint64(r) * uow
            s0 = np.uint64(r * wp) + shift
            for x in range(uow):
                sh[d0 + x] = src[s0 + x]
    cout = indptr.size - 1
    length = np.uint64(((oh * ow + VEC - 1) // VEC) * VEC)
    plane_out = ph * pw
    pool_first = _pool_first(ip)
    for co in range(cout):
        for p in range(length):
            acc[p] = 0.0
        accumulate_taps(
            acc, np.uint64(0), sh, np.uint64(0), np.uint64(1), off, vals, indptr[co], indptr[co + 1], length
        )
        dst = outn[co * plane_out : (co + 1) * plane_out]
        _finish_channel(acc, ow, dst, acc, bias[co], ip, fp, pool_first)


@njit(cache=True, fastmath=FASTMATH, nogil=True)
def conv2d_shifted(
    x: np.ndarray,
    out: np.ndarray,
    indptr: np.ndarray,
    off: np.ndarray,
    vals: np.ndarray,
    bias: np.ndarray,
    ip: np.ndarray,
    fp: np.ndarray,
    sizes: np.ndarray,
) -> None:
    """:func:`conv2d`'s result (stride 1) through ``kw`` column-shifted copies of each image.

    Every tap multiplies ``oh·ow`` contiguous values: no wide-row waste (LeNet-5's conv2: 64 instead of 96
    positions per tap), for a copy of ``kw`` times the image. ``off`` is :func:`shifted_offsets`; ``sizes``
    is :func:`shifted_scratch_sizes` (``SHIFTED_*``).
    """
    src, sh, acc = shifted_buffers(sizes)
    for n in range(x.shape[0]):
        _shifted_image(
            x[n], out[n], indptr, off, vals, bias, ip, fp, src, sh, acc, sizes[SHIFTED_KW], sizes[SHIFTED_DIL_W]
        )
