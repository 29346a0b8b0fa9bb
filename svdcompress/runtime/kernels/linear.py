"""Chains of sparse (or dense) Linear layers, bias and activation fused, in one kernel call per chain.

- :func:`chain_single`: one example. Each output row is a dot product of its nonzeros with gathered inputs,
  eight partial sums at a time in one vector (inputs inserted element by element, which beat AVX-512
  gathers); a dense layer walks its rows contiguously.
- :func:`chain_batched`: a batch, in feature-major blocks of ``tile`` examples, so that every nonzero
  multiplies one contiguous row of ``tile`` activations (broadcast multiply-add, no gathers). Each block is
  transposed in by the kernel; activations stay feature-major from layer to layer.
- A dense layer is the same loops over a CSR holding every entry.

Column indices may be any unsigned integer type: each width compiles its own specialisation, so the
narrowest type that fits (uint16 below 65,536 inputs) cuts the bytes read per nonzero. Positions are
unsigned throughout: signed ones make numba test each index for negative wrap-around, which slows the SpMV
and keeps LLVM from vectorising. The measurements behind these choices: ``benchmarks/results/kernel_notes.md``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._intrinsics import csr_row_dot, transpose16
from ._scalar import FASTMATH, accumulate_taps, act_bias_row, act_fast, aligned_zeros
from .layout import CHAIN_ACT, CHAIN_BIAS_BASE, CHAIN_COLS, CHAIN_PTR_BASE, CHAIN_ROWS, FP_A0, FP_A1

__all__ = ["chain_batched", "chain_batched_parallel", "chain_single", "spmm_tile"]


def spmm_tile(batch: int) -> int:
    """Examples per batch block: 64 (LLVM's vector body, 16 lanes × 4 interleaved, so no block runs its scalar
    remainder loop), fewer for small batches, where padding a block to 64 would waste more than the shorter
    loop costs (64 measured fastest of 16 to 128 on a large sparse layer)."""
    return 64 if batch > 32 else 32 if batch > 16 else 16


# ---------------------------------------------------------------------------------------------- chains


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _chain_rows(
    src: np.ndarray,
    dst: np.ndarray,
    meta: np.ndarray,
    fpar: np.ndarray,
    ptr: np.ndarray,
    idx: np.ndarray,
    vals: np.ndarray,
    bias: np.ndarray,
    layer: int,
    tile: int,
) -> None:
    """One layer of a chain on a feature-major block: ``dst[r, :] = act(W[r] · src + b[r])``.

    Feature ``c`` of the block's examples is ``src[c·tile : (c+1)·tile]``; ``dst`` has the same pitch.
    """
    rows, pbase = meta[layer, CHAIN_ROWS], meta[layer, CHAIN_PTR_BASE]
    bbase, kind = meta[layer, CHAIN_BIAS_BASE], meta[layer, CHAIN_ACT]
    a0, a1 = fpar[layer, FP_A0], fpar[layer, FP_A1]
    ut = np.uint64(tile)
    for r in range(rows):
        base = np.uint64(r) * ut
        for t in range(ut):
            dst[base + t] = 0.0
        accumulate_taps(
            dst, base, src, np.uint64(0), ut, idx, vals, np.uint64(ptr[pbase + r]), np.uint64(ptr[pbase + r + 1]), ut
        )
        act_bias_row(dst, base, dst, base, ut, bias[bbase + r], kind, a0, a1)


@njit(cache=True, inline="always")
def _transpose_in(x: np.ndarray, n0: int, m: int, groups: np.ndarray, buf_x: np.ndarray, tile: int) -> None:
    """Examples ``n0 .. n0+m`` of ``x`` (row-major ``(N, cols)``), feature-major into ``buf_x``.

    Only the 16-feature groups in ``groups`` are copied (a pruned first layer reads a fraction of the input):
    group ``groups[s]`` lands in rows ``16·s .. 16·s+15`` of ``buf_x`` (pitch ``tile``). Whole 16×16 blocks
    are transposed in registers; a last, partial group and the examples past the last 16 go element by
    element.
    """
    cols = np.uint64(x.shape[1])
    flat = x.reshape(-1)
    ut, u16 = np.uint64(tile), np.uint64(16)
    um = np.uint64(m)
    whole = um // u16 * u16
    for s in range(groups.size):
        c0 = np.uint64(groups[s]) * u16
        d0 = np.uint64(s) * u16 * ut
        width = min(cols - c0, u16)
        first = np.uint64(0)
        if width == u16:
            for t0 in range(np.uint64(0), whole, u16):
                transpose16(flat, (np.uint64(n0) + t0) * cols + c0, cols, buf_x, d0 + t0, ut)
            first = whole
        for k in range(width):
            for t in range(first, um):
                buf_x[d0 + k * ut + t] = flat[(np.uint64(n0) + t) * cols + c0 + k]


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _chain_block(
    x: np.ndarray,
    y: np.ndarray,
    n0: int,
    n1: int,
    meta: np.ndarray,
    fpar: np.ndarray,
    ptr: np.ndarray,
    idx: np.ndarray,
    vals: np.ndarray,
    bias: np.ndarray,
    groups: np.ndarray,
    buf_a: np.ndarray,
    buf_b: np.ndarray,
    buf_x: np.ndarray,
    tile: int,
) -> None:
    nlayers = meta.shape[0]
    m = n1 - n0
    _transpose_in(x, n0, m, groups, buf_x, tile)
    for layer in range(nlayers):  # one inlined copy of _chain_rows: the buffers are picked, not the call
        src = buf_x if layer == 0 else (buf_a if layer % 2 == 1 else buf_b)
        dst = buf_a if layer % 2 == 0 else buf_b
        _chain_rows(src, dst, meta, fpar, ptr, idx, vals, bias, layer, tile)
    out = buf_a if nlayers % 2 == 1 else buf_b
    rows = meta[nlayers - 1, CHAIN_ROWS]
    for r0 in range(0, rows, 16):  # transpose out, 16 outputs at a time
        r1 = min(r0 + 16, rows)
        for t in range(m):
            for r in range(r0, r1):
                y[n0 + t, r] = out[r * tile + t]


@njit(cache=True, fastmath=FASTMATH, nogil=True)
def _chain_blocks(
    x: np.ndarray,
    y: np.ndarray,
    meta: np.ndarray,
    fpar: np.ndarray,
    ptr: np.ndarray,
    idx: np.ndarray,
    vals: np.ndarray,
    bias: np.ndarray,
    groups: np.ndarray,
    tile: int,
    b0: int,
    b1: int,
) -> None:
    """Blocks ``b0 .. b1`` (of ``tile`` examples each) of :func:`chain_batched`, with scratch of their own."""
    width = 0
    for layer in range(meta.shape[0]):
        width = max(width, meta[layer, CHAIN_ROWS])
    buf_a = aligned_zeros(width * tile)
    buf_b = aligned_zeros(width * tile)
    buf_x = aligned_zeros(max(1, groups.size) * 16 * tile)
    n = y.shape[0]
    for blk in range(b0, b1):
        n0 = blk * tile
        _chain_block(x, y, n0, min(n0 + tile, n), meta, fpar, ptr, idx, vals, bias, groups, buf_a, buf_b, buf_x, tile)


@njit(cache=True, nogil=True)
def chain_batched(
    x: np.ndarray,
    y: np.ndarray,
    meta: np.ndarray,
    fpar: np.ndarray,
    ptr: np.ndarray,
    idx: np.ndarray,
    vals: np.ndarray,
    bias: np.ndarray,
    groups: np.ndarray,
    tile: int,
) -> None:
    """A chain of Linear layers (+ activations) on a batch, in feature-major blocks of ``tile`` examples.

    ``x`` is ``(N, cols)``, row-major; ``y`` is ``(N, rows)``. Each block of examples is transposed in (only
    the 16-feature groups ``groups`` that layer 0 reads; its column indices are positions in the transposed
    block, see :func:`_transpose_in`) and its activations stay feature-major from layer to layer, so that
    every nonzero multiplies one contiguous row of ``tile`` activations (broadcast multiply-add, no gathers).
    No transpose of the whole batch, and no buffer of its size, per call.
    ``meta[l]`` is (rows, cols, row-pointer base, bias base, activation) of layer ``l`` (``CHAIN_*`` of
    :mod:`.layout`); ``fpar[l]`` its activation attributes (``FP_*``); ``ptr``, ``idx``, ``vals``, ``bias``
    the layers' CSR arrays concatenated (``ptr`` entries are positions in the concatenated ``idx``/``vals``).
    A dense layer is a CSR holding every entry.
    """
    _chain_blocks(x, y, meta, fpar, ptr, idx, vals, bias, groups, tile, 0, (y.shape[0] + tile - 1) // tile)


@njit(cache=True, nogil=True, parallel=True)
def chain_batched_parallel(
    x: np.ndarray,
    y: np.ndarray,
    meta: np.ndarray,
    fpar: np.ndarray,
    ptr: np.ndarray,
    idx: np.ndarray,
    vals: np.ndarray,
    bias: np.ndarray,
    groups: np.ndarray,
    tile: int,
    parts: int,
) -> None:
    """:func:`chain_batched` on ``parts`` threads of numba's threading layer: each runs a contiguous run of
    blocks with its own scratch. The calling thread's ``numba.set_num_threads`` must be at least ``parts``
    (a call inside the kernel would keep it out of numba's cache: it reads a ctypes pointer).

    One parallel region per call and no Python between the parts: handing half a batch to a Python worker
    thread instead costs a GIL hand-over each way. The loop body is a call, not inlined code: numba's parallel
    compile of the inlined chain takes much longer.
    """
    nblocks = (y.shape[0] + tile - 1) // tile
    for p in prange(parts):
        _chain_blocks(
            x, y, meta, fpar, ptr, idx, vals, bias, groups, tile, p * nblocks // parts, (p + 1) * nblocks // parts
        )


@njit(cache=True, fastmath={"contract"}, nogil=True)
def chain_single(
    x: np.ndarray,
    y: np.ndarray,
    meta: np.ndarray,
    fpar: np.ndarray,
    ptr: np.ndarray,
    idx: np.ndarray,
    vals: np.ndarray,
    bias: np.ndarray,
    dense: np.ndarray,
) -> None:
    """The chain for one example (``x``: ``(1, cols)``), one call for all layers.

    Sparse layers run a SpMV eight nonzeros per vector multiply-add (:func:`csr_row_dot`); a layer with
    ``dense[l]`` set holds every entry in row-major order, so its rows are contiguous dot products (no gathers).
    """
    width = 0
    for layer in range(meta.shape[0]):
        width = max(width, meta[layer, CHAIN_ROWS], meta[layer, CHAIN_COLS])
    a = np.empty((1, width), np.float32)
    b = np.empty((1, width), np.float32)
    cols0 = meta[0, CHAIN_COLS]
    for c in range(cols0):
        a[0, c] = x[0, c]
    nlayers = meta.shape[0]
    for layer in range(nlayers):
        src = a if layer % 2 == 0 else b
        dst = b if layer % 2 == 0 else a
        rows, cols, pbase = meta[layer, CHAIN_ROWS], meta[layer, CHAIN_COLS], meta[layer, CHAIN_PTR_BASE]
        bbase, kind = meta[layer, CHAIN_BIAS_BASE], meta[layer, CHAIN_ACT]
        a0, a1 = fpar[layer, FP_A0], fpar[layer, FP_A1]
        s_row = src[0]
        d_row = dst[0]
        if dense[layer]:
            start = np.uint64(ptr[pbase])
            for r in range(rows):
                s = np.float32(0.0)
                wrow = start + np.uint64(r) * np.uint64(cols)
                for c in range(np.uint64(cols)):
                    s += vals[wrow + c] * s_row[c]
                d_row[r] = act_fast(s + bias[bbase + r], kind, a0, a1)
        else:
            for r in range(rows):
                s = csr_row_dot(vals, idx, s_row, np.uint64(ptr[pbase + r]), np.uint64(ptr[pbase + r + 1]))
                d_row[r] = act_fast(s + bias[bbase + r], kind, a0, a1)
    out = b if nlayers % 2 == 1 else a
    for r in range(meta[nlayers - 1, CHAIN_ROWS]):
        y[0, r] = out[0, r]
