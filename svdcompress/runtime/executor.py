"""Turn a validated bundle into a list of kernel calls, and run it.

Each manifest op has one builder in :data:`OPS`. A builder validates the node's attributes and parameters,
infers its output shape (checked against the manifest's ``value_shapes``), and appends one *step*: a closure
over the prepared weights that reads its input arrays and writes its output. Activations are batch-major
numpy arrays ``(N, *shape)`` throughout.

Fusion: a convolution absorbs an elementwise activation and a pooling op that follow it, and a Linear layer
absorbs its activation, when nothing else reads the intermediate values.

Kernel choice (``kernel="auto"``): each convolution and Linear layer is timed on its real shape with the
sparse kernel and the dense one (the same loops over every weight, or a contiguous GEMV), at batch 1 and at
a batch of 64, and each regime keeps the faster. ``"sparse"``/``"dense"`` force one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import BundleError, InvalidInputError
from . import kernels as K
from .bundle import Bundle, LayerWeight

__all__ = ["BATCHED", "BLOCKED_MIN_BATCH", "CHAIN_MIN_BATCH", "KERNELS", "OPS", "Plan", "build_plan"]

KERNELS = ("auto", "sparse", "dense")
BATCHED = 64
"""Batch size at which the batched regime's kernel choice is measured."""
CHAIN_MIN_BATCH = 4
"""From this batch size on, Linear chains run batch-blocked (SpMM); below it, one example at a time (SpMV)."""
BLOCKED_MIN_BATCH = 8
"""From this batch size on, convolutions run on blocks of interleaved images (``kernels.conv.LANES``)."""

_MAX_ELEMENTS = 1 << 26  # per example and value: 256 MB of fp32, far above any SVDO model
_MAX_BLOCK_SCRATCH = 1 << 24  # floats of scratch per worker for a block of interleaved images (64 MB)
_MAX_DENSE = 1 << 24  # weights of one layer in dense form (64 MB of fp32 values)
_DENSE_WORK_LIMIT = 50
Step = Callable[[list[Any]], None]  # reads and writes value slots

# Elementwise ops: manifest name → (attribute names with defaults, activation code or None for numpy-only).
_SCALAR_ACTS: dict[str, tuple[tuple[tuple[str, Any], ...], int]] = {
    "relu": ((), K.ACT_CODES["relu"]),
    "relu6": ((), K.ACT_CODES["relu6"]),
    "sigmoid": ((), K.ACT_CODES["sigmoid"]),
    "tanh": ((), K.ACT_CODES["tanh"]),
    "silu": ((), K.ACT_CODES["silu"]),
    "leaky_relu": ((("negative_slope", 0.01),), K.ACT_CODES["leaky_relu"]),
    "elu": ((("alpha", 1.0),), K.ACT_CODES["elu"]),
    "gelu": ((("approximate", "none"),), K.ACT_CODES["gelu"]),
    "hardtanh": ((("min_val", -1.0), ("max_val", 1.0)), K.ACT_CODES["hardtanh"]),
    "mish": ((), K.ACT_CODES["mish"]),
    "selu": ((), K.ACT_CODES["selu"]),
    "hardswish": ((), K.ACT_CODES["hardswish"]),
    "softplus": ((("beta", 1.0), ("threshold", 20.0)), K.ACT_CODES["softplus"]),
}


@dataclass
class Plan:
    """What :func:`build_plan` produced: the steps and what the model is made of."""

    steps: list[Step]
    nslots: int
    output_slot: int
    output_shape: tuple[int, ...]
    layer_kernels: dict[str, str] = field(default_factory=dict)
    layer_kernels_batched: dict[str, str] = field(default_factory=dict)
    nnz: dict[str, int] = field(default_factory=dict)
    macs_per_item: int = 0
    weight_bytes: int = 0


