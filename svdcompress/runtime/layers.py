"""Builders for the weight layers: Conv2d (with a fused activation and pool) and chains of Linear layers.

Each builds the sparse and, where it could win, the dense form of the layer, lets :class:`Builder` time them
(and the batched layouts) on the layer's real shape, and appends one step that runs the chosen kernels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import numpy as np

from . import kernels as K
from ._builder import (
    BATCHED,
    BLOCKED_MIN_BATCH,
    CHAIN_MIN_BATCH,
    MAX_BLOCK_SCRATCH,
    MAX_ELEMENTS,
    SCALAR_ACTS,
    Builder,
    Fragment,
    Step,
)
from .bundle import LayerWeight
from .kernels import layout as L

__all__ = ["conv2d", "linear", "pool_spec", "recurrent_step", "spatial_input"]


def _conv_out(size: int, k: int, s: int, p_total: int, d: int) -> int:
    return (size + p_total - d * (k - 1) - 1) // s + 1


def _pool_out(size: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    num = size + 2 * p - d * (k - 1) - 1
    out = (-(-num // s) if ceil else num // s) + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


def pool_spec(b: Builder, n: dict[str, Any], h: int, w: int) -> tuple[np.ndarray, int, int]:
    """The pool spec for the kernels (``POOL_*`` of :mod:`.kernels.layout`) and the output size, PyTorch's
    rules, validated."""
    max_pool = n["op"] == "max_pool2d"
    k = b.attr_ints(n, "kernel_size", 2, 1)
    s = b.attr_ints(n, "stride", 2, 1, default=list(k))
    p = b.attr_ints(n, "padding", 2, 0, default=0)
    d = b.attr_ints(n, "dilation", 2, 1, default=1) if max_pool else (1, 1)
    ceil = b.attr_bool(n, "ceil_mode", False)
    cip = True if max_pool else b.attr_bool(n, "count_include_pad", True)
    div = None if max_pool else n["attrs"].get("divisor_override")
    if div is not None and (isinstance(div, bool) or not isinstance(div, int) or div < 1):
        raise b.err(n["name"], f"attribute divisor_override must be a positive integer or null, got {div!r}")
    if p[0] * 2 > k[0] or p[1] * 2 > k[1]:
        raise b.err(n["name"], f"padding {list(p)} must be at most half of kernel_size {list(k)}")
    oh, ow = _pool_out(h, k[0], s[0], p[0], d[0], ceil), _pool_out(w, k[1], s[1], p[1], d[1], ceil)
    if oh < 1 or ow < 1:
        raise b.err(n["name"], f"pooling a {h}×{w} plane with kernel {list(k)} leaves nothing")
    spec = np.zeros(L.POOL_LEN, np.int64)
    spec[L.POOL_KIND] = L.POOL_MAX if max_pool else L.POOL_AVG
    spec[L.POOL_KERNEL_H], spec[L.POOL_KERNEL_W] = k
    spec[L.POOL_STRIDE_H], spec[L.POOL_STRIDE_W] = s
    spec[L.POOL_PAD_H], spec[L.POOL_PAD_W] = p
    spec[L.POOL_DIL_H], spec[L.POOL_DIL_W] = d
    spec[L.POOL_COUNT_PAD] = int(cip)
    spec[L.POOL_DIVISOR] = div or 0
    return spec, oh, ow


def conv2d(b: Builder, n: dict[str, Any]) -> None:
    name = n["name"]
    x, (cin, h, w) = spatial_input(b, n)
    wt = b.b.weight(n["params"].get("weight"), name)
    groups = b.attr_ints(n, "groups", 1, 1, default=1)[0]
    if len(wt.shape) != 4:
        raise b.err(name, f"conv2d weight must be 4-D, got shape {list(wt.shape)}")
    cout, cin_g, kh, kw = wt.shape
    if cin % groups or cout % groups or cin_g * groups != cin:
        raise b.err(name, f"weight {list(wt.shape)} with groups={groups} does not fit {cin} input channels")
    if b.attr_ints(n, "kernel_size", 2, 1, default=[kh, kw]) != (kh, kw):
        raise b.err(name, f"kernel_size {n['attrs'].get('kernel_size')} differs from the weight's {kh}×{kw}")
    st = b.attr_ints(n, "stride", 2, 1, default=1)
    dil = b.attr_ints(n, "dilation", 2, 1, default=1)
    pad_attr = n["attrs"].get("padding", 0)
    if pad_attr == "valid":
        pads = (0, 0, 0, 0)
    elif pad_attr == "same":
        th, tw = dil[0] * (kh - 1), dil[1] * (kw - 1)
        pads = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    else:
        ph_, pw_ = b.attr_ints(n, "padding", 2, 0, default=0)
        pads = (ph_, ph_, pw_, pw_)
    hp, wp = h + pads[0] + pads[1], w + pads[2] + pads[3]
    if cin * hp * wp > MAX_ELEMENTS:  # the kernels hold one zero-padded image per worker
        raise b.err(
            name, f"padding {list(pads)} makes the padded input {cin}×{hp}×{wp}: more than {MAX_ELEMENTS:,} values"
        )
    oh, ow = _conv_out(hp, kh, st[0], 0, dil[0]), _conv_out(wp, kw, st[1], 0, dil[1])
    if oh < 1 or ow < 1:
        raise b.err(name, f"a {kh}×{kw} kernel (dilation {list(dil)}) does not fit the {hp}×{wp} padded input")
    bias = b.bias(n, cout)
    # Fuse a following activation and pool when nothing else reads the intermediate values.
    out_name = n["outputs"][0]
    act_code, a0, a1 = L.ACT_IDENTITY, 0.0, 0.0
    act_node = b.sole_reader(out_name, lambda op: op in SCALAR_ACTS)
    if act_node is not None:
        act_code, a0, a1 = b.act_spec(act_node)
        b.mark_fused(act_node)
        b.new(out_name, (cout, oh, ow), name)  # declared for shape checks; never materialised
        out_name = act_node["outputs"][0]
    pool = np.zeros(L.POOL_LEN, np.int64)  # kind POOL_NONE
    ph, pw = oh, ow
    pool_node = b.sole_reader(out_name, lambda op: op in ("max_pool2d", "avg_pool2d"))
    if pool_node is not None:
        pool, ph, pw = pool_spec(b, pool_node, oh, ow)
        b.mark_fused(pool_node)
        b.new(out_name, (cout, oh, ow), (act_node or n)["name"])
        out_name = pool_node["outputs"][0]
    o = b.new(out_name, (cout, ph, pw), name)
    ip = np.zeros(L.IP_LEN, np.int64)
    ip[L.IP_CIN], ip[L.IP_H], ip[L.IP_W] = cin, h, w
    ip[L.IP_PAD_H], ip[L.IP_PAD_W] = pads[0], pads[2]
    ip[L.IP_STRIDE_H], ip[L.IP_STRIDE_W] = st
    ip[L.IP_HP], ip[L.IP_WP], ip[L.IP_OH], ip[L.IP_OW] = hp, wp, oh, ow
    ip[L.IP_ACT] = act_code
    ip[L.IP_PH], ip[L.IP_PW] = ph, pw
    ip[L.IP_POOL : L.IP_POOL + L.POOL_LEN] = pool
    fp = np.zeros(L.FP_LEN, np.float32)
    fp[L.FP_A0], fp[L.FP_A1] = a0, a1
    sizes = np.array(K.conv_scratch_sizes(ip), np.int64)

    # Batched layouts: image by image, or blocks of 16 or 32 interleaved images (while the scratch fits).
    blocked: dict[str, np.ndarray] = {}
    for lanes in (K.LANES, 2 * K.LANES):
        sizes_b = np.array(K.blocked_scratch_sizes(ip, cout, lanes), np.int64)
        if int(sizes_b[L.BLOCK_INPUT] + sizes_b[L.BLOCK_ACC] + sizes_b[L.BLOCK_OUT]) <= MAX_BLOCK_SCRATCH:
            blocked[f"blocked{lanes}"] = sizes_b
    used_cols = np.unique(wt.indices).size
    sizes_i = np.array(K.im2col_scratch_sizes(ip, used_cols, kh, kw, dil[0], dil[1]), np.int64)
    sizes_s = np.array(K.shifted_scratch_sizes(ip, kw, dil[1]), np.int64)
    # Per-image layouts, with the cost model's estimate of one image's work (multiply-adds and copied floats,
    # per nonzero ``nz``): "wide" computes the Wp - OW padding columns of every row too (strided: scalar loads),
    # "shifted" copies kw shifted images first, "im2col" copies one row of positions per used column.
    npos = oh * ow
    wide_len = -(-((oh - 1) * wp + ow) // 16) * 16

    def per_image_cost(layout: str, nz: int) -> float:
        if layout == "wide":
            return nz * (wide_len if st == (1, 1) else 2 * npos)
        if layout == "shifted":
            return nz * npos + kw * cin * hp * ow
        return nz * int(sizes_i[L.IM2COL_PITCH]) + used_cols * npos  # im2col

    image_layouts = ["wide"]
    if groups == 1 and int(sizes_i[L.IM2COL_COLS]) <= MAX_BLOCK_SCRATCH:  # its columns ignore groups
        image_layouts.append("im2col")
    if st == (1, 1) and int(sizes_s[L.SHIFTED_COPIES]) <= MAX_BLOCK_SCRATCH:
        image_layouts.append("shifted")

    def make(layer: LayerWeight, fixed: tuple[str, str] | None) -> tuple[Step, Step, tuple[Any, ...], str, str]:
        """(batch-1 step, batched step, the batch-1 step's arrays for ``net_single``, their layouts) for ``layer``.

        The layouts are chosen (:meth:`Builder.pick`: the cost model's best two timed, or the bundle's record),
        unless ``fixed`` gives them. Only a chosen layout's kernel is ever called, so only it is compiled.
        """
        indptr, vals = layer.indptr, layer.values
        none = np.zeros(0, np.int32)
        memo: dict[str, tuple[Step, tuple[Any, ...]]] = {}

        def image_step(layout: str) -> tuple[Step, tuple[Any, ...]]:
            """(step, ``net_single`` arrays) of a per-image layout, built on first need."""
            if layout in memo:
                return memo[layout]
            if layout == "wide":
                off = K.conv_offsets(layer.indices, indptr, cin_g, kh, kw, hp, wp, dil[0], dil[1], cout // groups)

                def wide(v: list[Any]) -> None:
                    xin = v[x]
                    xf = xin.reshape(xin.shape[0], -1)
                    out = np.empty((xf.shape[0], cout * ph * pw), np.float32)
                    K.conv2d(xf, out, indptr, off, vals, bias, ip, fp, sizes)
                    v[o] = out.reshape(xf.shape[0], cout, ph, pw)

                memo[layout] = wide, (K.CONV_WIDE, indptr, off, none, vals, bias, ip, fp, sizes)
            elif layout == "im2col":
                used, tap = K.im2col_taps(layer.indices)
                sz_i = np.array(K.im2col_scratch_sizes(ip, used.size, kh, kw, dil[0], dil[1]), np.int64)

                def im2col(v: list[Any]) -> None:
                    xin = v[x]
                    xf = xin.reshape(xin.shape[0], -1)
                    out = np.empty((xf.shape[0], cout * ph * pw), np.float32)
                    K.conv2d_im2col(xf, out, indptr, tap, used, vals, bias, ip, fp, sz_i)
                    v[o] = out.reshape(xf.shape[0], cout, ph, pw)

                memo[layout] = im2col, (K.CONV_IM2COL, indptr, tap, used, vals, bias, ip, fp, sz_i)
            else:  # shifted
                off_s = K.shifted_offsets(layer.indices, indptr, cin_g, kh, kw, hp, ow, cin, dil[0], cout // groups)

                def shifted(v: list[Any]) -> None:
                    xin = v[x]
                    xf = xin.reshape(xin.shape[0], -1)
                    out = np.empty((xf.shape[0], cout * ph * pw), np.float32)
                    K.conv2d_shifted(xf, out, indptr, off_s, vals, bias, ip, fp, sizes_s)
                    v[o] = out.reshape(xf.shape[0], cout, ph, pw)

                memo[layout] = shifted, (K.CONV_SHIFTED, indptr, off_s, none, vals, bias, ip, fp, sizes_s)
            return memo[layout]

        def blocked_step(layout: str, small: Step) -> Step:
            sizes_b = blocked[layout]
            off = K.conv_offsets(layer.indices, indptr, cin_g, kh, kw, hp, wp, dil[0], dil[1], cout // groups)
            half = max(BLOCKED_MIN_BATCH, int(sizes_b[L.BLOCK_LANES]) // 2)

            def step(v: list[Any]) -> None:
                xin = v[x]
                if xin.shape[0] < half:  # interleaved blocks at least half full: a block of 32 for 8 images
                    small(v)  # wastes 3/4 of it
                    return
                xf = xin.reshape(xin.shape[0], -1)
                out = np.empty((xf.shape[0], cout * ph * pw), np.float32)
                K.conv2d_blocked(xf, out, indptr, off, vals, bias, ip, fp, sizes_b)
                v[o] = out.reshape(xf.shape[0], cout, ph, pw)

            return step

        def image_only(layout: str) -> Step:
            return image_step(layout)[0]

        nz = layer.nnz
        if fixed is not None:
            # the dense twin's column matrix holds every column: within the scratch cap, or wide rows instead
            fits = np.unique(layer.indices).size * int(sizes_i[L.IM2COL_PITCH]) <= MAX_BLOCK_SCRATCH
            one_name, many_name = (k if k != "im2col" or fits else "wide" for k in fixed)
        else:
            one_name = b.pick(
                name,
                "batch1",
                {k: (partial(image_only, k), per_image_cost(k, nz), k) for k in image_layouts},
                (cin, h, w),
                x,
                1,
            )
        best_1, arrays_1 = image_step(one_name)
        if fixed is None:
            # Interleaved blocks vectorise over images (no wide-row waste, full vectors for small planes): the
            # model rates a per-image layout at 1.5 × its per-image work in batches. The layouts timed at batch 1
            # are compiled already: pick() times them again at no compile cost.
            many_cands: dict[str, tuple[Callable[[], Step], float, str]] = {
                k: (partial(blocked_step, k, best_1), float(nz * npos), "blocked") for k in blocked
            }
            many_cands.update({k: (partial(image_only, k), 1.5 * per_image_cost(k, nz), k) for k in image_layouts})
            many_name = b.pick(name, "batched", many_cands, (cin, h, w), x, BATCHED)
        best_b = blocked_step(many_name, best_1) if many_name in blocked else image_step(many_name)[0]
        return best_1, best_b, arrays_1, one_name, many_name

    sparse_1, sparse_b, sparse_arrays, lay_1, lay_b = make(wt, None)
    elements = cout * wt.cols
    dense: Step | None = None
    dense_arrays: tuple[Any, ...] = ()
    if b.dense_allowed(name, elements * oh * ow, wt.nnz * oh * ow):
        full = LayerWeight(
            wt.shape,
            np.arange(cout + 1, dtype=np.int64) * wt.cols,
            np.tile(np.arange(wt.cols, dtype=np.int32), cout),
            wt.dense().reshape(-1),
        )
        # The dense twin runs the layouts chosen for the sparse weight: the same kernels, nothing more to compile.
        dense_1, dense_b, dense_arrays, _, _ = make(full, (lay_1, lay_b))

        def dense_step(v: list[Any]) -> None:
            (dense_b if v[x].shape[0] >= BLOCKED_MIN_BATCH else dense_1)(v)

        dense = dense_step

    def sparse(v: list[Any]) -> None:
        (sparse_b if v[x].shape[0] >= BLOCKED_MIN_BATCH else sparse_1)(v)

    small, big = b.choose(name, sparse, dense, (cin, h, w), x)
    _record(b, name, wt, small, big, wt.nnz * oh * ow, elements * oh * ow, wt.nnz * 12, elements * 8)
    b.plan.choices[name] = {"batch1": {"kernel": small, "layout": lay_1}, "batched": {"kernel": big, "layout": lay_b}}
    small_step = sparse_1 if small == "sparse" else dense_1
    big_step = sparse_b if big == "sparse" else dense_b

    def run(v: list[Any]) -> None:
        (big_step if v[x].shape[0] >= BLOCKED_MIN_BATCH else small_step)(v)

    b.add_step(run, Fragment("conv", x, o, sparse_arrays if small == "sparse" else dense_arrays))


def spatial_input(b: Builder, n: dict[str, Any]) -> tuple[int, tuple[int, int, int]]:
    if len(n["inputs"]) != 1:
        raise b.err(n["name"], f"{n['op']} takes one input, got {len(n['inputs'])}")
    x, shape = b.inp(n)
    if len(shape) != 3:
        raise b.err(n["name"], f"{n['op']} needs a (C, H, W) input, got shape {list(shape)}")
    return x, (shape[0], shape[1], shape[2])


def _record(
    b: Builder,
    name: str,
    wt: LayerWeight,
    small: str,
    big: str,
    macs: int,
    dense_macs: int,
    sparse_bytes: int,
    dense_bytes: int,
) -> None:
    p = b.plan
    p.layer_kernels[name], p.layer_kernels_batched[name] = small, big
    p.nnz[name] = wt.nnz
    p.macs_per_item += macs if small == "sparse" else dense_macs
    p.weight_bytes += sparse_bytes if small == "sparse" else dense_bytes


@dataclass
class _Linear:
    """One validated Linear layer (+ fused activation) of a chain, in both storage forms."""

    name: str
    wt: LayerWeight
    bias: np.ndarray
    act: tuple[int, float, float]
    in_slot: int
    out_slot: int
    lead: tuple[int, ...] = ()  # non-batch dims before the features: (T,) for a Linear over a sequence

    @property
    def rows(self) -> int:
        return self.wt.shape[0]

    @property
    def cols(self) -> int:
        return self.wt.shape[1]


def _linear_layer(b: Builder, n: dict[str, Any]) -> tuple[_Linear, str]:
    """Validate a Linear node and absorb the activation right after it; returns the layer and its output name."""
    name = n["name"]
    if len(n["inputs"]) != 1:
        raise b.err(name, f"linear takes one input, got {len(n['inputs'])}")
    x, shape = b.inp(n)
    wt = b.b.weight(n["params"].get("weight"), name)
    if len(wt.shape) != 2 or wt.shape[1] != shape[-1]:
        raise b.err(name, f"weight {list(wt.shape)} does not fit an input of shape {list(shape)} (needs (…, features))")
    rows, lead = wt.shape[0], shape[:-1]
    bias = b.bias(n, rows)
    out_name = n["outputs"][0]
    spec = (L.ACT_IDENTITY, 0.0, 0.0)
    act_node = b.sole_reader(out_name, lambda op: op in SCALAR_ACTS)
    if act_node is not None:
        spec = b.act_spec(act_node)
        b.mark_fused(act_node)
        b.new(out_name, (*lead, rows), name)
        out_name = act_node["outputs"][0]
    o = b.new(out_name, (*lead, rows), name)
    return _Linear(name, wt, bias, spec, x, o, lead), out_name


def _chain_arrays(
    layers: list[_Linear], dense: list[bool], itype: type[np.unsignedinteger[Any]]
) -> tuple[np.ndarray, ...]:
    """Concatenate the layers' CSR arrays for the chain kernels; a dense layer holds every entry, row-major."""
    meta = np.zeros((len(layers), L.CHAIN_LEN), np.int64)
    fpar = np.zeros((len(layers), L.FP_LEN), np.float32)
    ptrs, idxs, vals, biases = [], [], [], []
    nnz_base = pbase = bbase = 0
    for k, (lay, dn) in enumerate(zip(layers, dense, strict=True)):
        if dn:
            ptr = np.arange(lay.rows + 1, dtype=np.int64) * lay.cols
            idx = np.tile(np.arange(lay.cols, dtype=itype), lay.rows)
            val = lay.wt.dense().reshape(-1)
        else:
            ptr, idx, val = lay.wt.indptr.astype(np.int64), lay.wt.indices.astype(itype), lay.wt.values
        meta[k, L.CHAIN_ROWS], meta[k, L.CHAIN_COLS] = lay.rows, lay.cols
        meta[k, L.CHAIN_PTR_BASE], meta[k, L.CHAIN_BIAS_BASE] = pbase, bbase
        meta[k, L.CHAIN_ACT] = lay.act[0]
        fpar[k, L.FP_A0], fpar[k, L.FP_A1] = lay.act[1:]
        ptrs.append(ptr + nnz_base)
        idxs.append(idx)
        vals.append(val)
        biases.append(lay.bias)
        nnz_base += val.size
        pbase += lay.rows + 1
        bbase += lay.rows
    return (
        meta,
        fpar,
        np.concatenate(ptrs),
        np.concatenate(idxs),
        np.concatenate(vals).astype(np.float32),
        np.concatenate(biases).astype(np.float32),
        np.array(dense, np.bool_),
    )


_IndexType = type[np.unsignedinteger[Any]]


def _chain_pack(layers: list[_Linear], dense: list[bool]) -> tuple[_IndexType, tuple[np.ndarray, ...]]:
    """(index type, :func:`_chain_arrays`) of a chain: column indices in the narrowest type that fits."""
    itype: _IndexType = np.uint16 if max(lay.cols for lay in layers) <= 1 << 16 else np.uint32
    return itype, _chain_arrays(layers, dense, itype)


class _ChainStep(Protocol):
    def __call__(self, v: list[Any], parts: int = 1) -> None: ...


def _chain_step(layers: list[_Linear], dense: list[bool], batched: bool) -> _ChainStep:
    """One step running ``layers`` back to back: one kernel call, activations feature-major in between.
    Batched, ``step(v, parts)`` with ``parts > 1`` runs it on that many threads (:func:`K.chain_batched_parallel`)."""
    itype, (meta, fpar, ptr, idx, vals, bias, dflags) = _chain_pack(layers, dense)
    x, o, rows = layers[0].in_slot, layers[-1].out_slot, layers[-1].rows
    # The batched kernel transposes in only the 16-feature groups layer 0 reads; its column indices become
    # positions in the transposed block (group slot · 16 + feature within the group).
    first = slice(0, int(ptr[layers[0].rows]))
    groups, slot = np.unique(idx[first].astype(np.int64) // 16, return_inverse=True)
    idx_b = idx.copy()
    idx_b[first] = (slot.reshape(-1) * 16 + idx[first] % 16).astype(itype)

    lead = layers[0].lead

    def step(v: list[Any], parts: int = 1) -> None:
        xin = v[x]
        n = xin.shape[0]
        xin = np.ascontiguousarray(xin.reshape(n * math.prod(lead), -1))  # (N·positions, features)
        y = np.empty((xin.shape[0], rows), np.float32)
        if batched and parts > 1:
            tile = K.spmm_tile(xin.shape[0])
            K.chain_batched_parallel(xin, y, meta, fpar, ptr, idx_b, vals, bias, groups, tile, parts)
        elif batched:
            K.chain_batched(xin, y, meta, fpar, ptr, idx_b, vals, bias, groups, K.spmm_tile(xin.shape[0]))
        elif xin.shape[0] == 1:
            K.chain_single(xin, y, meta, fpar, ptr, idx, vals, bias, dflags)
        else:
            for i in range(xin.shape[0]):
                K.chain_single(xin[i : i + 1], y[i : i + 1], meta, fpar, ptr, idx, vals, bias, dflags)
        v[o] = y.reshape(n, *lead, rows) if lead else y

    return step


def linear(b: Builder, n: dict[str, Any]) -> None:
    """A Linear layer and every Linear that alone reads its (activated) output: one chain, one kernel call."""
    layers: list[_Linear] = []
    node: dict[str, Any] | None = n
    while node is not None:
        lay, out_name = _linear_layer(b, node)
        layers.append(lay)
        node = b.sole_reader(out_name, lambda op: op == "linear")
        if node is not None and layers[0].lead:
            break  # over a sequence: one layer per step, the next builds its own
        if node is not None:
            b.mark_fused(node)
    small: list[bool] = []  # per layer: dense at batch 1?
    big: list[bool] = []  # per layer: dense in batches?
    for lay in layers:  # each layer's kernel is chosen on its own shape
        s1, sb = _chain_step([lay], [False], False), _chain_step([lay], [False], True)

        def sparse(v: list[Any], s1: Step = s1, sb: Step = sb, i: int = lay.in_slot) -> None:
            (sb if v[i].shape[0] >= CHAIN_MIN_BATCH else s1)(v)

        dense: Step | None = None
        if b.dense_allowed(lay.name, lay.rows * lay.cols, lay.wt.nnz):
            d1, db = _chain_step([lay], [True], False), _chain_step([lay], [True], True)

            def dense_step(v: list[Any], d1: Step = d1, db: Step = db, i: int = lay.in_slot) -> None:
                (db if v[i].shape[0] >= CHAIN_MIN_BATCH else d1)(v)

            dense = dense_step

        k_small, k_big = b.choose(lay.name, sparse, dense, (*lay.lead, lay.cols), lay.in_slot)
        b.plan.choices[lay.name] = {
            "batch1": {"kernel": k_small, "layout": "chain"},
            "batched": {"kernel": k_big, "layout": "chain"},
        }
        small.append(k_small == "dense")
        big.append(k_big == "dense")
        itemsize = 2 if lay.cols <= 1 << 16 else 4
        _record(
            b,
            lay.name,
            lay.wt,
            k_small,
            k_big,
            lay.wt.nnz,
            lay.rows * lay.cols,
            lay.wt.nnz * (4 + itemsize) + 8 * (lay.rows + 1),
            lay.rows * lay.cols * 4,
        )
    one, many = _chain_step(layers, small, False), _chain_step(layers, big, True)
    x = layers[0].in_slot
    if layers[0].lead:  # a Linear over a sequence: every position is an example of the kernels
        positions = math.prod(layers[0].lead)

        def run_seq(v: list[Any]) -> None:
            (many if v[x].shape[0] * positions >= CHAIN_MIN_BATCH else one)(v)

        b.add_step(run_seq)
        return

    def run(v: list[Any]) -> None:
        (many if v[x].shape[0] >= CHAIN_MIN_BATCH else one)(v)

    def run_parallel(v: list[Any], parts: int) -> None:
        if v[x].shape[0] >= CHAIN_MIN_BATCH:
            many(v, parts)
        else:
            one(v)

    b.add_step(run, Fragment("chain", x, layers[-1].out_slot, _chain_pack(layers, small)[1]), run_parallel)


def recurrent_step(name: str, wt: LayerWeight, batched: bool) -> Callable[[np.ndarray], np.ndarray]:
    """``h ↦ h @ Wᵀ`` with the sparse Linear kernel (no bias, no activation): the recurrent product of one step
    of an LSTM (:func:`.sequence_ops.lstm`). Each call uses a slot list of its own (thread-safe)."""
    lay = _Linear(name, wt, np.zeros(wt.shape[0], np.float32), (L.ACT_IDENTITY, 0.0, 0.0), 0, 1)
    step = _chain_step([lay], [False], batched)

    def run(h: np.ndarray) -> np.ndarray:
        v: list[Any] = [h, None]
        step(v)
        return v[1]  # type: ignore[no-any-return]

    return run
