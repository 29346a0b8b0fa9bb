"""Builders for the ops sequence models add: layer_norm, matmul of two activations, softmax over any axis,
transpose, index (slicing and ``x[:, 0]``), constant tensors, expand, broadcasting arithmetic, reductions and
the embedding gather.

Each validates its node (attributes and shapes; a hostile value raises :class:`BundleError` naming the bundle
and the node), infers the output shape and appends one numpy step. Axes in attributes count the batch dim as
0, as torch does; an op never touches the batch axis. Steps allocate their outputs per call (no shared
scratch: a loaded model is called from many threads at once).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ._builder import CHAIN_MIN_BATCH, Builder

__all__ = [
    "REDUCTIONS",
    "arith",
    "constant",
    "embedding",
    "expand",
    "index",
    "layer_norm",
    "matmul",
    "reduce",
    "softmax",
    "transpose",
]

REDUCTIONS = ("max", "min", "mean", "sum")
_MAX_RANK = 8


def _one_input(b: Builder, n: dict[str, Any]) -> tuple[int, tuple[int, ...]]:
    if len(n["inputs"]) != 1:
        raise b.err(n["name"], f"{n['op']} takes one input, got {len(n['inputs'])}")
    return b.inp(n)


def _axis(b: Builder, n: dict[str, Any], key: str, v: Any, rank: int) -> int:
    """A non-batch axis ``1..rank`` (negative counts from the end, as torch), validated."""
    if isinstance(v, bool) or not isinstance(v, int) or not (-rank <= v <= rank) or v == 0:
        raise b.err(
            n["name"], f"attribute {key} must be an axis in 1..{rank} or -{rank}..-1 (0 is the batch), got {v!r}"
        )
    return v if v > 0 else v + rank + 1


def _shape_attr(b: Builder, n: dict[str, Any], key: str) -> tuple[int, ...]:
    v = n["attrs"].get(key)
    if (
        not isinstance(v, list)
        or not 1 <= len(v) <= _MAX_RANK
        or any(isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= 1 << 26 for d in v)
    ):
        raise b.err(n["name"], f"attribute {key} must be 1 to {_MAX_RANK} positive integers, got {v!r}")
    return tuple(v)


def layer_norm(b: Builder, n: dict[str, Any]) -> None:
    """LayerNorm over the last dim, with optional ``gamma`` (weight) and ``beta`` (bias) (torch's biased variance)."""
    x, shape = _one_input(b, n)
    d = shape[-1]
    eps = b.attr_float(n, "eps", 1e-5)
    if eps < 0:
        raise b.err(n["name"], f"attribute eps must be >= 0, got {eps}")
    w = b.param_f32(n, "gamma", d) if "gamma" in n["params"] else None
    bias = b.param_f32(n, "beta", d) if "beta" in n["params"] else None
    o = b.new(n["outputs"][0], shape, n["name"])

    def step(v: list[Any]) -> None:
        xin = v[x]
        mu = xin.mean(axis=-1, keepdims=True)
        z = xin - mu
        y = z / np.sqrt((z * z).mean(axis=-1, keepdims=True) + np.float32(eps))
        if w is not None:
            y = y * w
        if bias is not None:
            y = y + bias
        v[o] = y.astype(np.float32, copy=False)

    b.plan.steps.append(step)


def matmul(b: Builder, n: dict[str, Any]) -> None:
    """``a @ b`` of two activations ``(…, m, k) @ (…, k, n)``; the leading dims are equal or 1 (broadcast)."""
    if len(n["inputs"]) != 2:
        raise b.err(n["name"], f"matmul takes two inputs, got {len(n['inputs'])}")
    (i, si), (j, sj) = b.inp(n, 0), b.inp(n, 1)
    if len(si) < 2 or len(si) != len(sj) or si[-1] != sj[-2]:
        raise b.err(n["name"], f"matmul of shapes {list(si)} and {list(sj)}: needs (…, m, k) @ (…, k, n)")
    lead = _broadcast(b, n, si[:-2], sj[:-2])
    o = b.new(n["outputs"][0], (*lead, si[-2], sj[-1]), n["name"])

    def step(v: list[Any]) -> None:
        v[o] = np.matmul(v[i], v[j])

    b.plan.steps.append(step)


def _broadcast(b: Builder, n: dict[str, Any], s: tuple[int, ...], t: tuple[int, ...]) -> tuple[int, ...]:
    if len(s) != len(t) or any(p != q and 1 not in (p, q) for p, q in zip(s, t, strict=True)):
        raise b.err(n["name"], f"shapes {list(s)} and {list(t)} do not broadcast (equal ranks, dims equal or 1)")
    return tuple(max(p, q) for p, q in zip(s, t, strict=True))


def softmax(b: Builder, n: dict[str, Any]) -> None:
    """(log_)softmax over one non-batch axis (``dim``, default 1: the features of a ``(features,)`` value)."""
    x, shape = _one_input(b, n)
    ax = _axis(b, n, "dim", n["attrs"].get("dim", 1), len(shape))
    log = n["op"] == "log_softmax"
    o = b.new(n["outputs"][0], shape, n["name"])

    def step(v: list[Any]) -> None:
        z = v[x] - v[x].max(axis=ax, keepdims=True)
        if log:
            v[o] = (z - np.log(np.exp(z).sum(axis=ax, keepdims=True))).astype(np.float32)
        else:
            e = np.exp(z)
            v[o] = (e / e.sum(axis=ax, keepdims=True)).astype(np.float32)

    b.plan.steps.append(step)


def transpose(b: Builder, n: dict[str, Any]) -> None:
    """A permutation of the non-batch axes: ``perm`` lists every axis, batch first (``perm[0] == 0``)."""
    x, shape = _one_input(b, n)
    perm = n["attrs"].get("perm")
    rank = len(shape) + 1
    if not isinstance(perm, list) or any(isinstance(p, bool) or not isinstance(p, int) for p in perm):
        raise b.err(n["name"], f"attribute perm must be a list of axes, got {perm!r}")
    if sorted(perm) != list(range(rank)) or perm[0] != 0:
        raise b.err(n["name"], f"attribute perm {perm} must permute 0..{rank - 1} and keep the batch (0) first")
    full = (0, *shape)
    o = b.new(n["outputs"][0], tuple(full[p] for p in perm[1:]), n["name"])
    p = tuple(perm)

    def step(v: list[Any]) -> None:
        v[o] = np.ascontiguousarray(v[x].transpose(p))

    b.plan.steps.append(step)


def index(b: Builder, n: dict[str, Any]) -> None:
    """Basic indexing of the non-batch axes: per axis an integer (select, the axis goes) or ``[start, stop,
    step]`` (a slice, bounds in ``0..size``, step >= 1); axes not listed are kept whole."""
    x, shape = _one_input(b, n)
    spec = n["attrs"].get("index")
    if not isinstance(spec, list) or len(spec) > len(shape):
        raise b.err(n["name"], f"attribute index must list at most {len(shape)} entries, got {spec!r}")
    key: list[Any] = [slice(None)]
    out: list[int] = []
    for ax, (e, size) in enumerate(zip(spec, shape, strict=False)):
        if isinstance(e, int) and not isinstance(e, bool):
            if not 0 <= e < size:
                raise b.err(n["name"], f"index {e} on axis {ax + 1} is outside 0..{size - 1}")
            key.append(e)
        elif (
            isinstance(e, list)
            and len(e) == 3
            and all(isinstance(t, int) and not isinstance(t, bool) for t in e)
            and 0 <= e[0] <= e[1] <= size
            and e[2] >= 1
        ):
            sl = slice(e[0], e[1], e[2])
            count = len(range(*sl.indices(size)))
            key.append(sl)
            out.append(count)
        else:
            raise b.err(
                n["name"], f"index entry {e!r} on axis {ax + 1} must be an integer or [start, stop, step] within {size}"
            )
    out.extend(shape[len(spec) :])
    o = b.new(n["outputs"][0], tuple(out), n["name"])
    k = tuple(key)

    def step(v: list[Any]) -> None:
        v[o] = np.ascontiguousarray(v[x][k])

    b.plan.steps.append(step)


def constant(b: Builder, n: dict[str, Any]) -> None:
    """A parameter used as a tensor (class token, position table): the same values for every example."""
    if n["inputs"]:
        raise b.err(n["name"], f"constant takes no inputs, got {len(n['inputs'])}")
    shape = _shape_attr(b, n, "shape")
    value = b.param_f32(n, "value", math.prod(shape)).reshape(shape)
    value.setflags(write=False)
    o = b.new(n["outputs"][0], shape, n["name"])

    def step(v: list[Any]) -> None:
        v[o] = np.broadcast_to(value, (v[0].shape[0], *shape))  # a read-only view: no copy per call

    b.plan.steps.append(step)


def expand(b: Builder, n: dict[str, Any]) -> None:
    """Broadcast the size-1 non-batch axes of the input to ``shape`` (torch's ``expand``)."""
    x, shape = _one_input(b, n)
    target = _shape_attr(b, n, "shape")
    if len(target) != len(shape) or any(s != t and s != 1 for s, t in zip(shape, target, strict=True)):
        raise b.err(n["name"], f"cannot expand shape {list(shape)} to {list(target)} (equal ranks; only 1s grow)")
    o = b.new(n["outputs"][0], target, n["name"])

    def step(v: list[Any]) -> None:
        xin = v[x]
        v[o] = np.broadcast_to(xin, (xin.shape[0], *target))

    b.plan.steps.append(step)


_ARITH = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}


