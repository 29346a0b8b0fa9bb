"""Run a CSR bundle (see :mod:`svdcompress.export.csr`) on CPU without the model's source code.

The runtime reads the manifest's op list and compiles it into a flat list of closures; it imports only
numpy, torch and :mod:`svdcompress.errors` (no model code, no torch.fx, no exporter).

Kernels, as measured on this project's 2-core machine (DESIGN.md §5 and a per-layer check):

- sparse Linear: torch CSR with int32 indices applied *feature-major*, ``torch.addmm(bias_col, W_csr, h)``
  with ``h`` a contiguous ``[features, batch]`` matrix (``torch.addmv`` at batch 1): 4-8× faster than dense
  ``F.linear`` at 5% density; ``F.linear(x, W_csr)`` and ``x @ W_csrᵀ`` are much slower. Activations stay
  feature-major between consecutive Linear layers, so a chain of them pays for one transpose in and one out.
- dense Linear above :data:`AUTO_DENSITY_CUTOFF`: CSR stopped paying off between 15% and 30% density on
  300×784 and 500×800 layers (batch 1 and 64).
- Conv2d: always dense ``F.conv2d``; sparse convolution via im2col lost to dense in every measurement.

Everything runs under ``torch.inference_mode()``, where ``F.linear`` with a CSR weight would fail but
``addmm``/``addmv`` work.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ExportError

__all__ = ["AUTO_DENSITY_CUTOFF", "KERNELS", "CSRModel", "load", "read_bundle"]

# Duplicated from svdcompress.export.csr on purpose: the runtime must not import the exporter.
_FORMAT_NAME = "svdcompress-csr"
_MAX_FORMAT_VERSION = 1

KERNELS = ("auto", "sparse", "dense")
AUTO_DENSITY_CUTOFF = 0.2
"""With ``kernel="auto"``, Linear layers at or below this weight density run as CSR, denser ones dense."""

_Values = list[torch.Tensor]
_Step = Callable[[_Values], None]
_FM, _BM = "fm", "bm"  # feature-major [features, batch] (2-D only) / batch-major [batch, ...]


def read_bundle(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a bundle's manifest and its tensors (as stored: CSR indices still row-delta coded).

    Args:
        path: The ``.svdz`` file.

    Returns:
        ``(manifest, tensors)`` with tensors keyed by the manifest's tensor names.

    Raises:
        ExportError: The file is not a readable bundle of a supported format version.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read("manifest.json"))
            if manifest.get("format") != _FORMAT_NAME:
                raise ExportError(f"{path}: not a CSR bundle (format {manifest.get('format')!r})")
            version = manifest.get("format_version")
            if not isinstance(version, int) or version > _MAX_FORMAT_VERSION:
                raise ExportError(f"{path}: format_version {version!r} is newer than this runtime reads "
                                  f"({_MAX_FORMAT_VERSION}); upgrade svdcompress")
            blobs: dict[str, np.ndarray] = {}
            for key, meta in manifest["blobs"].items():
                with zf.open(meta["member"]) as f:
                    arr = np.lib.format.read_array(f, allow_pickle=False)
                if meta["byteshuffle"]:  # (itemsize, count) byte planes → (count,) values
                    arr = np.ascontiguousarray(arr.T).view(np.dtype(key)).reshape(-1)
                if arr.dtype != np.dtype(key) or arr.size != meta["count"]:
                    raise ExportError(f"{path}: blob {meta['member']} holds {arr.size} {arr.dtype}, "
                                      f"manifest says {meta['count']} {key}")
                blobs[key] = arr
            tensors = {}
            for name, t in manifest["tensors"].items():
                size = int(np.prod(t["shape"], dtype=np.int64))
                offset = int(t["offset"])
                flat = blobs[t["dtype"]][offset:offset + size]
                if offset < 0 or flat.size != size:
                    raise ExportError(f"{path}: tensor {name} runs past the end of its blob")
                tensors[name] = flat.reshape(t["shape"])
    except ExportError:
        raise
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as exc:
        raise ExportError(f"cannot read CSR bundle {path}: {type(exc).__name__}: {exc}") from exc
    return manifest, tensors


def _csr_arrays(info: dict[str, Any], tensors: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr, column indices, values) of a layer's ``[out, rest]`` matrix, whatever its storage."""
    if info["storage"] == "dense":
        mat = tensors[info["values"]].astype(np.float32).reshape(info["shape"][0], -1)
        rows, cols = np.nonzero(mat)
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=mat.shape[0]))])
        return indptr, cols.astype(np.int64), mat[rows, cols]
    indptr = tensors[info["indptr"]].astype(np.int64)
    cs = np.cumsum(tensors[info["indices"]], dtype=np.int64)  # undo row_delta: restart the sum at each row
    base = np.concatenate([[0], cs])[indptr[:-1]]
    cols = cs - np.repeat(base, np.diff(indptr))
    return indptr, cols, tensors[info["values"]].astype(np.float32)


