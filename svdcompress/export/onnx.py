"""ONNX artifacts: the compact dense graph, and the same graph with sparse initializers.

Both are exported with PyTorch's legacy TorchScript exporter (``dynamo=False``): the default dynamo
exporter needs ``onnxscript``, which svdcompress does not depend on. Both are checked with
``onnx.checker`` and run in ONNX Runtime against the reference model before the file appears.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper
from torch import nn

from .._inputs import example_inputs
from .._io import atomic_path
from ..errors import ExportError
from ._common import ExportResult, _dense_fp32_bytes, _prepare, _verify

__all__ = ["MIN_CONVERTED_ELEMENTS", "export_onnx", "ort_session"]

MIN_CONVERTED_ELEMENTS = 64
"""Float initializers with fewer elements (biases of small layers, BatchNorm constants) are left alone by
the fp16 and sparse conversions: they weigh nothing and fp16 would cost accuracy there."""

_INPUT, _OUTPUT = "input", "output"
_FP16_MAX = 65504.0
_INDEX_BYTES = 8  # the ONNX checker requires INT64 sparse indices; linearised [NNZ] is the narrowest form


def _torch_to_onnx(model: nn.Module, input_shape: tuple[int, ...], opset: int, tmp: Path) -> onnx.ModelProto:
    """Export to ``tmp`` (a scratch file the caller owns) and return the loaded proto."""
    example = example_inputs(input_shape, 2)  # batch 2, so that no size-1 batch gets baked in
    with warnings.catch_warnings():
        # torch 2.13 raises two DeprecationWarnings for the legacy exporter ("You are using the legacy
        # TorchScript-based ONNX export", and "The feature will be removed" from its utils). We use it
        # deliberately (see module docstring); other warnings still surface.
        warnings.filterwarnings(
            "ignore", message="You are using the legacy TorchScript-based ONNX export", category=DeprecationWarning
        )
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        try:
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                do_constant_folding=True,
                input_names=[_INPUT],
                output_names=[_OUTPUT],
                dynamic_axes={_INPUT: {0: "batch"}, _OUTPUT: {0: "batch"}},
            )
        except Exception as exc:  # the exporter raises many types for unsupported ops / opsets
            raise ExportError(f"torch.onnx.export failed for {type(model).__name__} at opset {opset}: {exc}") from exc
    return onnx.load_model(str(tmp))


def _large_float_initializers(graph: onnx.GraphProto, dtype: int) -> list[onnx.TensorProto]:
    return [
        t
        for t in graph.initializer
        if t.data_type == dtype and int(np.prod(t.dims, dtype=np.int64)) >= MIN_CONVERTED_ELEMENTS
    ]


def _initializers_to_fp16(graph: onnx.GraphProto) -> None:
    """Store large float initializers as fp16, each followed by a Cast back to fp32.

    Inputs, outputs and arithmetic stay fp32, so every runtime accepts the model; ONNX Runtime
    constant-folds the Casts at load, so this halves the file, not the speed.
    """
    casts = []
    for t in _large_float_initializers(graph, onnx.TensorProto.FLOAT):
        arr = numpy_helper.to_array(t)
        if np.abs(arr).max(initial=0.0) > _FP16_MAX:
            raise ExportError(f"initializer {t.name}: values exceed the fp16 range (±65504); export as fp32")
        name16 = f"{t.name}__fp16"
        t.CopyFrom(numpy_helper.from_array(arr.astype(np.float16), name16))
        casts.append(
            helper.make_node(
                "Cast", [name16], [name16[: -len("__fp16")]], to=onnx.TensorProto.FLOAT, name=f"{name16}__cast"
            )
        )
    # Casts first: node order must be topological.
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)


def _initializers_to_sparse(graph: onnx.GraphProto) -> None:
    """Move each large float initializer that is smaller as COO (int64 linearised indices) to sparse_initializer."""
    for dtype in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
        for t in _large_float_initializers(graph, dtype):
            arr = numpy_helper.to_array(t)
            flat = np.flatnonzero(arr)  # (nnz,) ascending, as the spec requires
            if flat.size * (arr.itemsize + _INDEX_BYTES) >= arr.size * arr.itemsize:
                continue  # dense is smaller
            values = numpy_helper.from_array(arr.ravel()[flat], t.name)
            indices = numpy_helper.from_array(flat.astype(np.int64), f"{t.name}__indices")
            graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, list(arr.shape)))
            graph.initializer.remove(t)


def ort_session(path: str | os.PathLike[str], threads: int = 1) -> Any:
    """An ONNX Runtime CPU session for ``path``, with intra-op spinning off.

    An idle spinning ORT worker steals a core from whatever runs next (torch, another session) for tens
    of ms (README.md, Benchmarks), so every session svdcompress creates, for verification or timing, turns it off.

    Raises:
        ExportError: ONNX Runtime cannot load the model.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ExportError(f"ONNX Runtime cannot load {path}: {exc}") from exc


