"""Write a model as a CSR bundle: trace it with torch.fx, capture its ops, fold BatchNorm, encode, verify.

The bundle format itself (container, codecs, reader, validation) is owned by :mod:`svdcompress.runtime.bundle`;
this module only decides what goes into it.
"""

from __future__ import annotations

import copy
import json
import operator
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata

from .._inputs import example_inputs
from .._io import atomic_path
from .._verify import compare_outputs
from .._version import __version__
from ..errors import ExportError, SvdcompressError
from ..ops import InputGather, Op, lookup
from ..pruning.tracing import Tracer, describe_node, propagate_shapes, softmax_dim
from ..runtime import quant as Q
from ..runtime.bundle import FORMAT_NAME, FORMAT_VERSION, BundleWriter, narrow_uint
from ..runtime.plan_record import KEY as PLAN_KEY
from . import _sequence
from ._common import DEFAULT_TOLERANCES, ExportResult, _dense_fp32_bytes, _prepare, _verify

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "export_csr"]
_seeded = example_inputs  # export_csr's keyword argument of the same name shadows it there
_FP16_MAX = 65504.0

# ---------------------------------------------------------------------------------------------- graph capture


def _trace(model: nn.Module) -> fx.GraphModule:
    if isinstance(model, fx.GraphModule):
        return model
    tracer = Tracer()  # the pruner's tracer: InputGather stays one call
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, ...) for untraceable code
        raise ExportError(f"cannot trace {type(model).__name__} with torch.fx: {exc}") from exc
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _fn_args(node: fx.Node, names: tuple[str, ...], defaults: dict[str, Any]) -> dict[str, Any]:
    """Map a call's positional and keyword arguments onto ``names`` (skipping the tensor input)."""
    out = dict(defaults)
    out.update(zip(names, node.args[1:], strict=False))
    out.update({k: v for k, v in node.kwargs.items() if k in names})
    return out


def _pair(v: Any) -> list[int] | str:
    if isinstance(v, str):
        return v
    return [int(v), int(v)] if isinstance(v, int) else [int(e) for e in v]