def arith(b: Builder, n: dict[str, Any]) -> None:
    """``add``/``sub``/``mul``/``div`` of two tensors that broadcast (equal ranks, each dim equal or 1), or of
    one tensor and the attribute ``scalar`` (``scalar_first``: ``scalar - x``, ``scalar / x``)."""
    fn = _ARITH[n["op"]]
    if len(n["inputs"]) == 2 and "scalar" not in n["attrs"]:
        (i, si), (j, sj) = b.inp(n, 0), b.inp(n, 1)
        o = b.new(n["outputs"][0], _broadcast(b, n, si, sj), n["name"])

        def step(v: list[Any]) -> None:
            v[o] = fn(v[i], v[j]).astype(np.float32, copy=False)

        b.plan.steps.append(step)
        return
    if len(n["inputs"]) != 1 or "scalar" not in n["attrs"]:
        raise b.err(n["name"], f"{n['op']} takes two inputs, or one input and the attribute scalar")
    x, shape = b.inp(n)
    s = np.float32(b.attr_float(n, "scalar", 0.0))
    first = b.attr_bool(n, "scalar_first", False)
    o = b.new(n["outputs"][0], shape, n["name"])

    def scalar_step(v: list[Any]) -> None:
        v[o] = (fn(s, v[x]) if first else fn(v[x], s)).astype(np.float32, copy=False)

    b.plan.steps.append(scalar_step)