class _Builder:
    def __init__(self, bundle: Bundle, kernel: str) -> None:
        self.b = bundle
        self.m = bundle.manifest
        self.kernel = kernel
        self.path = bundle.path
        self.slot: dict[str, int] = {}
        self.shape: dict[str, tuple[int, ...]] = {}
        self.plan = Plan([], 0, 0, ())
        self.readers: dict[str, list[dict[str, Any]]] = {}
        self.fused: set[int] = set()

    # -- helpers
    def err(self, node: str, msg: str) -> BundleError:
        return BundleError(f"{self.path}: node {node}: {msg}")

    def new(self, name: str, shape: tuple[int, ...], node: str) -> int:
        if name in self.slot:
            raise self.err(node, f"value {name!r} is defined twice")
        if math.prod(shape) > _MAX_ELEMENTS or any(d < 1 for d in shape):
            raise self.err(node, f"value {name!r} has shape {list(shape)}: dimensions must be >= 1 and hold at "
                                 f"most {_MAX_ELEMENTS:,} elements per example")
        declared = self.m["value_shapes"].get(name)
        if declared is not None and (not isinstance(declared, list) or tuple(declared) != shape):
            raise self.err(node, f"value {name!r}: manifest shape {declared} differs from the inferred {list(shape)}")
        self.slot[name] = self.plan.nslots
        self.shape[name] = shape
        self.plan.nslots += 1
        return self.slot[name]

    def attr_ints(self, n: dict[str, Any], key: str, count: int, lo: int, default: Any = None) -> tuple[int, ...]:
        v = n["attrs"].get(key, default)
        if isinstance(v, int) and not isinstance(v, bool):
            v = [v] * count
        if (not isinstance(v, list) or len(v) != count
                or any(isinstance(e, bool) or not isinstance(e, int) or e < lo or e > 1 << 20 for e in v)):
            raise self.err(n["name"], f"attribute {key} must be {count} integers >= {lo}, got {v!r}")
        return tuple(v)

    def attr_float(self, n: dict[str, Any], key: str, default: float) -> float:
        v = n["attrs"].get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.err(n["name"], f"attribute {key} must be a finite number, got {v!r}")
        return float(v)

    def attr_bool(self, n: dict[str, Any], key: str, default: bool) -> bool:
        v = n["attrs"].get(key, default)
        if not isinstance(v, bool):
            raise self.err(n["name"], f"attribute {key} must be true or false, got {v!r}")
        return v

    def inp(self, n: dict[str, Any], i: int = 0) -> tuple[int, tuple[int, ...]]:
        name = n["inputs"][i]
        return self.slot[name], self.shape[name]

    def param_f32(self, n: dict[str, Any], role: str, size: int | None) -> np.ndarray:
        arr = self.b.param(n["params"].get(role), role, n["name"])
        if arr.dtype.kind != "f" or (size is not None and arr.size != size):
            raise self.err(n["name"], f"{role} tensor must hold {size} floats, got {arr.size} {arr.dtype}")
        return np.ascontiguousarray(arr, dtype=np.float32).reshape(-1)

    def bias(self, n: dict[str, Any], rows: int) -> np.ndarray:
        if "bias" not in n["params"]:
            return np.zeros(rows, np.float32)
        return self.param_f32(n, "bias", rows)

    def sole_reader(self, value: str, op_ok: Callable[[str], bool]) -> dict[str, Any] | None:
        """The node that alone reads ``value`` (and ``value`` is not the graph output), if its op qualifies."""
        readers = self.readers.get(value, [])
        if len(readers) != 1 or value == self.m["output"] or not op_ok(readers[0]["op"]):
            return None
        return readers[0]

    def act_spec(self, n: dict[str, Any]) -> tuple[int, float, float]:
        """(code, a0, a1) of a scalar activation node, attributes validated."""
        op = n["op"]
        names, code = _SCALAR_ACTS[op]
        if op == "gelu":
            approx = n["attrs"].get("approximate", "none")
            if approx not in ("none", "tanh"):
                raise self.err(n["name"], f"attribute approximate must be 'none' or 'tanh', got {approx!r}")
            return (K.ACT_CODES["gelu_tanh"] if approx == "tanh" else code), 0.0, 0.0
        vals = [self.attr_float(n, k, d) for k, d in names] + [0.0, 0.0]
        if op == "softplus" and vals[0] == 0.0:
            raise self.err(n["name"], "attribute beta must be non-zero")
        return code, vals[0], vals[1]

    # -- kernel choice
    def dense_allowed(self, name: str, elements: int, nnz: int) -> bool:
        """Whether to build (and time) the dense form of a layer with ``elements`` weights, ``nnz`` nonzero.

        Not when it would hold more than :data:`_MAX_DENSE` weights (memory), and with ``kernel="auto"`` not
        when it does over :data:`_DENSE_WORK_LIMIT` × the sparse kernel's multiply-adds: the dense loops are
        at most ~10× faster per multiply-add here (contiguous rows against gathers), so they cannot win, and
        timing them would cost seconds at load on wide layers.
        """
        if self.kernel == "sparse":
            return False
        if elements > _MAX_DENSE:
            if self.kernel == "dense":
                raise InvalidInputError(f"{self.path}: layer {name} has {elements:,} weights: too many to run dense "
                                        f"(limit {_MAX_DENSE:,}); use kernel='sparse' or 'auto'")
            return False
        return self.kernel == "dense" or elements <= _DENSE_WORK_LIMIT * max(1, nnz)

    def choose(self, name: str, sparse: Step, dense: Step | None, in_shape: tuple[int, ...],
               slots: tuple[int, int], out_shape: tuple[int, ...]) -> tuple[str, str]:
        """Time both kernels on the layer's shape at batch 1 and :data:`BATCHED`; the faster wins each regime."""
        if dense is None:
            return "sparse", "sparse"
        if self.kernel != "auto":
            return self.kernel, self.kernel
        rng = np.random.default_rng(0)
        picks = []
        for batch in (1, BATCHED):
            v: list[Any] = [None] * self.plan.nslots
            v[slots[0]] = rng.standard_normal((batch, *in_shape)).astype(np.float32)
            best = [math.inf, math.inf]
            for _ in range(5):  # interleaved, best of 5: other processes on the machine hit both alike
                for k, step in enumerate((sparse, dense)):
                    t0 = time.perf_counter()
                    step(v)
                    best[k] = min(best[k], time.perf_counter() - t0)
            # Dense must win clearly: on a shared machine a few percent is noise, and sparse reads fewer bytes.
            picks.append("dense" if best[1] < 0.9 * best[0] else "sparse")
        return picks[0], picks[1]

    def fastest(self, steps: list[Step], in_shape: tuple[int, ...], slot: int, batch: int = BATCHED) -> Step:
        """The step (one layer, several layouts of the same arithmetic) measured fastest at ``batch``."""
        if len(steps) == 1:
            return steps[0]
        v: list[Any] = [None] * self.plan.nslots
        v[slot] = np.random.default_rng(0).standard_normal((batch, *in_shape)).astype(np.float32)
        best = [math.inf] * len(steps)
        for _ in range(5 if batch == 1 else 3):
            for k, step in enumerate(steps):
                t0 = time.perf_counter()
                step(v)
                best[k] = min(best[k], time.perf_counter() - t0)
        return steps[int(np.argmin(best))]

    # -- graph
    def build(self) -> Plan:
        m = self.m
        shape = tuple(int(d) for d in m.get("input_shape", []))
        if not shape:
            raise BundleError(f"{self.path}: manifest input_shape is missing")
        self.new(m["input"], shape, "input")
        nodes = m["nodes"]
        for i, n in enumerate(nodes):
            if (not isinstance(n, dict) or not isinstance(n.get("name"), str) or not isinstance(n.get("op"), str)
                    or not isinstance(n.get("inputs"), list) or not all(isinstance(x, str) for x in n["inputs"])
                    or not isinstance(n.get("outputs"), list) or len(n["outputs"]) != 1
                    or not isinstance(n["outputs"][0], str) or not isinstance(n.get("attrs", {}), dict)
                    or not isinstance(n.get("params", {}), dict)):
                raise BundleError(f"{self.path}: node #{i} is malformed (needs name, op, inputs, one output, "
                                  f"attrs, params)")
            n.setdefault("attrs", {})
            n.setdefault("params", {})
            for x in n["inputs"]:
                self.readers.setdefault(x, []).append(n)
        for i, n in enumerate(nodes):
            if i in self.fused:
                continue
            for x in n["inputs"]:
                if x not in self.slot:  # also rules out cycles: every input must be computed earlier
                    raise self.err(n["name"], f"input {x!r} is not defined by an earlier node")
            builder = OPS.get(n["op"])
            if builder is None:
                raise self.err(n["name"], f"op {n['op']!r} is unknown to this runtime; upgrade svdcompress")
            builder(self, n)
        out = m["output"]
        if out not in self.slot:
            raise BundleError(f"{self.path}: graph output {out!r} is not computed by any node")
        declared = m.get("output_shape")
        if declared is not None and tuple(declared) != self.shape[out]:
            raise BundleError(f"{self.path}: output_shape {declared} differs from the inferred "
                              f"{list(self.shape[out])}")
        self.plan.output_slot = self.slot[out]
        self.plan.output_shape = self.shape[out]
        return self.plan

    def mark_fused(self, n: dict[str, Any]) -> None:
        self.fused.add(next(i for i, x in enumerate(self.m["nodes"]) if x is n))