def _dense_weight(info: dict[str, Any], tensors: dict[str, np.ndarray]) -> torch.Tensor:
    if info["storage"] == "dense":
        return torch.from_numpy(tensors[info["values"]].astype(np.float32).reshape(info["shape"]))
    indptr, cols, vals = _csr_arrays(info, tensors)
    mat = np.zeros(info["matrix_shape"], np.float32)  # (out, in*kh*kw)
    mat[np.repeat(np.arange(mat.shape[0]), np.diff(indptr)), cols] = vals
    return torch.from_numpy(mat.reshape(info["shape"]))


def _csr_weight(info: dict[str, Any], tensors: dict[str, np.ndarray]) -> torch.Tensor:
    indptr, cols, vals = _csr_arrays(info, tensors)
    # int32 indices: the fast path of torch's CSR addmm (DESIGN.md §5); int64 only past 2^31 entries.
    itype = torch.int32 if vals.size < 2**31 - 1 else torch.int64
    with warnings.catch_warnings():
        # torch warns once per process that CSR support is "beta"; it is what we measured and rely on.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state", category=UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(indptr).to(itype), torch.from_numpy(cols).to(itype), torch.from_numpy(vals),
            size=(len(indptr) - 1, int(np.prod(info["shape"][1:]))), dtype=torch.float32,
            check_invariants=True,  # a corrupt file must raise here, not crash inside a kernel
        )


