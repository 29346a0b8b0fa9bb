"""Turn a validated bundle into a list of kernel calls, and run it.

Each manifest op has one builder in :data:`OPS`. A builder validates the node's attributes and parameters,
infers its output shape (checked against the manifest's ``value_shapes``), and appends one *step*: a closure
over the prepared weights that reads its input arrays and writes its output. Activations are batch-major
numpy arrays ``(N, *shape)`` throughout.

Fusion: a convolution absorbs an elementwise activation and a pooling op that follow it, and a Linear layer
absorbs its activation, when nothing else reads the intermediate values.

Batch 1: a sequential network (convolutions, reshapes, then one Linear chain) also gets a fused pass
(:mod:`._single`) that runs the same kernels in one numba call, without the steps' Python overhead.

Kernel choice (``kernel="auto"``): each convolution and Linear layer is timed on its real shape with the
sparse kernel and the dense one (the same loops over every weight, or a contiguous GEMV), at batch 1 and at
a batch of 64, and each regime keeps the faster; a convolution's layouts are first ranked by a cost model and
only the best two kernels are timed (each is compiled on first use). ``"sparse"``/``"dense"`` force one. A
bundle's ``kernel_plan`` recorded on this CPU replaces all timing (:mod:`.plan_record`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import BundleError
from . import layers as L, plan_record, sequence_ops as Q, simple_ops as S
from ._builder import BATCHED, BLOCKED_MIN_BATCH, CHAIN_MIN_BATCH, KERNELS, SCALAR_ACTS, Builder, Plan
from ._single import single_pass
from .bundle import Bundle

_log = logging.getLogger("svdcompress.runtime")

__all__ = ["BATCHED", "BLOCKED_MIN_BATCH", "CHAIN_MIN_BATCH", "INPUT_DTYPES", "KERNELS", "OPS", "Plan", "build_plan"]


OPS: dict[str, Callable[[Builder, dict[str, Any]], None]] = {
    "linear": L.linear,
    "conv2d": L.conv2d,
    "batchnorm": S.batchnorm,
    **{op: S.activation for op in SCALAR_ACTS},
    "prelu": S.prelu,
    "softmax": Q.softmax,
    "log_softmax": Q.softmax,
    "max_pool2d": S.pool,
    "avg_pool2d": S.pool,
    "adaptive_avg_pool2d": S.adaptive_avg_pool2d,
    "reshape": S.reshape,
    "add": Q.arith,
    "sub": Q.arith,
    "mul": Q.arith,
    "div": Q.arith,
    "cat": S.cat,
    "gather": S.gather,
    "layer_norm": Q.layer_norm,
    "matmul": Q.matmul,
    "transpose": Q.transpose,
    "index": Q.index,
    "constant": Q.constant,
    "expand": Q.expand,
    "reduce": Q.reduce,
    "embedding": Q.embedding,
    "lstm": Q.lstm,
}
"""Every op a bundle may hold → its builder. The exporter's op table (svdcompress.ops) must stay within it."""


def build_plan(bundle: Bundle, kernel: str) -> Plan:
    """Validate the graph of ``bundle`` and compile it into steps (see the module docstring).

    With ``kernel="auto"`` and a ``kernel_plan`` recorded on this CPU (:mod:`.plan_record`), the recorded
    kernels and layouts run and nothing is timed; recorded on another CPU, everything is chosen again."""
    _check_input_dtype(bundle)
    rec: dict[str, Any] = bundle.manifest.get(plan_record.KEY) or {}
    use = kernel == "auto" and bool(rec) and plan_record.cpu_matches(rec["cpu"])
    if kernel == "auto" and rec and not use:
        _log.info(
            "%s: kernel plan recorded on another CPU (%s); choosing the kernels on this one",
            bundle.path,
            rec["cpu"].get("model", rec["cpu"]["name"]),
        )
    plan = Builder(bundle, kernel, OPS, rec["layers"] if use else None).build()
    plan.single = single_pass(plan)
    if plan.single is not None:
        fused = rec.get("single") if use else None
        if fused is None:
            plan.timed += 2
            fused = _fused_pays(plan, tuple(bundle.manifest["input_shape"]))
        if not fused:
            plan.single = None
    return plan


INPUT_DTYPES = ("float32", "int64")
"""What a bundle's manifest may declare as ``input_dtype`` (absent: float32)."""


def _check_input_dtype(bundle: Bundle) -> None:
    """An ``int64`` input (token ids) may be read by ``embedding`` nodes only: every other kernel takes floats."""
    m = bundle.manifest
    dtype = m.get("input_dtype", "float32")
    if dtype not in INPUT_DTYPES:
        raise BundleError(
            f"{bundle.path}: manifest input_dtype must be one of {', '.join(INPUT_DTYPES)}, got {dtype!r}"
        )
    if dtype == "int64":
        for n in m.get("nodes", []):
            if isinstance(n, dict) and m.get("input") in n.get("inputs", []) and n.get("op") != "embedding":
                raise BundleError(
                    f"{bundle.path}: node {n.get('name')}: reads the int64 input (token ids); only embedding may"
                )


def _fused_pays(plan: Plan, in_shape: tuple[int, ...], rounds: int = 7) -> bool:
    """Whether the fused single-example pass beats the steps on one example (best of ``rounds``, interleaved).

    It saves the steps' Python overhead but pays a dispatch of ~18 array arguments; a plan without convolutions
    never gets one (:func:`single_pass`).
    """
    x = np.random.default_rng(0).standard_normal((1, *in_shape)).astype(np.float32)
    single = plan.single
    assert single is not None

    def steps() -> None:
        v: list[Any] = [None] * plan.nslots
        v[0] = x
        for step in plan.steps:
            step(v)

    best = [math.inf, math.inf]
    for _ in range(rounds):
        for k, fn in enumerate((lambda: single(x), steps)):
            t0 = time.perf_counter()
            for _ in range(20):
                fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best[0] < best[1]