class _Capture:
    """Turn a traced model into the manifest's op list plus a name → numpy array table of parameters.

    Which op a node is, its manifest name and attributes come from :data:`svdcompress.ops.OPS`; each
    op's ``writer`` names the ``_write_<writer>`` method below that emits it.
    """

    def __init__(self, gm: fx.GraphModule, input_shape: tuple[int, ...], example: torch.Tensor | None = None) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.module_names = {id(m): k for k, m in self.modules.items()}
        self.weight_modules: dict[str, nn.Module] = {}  # weight param → the Linear/Conv2d it comes from
        self.nodes: list[dict[str, Any]] = []
        self.params: dict[str, np.ndarray] = {}
        self.values: dict[fx.Node, str] = {}  # fx node → manifest value name (aliases share one)
        self.shapes: dict[str, list[int]] = {}  # value name → shape without the batch dim
        # value name → torch's axis of the batch where it is not 0 (attention's permute(2, 0, 3, 1, 4)); the
        # runtime holds every value batch-major, i.e. with that axis moved to the front
        self.bdim: dict[str, int] = {}
        self.constants: dict[tuple[fx.Node, int], str] = {}  # (get_attr node, rank) → its constant value
        self.input_dtype = "float32"
        self.recurrent: dict[fx.Node, str] = {}  # LSTM node → the value of its output sequence
        # batch 2: a batch of 1 can hide batch-dim reshapes
        propagate_shapes(
            gm, example[:2] if example is not None and len(example) >= 2 else example_inputs(input_shape, 2)
        )

    def run(self) -> tuple[str, str]:
        inp = out = None
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                if inp is not None:
                    raise ExportError("the CSR format supports models with exactly one input tensor")
                inp = self._define(node, node.name)
                if not node.meta["tensor_meta"].dtype.is_floating_point:
                    self.input_dtype = "int64"  # token ids: the runtime lets only embedding read them
            elif node.op == "output":
                arg = node.args[0]
                if not isinstance(arg, fx.Node) or arg not in self.values:
                    raise ExportError("the CSR format supports models that return exactly one tensor")
                out = self.values[arg]
            elif node.op != "get_attr" and isinstance(node.meta.get("tensor_meta"), TensorMetadata):
                self._convert(node)
            elif node.target is operator.getitem and node.args[0] in self.recurrent:
                if node.users:  # `out, _ = lstm(x)` leaves an unused getitem 1
                    _sequence.index(self, node)  # (h_n, c_n): refused, naming the node
            elif (op := lookup(self.gm, node)) is not None and op.writer == "lstm":
                _sequence.lstm(self, node)  # a tuple (output, (h, c)): its getitem 0 is the output
            elif op is not None and not op.in_bundle and self._reads_tensor(node):
                # a tuple-valued op (LSTM, unbind); x.shape[0] and friends are resolved where they are used
                raise ExportError(
                    f"{describe_node(self.gm, node)} cannot be written to a CSR bundle: {op.not_in_bundle}"
                )
            # get_attr constants and non-tensor values (x.size(0), ...) are resolved where they are used.
        if inp is None or out is None:
            raise ExportError("the traced model has no input or no output")
        return inp, out

    # -- helpers
    @staticmethod
    def _reads_tensor(node: fx.Node) -> bool:
        return any(isinstance(n.meta.get("tensor_meta"), TensorMetadata) for n in node.all_input_nodes)

    def _define(self, node: fx.Node, name: str, bdim: int = 0) -> str:
        self.values[node] = name
        shape = list(node.meta["tensor_meta"].shape)
        self.shapes[name] = shape[:bdim] + shape[bdim + 1 :]
        if bdim:
            self.bdim[name] = bdim
        return name

    def _in(self, node: fx.Node, arg: Any, any_batch: bool = False) -> str:
        """The value ``arg`` holds; a parameter (get_attr) becomes a ``constant`` of the node's rank. Unless
        ``any_batch``, the value must have the batch on torch's axis 0."""
        if isinstance(arg, fx.Node) and arg.op == "get_attr" and arg not in self.values:
            return _sequence.constant(self, node, arg)
        if not isinstance(arg, fx.Node) or arg not in self.values:
            raise ExportError(f"{node.name}: input {arg!r} is not a tensor computed from the model input")
        name = self.values[arg]
        if not any_batch and self.bdim.get(name, 0):
            raise ExportError(
                f"{describe_node(self.gm, node)} cannot be written to a CSR bundle: it reads a tensor whose batch "
                f"is on axis {self.bdim[name]}, and the runtime runs this op on batch-first tensors only; export "
                "to ONNX instead"
            )
        return name

    def _emit(
        self,
        node: fx.Node,
        op: str,
        inputs: list[str],
        attrs: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        bdim: int = 0,
    ) -> None:
        name = self._define(node, node.name, bdim)
        self.nodes.append(
            {"name": name, "op": op, "inputs": inputs, "outputs": [name], "attrs": attrs or {}, "params": params or {}}
        )

    def _param(self, name: str, t: torch.Tensor | np.ndarray) -> str:
        arr = t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, np.float64)
        self.params[name] = arr  # float64 until encoding, so that BN folding rounds once
        return name

    def _ndim(self, node: fx.Node, arg: Any) -> int:
        return len(self.shapes[self._in(node, arg)]) + 1

    def _module(self, node: fx.Node) -> nn.Module | None:
        return self.modules[str(node.target)] if node.op == "call_module" else None

    def _attrs(self, node: fx.Node, op: Op) -> dict[str, Any]:
        """The op's attributes, from the module's attributes or the call's arguments, defaults filled in."""
        m = self._module(node)
        if m is not None:
            got = {k: getattr(m, k, d) for k, d in op.attrs}
        else:
            got = _fn_args(node, tuple(k for k, _ in op.attrs), dict(op.attrs))
        # nn.Softplus(beta=2) stores an int: write every float attribute as a float
        return {k: float(got[k]) if isinstance(d, float) and isinstance(got[k], int) else got[k] for k, d in op.attrs}

    # -- conversion: one writer per kind of op (the registry's ``writer`` field)
    def _convert(self, node: fx.Node) -> None:
        op = lookup(self.gm, node)
        if op is None:
            raise ExportError(f"{describe_node(self.gm, node)} is not supported by the CSR format")
        if op.writer is None:
            raise ExportError(f"{describe_node(self.gm, node)} cannot be written to a CSR bundle: {op.not_in_bundle}")
        getattr(self, f"_write_{op.writer}")(node, op)

    def _write_elementwise(self, node: fx.Node, op: Op) -> None:
        x = self._in(node, node.args[0], any_batch=True)
        self._emit(node, op.name, [x], self._attrs(node, op), bdim=self.bdim.get(x, 0))

    def _write_prelu(self, node: fx.Node, op: Op) -> None:
        m = self._module(node)
        assert m is not None  # internal invariant: the registry lists PReLU as a module only
        params = {role: self._param(f"{node.name}.{attr}", getattr(m, attr)) for role, attr in op.params}
        self._emit(node, op.name, [self._in(node, node.args[0])], {}, params)  # slope: (1,) or (C,)

    def _write_softmax(self, node: fx.Node, op: Op) -> None:
        x = self._in(node, node.args[0], any_batch=True)
        dim = softmax_dim(self.gm, node)
        ndim = self._ndim(node, node.args[0])
        if not isinstance(dim, int) or not -ndim <= dim < ndim or _sequence.axis(self, x, dim) == 0:
            raise ExportError(
                f"{describe_node(self.gm, node)} cannot be written to a CSR bundle: {op.name} needs an explicit "
                f"dim other than the batch, got dim={dim} on a {ndim}-D input"
            )
        self._emit(node, op.name, [x], {"dim": _sequence.axis(self, x, dim)}, bdim=self.bdim.get(x, 0))

    def _write_alias(self, node: fx.Node, op: Op) -> None:
        self.values[node] = self._in(node, node.args[0], any_batch=True)

    def _write_dropout(self, node: fx.Node, op: Op) -> None:
        if node.op != "call_module":
            training_default = node.target is not F.alpha_dropout  # F.alpha_dropout defaults to training=False
            if _fn_args(node, ("p", "training"), {"training": training_default})["training"]:
                raise ExportError(f"{node.name}: functional dropout with training=True is not deterministic")
        self._write_alias(node, op)

    def _write_linear(self, node: fx.Node, op: Op) -> None:
        m: nn.Linear = self._module(node)  # type: ignore[assignment]  # the registry maps nn.Linear here
        x = self._in(node, node.args[0], any_batch=True)
        b = self.bdim.get(x, 0)
        if b == self._ndim(node, node.args[0]) - 1:
            raise ExportError(f"{describe_node(self.gm, node)}: a Linear over the batch axis cannot be written")
        self._emit(
            node,
            "linear",
            [x],
            {"in_features": m.in_features, "out_features": m.out_features},
            self._weight_bias(node.name, m),
            bdim=b,
        )

    def _write_conv2d(self, node: fx.Node, op: Op) -> None:
        m: nn.Conv2d = self._module(node)  # type: ignore[assignment]  # the registry maps nn.Conv2d here
        if m.padding_mode != "zeros":
            raise ExportError(f"{node.target}: padding_mode={m.padding_mode!r} is not supported (only 'zeros')")
        attrs = {
            "in_channels": m.in_channels,
            "out_channels": m.out_channels,
            "kernel_size": _pair(m.kernel_size),
            "stride": _pair(m.stride),
            "padding": _pair(m.padding),
            "dilation": _pair(m.dilation),
            "groups": m.groups,
        }
        self._emit(node, "conv2d", [self._in(node, node.args[0])], attrs, self._weight_bias(node.name, m))

    def _write_batchnorm(self, node: fx.Node, op: Op) -> None:
        m: nn.BatchNorm1d | nn.BatchNorm2d = self._module(node)  # type: ignore[assignment]  # registry: BN modules
        if m.running_mean is None or m.running_var is None:
            raise ExportError(f"{node.target}: BatchNorm without running statistics cannot be exported")
        scale = (
            m.weight.detach().double() if m.weight is not None else torch.ones(m.num_features, dtype=torch.float64)
        ) / torch.sqrt(m.running_var.double() + m.eps)
        shift = (m.bias.detach().double() if m.bias is not None else 0.0) - m.running_mean.double() * scale
        name = node.name
        self._emit(
            node,
            "batchnorm",
            [self._in(node, node.args[0])],
            {"num_features": m.num_features},
            {"scale": self._param(f"{name}.scale", scale), "shift": self._param(f"{name}.shift", shift)},
        )

    def _write_pool(self, node: fx.Node, op: Op) -> None:
        m = self._module(node)
        names = tuple(k for k, _ in op.attrs)
        a = {k: getattr(m, k) for k in names if hasattr(m, k)} if m is not None else _fn_args(node, names, {})
        self._emit_pool(node, op.name, self._in(node, node.args[0]), a)

    def _write_reshape(self, node: fx.Node, op: Op) -> None:
        self._reshape(node, self._in(node, node.args[0]))  # target shape comes from shape propagation

    def _write_cat(self, node: fx.Node, op: Op) -> None:
        tensors = node.args[0]
        dim = int(_fn_args(node, ("dim",), {"dim": 0})["dim"])
        ndim = len(node.meta["tensor_meta"].shape)
        if not isinstance(tensors, (list, tuple)) or dim % ndim == 0:
            raise ExportError(f"{node.name}: torch.cat along the batch (dim={dim}) cannot be written to a CSR bundle")
        self._emit(node, "cat", [self._in(node, a) for a in tensors], {"dim": dim % ndim})

    def _write_arith(self, node: fx.Node, op: Op) -> None:
        _sequence.arith(self, node)

    def _write_layer_norm(self, node: fx.Node, op: Op) -> None:
        _sequence.layer_norm(self, node)

    def _write_matmul(self, node: fx.Node, op: Op) -> None:
        _sequence.matmul(self, node)

    def _write_transpose(self, node: fx.Node, op: Op) -> None:
        _sequence.transpose(self, node)

    def _write_index(self, node: fx.Node, op: Op) -> None:
        _sequence.index(self, node)

    def _write_expand(self, node: fx.Node, op: Op) -> None:
        _sequence.expand(self, node)

    def _write_reduce(self, node: fx.Node, op: Op) -> None:
        _sequence.reduce(self, node)

    def _write_embedding(self, node: fx.Node, op: Op) -> None:
        _sequence.embedding(self, node)

    def _write_conv1d(self, node: fx.Node, op: Op) -> None:
        _sequence.conv1d(self, node)

    def _write_gather(self, node: fx.Node, op: Op) -> None:
        m = self._module(node)
        if isinstance(m, InputGather):
            self._emit(
                node,
                "gather",
                [self._in(node, node.args[0])],
                {"in_features": m.in_features},
                {"index": self._index_param(f"{node.name}.index", m.index)},
            )
            return
        # torch.index_select(x2d, 1, <constant index>): InputGather traced through.
        x, dim, index = node.args[0], node.args[1], node.args[2]
        if dim != 1 or self._ndim(node, x) != 2 or not isinstance(index, fx.Node) or index.op != "get_attr":
            raise ExportError(f"{node.name}: only index_select(x2d, 1, constant index) is supported")
        idx = operator.attrgetter(str(index.target))(self.gm)
        self._emit(
            node,
            "gather",
            [self._in(node, x)],
            {"in_features": self.shapes[self._in(node, x)][0]},
            {"index": self._index_param(f"{node.name}.index", idx)},
        )

    def _weight_bias(self, name: str, m: nn.Module) -> dict[str, str]:
        self.weight_modules[f"{name}.weight"] = m
        params = {"weight": self._param(f"{name}.weight", m.weight)}  # type: ignore[arg-type]  # Linear/Conv2d
        if isinstance(m.bias, torch.Tensor):
            params["bias"] = self._param(f"{name}.bias", m.bias)
        return params

    def _index_param(self, name: str, index: Any) -> str:
        self.params[name] = np.asarray(torch.as_tensor(index).cpu().numpy(), dtype=np.int64)
        return name

    def _reshape(self, node: fx.Node, x: str) -> None:
        shape = list(node.meta["tensor_meta"].shape)
        src = node.args[0]
        if not isinstance(src, fx.Node) or shape[0] != src.meta["tensor_meta"].shape[0]:
            raise ExportError(f"{node.name}: a reshape that changes the batch dimension is not supported")
        self._emit(node, "reshape", [x], {"shape": shape[1:]})

    def _emit_pool(self, node: fx.Node, kind: str, x: str, a: dict[str, Any]) -> None:
        """Emit a pooling op from its module attributes or functional arguments, defaults filled in."""
        if kind == "adaptive_avg_pool2d":  # the realised output size, not the (possibly None) request
            self._emit(node, kind, [x], {"output_size": list(node.meta["tensor_meta"].shape[2:])})
            return
        if a.get("return_indices"):
            raise ExportError(f"{node.name}: max pooling with return_indices=True is not supported")
        k = a["kernel_size"]
        attrs: dict[str, Any] = {
            "kernel_size": _pair(k),
            "stride": _pair(a.get("stride") or k),
            "padding": _pair(a.get("padding", 0)),
            "ceil_mode": bool(a.get("ceil_mode", False)),
        }
        if kind == "max_pool2d":
            attrs["dilation"] = _pair(a.get("dilation", 1))
        else:
            attrs.update(
                count_include_pad=bool(a.get("count_include_pad", True)), divisor_override=a.get("divisor_override")
            )
        self._emit(node, kind, [x], attrs)


