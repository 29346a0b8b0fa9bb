"""The plan builder's shared state: value slots and shapes, attribute validation, fusion lookups, and the
timing that picks each layer's kernel. The op builders (:mod:`.layers`, :mod:`.simple_ops`) use it; the op
table and :func:`build_plan` are in :mod:`.executor`.
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
from .bundle import Bundle

__all__ = [
    "BATCHED",
    "BLOCKED_MIN_BATCH",
    "CHAIN_MIN_BATCH",
    "KERNELS",
    "MAX_BLOCK_SCRATCH",
    "MAX_ELEMENTS",
    "SCALAR_ACTS",
    "SHORTLIST",
    "Builder",
    "Fragment",
    "ParallelStep",
    "Plan",
    "Step",
]

KERNELS = ("auto", "sparse", "dense")
BATCHED = 64
"""Batch size at which the batched regime's kernel choice is measured."""
CHAIN_MIN_BATCH = 4
"""From this batch size on, Linear chains run batch-blocked (SpMM); below it, one example at a time (SpMV)."""
BLOCKED_MIN_BATCH = 8
"""From this batch size on, convolutions run on blocks of interleaved images (``kernels.conv.LANES``)."""

MAX_ELEMENTS = 1 << 26  # per example and value: 256 MB of fp32, far above any SVDO model
MAX_BLOCK_SCRATCH = 1 << 24  # floats of scratch per worker for a block of interleaved images (64 MB)
MAX_DENSE = 1 << 24  # weights of one layer in dense form (64 MB of fp32 values)
DENSE_WORK_LIMIT = 50
Step = Callable[[list[Any]], None]  # reads and writes value slots
ParallelStep = Callable[[list[Any], int], None]  # the same on a given number of threads

# Elementwise ops: manifest name → (attribute names with defaults, activation code or None for numpy-only).
SCALAR_ACTS: dict[str, tuple[tuple[tuple[str, Any], ...], int]] = {
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
class Fragment:
    """What a step does to one example, for the fused single-example pass (:mod:`._single`).

    ``kind`` is "conv" (``arrays``: variant code, indptr, taps, used columns, values, bias, ip, fp, sizes of the
    per-image kernel the layer runs at batch 1), "chain" (``arrays``: the chain kernel's seven arrays) or
    "reshape" (nothing to do on a flat example). ``src`` and ``dst`` are value slots.
    """

    kind: str
    src: int
    dst: int
    arrays: tuple[Any, ...] = ()


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
    fragments: dict[int, Fragment] = field(default_factory=dict)  # step index → its single-example form
    single: Callable[[np.ndarray], np.ndarray] | None = None  # the whole pass for one example, if fusable
    parallel: dict[int, ParallelStep] = field(default_factory=dict)  # step index → its multi-threaded twin
    choices: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)  # layer → regime → kernel, layout
    timed: int = 0  # candidates timed at load (0 when a matching record chose everything)

    def parallel_only(self) -> bool:
        """Whether every step that computes anything has a multi-threaded twin (the rest are reshapes)."""
        return bool(self.parallel) and all(
            i in self.parallel or (i in self.fragments and self.fragments[i].kind == "reshape")
            for i in range(len(self.steps))
        )


SHORTLIST = 2
"""Candidates of one layer and regime that are timed at load: the cost model's best this many (each candidate
layout is a kernel numba must compile first, tens of seconds on a cold cache)."""