def _elementwise(op: str, attrs: dict[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    table: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "relu": torch.relu, "relu6": F.relu6, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "silu": F.silu,
        "leaky_relu": lambda x: F.leaky_relu(x, float(attrs.get("negative_slope", 0.01))),
        "elu": lambda x: F.elu(x, float(attrs.get("alpha", 1.0))),
        "gelu": lambda x: F.gelu(x, approximate=str(attrs.get("approximate", "none"))),
        "hardtanh": lambda x: F.hardtanh(x, float(attrs.get("min_val", -1.0)), float(attrs.get("max_val", 1.0))),
    }
    return table[op]


class _Compiler:
    """Turn the manifest's op list into steps over a list of value slots, tracking each value's layout."""

    def __init__(self, manifest: dict[str, Any], tensors: dict[str, np.ndarray], kernel: str) -> None:
        self.m, self.t, self.kernel = manifest, tensors, kernel
        self.steps: list[_Step] = []
        self.slot: dict[str, int] = {manifest["input"]: 0}
        self.layout: dict[str, str] = {manifest["input"]: _BM}
        self.converted: dict[tuple[str, str], int] = {}
        self.nslots = 1
        self.layer_kernels: dict[str, str] = {}
        self.nnz: dict[str, int] = {}
        self.readers: dict[str, list[str]] = {}
        for n in manifest["nodes"]:
            for i in n["inputs"]:
                self.readers.setdefault(i, []).append(n["op"])

    def _new(self, name: str, layout: str) -> int:
        self.slot[name], self.layout[name] = self.nslots, layout
        self.nslots += 1
        return self.nslots - 1

    def _get(self, name: str, want: str) -> int:
        """Slot holding ``name`` in layout ``want``, adding one transpose step the first time it is needed."""
        if self.layout[name] == want:
            return self.slot[name]
        if (name, want) not in self.converted:
            i, o = self.slot[name], self.nslots
            self.nslots += 1
            if want == _FM:
                def step(v: _Values) -> None:
                    v[o] = v[i].t().contiguous()  # (N, F) → (F, N): CSR addmm needs a contiguous operand
            else:
                def step(v: _Values) -> None:
                    v[o] = v[i].t()  # (F, N) → (N, F) view; consumers accept strided input
            self.steps.append(step)
            self.converted[(name, want)] = o
        return self.converted[(name, want)]

    def _param(self, name: str) -> torch.Tensor:
        return torch.from_numpy(self.t[name].astype(np.float32))

    def compile(self) -> int:
        for n in self.m["nodes"]:
            op = n["op"]
            handler = getattr(self, f"_op_{op}", None)
            if handler is not None:
                handler(n)
            elif op in ("relu", "relu6", "sigmoid", "tanh", "silu", "leaky_relu", "elu", "gelu", "hardtanh"):
                self._op_elementwise(n)
            else:
                raise ExportError(f"node {n['name']}: op {op!r} is unknown to this runtime; upgrade svdcompress")
        return self._get(self.m["output"], _BM)

    # -- ops
    def _bias(self, n: dict[str, Any], rows: int) -> torch.Tensor:
        name = n["params"].get("bias")
        return self._param(name) if name else torch.zeros(rows)  # (rows,)

    def _op_linear(self, n: dict[str, Any]) -> None:
        info = self.m["layers"][n["params"]["weight"]]
        out_f = int(info["shape"][0])
        self.nnz[n["name"]] = int(info["nnz"])
        use_csr = self.kernel == "sparse" or (self.kernel == "auto" and info["density"] <= AUTO_DENSITY_CUTOFF)
        self.layer_kernels[n["name"]] = "csr" if use_csr else "dense"
        b = self._bias(n, out_f)  # (out,)
        bcol = b.reshape(-1, 1).contiguous()  # (out, 1): broadcasts over the batch columns
        x = n["inputs"][0]
        if use_csr:
            w = _csr_weight(info, self.t)  # CSR (out, in)
            i = self._get(x, _FM)
            o = self._new(n["outputs"][0], _FM)

            def step(v: _Values) -> None:
                h = v[i]  # (in, N)
                if h.shape[1] == 1:
                    v[o] = torch.addmv(b, w, h.reshape(-1)).reshape(-1, 1)  # (out, 1)
                else:
                    v[o] = torch.addmm(bcol, w, h if h.is_contiguous() else h.contiguous())  # (out, N)
        else:
            wd = _dense_weight(info, self.t)  # (out, in)
            if self.layout[x] == _FM:  # stay feature-major: same GEMM, no transpose
                i = self.slot[x]
                o = self._new(n["outputs"][0], _FM)

                def step(v: _Values) -> None:
                    v[o] = torch.addmm(bcol, wd, v[i])  # (out, N)
            else:
                i = self.slot[x]
                o = self._new(n["outputs"][0], _BM)

                def step(v: _Values) -> None:
                    v[o] = F.linear(v[i], wd, b)  # (N, out)
        self.steps.append(step)

    def _op_conv2d(self, n: dict[str, Any]) -> None:
        info = self.m["layers"][n["params"]["weight"]]
        self.nnz[n["name"]] = int(info["nnz"])
        self.layer_kernels[n["name"]] = "dense"  # sparse conv via im2col loses to dense (DESIGN.md §5)
        w = _dense_weight(info, self.t)  # (out, in/groups, kh, kw)
        b = self._param(n["params"]["bias"]) if "bias" in n["params"] else None
        a = n["attrs"]
        stride, padding, dilation, groups = a["stride"], a["padding"], a["dilation"], int(a["groups"])
        pad: Any = padding if isinstance(padding, str) else tuple(padding)
        i = self._get(n["inputs"][0], _BM)
        o = self._new(n["outputs"][0], _BM)

        def step(v: _Values) -> None:
            v[o] = F.conv2d(v[i], w, b, tuple(stride), pad, tuple(dilation), groups)  # (N, out, H', W')
        self.steps.append(step)

    def _op_batchnorm(self, n: dict[str, Any]) -> None:
        x = n["inputs"][0]
        scale, shift = self._param(n["params"]["scale"]), self._param(n["params"]["shift"])  # (C,)
        ndim = len(self.m["value_shapes"][x]) + 1
        shape = (-1, 1) if self.layout[x] == _FM else (1, -1) + (1,) * (ndim - 2)
        s, t = scale.reshape(shape), shift.reshape(shape)
        i = self.slot[x]
        o = self._new(n["outputs"][0], self.layout[x])

        def step(v: _Values) -> None:
            v[o] = torch.addcmul(t, v[i], s)  # x * s + t, one kernel
        self.steps.append(step)

    def _op_elementwise(self, n: dict[str, Any]) -> None:
        fn = _elementwise(n["op"], n["attrs"])
        x = n["inputs"][0]
        i = self.slot[x]
        o = self._new(n["outputs"][0], self.layout[x])  # layout-agnostic: keep whatever the input has

        def step(v: _Values) -> None:
            v[o] = fn(v[i])
        self.steps.append(step)

    def _op_max_pool2d(self, n: dict[str, Any]) -> None:
        a = n["attrs"]
        i = self._get(n["inputs"][0], _BM)
        o = self._new(n["outputs"][0], _BM)
        k, s, p, d, c = tuple(a["kernel_size"]), tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]), \
            bool(a["ceil_mode"])

        def step(v: _Values) -> None:
            v[o] = F.max_pool2d(v[i], k, s, p, d, ceil_mode=c)
        self.steps.append(step)

    def _op_avg_pool2d(self, n: dict[str, Any]) -> None:
        a = n["attrs"]
        i = self._get(n["inputs"][0], _BM)
        o = self._new(n["outputs"][0], _BM)
        k, s, p = tuple(a["kernel_size"]), tuple(a["stride"]), tuple(a["padding"])
        c, cip, div = bool(a["ceil_mode"]), bool(a["count_include_pad"]), a["divisor_override"]

        def step(v: _Values) -> None:
            v[o] = F.avg_pool2d(v[i], k, s, p, c, cip, div)
        self.steps.append(step)

    def _op_adaptive_avg_pool2d(self, n: dict[str, Any]) -> None:
        size = tuple(n["attrs"]["output_size"])
        i = self._get(n["inputs"][0], _BM)
        o = self._new(n["outputs"][0], _BM)

        def step(v: _Values) -> None:
            v[o] = F.adaptive_avg_pool2d(v[i], size)
        self.steps.append(step)

    def _op_reshape(self, n: dict[str, Any]) -> None:
        x, out = n["inputs"][0], n["outputs"][0]
        shape = tuple(int(d) for d in n["attrs"]["shape"])
        if self.layout[x] == _FM and list(shape) == self.m["value_shapes"][x]:
            self.slot[out], self.layout[out] = self.slot[x], _FM  # flattening (N, F) is a no-op
            return
        i = self._get(x, _BM)
        o = self._new(out, _BM)

        def step(v: _Values) -> None:
            v[o] = v[i].reshape(v[i].shape[0], *shape)
        self.steps.append(step)

    def _op_add(self, n: dict[str, Any]) -> None:
        a, b = n["inputs"]
        layout = self.layout[a] if self.layout[a] == self.layout[b] else _BM
        i, j = self._get(a, layout), self._get(b, layout)
        o = self._new(n["outputs"][0], layout)

        def step(v: _Values) -> None:
            v[o] = v[i] + v[j]
        self.steps.append(step)

    def _op_cat(self, n: dict[str, Any]) -> None:
        fm = all(self.layout[x] == _FM for x in n["inputs"])
        layout, dim = (_FM, 0) if fm else (_BM, 1)  # features are dim 0 when feature-major
        slots = [self._get(x, layout) for x in n["inputs"]]
        o = self._new(n["outputs"][0], layout)

        def step(v: _Values) -> None:
            v[o] = torch.cat([v[s] for s in slots], dim)
        self.steps.append(step)

    def _op_gather(self, n: dict[str, Any]) -> None:
        idx = torch.from_numpy(self.t[n["params"]["index"]].astype(np.int64))  # (kept,)
        out = n["outputs"][0]
        i = self._get(n["inputs"][0], _BM)
        # Gathering copies anyway, so emit feature-major for Linear readers and save their transpose.
        if "linear" in self.readers.get(out, []):
            o = self._new(out, _FM)

            def step(v: _Values) -> None:
                x = v[i]
                v[o] = torch.index_select(x.reshape(x.shape[0], -1).t(), 0, idx)  # (kept, N)
        else:
            o = self._new(out, _BM)

            def step(v: _Values) -> None:
                x = v[i]
                v[o] = torch.index_select(x.reshape(x.shape[0], -1), 1, idx)  # (N, kept)
        self.steps.append(step)