# ---------------------------------------------------------------------------------------------- op builders


def _conv_out(size: int, k: int, s: int, p_total: int, d: int) -> int:
    return (size + p_total - d * (k - 1) - 1) // s + 1


def _pool_out(size: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    num = size + 2 * p - d * (k - 1) - 1
    out = (-(-num // s) if ceil else num // s) + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


def _pool_spec(b: _Builder, n: dict[str, Any], h: int, w: int) -> tuple[np.ndarray, int, int]:
    """The 11-integer pool vector for the kernels and the output size, PyTorch's rules, validated."""
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
    kind = K.POOL_MAX if max_pool else K.POOL_AVG
    spec = np.array([kind, k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1], int(cip), div or 0], np.int64)
    return spec, oh, ow


def _op_conv2d(b: _Builder, n: dict[str, Any]) -> None:
    name = n["name"]
    x, (cin, h, w) = _spatial_input(b, n)
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
    if cin * hp * wp > _MAX_ELEMENTS:  # the kernels hold one zero-padded image per worker
        raise b.err(name, f"padding {list(pads)} makes the padded input {cin}×{hp}×{wp}: more than "
                          f"{_MAX_ELEMENTS:,} values")
    oh, ow = _conv_out(hp, kh, st[0], 0, dil[0]), _conv_out(wp, kw, st[1], 0, dil[1])
    if oh < 1 or ow < 1:
        raise b.err(name, f"a {kh}×{kw} kernel (dilation {list(dil)}) does not fit the {hp}×{wp} padded input")
    bias = b.bias(n, cout)
    # Fuse a following activation and pool when nothing else reads the intermediate values.
    out_name = n["outputs"][0]
    act_code, a0, a1 = 0, 0.0, 0.0
    act_node = b.sole_reader(out_name, lambda op: op in _SCALAR_ACTS)
    if act_node is not None:
        act_code, a0, a1 = b.act_spec(act_node)
        b.mark_fused(act_node)
        b.new(out_name, (cout, oh, ow), name)  # declared for shape checks; never materialised
        out_name = act_node["outputs"][0]
    pool = np.zeros(11, np.int64)
    ph, pw = oh, ow
    pool_node = b.sole_reader(out_name, lambda op: op in ("max_pool2d", "avg_pool2d"))
    if pool_node is not None:
        pool, ph, pw = _pool_spec(b, pool_node, oh, ow)
        b.mark_fused(pool_node)
        b.new(out_name, (cout, oh, ow), (act_node or n)["name"])
        out_name = pool_node["outputs"][0]
    o = b.new(out_name, (cout, ph, pw), name)
    ip = np.array([cin, h, w, pads[0], pads[2], st[0], st[1], hp, wp, oh, ow, act_code, ph, pw, *pool], np.int64)
    fp = np.array([a0, a1], np.float32)
    sizes = np.array(K.conv_scratch_sizes(ip), np.int64)

    # Batched layouts to try: image by image, or blocks of 16 or 32 interleaved images (while the scratch fits).
    layouts: list[np.ndarray | None] = [None]
    for lanes in (K.LANES, 2 * K.LANES):
        sizes_b = np.array(K.blocked_scratch_sizes(ip, cout, lanes), np.int64)
        if int(sizes_b[:3].sum()) <= _MAX_BLOCK_SCRATCH:
            layouts.append(sizes_b)

    def make(layer: LayerWeight) -> tuple[Step, Step]:
        """(batch-1 step, fastest batched step) for ``layer``."""
        off = K.conv_offsets(layer.indices, layer.indptr, cin_g, kh, kw, hp, wp, dil[0], dil[1], cout // groups)
        indptr, vals = layer.indptr, layer.values

        def variant(sizes_b: np.ndarray | None) -> Step:
            def step(v: list[Any]) -> None:
                xin = v[x]
                xf = xin.reshape(xin.shape[0], -1)
                out = np.empty((xf.shape[0], cout * ph * pw), np.float32)
                if sizes_b is not None and xf.shape[0] >= max(BLOCKED_MIN_BATCH, int(sizes_b[3]) // 2):
                    # interleaved blocks, at least half full: a block of 32 for 8 images wastes 3/4 of it
                    K.conv2d_blocked(xf, out, indptr, off, vals, bias, ip, fp, sizes_b)
                else:
                    K.conv2d(xf, out, indptr, off, vals, bias, ip, fp, sizes)
                v[o] = out.reshape(xf.shape[0], cout, ph, pw)
            return step

        used, tap = K.im2col_taps(layer.indices)
        sizes_i = np.array([*K.im2col_scratch_sizes(ip, used.size), kh, kw, dil[0], dil[1]], np.int64)

        def im2col(v: list[Any]) -> None:
            xin = v[x]
            xf = xin.reshape(xin.shape[0], -1)
            out = np.empty((xf.shape[0], cout * ph * pw), np.float32)
            K.conv2d_im2col(xf, out, indptr, tap, used, vals, bias, ip, fp, sizes_i)
            v[o] = out.reshape(xf.shape[0], cout, ph, pw)

        steps = [variant(sz) for sz in layouts]
        # A column matrix of the used taps (pays off for strides > 1); its columns ignore groups.
        if groups == 1 and int(sizes_i[1]) <= _MAX_BLOCK_SCRATCH:
            steps.append(im2col)
        return b.fastest(steps[:1] + steps[len(layouts):], (cin, h, w), x, 1), b.fastest(steps, (cin, h, w), x)

    sparse_1, sparse_b = make(wt)
    elements = cout * wt.cols
    dense: Step | None = None
    if b.dense_allowed(name, elements * oh * ow, wt.nnz * oh * ow):
        full = LayerWeight(wt.shape, np.arange(cout + 1, dtype=np.int64) * wt.cols,
                           np.tile(np.arange(wt.cols, dtype=np.int32), cout), wt.dense().reshape(-1))
        dense_1, dense_b = make(full)

        def dense_step(v: list[Any]) -> None:
            (dense_b if v[x].shape[0] >= BLOCKED_MIN_BATCH else dense_1)(v)
        dense = dense_step

    def sparse(v: list[Any]) -> None:
        (sparse_b if v[x].shape[0] >= BLOCKED_MIN_BATCH else sparse_1)(v)

    small, big = b.choose(name, sparse, dense, (cin, h, w), (x, o), (cout, ph, pw))
    _record(b, name, wt, small, big, wt.nnz * oh * ow, elements * oh * ow, wt.nnz * 12, elements * 8)
    small_step = sparse_1 if small == "sparse" else dense_1
    big_step = sparse_b if big == "sparse" else dense_b

    def run(v: list[Any]) -> None:
        (big_step if v[x].shape[0] >= BLOCKED_MIN_BATCH else small_step)(v)
    b.plan.steps.append(run)


def _spatial_input(b: _Builder, n: dict[str, Any]) -> tuple[int, tuple[int, int, int]]:
    if len(n["inputs"]) != 1:
        raise b.err(n["name"], f"{n['op']} takes one input, got {len(n['inputs'])}")
    x, shape = b.inp(n)
    if len(shape) != 3:
        raise b.err(n["name"], f"{n['op']} needs a (C, H, W) input, got shape {list(shape)}")
    return x, (shape[0], shape[1], shape[2])


def _record(b: _Builder, name: str, wt: LayerWeight, small: str, big: str, macs: int, dense_macs: int,
            sparse_bytes: int, dense_bytes: int) -> None:
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

    @property
    def rows(self) -> int:
        return self.wt.shape[0]

    @property
    def cols(self) -> int:
        return self.wt.shape[1]


def _linear_layer(b: _Builder, n: dict[str, Any]) -> tuple[_Linear, str]:
    """Validate a Linear node and absorb the activation right after it; returns the layer and its output name."""
    name = n["name"]
    if len(n["inputs"]) != 1:
        raise b.err(name, f"linear takes one input, got {len(n['inputs'])}")
    x, shape = b.inp(n)
    wt = b.b.weight(n["params"].get("weight"), name)
    if len(shape) != 1 or len(wt.shape) != 2 or wt.shape[1] != shape[0]:
        raise b.err(name, f"weight {list(wt.shape)} does not fit an input of shape {list(shape)} (needs (features,))")
    rows = wt.shape[0]
    bias = b.bias(n, rows)
    out_name = n["outputs"][0]
    spec = (0, 0.0, 0.0)
    act_node = b.sole_reader(out_name, lambda op: op in _SCALAR_ACTS)
    if act_node is not None:
        spec = b.act_spec(act_node)
        b.mark_fused(act_node)
        b.new(out_name, (rows,), name)
        out_name = act_node["outputs"][0]
    o = b.new(out_name, (rows,), name)
    return _Linear(name, wt, bias, spec, x, o), out_name


def _chain_arrays(layers: list[_Linear], dense: list[bool], itype: type[np.unsignedinteger[Any]]) -> tuple[
        np.ndarray, ...]:
    """Concatenate the layers' CSR arrays for the chain kernels; a dense layer holds every entry, row-major."""
    meta = np.zeros((len(layers), 5), np.int64)
    fpar = np.zeros((len(layers), 2), np.float32)
    ptrs, idxs, vals, biases = [], [], [], []
    nnz_base = pbase = bbase = 0
    for k, (lay, dn) in enumerate(zip(layers, dense, strict=True)):
        if dn:
            ptr = np.arange(lay.rows + 1, dtype=np.int64) * lay.cols
            idx = np.tile(np.arange(lay.cols, dtype=itype), lay.rows)
            val = lay.wt.dense().reshape(-1)
        else:
            ptr, idx, val = lay.wt.indptr.astype(np.int64), lay.wt.indices.astype(itype), lay.wt.values
        meta[k] = (lay.rows, lay.cols, pbase, bbase, lay.act[0])
        fpar[k] = lay.act[1:]
        ptrs.append(ptr + nnz_base)
        idxs.append(idx)
        vals.append(val)
        biases.append(lay.bias)
        nnz_base += val.size
        pbase += lay.rows + 1
        bbase += lay.rows
    return (meta, fpar, np.concatenate(ptrs), np.concatenate(idxs), np.concatenate(vals).astype(np.float32),
            np.concatenate(biases).astype(np.float32), np.array(dense, np.bool_))


def _chain_step(layers: list[_Linear], dense: list[bool], batched: bool) -> Step:
    """One step running ``layers`` back to back: one kernel call, activations feature-major in between."""
    itype = np.uint16 if max(lay.cols for lay in layers) <= 1 << 16 else np.uint32  # fewer bytes per nonzero
    meta, fpar, ptr, idx, vals, bias, dflags = _chain_arrays(layers, dense, itype)
    x, o, rows = layers[0].in_slot, layers[-1].out_slot, layers[-1].rows

    def step(v: list[Any]) -> None:
        xin = v[x]
        xin = np.ascontiguousarray(xin.reshape(xin.shape[0], -1))
        y = np.empty((xin.shape[0], rows), np.float32)
        if batched:
            n = xin.shape[0]
            tile = K.spmm_tile(n)
            xt = np.zeros((xin.shape[1], -(-n // tile) * tile), np.float32)  # (cols, N padded to whole tiles)
            xt[:, :n] = xin.T
            K.chain_batched(xt, y, meta, fpar, ptr, idx, vals, bias, tile)
        else:
            for i in range(xin.shape[0]):
                K.chain_single(xin[i:i + 1], y[i:i + 1], meta, fpar, ptr, idx, vals, bias, dflags)
        v[o] = y
    return step


def _op_linear(b: _Builder, n: dict[str, Any]) -> None:
    """A Linear layer and every Linear that alone reads its (activated) output: one chain, one kernel call."""
    layers: list[_Linear] = []
    node: dict[str, Any] | None = n
    while node is not None:
        lay, out_name = _linear_layer(b, node)
        layers.append(lay)
        node = b.sole_reader(out_name, lambda op: op == "linear")
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

        k_small, k_big = b.choose(lay.name, sparse, dense, (lay.cols,), (lay.in_slot, lay.out_slot), (lay.rows,))
        small.append(k_small == "dense")
        big.append(k_big == "dense")
        itemsize = 2 if lay.cols <= 1 << 16 else 4
        _record(b, lay.name, lay.wt, k_small, k_big, lay.wt.nnz, lay.rows * lay.cols,
                lay.wt.nnz * (4 + itemsize) + 8 * (lay.rows + 1), lay.rows * lay.cols * 4)
    one, many = _chain_step(layers, small, False), _chain_step(layers, big, True)
    x = layers[0].in_slot

    def run(v: list[Any]) -> None:
        (many if v[x].shape[0] >= CHAIN_MIN_BATCH else one)(v)
    b.plan.steps.append(run)


def _op_activation(b: _Builder, n: dict[str, Any]) -> None:
    if len(n["inputs"]) != 1:
        raise b.err(n["name"], f"{n['op']} takes one input, got {len(n['inputs'])}")
    x, shape = b.inp(n)
    code, a0, a1 = b.act_spec(n)
    o = b.new(n["outputs"][0], shape, n["name"])

    def step(v: list[Any]) -> None:
        xin = np.ascontiguousarray(v[x])
        y = np.empty_like(xin)
        K.activation(xin.reshape(-1), y.reshape(-1), code, a0, a1)
        v[o] = y
    b.plan.steps.append(step)


def _op_prelu(b: _Builder, n: dict[str, Any]) -> None:
    x, shape = b.inp(n)
    slope = b.param_f32(n, "slope", None)
    if slope.size not in (1, shape[0]):
        raise b.err(n["name"], f"slope holds {slope.size} values; needs 1 or {shape[0]} (the channels)")
    s = slope.reshape((1, -1) + (1,) * (len(shape) - 1)) if slope.size > 1 else slope.reshape(())
    o = b.new(n["outputs"][0], shape, n["name"])

    def step(v: list[Any]) -> None:
        xin = v[x]
        v[o] = np.where(xin >= 0, xin, xin * s).astype(np.float32)
    b.plan.steps.append(step)


def _op_softmax(b: _Builder, n: dict[str, Any]) -> None:
    x, shape = b.inp(n)
    dim = n["attrs"].get("dim", 1)
    if len(shape) != 1 or dim not in (1, -1):
        raise b.err(n["name"], f"{n['op']} is supported over the features of a (features,) value (dim=1), "
                               f"got dim={dim!r} on shape {list(shape)}")
    log = n["op"] == "log_softmax"
    o = b.new(n["outputs"][0], shape, n["name"])

    def step(v: list[Any]) -> None:
        z = v[x] - v[x].max(axis=1, keepdims=True)
        if log:
            v[o] = (z - np.log(np.exp(z).sum(axis=1, keepdims=True))).astype(np.float32)
        else:
            e = np.exp(z)
            v[o] = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    b.plan.steps.append(step)


def _op_batchnorm(b: _Builder, n: dict[str, Any]) -> None:
    x, shape = b.inp(n)
    c = shape[0]
    scale, shift = b.param_f32(n, "scale", c), b.param_f32(n, "shift", c)
    bshape = (1, c) + (1,) * (len(shape) - 1)
    s, t = scale.reshape(bshape), shift.reshape(bshape)
    o = b.new(n["outputs"][0], shape, n["name"])

    def step(v: list[Any]) -> None:
        v[o] = v[x] * s + t
    b.plan.steps.append(step)


def _op_pool(b: _Builder, n: dict[str, Any]) -> None:
    x, (c, h, w) = _spatial_input(b, n)
    spec, oh, ow = _pool_spec(b, n, h, w)
    o = b.new(n["outputs"][0], (c, oh, ow), n["name"])

    def step(v: list[Any]) -> None:
        xin = np.ascontiguousarray(v[x]).reshape(-1, h * w)
        y = np.empty((xin.shape[0], oh * ow), np.float32)
        K.pool2d(xin, y, h, w, oh, ow, spec)
        v[o] = y.reshape(-1, c, oh, ow)
    b.plan.steps.append(step)


def _op_adaptive_avg_pool2d(b: _Builder, n: dict[str, Any]) -> None:
    x, (c, h, w) = _spatial_input(b, n)
    oh, ow = b.attr_ints(n, "output_size", 2, 1)
    o = b.new(n["outputs"][0], (c, oh, ow), n["name"])

    def step(v: list[Any]) -> None:
        xin = np.ascontiguousarray(v[x]).reshape(-1, h * w)
        y = np.empty((xin.shape[0], oh * ow), np.float32)
        K.adaptive_avg_pool2d(xin, y, h, w, oh, ow)
        v[o] = y.reshape(-1, c, oh, ow)
    b.plan.steps.append(step)


def _op_reshape(b: _Builder, n: dict[str, Any]) -> None:
    x, shape = b.inp(n)
    target = n["attrs"].get("shape")
    if (not isinstance(target, list) or not target
            or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in target)
            or math.prod(target) != math.prod(shape)):
        raise b.err(n["name"], f"reshape target {target!r} must be positive integers holding the "
                               f"{math.prod(shape)} elements of shape {list(shape)}")
    tshape = tuple(target)
    o = b.new(n["outputs"][0], tshape, n["name"])

    def step(v: list[Any]) -> None:
        v[o] = np.ascontiguousarray(v[x]).reshape(v[x].shape[0], *tshape)
    b.plan.steps.append(step)


def _op_add(b: _Builder, n: dict[str, Any]) -> None:
    if len(n["inputs"]) != 2:
        raise b.err(n["name"], f"add takes two inputs, got {len(n['inputs'])}")
    (i, si), (j, sj) = b.inp(n, 0), b.inp(n, 1)
    if si != sj:
        raise b.err(n["name"], f"add of shapes {list(si)} and {list(sj)}: shapes must be equal")
    o = b.new(n["outputs"][0], si, n["name"])

    def step(v: list[Any]) -> None:
        v[o] = v[i] + v[j]
    b.plan.steps.append(step)


def _op_cat(b: _Builder, n: dict[str, Any]) -> None:
    if not n["inputs"] or n["attrs"].get("dim", 1) != 1:
        raise b.err(n["name"], "cat needs at least one input and dim=1")
    ins = [b.inp(n, k) for k in range(len(n["inputs"]))]
    rest = {s[1:] for _, s in ins}
    if len(rest) != 1:
        raise b.err(n["name"], f"cat inputs {[list(s) for _, s in ins]} differ beyond dim 1")
    shape = (sum(s[0] for _, s in ins), *ins[0][1][1:])
    slots = [s for s, _ in ins]
    o = b.new(n["outputs"][0], shape, n["name"])

    def step(v: list[Any]) -> None:
        v[o] = np.concatenate([v[s] for s in slots], axis=1)
    b.plan.steps.append(step)


def _op_gather(b: _Builder, n: dict[str, Any]) -> None:
    x, shape = b.inp(n)
    index = b.b.param(n["params"].get("index"), "index", n["name"])
    total = math.prod(shape)
    if index.dtype.kind not in "ui" or index.ndim != 1 or (index.size and int(index.max()) >= total):
        raise b.err(n["name"], f"index must be 1-D integers below {total} (the input's features)")
    idx = index.astype(np.int64)
    o = b.new(n["outputs"][0], (int(idx.size),), n["name"])

    def step(v: list[Any]) -> None:
        xin = v[x]
        v[o] = np.ascontiguousarray(xin.reshape(xin.shape[0], -1)[:, idx])
    b.plan.steps.append(step)


OPS: dict[str, Callable[[_Builder, dict[str, Any]], None]] = {
    "linear": _op_linear,
    "conv2d": _op_conv2d,
    "batchnorm": _op_batchnorm,
    **{op: _op_activation for op in _SCALAR_ACTS},
    "prelu": _op_prelu,
    "softmax": _op_softmax,
    "log_softmax": _op_softmax,
    "max_pool2d": _op_pool,
    "avg_pool2d": _op_pool,
    "adaptive_avg_pool2d": _op_adaptive_avg_pool2d,
    "reshape": _op_reshape,
    "add": _op_add,
    "cat": _op_cat,
    "gather": _op_gather,
}
"""Every op a bundle may hold → its builder. The exporter's op table (svdcompress.ops) must stay within it."""


def build_plan(bundle: Bundle, kernel: str) -> Plan:
    """Validate the graph of ``bundle`` and compile it into steps (see the module docstring)."""
    return _Builder(bundle, kernel).build()