class Builder:
    def __init__(
        self,
        bundle: Bundle,
        kernel: str,
        ops: dict[str, Callable[[Builder, dict[str, Any]], None]],
        record: dict[str, dict[str, dict[str, str]]] | None = None,
    ) -> None:
        self.record = record or {}  # a bundle's kernel_plan layers, when chosen on this CPU
        self.compiled: set[str] = set()  # kernels this load has run already (timing them is then free)
        self.ops = ops
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
    def add_step(self, step: Step, fragment: Fragment | None = None, parallel: ParallelStep | None = None) -> None:
        """Append ``step``; ``fragment`` says what it does to one example, if the fused pass can do it;
        ``parallel`` is the step on several threads, if it has such a twin."""
        if fragment is not None:
            self.plan.fragments[len(self.plan.steps)] = fragment
        if parallel is not None:
            self.plan.parallel[len(self.plan.steps)] = parallel
        self.plan.steps.append(step)

    def err(self, node: str, msg: str) -> BundleError:
        return BundleError(f"{self.path}: node {node}: {msg}")

    def new(self, name: str, shape: tuple[int, ...], node: str) -> int:
        if name in self.slot:
            raise self.err(node, f"value {name!r} is defined twice")
        if math.prod(shape) > MAX_ELEMENTS or any(d < 1 for d in shape):
            raise self.err(
                node,
                f"value {name!r} has shape {list(shape)}: dimensions must be >= 1 and hold at "
                f"most {MAX_ELEMENTS:,} elements per example",
            )
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
        if (
            not isinstance(v, list)
            or len(v) != count
            or any(isinstance(e, bool) or not isinstance(e, int) or e < lo or e > 1 << 20 for e in v)
        ):
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
        names, code = SCALAR_ACTS[op]
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

        Not when it would hold more than :data:`MAX_DENSE` weights (memory), and with ``kernel="auto"`` not
        when it does over :data:`DENSE_WORK_LIMIT` × the sparse kernel's multiply-adds: the dense loops are
        at most ~10× faster per multiply-add here (contiguous rows against gathers), so they cannot win, and
        timing them would cost seconds at load on wide layers.
        """
        if self.kernel == "sparse":
            return False
        if elements > MAX_DENSE:
            if self.kernel == "dense":
                raise InvalidInputError(
                    f"{self.path}: layer {name} has {elements:,} weights: too many to run dense "
                    f"(limit {MAX_DENSE:,}); use kernel='sparse' or 'auto'"
                )
            return False
        return self.kernel == "dense" or elements <= DENSE_WORK_LIMIT * max(1, nnz)

    def best_times(
        self, steps: list[Step], in_shape: tuple[int, ...], slot: int, batch: int, rounds: int
    ) -> list[float]:
        """Each step's best time over ``rounds`` on one random batch, interleaved so that other processes on the
        machine hit every step alike."""
        v: list[Any] = [None] * self.plan.nslots
        v[slot] = np.random.default_rng(0).standard_normal((batch, *in_shape)).astype(np.float32)
        best = [math.inf] * len(steps)
        for _ in range(rounds):
            for k, step in enumerate(steps):
                t0 = time.perf_counter()
                step(v)
                best[k] = min(best[k], time.perf_counter() - t0)
        return best

    def recorded(self, name: str, regime: str, key: str) -> str | None:
        """The bundle's recorded ``key`` ("kernel" or "layout") of layer ``name`` in ``regime``, if any."""
        return self.record.get(name, {}).get(regime, {}).get(key)

    def choose(
        self, name: str, sparse: Step, dense: Step | None, in_shape: tuple[int, ...], slot: int
    ) -> tuple[str, str]:
        """Time both kernels on the layer's shape at batch 1 and :data:`BATCHED`; the faster wins each regime.
        A matching record decides without timing (a recorded "dense" without a dense form falls back to sparse)."""
        if dense is None:
            return "sparse", "sparse"
        if self.kernel != "auto":
            return self.kernel, self.kernel
        rec = (self.recorded(name, "batch1", "kernel"), self.recorded(name, "batched", "kernel"))
        if rec[0] is not None and rec[1] is not None:
            return rec[0], rec[1]
        self.plan.timed += 2
        picks = []
        for batch in (1, BATCHED):
            t_sparse, t_dense = self.best_times([sparse, dense], in_shape, slot, batch, 5)
            # Dense must win clearly: on a shared machine a few percent is noise, and sparse reads fewer bytes.
            picks.append("dense" if t_dense < 0.9 * t_sparse else "sparse")
        return picks[0], picks[1]

    def pick(
        self,
        name: str,
        regime: str,
        candidates: dict[str, tuple[Callable[[], Step], float, str]],
        in_shape: tuple[int, ...],
        slot: int,
        batch: int,
    ) -> str:
        """The layout of layer ``name`` for ``regime`` among ``candidates`` (layout → (step factory, the cost
        model's estimate, the kernel it runs)): the bundle's record when it names a candidate, else the fastest
        on the layer's shape at ``batch`` of the candidates that run the cost model's best :data:`SHORTLIST`
        kernels or a kernel this load already compiled (layouts of one kernel cost one compilation). Only the
        steps timed are built and run, so only their kernels are compiled."""
        rec = self.recorded(name, regime, "layout")
        if rec is not None and rec in candidates:
            return rec
        ranked = sorted(candidates, key=lambda k: candidates[k][1])
        kernels = list(dict.fromkeys(candidates[k][2] for k in ranked))
        allowed = set(kernels[: max(1, SHORTLIST)]) | (self.compiled & set(kernels))
        timed = [k for k in ranked if candidates[k][2] in allowed]
        self.compiled.update(candidates[k][2] for k in timed)
        if len(timed) == 1:
            return timed[0]
        steps = [candidates[k][0]() for k in timed]
        self.plan.timed += len(steps)
        return timed[steps.index(self.fastest(steps, in_shape, slot, batch))]

    def fastest(self, steps: list[Step], in_shape: tuple[int, ...], slot: int, batch: int = BATCHED) -> Step:
        """The step (one layer, several layouts of the same arithmetic) measured fastest at ``batch``."""
        if len(steps) == 1:
            return steps[0]
        best = self.best_times(steps, in_shape, slot, batch, 5 if batch == 1 else 3)
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
            if (
                not isinstance(n, dict)
                or not isinstance(n.get("name"), str)
                or not isinstance(n.get("op"), str)
                or not isinstance(n.get("inputs"), list)
                or not all(isinstance(x, str) for x in n["inputs"])
                or not isinstance(n.get("outputs"), list)
                or len(n["outputs"]) != 1
                or not isinstance(n["outputs"][0], str)
                or not isinstance(n.get("attrs", {}), dict)
                or not isinstance(n.get("params", {}), dict)
            ):
                raise BundleError(
                    f"{self.path}: node #{i} is malformed (needs name, op, inputs, one output, attrs, params)"
                )
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
            builder = self.ops.get(n["op"])
            if builder is None:
                raise self.err(n["name"], f"op {n['op']!r} is unknown to this runtime; upgrade svdcompress")
            builder(self, n)
        out = m["output"]
        if out not in self.slot:
            raise BundleError(f"{self.path}: graph output {out!r} is not computed by any node")
        declared = m.get("output_shape")
        if declared is not None and tuple(declared) != self.shape[out]:
            raise BundleError(f"{self.path}: output_shape {declared} differs from the inferred {list(self.shape[out])}")
        self.plan.output_slot = self.slot[out]
        self.plan.output_shape = self.shape[out]
        return self.plan

    def mark_fused(self, n: dict[str, Any]) -> None:
        self.fused.add(next(i for i, x in enumerate(self.m["nodes"]) if x is n))