class CSRModel:
    """A loaded CSR bundle: call it on a batch ``(N, *input_shape)`` to get ``(N, *output_shape)``.

    Attributes:
        manifest: The bundle's manifest, as read.
        layer_kernels: Layer (node) name → ``"csr"`` or ``"dense"``: the kernel each weight layer runs.
        nnz: Layer name → number of non-zero weights.
        input_shape: One example's shape, without the batch dim.
        output_shape: One output's shape, without the batch dim.
    """

    def __init__(self, manifest: dict[str, Any], tensors: dict[str, np.ndarray], kernel: str = "auto") -> None:
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; allowed: {', '.join(KERNELS)}")
        self.manifest = manifest
        self.input_shape = tuple(int(d) for d in manifest["input_shape"])
        self.output_shape = tuple(int(d) for d in manifest["output_shape"])
        comp = _Compiler(manifest, tensors, kernel)
        self._out = comp.compile()
        self._steps = comp.steps
        self._nslots = comp.nslots
        self.layer_kernels = comp.layer_kernels
        self.nnz = comp.nnz

    def __call__(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Run the model on CPU in fp32.

        Args:
            x: ``(N, *input_shape)`` array or tensor; converted to fp32.

        Returns:
            ``(N, *output_shape)`` fp32 tensor (an ordinary tensor, usable outside inference mode).

        Raises:
            ValueError: ``x`` does not have shape ``(N, *input_shape)``.
        """
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) if isinstance(x, np.ndarray) else x
        t = t.detach().to(device="cpu", dtype=torch.float32)
        if tuple(t.shape[1:]) != self.input_shape or t.dim() != len(self.input_shape) + 1:
            raise ValueError(f"expected input of shape (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {tuple(t.shape)}")
        v: _Values = [t] * self._nslots
        with torch.inference_mode():
            for step in self._steps:
                step(v)
        out = v[self._out]
        del v
        # clone() outside inference mode: callers may modify or differentiate through the result.
        return out.clone(memory_format=torch.contiguous_format)

    def __repr__(self) -> str:
        kinds = ", ".join(f"{k}={v}" for k, v in self.layer_kernels.items())
        return f"CSRModel(input_shape={self.input_shape}, output_shape={self.output_shape}, kernels: {kinds})"


def load(path: str | os.PathLike[str], *, threads: int | None = None, kernel: str = "auto") -> CSRModel:
    """Load a CSR bundle written by :func:`svdcompress.export.export_csr`.

    Args:
        path: The bundle file.
        threads: If given, ``torch.set_num_threads(threads)``; note this is process-wide.
        kernel: ``"auto"`` (CSR for Linear layers at density ≤ :data:`AUTO_DENSITY_CUTOFF`, dense above),
            ``"sparse"`` (CSR for every Linear) or ``"dense"`` (no CSR). Convolutions always run dense.

    Returns:
        A callable :class:`CSRModel`.

    Raises:
        ExportError: The file is not a readable bundle, or uses an op this runtime does not know.
        ValueError: Unknown ``kernel`` or a non-positive ``threads``.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; allowed: {', '.join(KERNELS)}")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    manifest, tensors = read_bundle(path)
    try:
        return CSRModel(manifest, tensors, kernel)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:  # malformed manifest or arrays
        raise ExportError(f"cannot build a model from CSR bundle {path}: {type(exc).__name__}: {exc}") from exc
