"""Scalar building blocks the kernels inline: activation functions and one pooling window sweep.

Activations are selected by a small integer code (:data:`.layout.ACT_CODES`) so that one compiled kernel serves every
activation; the branch is on a loop-invariant value, so it costs a predictable jump per element at most.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._intrinsics import stack_f32
from .layout import (
    ACT_ELU,
    ACT_GELU,
    ACT_GELU_TANH,
    ACT_HARDSWISH,
    ACT_HARDTANH,
    ACT_IDENTITY,
    ACT_LEAKY_RELU,
    ACT_MISH,
    ACT_RELU,
    ACT_RELU6,
    ACT_SELU,
    ACT_SIGMOID,
    ACT_SILU,
    ACT_TANH,
    POOL_COUNT_PAD,
    POOL_DIL_H,
    POOL_DIL_W,
    POOL_DIVISOR,
    POOL_KERNEL_H,
    POOL_KERNEL_W,
    POOL_KIND,
    POOL_MAX,
    POOL_PAD_H,
    POOL_PAD_W,
    POOL_STRIDE_H,
    POOL_STRIDE_W,
)

__all__ = [
    "CHUNK",
    "FASTMATH",
    "VEC",
    "accumulate_taps",
    "act",
    "act_bias_row",
    "act_fast",
    "act_scalar",
    "aligned_empty",
    "aligned_zeros",
    "max_pool_inside",
    "pool_plane",
]

# Conditions join with ``|``, not ``or``: ``or`` short-circuits into branches, which keeps LLVM from turning
# NaN-propagating max and ReLU into vector selects.
# Contraction gives FMAs. No reassociation in the elementwise kernels: with it LLVM turns the 8-tap sum
# tree of accumulate_taps into one serial chain of 8 dependent FMAs per vector (latency-bound), and no
# nnan/ninf anywhere: NaN and inf must propagate as they do in PyTorch.
FASTMATH = {"contract"}

VEC = 16
"""Floats per vector step in the kernels (one AVX-512 register, two AVX2 registers). Accumulator rows are
padded to a multiple of it, so that every inner loop is whole vectors with no scalar remainder."""

_SELU_ALPHA = 1.6732632423543772
_SELU_SCALE = 1.0507009873554805
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


@njit(cache=True, inline="always")
def _softplus(v: float, beta: float, threshold: float) -> float:
    if v * beta > threshold:
        return v
    return math.log1p(math.exp(v * beta)) / beta


@njit(cache=True, inline="always")
def act(v: float, kind: int, a0: float, a1: float) -> float:
    """``activation[kind](v)`` with its two attributes (slope, alpha, min/max, beta/threshold)."""
    if kind == ACT_IDENTITY:
        return v
    if kind == ACT_RELU:
        return v if (v > 0.0) | (v != v) else 0.0  # NaN stays NaN, as in torch.relu
    if kind == ACT_RELU6:
        return min(max(v, 0.0), 6.0) if v == v else v
    if kind == ACT_SIGMOID:
        return 1.0 / (1.0 + math.exp(-v))
    if kind == ACT_TANH:
        return math.tanh(v)
    if kind == ACT_SILU:
        return v / (1.0 + math.exp(-v))
    if kind == ACT_LEAKY_RELU:
        return v if v >= 0.0 else v * a0
    if kind == ACT_ELU:
        return v if v > 0.0 else a0 * math.expm1(v)
    if kind == ACT_GELU:
        return 0.5 * v * (1.0 + math.erf(v * 0.7071067811865476))
    if kind == ACT_GELU_TANH:
        return 0.5 * v * (1.0 + math.tanh(_SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)))
    if kind == ACT_HARDTANH:
        return min(max(v, a0), a1) if v == v else v
    if kind == ACT_MISH:
        return v * math.tanh(_softplus(v, 1.0, 20.0))
    if kind == ACT_SELU:
        return _SELU_SCALE * (v if v > 0.0 else _SELU_ALPHA * math.expm1(v))
    if kind == ACT_HARDSWISH:
        return v * min(max(v + 3.0, 0.0), 6.0) / 6.0
    return _softplus(v, a0, a1)  # ACT_SOFTPLUS


@njit(cache=True)  # not inlined: one compiled copy serves every caller
def act_scalar(v: float, kind: int, a0: float, a1: float) -> float:
    """:func:`act` out of line."""
    return act(v, kind, a0, a1)


@njit(cache=True, inline="always")
def act_fast(v: float, kind: int, a0: float, a1: float) -> float:
    """:func:`act` with identity and ReLU inline and the other activations through one out-of-line call."""
    if kind == ACT_IDENTITY:
        return v
    if kind == ACT_RELU:
        return v if (v > 0.0) | (v != v) else 0.0
    return act_scalar(v, kind, a0, a1)


@njit(cache=True, inline="always")
def act_bias_row(
    dst: np.ndarray, doff: int, src: np.ndarray, soff: int, n: int, b: float, kind: int, a0: float, a1: float
) -> None:
    """``dst[doff:doff+n] = act(src[soff:soff+n] + b)``; identity and ReLU get their own vector loops.

    The other activations stay inline too. Out of line (one compiled copy) the kernels compiled ~30% faster,
    but a call anywhere in a convolution's channel loop, even in a branch never taken, made a ReLU convolution
    without pooling 10-16% slower (batch 1 and 256).
    Offsets instead of slices: a numba slice costs ~10 ns, which adds up over thousands of output rows.
    """
    d, s = np.uint64(doff), np.uint64(soff)
    if kind == ACT_IDENTITY:
        for i in range(np.uint64(n)):
            dst[d + i] = src[s + i] + b
    elif kind == ACT_RELU:
        for i in range(np.uint64(n)):
            v = src[s + i] + b
            dst[d + i] = v if (v > 0.0) | (v != v) else 0.0
    else:
        for i in range(np.uint64(n)):
            dst[d + i] = act(src[s + i] + b, kind, a0, a1)


@njit(cache=True, inline="always")
def max_pool_inside(src: np.ndarray, sw: int, dst: np.ndarray, dh: int, dw: int, ip: np.ndarray) -> None:
    """Max pooling whose windows all lie inside the source plane (no padding, no ceil overhang).

    ``src`` has row pitch ``sw``; ``ip`` is the pool spec of :func:`pool_plane`. No bounds tests, and the
    first tap seeds the maximum, so the loop is a straight run of loads and compares.
    """
    kh, kw, st_h, st_w = ip[POOL_KERNEL_H], ip[POOL_KERNEL_W], ip[POOL_STRIDE_H], ip[POOL_STRIDE_W]
    dil_h, dil_w = ip[POOL_DIL_H], ip[POOL_DIL_W]
    if kh == 2 and kw == 2 and st_h == 2 and st_w == 2 and dil_h == 1 and dil_w == 1:
        # The common 2×2/2 case, in one sweep: a sweep of row-pair maxima first, then of column pairs, runs
        # short output rows in scalar remainders.
        usw = np.uint64(sw)
        udw = np.uint64(dw)
        two = np.uint64(2)
        for i in range(np.uint64(dh)):
            r0 = two * i * usw
            r1 = r0 + usw
            o = i * udw
            for j in range(udw):
                a, b = src[r0 + two * j], src[r1 + two * j]
                m = a if (a > b) | (a != a) else b
                a, b = src[r0 + two * j + np.uint64(1)], src[r1 + two * j + np.uint64(1)]
                m2 = a if (a > b) | (a != a) else b
                dst[o + j] = m if (m > m2) | (m != m) else m2
        return
    for i in range(dh):
        for j in range(dw):
            base = np.uint64(i * st_h * sw + j * st_w)
            m = src[base]
            for a in range(kh):
                for b in range(kw):
                    v = src[base + np.uint64(a * dil_h * sw + b * dil_w)]
                    m = v if (v > m) | (v != v) else m
            dst[i * dw + j] = m


@njit(cache=True)  # not inlined: called once per plane, and one compiled copy serves every kernel
def pool_plane(src: np.ndarray, sh: int, sw: int, dst: np.ndarray, dh: int, dw: int, ip: np.ndarray) -> None:
    """Pool one ``(sh, sw)`` plane (flat) into one ``(dh, dw)`` plane (flat), PyTorch's semantics.

    ``ip`` is the pool spec (``POOL_*`` of :mod:`.layout`). Max pooling pads with -inf and propagates NaN;
    average pooling clips its window to the padded input and divides as ``count_include_pad`` /
    ``divisor_override`` say.
    """
    kind, kh, kw = ip[POOL_KIND], ip[POOL_KERNEL_H], ip[POOL_KERNEL_W]
    st_h, st_w, ph, pw = ip[POOL_STRIDE_H], ip[POOL_STRIDE_W], ip[POOL_PAD_H], ip[POOL_PAD_W]
    dil_h, dil_w, cip, divisor = ip[POOL_DIL_H], ip[POOL_DIL_W], ip[POOL_COUNT_PAD], ip[POOL_DIVISOR]
    for i in range(dh):
        hs = i * st_h - ph
        for j in range(dw):
            ws = j * st_w - pw
            if kind == POOL_MAX:
                m = -np.inf
                for a in range(kh):
                    y = hs + a * dil_h
                    if y < 0 or y >= sh:
                        continue
                    for b in range(kw):
                        x = ws + b * dil_w
                        if x < 0 or x >= sw:
                            continue
                        v = src[y * sw + x]
                        if v > m or v != v:
                            m = v
                dst[i * dw + j] = m
            else:
                he = min(hs + kh, sh + ph)
                we = min(ws + kw, sw + pw)
                size = (he - hs) * (we - ws)
                y0, x0, y1, x1 = max(hs, 0), max(ws, 0), min(he, sh), min(we, sw)
                s = 0.0
                for y in range(y0, y1):
                    for x in range(x0, x1):
                        s += src[y * sw + x]
                if divisor > 0:
                    d = divisor
                elif cip:
                    d = size
                else:
                    d = (y1 - y0) * (x1 - x0)
                dst[i * dw + j] = s / d


CHUNK = 64
"""Positions per register-resident accumulator block in :func:`accumulate_taps` (four AVX-512 registers)."""
CHUNK_MIN_TAPS = 32
"""Taps a run needs for :func:`accumulate_taps` to use accumulator blocks: each block re-reads every tap's
weight and offset, which rows of few taps over many positions do not repay."""


@njit(cache=True, fastmath=FASTMATH, inline="always")
def accumulate_taps(
    acc: np.ndarray,
    abase: np.uint64,
    src: np.ndarray,
    sbase: np.uint64,
    scale: np.uint64,
    off: np.ndarray,
    vals: np.ndarray,
    j0: int,
    j1: int,
    length: np.uint64,
) -> None:
    """``acc[abase : abase+length] += Σ_j vals[j] · src[off[j]·scale + sbase : … + length]`` for j in [j0, j1).

    With at least :data:`CHUNK_MIN_TAPS` taps, whole blocks of :data:`CHUNK` positions sum every tap in
    accumulators on the stack (two, for even and odd taps, so that consecutive multiply-adds do not wait on
    each other), which LLVM keeps in registers: one load and one FMA per vector and tap, and the accumulator
    is read and written once per block. The 8-taps-per-pass loop of :func:`_accumulate_rest` sums the
    positions past the last whole block (and whole runs of fewer taps).
    """
    u1, u2 = np.uint64(1), np.uint64(2)
    uc = np.uint64(CHUNK)
    ja, end = np.uint64(j0), np.uint64(j1)
    even = stack_f32(CHUNK)
    odd = stack_f32(CHUNK)
    whole = length // uc * uc if end - ja >= np.uint64(CHUNK_MIN_TAPS) else np.uint64(0)
    for c in range(np.uint64(0), whole, uc):
        for t in range(uc):
            even[t] = 0.0
        for t in range(uc):
            odd[t] = 0.0
        j = ja
        while j + u2 <= end:
            w0, w1 = vals[j], vals[j + u1]
            o0 = np.uint64(off[j]) * scale + sbase + c
            o1 = np.uint64(off[j + u1]) * scale + sbase + c
            for t in range(uc):
                even[t] += w0 * src[o0 + t]
            for t in range(uc):
                odd[t] += w1 * src[o1 + t]
            j += u2
        if j < end:
            w0 = vals[j]
            o0 = np.uint64(off[j]) * scale + sbase + c
            for t in range(uc):
                even[t] += w0 * src[o0 + t]
        a0 = abase + c
        for t in range(uc):
            acc[a0 + t] += even[t] + odd[t]
    if whole < length:
        _accumulate_rest(acc, abase + whole, src, sbase + whole, scale, off, vals, j0, j1, length - whole)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _accumulate_rest(
    acc: np.ndarray,
    abase: np.uint64,
    src: np.ndarray,
    sbase: np.uint64,
    scale: np.uint64,
    off: np.ndarray,
    vals: np.ndarray,
    j0: int,
    j1: int,
    length: np.uint64,
) -> None:
    """:func:`accumulate_taps` for a run shorter than a block (any length), in passes over the positions.

    Eight taps per pass (then four, then the rest in one pass) cut the accumulator's load/store traffic per
    multiply-add 8× against one tap per pass. All
    positions are unsigned: signed ones make numba test every index for negative wrap-around, which keeps
    LLVM from vectorising and doubles scalar loops (and uint64 + int64 would promote to float64).
    """
    u1, u2, u3, u4 = np.uint64(1), np.uint64(2), np.uint64(3), np.uint64(4)
    u5, u6, u7, u8 = np.uint64(5), np.uint64(6), np.uint64(7), np.uint64(8)
    j, end = np.uint64(j0), np.uint64(j1)
    while j + u8 <= end:
        w0, w1, w2, w3 = vals[j], vals[j + u1], vals[j + u2], vals[j + u3]
        w4, w5, w6, w7 = vals[j + u4], vals[j + u5], vals[j + u6], vals[j + u7]
        o0 = np.uint64(off[j]) * scale + sbase
        o1 = np.uint64(off[j + u1]) * scale + sbase
        o2 = np.uint64(off[j + u2]) * scale + sbase
        o3 = np.uint64(off[j + u3]) * scale + sbase
        o4 = np.uint64(off[j + u4]) * scale + sbase
        o5 = np.uint64(off[j + u5]) * scale + sbase
        o6 = np.uint64(off[j + u6]) * scale + sbase
        o7 = np.uint64(off[j + u7]) * scale + sbase
        for p in range(length):
            acc[abase + p] += ((w0 * src[o0 + p] + w1 * src[o1 + p]) + (w2 * src[o2 + p] + w3 * src[o3 + p])) + (
                (w4 * src[o4 + p] + w5 * src[o5 + p]) + (w6 * src[o6 + p] + w7 * src[o7 + p])
            )
        j += u8
    if j + u4 <= end:
        w0, w1, w2, w3 = vals[j], vals[j + u1], vals[j + u2], vals[j + u3]
        o0 = np.uint64(off[j]) * scale + sbase
        o1 = np.uint64(off[j + u1]) * scale + sbase
        o2 = np.uint64(off[j + u2]) * scale + sbase
        o3 = np.uint64(off[j + u3]) * scale + sbase
        for p in range(length):
            acc[abase + p] += (w0 * src[o0 + p] + w1 * src[o1 + p]) + (w2 * src[o2 + p] + w3 * src[o3 + p])
        j += u4
    if j < end:  # 1-3 taps left: one pass, repeating tap j with a zero weight where there are fewer
        rest = end - j
        w0 = vals[j]
        w1 = vals[j + u1] if rest > u1 else np.float32(0.0)
        w2 = vals[j + u2] if rest > u2 else np.float32(0.0)
        o0 = np.uint64(off[j]) * scale + sbase
        o1 = np.uint64(off[j + u1]) * scale + sbase if rest > u1 else o0
        o2 = np.uint64(off[j + u2]) * scale + sbase if rest > u2 else o0
        for p in range(length):
            acc[abase + p] += w0 * src[o0 + p] + w1 * src[o1 + p] + w2 * src[o2 + p]


@njit(cache=True, inline="always")
def aligned_empty(n: int) -> np.ndarray:
    """:func:`aligned_zeros` without the zeroing, for scratch the kernel overwrites before reading."""
    buf = np.empty(n + 16, np.float32)
    shift = ((-buf.ctypes.data) // 4) % 16
    return buf[shift : shift + n]


@njit(cache=True, inline="always")
def aligned_zeros(n: int) -> np.ndarray:
    """``np.zeros(n, float32)`` starting on a 64-byte boundary: whole-vector loads at multiples of 16 floats
    then never straddle two cache lines."""
    buf = np.zeros(n + 16, np.float32)
    shift = ((-buf.ctypes.data) // 4) % 16
    return buf[shift : shift + n]
