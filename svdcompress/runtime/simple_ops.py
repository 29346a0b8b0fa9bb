"""Builders for the ops without weights: activations, PReLU, BatchNorm, pooling, reshape, cat and the input
gather (softmax and arithmetic: :mod:`.sequence_ops`). Each validates its node, infers the output shape and
appends one step."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import kernels as K
from ._builder import Builder, Fragment
from .layers import pool_spec, spatial_input

__all__ = [
    "activation",
    "adaptive_avg_pool2d",
    "batchnorm",
    "cat",
    "gather",
    "pool",
    "prelu",
    "reshape",
]


def activation(b: Builder, n: dict[str, Any]) -> None:
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


def prelu(b: Builder, n: dict[str, Any]) -> None:
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


def batchnorm(b: Builder, n: dict[str, Any]) -> None:
    x, shape = b.inp(n)
    c = shape[0]
    scale, shift = b.param_f32(n, "scale", c), b.param_f32(n, "shift", c)
    bshape = (1, c) + (1,) * (len(shape) - 1)
    s, t = scale.reshape(bshape), shift.reshape(bshape)
    o = b.new(n["outputs"][0], shape, n["name"])

    def step(v: list[Any]) -> None:
        v[o] = v[x] * s + t

    b.plan.steps.append(step)


def pool(b: Builder, n: dict[str, Any]) -> None:
    x, (c, h, w) = spatial_input(b, n)
    spec, oh, ow = pool_spec(b, n, h, w)
    o = b.new(n["outputs"][0], (c, oh, ow), n["name"])

    def step(v: list[Any]) -> None:
        xin = np.ascontiguousarray(v[x]).reshape(-1, h * w)
        y = np.empty((xin.shape[0], oh * ow), np.float32)
        K.pool2d(xin, y, h, w, oh, ow, spec)
        v[o] = y.reshape(-1, c, oh, ow)

    b.plan.steps.append(step)


def adaptive_avg_pool2d(b: Builder, n: dict[str, Any]) -> None:
    x, (c, h, w) = spatial_input(b, n)
    oh, ow = b.attr_ints(n, "output_size", 2, 1)
    o = b.new(n["outputs"][0], (c, oh, ow), n["name"])

    def step(v: list[Any]) -> None:
        xin = np.ascontiguousarray(v[x]).reshape(-1, h * w)
        y = np.empty((xin.shape[0], oh * ow), np.float32)
        K.adaptive_avg_pool2d(xin, y, h, w, oh, ow)
        v[o] = y.reshape(-1, c, oh, ow)

    b.plan.steps.append(step)


def reshape(b: Builder, n: dict[str, Any]) -> None:
    x, shape = b.inp(n)
    target = n["attrs"].get("shape")
    if (
        not isinstance(target, list)
        or not target
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in target)
        or math.prod(target) != math.prod(shape)
    ):
        raise b.err(
            n["name"],
            f"reshape target {target!r} must be positive integers holding the "
            f"{math.prod(shape)} elements of shape {list(shape)}",
        )
    tshape = tuple(target)
    o = b.new(n["outputs"][0], tshape, n["name"])

    def step(v: list[Any]) -> None:
        v[o] = np.ascontiguousarray(v[x]).reshape(v[x].shape[0], *tshape)

    b.add_step(step, Fragment("reshape", x, o))


def cat(b: Builder, n: dict[str, Any]) -> None:
    """Concatenation along one non-batch axis ``dim`` (default 1); the other axes must agree."""
    if not n["inputs"]:
        raise b.err(n["name"], "cat needs at least one input")
    ins = [b.inp(n, k) for k in range(len(n["inputs"]))]
    rank = len(ins[0][1])
    d = n["attrs"].get("dim", 1)
    if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= rank:
        raise b.err(n["name"], f"attribute dim must be an axis in 1..{rank} (0 is the batch), got {d!r}")
    rest = {(len(s), s[: d - 1], s[d:]) for _, s in ins}
    if len(rest) != 1:
        raise b.err(n["name"], f"cat inputs {[list(s) for _, s in ins]} differ beyond dim {d}")
    first = ins[0][1]
    shape = (*first[: d - 1], sum(s[d - 1] for _, s in ins), *first[d:])
    slots = [s for s, _ in ins]
    o = b.new(n["outputs"][0], shape, n["name"])

    def step(v: list[Any]) -> None:
        v[o] = np.concatenate([v[s] for s in slots], axis=d)

    b.plan.steps.append(step)


def gather(b: Builder, n: dict[str, Any]) -> None:
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