def reduce(b: Builder, n: dict[str, Any]) -> None:
    """``kind`` (max, min, mean, sum) over the non-batch axes ``dims``, ``keepdim`` as torch."""
    x, shape = _one_input(b, n)
    kind = n["attrs"].get("kind")
    if kind not in REDUCTIONS:
        raise b.err(n["name"], f"attribute kind must be one of {', '.join(REDUCTIONS)}, got {kind!r}")
    dims = n["attrs"].get("dims")
    if not isinstance(dims, list) or not dims:
        raise b.err(n["name"], f"attribute dims must list the axes to reduce, got {dims!r}")
    axes = tuple(sorted({_axis(b, n, "dims", d, len(shape)) for d in dims}))
    keep = b.attr_bool(n, "keepdim", False)
    out = [1 if a + 1 in axes else s for a, s in enumerate(shape)] if keep else []
    if not keep:
        out = [s for a, s in enumerate(shape) if a + 1 not in axes]
    if not out:
        raise b.err(n["name"], f"reducing every axis of {list(shape)} leaves no feature axis; use keepdim")
    o = b.new(n["outputs"][0], tuple(out), n["name"])
    fn: Any = {"max": np.max, "min": np.min, "mean": np.mean, "sum": np.sum}[kind]

    def step(v: list[Any]) -> None:
        v[o] = np.asarray(fn(v[x], axis=axes, keepdims=keep), dtype=np.float32)

    b.plan.steps.append(step)