def _fold_batchnorm(
    nodes: list[dict[str, Any]], params: dict[str, np.ndarray], output: str
) -> tuple[list[dict[str, Any]], str]:
    """Fold each BatchNorm whose only input is a Linear/Conv read by nothing else into its weights.

    Exact in eval mode: ``(W x + b) * s + t == (s W) x + (s b + t)``. Zeros stay zero, so sparsity is kept.
    Returns the new node list and the (possibly renamed) graph output.
    """
    producer = {n["outputs"][0]: n for n in nodes}
    readers: dict[str, int] = {}
    for n in nodes:
        for i in n["inputs"]:
            readers[i] = readers.get(i, 0) + 1
    rename: dict[str, str] = {}
    kept: list[dict[str, Any]] = []
    for n in nodes:
        n["inputs"] = [rename.get(i, i) for i in n["inputs"]]
        src = producer.get(n["inputs"][0]) if n["inputs"] else None
        if (
            n["op"] == "batchnorm"
            and src is not None
            and src["op"] in ("linear", "conv2d")
            and readers.get(src["outputs"][0], 0) == 1
            and src["outputs"][0] != output
        ):
            s, t = params.pop(n["params"]["scale"]), params.pop(n["params"]["shift"])
            w = src["params"]["weight"]
            params[w] = params[w] * s.reshape((-1,) + (1,) * (params[w].ndim - 1))  # (out, ...) row scaling
            bias = src["params"].setdefault("bias", f"{src['name']}.bias")
            params[bias] = params.get(bias, np.zeros_like(s)) * s + t
            src["attrs"]["folded_batchnorm"] = n["name"]
            rename[n["outputs"][0]] = src["outputs"][0]
            continue
        kept.append(n)
    return kept, rename.get(output, output)