def _ort_runner(path: str | os.PathLike[str]) -> Any:
    sess = ort_session(path, threads=1)  # verification only: stay light on a shared machine

    def run(x: torch.Tensor) -> torch.Tensor:
        (y,) = sess.run([_OUTPUT], {_INPUT: x.detach().numpy().astype(np.float32)})
        return torch.from_numpy(np.asarray(y))

    return run


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    input_shape: tuple[int, ...],
    reference: nn.Module | None = None,
    sparse: bool = False,
    opset: int = 17,
    dtype: str = "fp32",
    force: bool = False,
    tolerance: float | None = None,
    dense_fp32_bytes: int | None = None,
    metadata: dict[str, str] | None = None,
) -> ExportResult:
    """Export ``model`` to ONNX with a dynamic batch axis, check it, and verify it in ONNX Runtime.

    With ``sparse=True`` every float initializer of at least :data:`MIN_CONVERTED_ELEMENTS` elements that
    is smaller in COO form moves to ``graph.sparse_initializer``: values plus 1-D linearised indices, which
    the ONNX checker requires to be int64 (8 bytes per non-zero; int32 would load in ONNX Runtime but is not
    valid ONNX). Initializers where COO would be larger stay dense. ONNX Runtime densifies sparse
    initializers when it creates the session, so this format buys a small file, not speed: it runs at the
    dense model's speed and memory.

    Args:
        model: Eval-mode masked dense or structurally pruned model.
        path: Output ``.onnx`` file.
        input_shape: One example's shape, without the batch dim, e.g. ``(1, 28, 28)``.
        reference: Model the artifact must reproduce; default ``model``.
        sparse: Store weights as sparse initializers (format ``"onnx-sparse"``).
        opset: ONNX opset to export.
        dtype: ``"fp32"``, or ``"fp16"`` to store large initializers as fp16 with a Cast to fp32 after each
            (half the weight bytes; inputs, outputs and arithmetic stay fp32).
        force: Overwrite an existing file.
        tolerance: Allowed ``max|diff| / max(1, max|ref|)``; default 1e-4 for fp32, 1e-2 for fp16.
        dense_fp32_bytes: Override the dense size the ratio is computed against (default: from reference).
        metadata: Key → string written to the model's ``metadata_props`` (e.g. how the threshold was chosen).

    Returns:
        The :class:`ExportResult`.

    Raises:
        ExportError: Unknown dtype, export/check failure, verification failure (no file is left behind),
            or an existing output without ``force``.
    """
    dt, tol, out, ref = _prepare(model, reference, path, dtype, tolerance, force)

    fmt = "onnx-sparse" if sparse else "onnx"
    with atomic_path(out) as tmp:
        proto = _torch_to_onnx(model, tuple(input_shape), opset, tmp)
        if dt == "fp16":
            _initializers_to_fp16(proto.graph)
        if sparse:
            _initializers_to_sparse(proto.graph)
        if metadata:
            onnx.helper.set_model_props(proto, {str(k): str(v) for k, v in metadata.items()})
        try:
            onnx.checker.check_model(proto)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"exported ONNX model fails onnx.checker: {exc}") from exc
        onnx.save_model(proto, str(tmp))
        diff = _verify(_ort_runner(tmp), ref, tuple(input_shape), tol, f"{fmt} model {out}")
        size = tmp.stat().st_size
    dense = _dense_fp32_bytes(ref) if dense_fp32_bytes is None else int(dense_fp32_bytes)
    return ExportResult(out, fmt, size, dense, dense / max(1, size), diff)