def embedding(b: Builder, n: dict[str, Any]) -> None:
    """Rows of the ``(vocabulary, dim)`` weight gathered by integer ids ``(…)`` → ``(…, dim)``.

    The weight is decoded from CSR to a dense table at load (a gather reads whole rows). Ids are checked per
    call: an id outside the vocabulary raises :class:`InvalidInputError` instead of reading out of bounds.
    """
    name = n["name"]
    x, shape = _one_input(b, n)
    if n["inputs"][0] != b.m["input"] or b.m.get("input_dtype") != "int64":
        raise b.err(name, "embedding reads the model input, which must be declared input_dtype 'int64'")
    wt = b.b.weight(n["params"].get("weight"), name)
    if len(wt.shape) != 2:
        raise b.err(name, f"embedding weight must be 2-D (vocabulary, dim), got shape {list(wt.shape)}")
    vocab, dim = wt.shape
    table = wt.dense()
    table.setflags(write=False)
    o = b.new(n["outputs"][0], (*shape, dim), name)
    path = b.path

    def step(v: list[Any]) -> None:
        ids = v[x]
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise InvalidInputError(
                f"{path}: token ids must be in 0..{vocab - 1}, got {int(ids.min())}..{int(ids.max())}"
            )
        v[o] = table[ids]

    b.plan.steps.append(step)
    b.plan.nnz[name] = wt.nnz


def lstm(b: Builder, n: dict[str, Any]) -> None:
    """The recurrence of a one-layer LSTM: ``gates_x (T, 4H)`` (the input projection, a ``linear`` node with both
    biases) → ``h (T, H)``. Each step adds ``h @ W_hhᵀ`` (the sparse Linear kernel, SpMV at batch 1, SpMM above)
    and applies the gates (torch's order: input, forget, cell, output); ``h`` and ``c`` start at zero."""
    from .layers import recurrent_step

    name = n["name"]
    x, shape = _one_input(b, n)
    wt = b.b.weight(n["params"].get("weight_hh"), name)
    if len(shape) != 2 or len(wt.shape) != 2 or wt.shape[0] != 4 * wt.shape[1] or shape[1] != wt.shape[0]:
        raise b.err(
            name, f"weight_hh {list(wt.shape)} does not fit gates of shape {list(shape)} (needs (T, 4H), (4H, H))"
        )
    steps, hidden = shape[0], wt.shape[1]
    one, many = recurrent_step(name, wt, False), recurrent_step(name, wt, True)
    o = b.new(n["outputs"][0], (steps, hidden), name)
    b.plan.nnz[name] = wt.nnz

    def sigmoid(z: np.ndarray) -> np.ndarray:
        return np.float32(0.5) * (np.tanh(np.float32(0.5) * z) + np.float32(1.0))  # no overflow for large -z

    def step(v: list[Any]) -> None:
        gx = v[x]  # (N, T, 4H)
        nb = gx.shape[0]
        run = many if nb >= CHAIN_MIN_BATCH else one
        h = np.zeros((nb, hidden), np.float32)
        c = np.zeros((nb, hidden), np.float32)
        out = np.empty((nb, steps, hidden), np.float32)
        for t in range(steps):
            g = run(h) + gx[:, t]  # (N, 4H)
            i, f = sigmoid(g[:, :hidden]), sigmoid(g[:, hidden : 2 * hidden])
            cell, og = np.tanh(g[:, 2 * hidden : 3 * hidden]), sigmoid(g[:, 3 * hidden :])
            c = f * c + i * cell
            h = og * np.tanh(c)
            out[:, t] = h
        v[o] = out

    b.plan.steps.append(step)