def export_csr(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    input_shape: tuple[int, ...],
    reference: nn.Module | None = None,
    dtype: str = "fp32",
    force: bool = False,
    tolerance: float | None = None,
    threshold: float | None = None,
    provenance: dict[str, Any] | None = None,
    dense_fp32_bytes: int | None = None,
    bits: int | str | None = None,
    sigma: dict[str, float] | None = None,
    index_encoding: str = "auto",
    threshold_selection: dict[str, Any] | None = None,
    check: Callable[[Any], dict[str, Any] | None] | None = None,
    auto_c: float = Q.AUTO_C,
    kernel_plan: bool = True,
    example_inputs: torch.Tensor | None = None,
) -> ExportResult:
    """Write ``model`` as a CSR bundle, run it with :mod:`svdcompress.runtime` and compare with ``reference``.

    The model is traced with torch.fx (a pruner's ``GraphModule`` is used as is) and turned into a list of
    ops. BatchNorm directly after a Linear/Conv whose output nothing else reads is folded into its
    weights; other BatchNorms stay as a per-channel affine op. Each weight is stored as CSR of its
    ``[out, in·kh·kw]`` matrix where that is smaller than dense, else dense.

    Manifest fields: ``format``, ``format_version``, ``producer``, ``dtype``, ``input_shape`` and
    ``output_shape`` (without the batch dim), ``input``/``output`` value names, ``value_shapes``,
    ``nodes`` (each ``name``, ``op``, ``inputs``, ``outputs``, ``attrs``, ``params``: role → layer/tensor
    name), ``layers`` (per weight: ``shape``, ``dtype``, ``nnz``, ``density``, ``storage`` csr|dense and
    its tensor names), ``tensors`` and ``blobs`` (where the numbers are), ``threshold``, ``provenance``.

    Args:
        model: Eval-mode masked dense or structurally pruned model.
        path: Output file (any name; ``.csr`` is customary).
        input_shape: One example's shape, without the batch dim, e.g. ``(1, 28, 28)``.
        reference: Model the bundle must reproduce; default ``model``.
        dtype: ``"fp32"`` or ``"fp16"`` for weight values. Biases and BatchNorm stay fp32 (they are
            tiny), and the runtime computes in fp32 either way.
        force: Overwrite an existing file.
        tolerance: Allowed ``max|diff| / max(1, max|ref|)``; default :data:`DEFAULT_TOLERANCES` [dtype].
        threshold: The log α threshold the masks came from; recorded in the manifest, never applied.
        provenance: JSON-serialisable facts to record (source checkpoint, training run, ...).
        dense_fp32_bytes: Override the dense size the ratio is computed against (default: from reference).
        bits: Quantise the kept weights (:mod:`svdcompress.runtime.quant`): ``16`` stores fp16 values (as
            ``dtype="fp16"``); 2-8 stores each layer as uniform per-row integers or a k-means codebook, whichever
            is smaller at the uniform scheme's error; ``"auto"`` picks each layer's fewest bits whose RMS error
            stays within √c·σ (``c`` = :data:`~svdcompress.runtime.quant.AUTO_C`, σ the layer's median
            posterior standard deviation from ``sigma``). A layer with a folded BatchNorm keeps ``dtype``.
            The bundle is then verified against ``model`` with the dequantised weights (exact to the fp32
            tolerance); its drift from ``reference`` is reported, not bounded (check accuracy on data).
            Kept weights that quantise to exactly 0 are dropped from the pattern (``zeroed`` in the report).
        sigma: Layer (module name, e.g. ``"conv1"``) → median posterior σ of its kept weights, for ``"auto"``.
        example_inputs: a batch ``(N, *input_shape)`` to trace and verify with instead of seeded standard-normal
            inputs: int64 token ids for a model that starts with an embedding (the manifest then declares
            ``input_dtype: int64``).
        auto_c: The ``c`` of ``bits="auto"`` (quantisation noise variance allowed, as a fraction of σ²).
        check: Called with the loaded bundle after verification and before the file is renamed into place
            (e.g. an accuracy check on data); it raises to abort, leaving no file, or returns facts for
            ``ExportResult.accuracy``.
        index_encoding: How each CSR layer's sparsity pattern is stored: ``"gaps"`` (bytes of the gaps between
            flat positions), ``"bitmap"`` (one bit per weight), ``"row_delta"`` (row pointers and per-row deltas,
            format 2's), or ``"auto"`` (default): whichever compresses smallest for that layer.
        threshold_selection: How ``threshold`` was chosen
            (:meth:`svdcompress.tuning.threshold.TuneResult.selection`: the
            data spec, its accuracy, ...); recorded in the manifest as ``threshold_selection``.
        kernel_plan: Record in the manifest (``kernel_plan``, :mod:`svdcompress.runtime.plan_record`) the kernel
            and layout the runtime chose for each layer on this CPU, so that a load on the same CPU compiles only
            those and times nothing. The choice comes from timings: pass False for a bundle reproducible byte for
            byte.

    Returns:
        The :class:`ExportResult`.

    Raises:
        ExportError: Unknown dtype, an op the format cannot express, verification failure (no file is
            left behind), or an existing output without ``force``.
    """
    if bits == 16 or bits == "16":
        dtype, bits = "fp16", None
    qbits = _resolve_bits(bits, sigma)
    example = example_inputs
    vname, tol, out, ref = _prepare(model, reference, path, dtype, tolerance, force)
    try:
        json.dumps(provenance)
    except TypeError as exc:
        raise ExportError(f"provenance must be JSON-serialisable: {exc}") from exc

    capture = _Capture(_trace(model), tuple(input_shape), example)
    inp, output = capture.run()
    nodes, output = _fold_batchnorm(capture.nodes, capture.params, output)
    vdtype: type[np.floating[Any]] = np.float16 if vname == "fp16" else np.float32
    try:
        writer, layers = BundleWriter(index_encoding), {}
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    dequantised: dict[str, np.ndarray] = {}  # weight param → its dequantised values, for the exactness check
    for n in nodes:
        for role, pname in n["params"].items():
            arr = capture.params[pname]
            if role in ("weight", "weight_hh"):  # the layers: CSR or dense, maybe quantised
                quant, qinfo = None, None
                if qbits is not None and "folded_batchnorm" not in n["attrs"]:
                    layer = capture.module_names.get(id(capture.weight_modules.get(pname)), n["name"])
                    quant, qinfo, dequantised[pname] = _quantize(arr, qbits, sigma, layer, auto_c)
                    arr = dequantised[pname]  # the pattern the codes describe: quantised-to-zero weights dropped
                elif vname == "fp16" and np.abs(arr).max(initial=0.0) > _FP16_MAX:
                    raise ExportError(f"{n['name']}: weights exceed the fp16 range (±65504); export as fp32")
                layers[pname] = writer.add_weight(pname, arr, vdtype, quant, qinfo)
            elif role == "index":
                writer.add(pname, narrow_uint(arr))
            else:  # bias, BatchNorm scale/shift, slopes: fp32 keeps them exact enough and they are tiny
                writer.add(pname, arr.astype(np.float32))
    used = {v for n in nodes for v in [*n["inputs"], *n["outputs"]]} | {inp, output}
    manifest: dict[str, Any] = {
        "producer": {"name": "svdcompress", "version": __version__},
        "dtype": vname,
        "input_shape": list(input_shape),
        "input_dtype": capture.input_dtype,
        "output_shape": capture.shapes[output],
        "input": inp,
        "output": output,
        "value_shapes": {k: v for k, v in capture.shapes.items() if k in used},
        "nodes": nodes,
        "layers": layers,
        "threshold": threshold,
        "provenance": provenance or {},
        **({"threshold_selection": threshold_selection} if threshold_selection is not None else {}),
        **({"bits": qbits} if qbits is not None else {}),
    }
    with atomic_path(out) as tmp:
        writer.write(tmp, manifest)
        from ..runtime import load as load_bundle  # verify with the reader that will consume the file

        try:
            bundle = load_bundle(tmp)
        except SvdcompressError as exc:  # the runtime refuses what we wrote: an exporter bug or an unknown op
            raise ExportError(f"{out}: the runtime cannot run the bundle just written: {exc}") from exc
        if kernel_plan:  # the kernels the load chose on this CPU: a load on the same CPU compiles only those
            manifest[PLAN_KEY] = bundle.kernel_plan
            writer.write(tmp, manifest)
        drift = None
        if dequantised:
            exact = _with_weights(model, capture, dequantised)
            diff = _verify(
                bundle, exact, tuple(input_shape), DEFAULT_TOLERANCES["fp32"], f"quantised CSR bundle {out}", example
            )
            x = _seeded(tuple(input_shape), 4) if example is None else example
            drift = compare_outputs(ref, bundle, x, f"CSR bundle {out}", error=ExportError)
        else:
            diff = _verify(bundle, ref, tuple(input_shape), tol, f"CSR bundle {out}", example)
        checked = None if check is None else check(bundle)  # may raise: then nothing is renamed into place
        size = tmp.stat().st_size
    dense = _dense_fp32_bytes(ref) if dense_fp32_bytes is None else int(dense_fp32_bytes)
    quant_layers = {k: v["quant"] for k, v in layers.items() if "quant" in v}
    extra: dict[str, Any] = {}
    if quant_layers:
        extra = {"quant": quant_layers, "quant_drift": None if drift is None else drift[0] / drift[1]}
    if checked is not None:
        extra["accuracy"] = checked
    return ExportResult(out, "csr", size, dense, dense / max(1, size), diff, **extra)


def _resolve_bits(bits: int | str | None, sigma: dict[str, float] | None) -> int | str | None:
    if bits is None:
        return None
    if bits == "auto":
        if not sigma:
            raise ExportError(
                "bits='auto' chooses bit widths from the posterior σ of each layer; pass sigma= (export_model "
                "computes it from the SVDO model), or give bits=2..8 or 16"
            )
        return "auto"
    try:
        b = int(bits)
    except (TypeError, ValueError):
        b = -1
    if isinstance(bits, bool) or not 2 <= b <= Q.MAX_BITS:
        raise ExportError(f"bits must be 'auto', 16 or an integer from 2 to {Q.MAX_BITS}, got {bits!r}")
    return b


def _quantize(
    arr: np.ndarray, bits: int | str, sigma: dict[str, float] | None, layer: str, auto_c: float = Q.AUTO_C
) -> tuple[Q.Quantized, dict[str, Any], np.ndarray]:
    """(codes, their manifest facts, the dequantised weight) of one layer's kept weights."""
    mat = arr.reshape(arr.shape[0], -1)
    rows, cols = np.nonzero(mat)
    s = None
    if bits == "auto":
        s = (sigma or {}).get(layer)
        if s is None:
            raise ExportError(f"bits='auto': no posterior σ for layer {layer!r} (sigma= has {sorted(sigma or {})})")
    width = None if bits == "auto" else int(bits)
    q, rms, target = Q.choose(mat[rows, cols].astype(np.float32), rows, mat.shape[0], width, s, auto_c)
    values = Q.decode(q.scheme, q.bits, q.codes, q.table, rows)
    # Kept weights that quantise to exactly 0 are dropped from the pattern: they cost an index and a code and
    # add nothing (the dequantised model, which the bundle is verified against, holds the same zeros).
    nonzero = ~q.zero()
    zeroed = int((~nonzero).sum())
    if zeroed:
        q = Q.Quantized(q.scheme, q.bits, q.codes[nonzero], q.table, int(nonzero.sum()))
    deq = np.zeros(mat.shape, np.float64)
    deq[rows, cols] = values
    step = float(np.median(q.table[q.table > 0])) if q.scheme == "uniform" and (q.table > 0).any() else None
    info = {  # informational: 4 significant digits keep the manifest small
        "zeroed": zeroed,
        "rms_error": _sig(rms),
        "target_rms": _sig(target),
        "bytes": q.nbytes,
        "step": None if step is None else _sig(step),
        **({"median_sigma": _sig(s), "c": auto_c} if s is not None else {}),
    }
    return q, info, deq.reshape(arr.shape)


def _sig(x: float) -> float:
    return float(f"{x:.4g}")


def _with_weights(model: nn.Module, capture: _Capture, weights: dict[str, np.ndarray]) -> nn.Module:
    """A copy of ``model`` whose Linear/Conv2d weights named in ``weights`` hold those values."""
    memo: dict[int, Any] = {}
    twin = copy.deepcopy(model, memo)
    for pname, arr in weights.items():
        m = memo[id(capture.weight_modules[pname])]
        attr = {"weight_ih": "weight_ih_l0", "weight_hh": "weight_hh_l0"}.get(pname.rsplit(".", 1)[1], "weight")
        w = getattr(m, attr)
        with torch.no_grad():
            w.copy_(torch.from_numpy(arr).to(w.dtype).reshape(w.shape))  # conv1d: 4-D → 3-D
    return twin.eval()
