"""The CSR bundle format: its constants, blob codecs, writer, reader and validation, in one place.

Container (``format = "svdcompress-csr"``, ``format_version = 3``, file extension ``.csr``): a ZIP archive
whose members are LZMA- or DEFLATE-compressed, whichever is smaller (formats 1 and 2: DEFLATE level 9), holding

- ``manifest.json``: everything but the numbers: format, producer, dtype, input/output shapes and value names,
  ``value_shapes``, the op graph ``nodes`` (``name``, ``op``, ``inputs``, ``outputs``, ``attrs``, ``params``:
  role → tensor or layer name), ``layers`` (per weight: ``shape``, ``dtype``, ``nnz``, ``density``, ``storage``
  csr|dense and its tensor names, ``quant`` for quantised values), ``tensors`` and ``blobs`` (where the
  numbers are), ``threshold``, ``provenance``;
- one ``<dtype>.npy`` member per dtype used (``float32.npy``, ``float16.npy``, ``uint8.npy``, ...): all tensors
  of that dtype concatenated into one 1-D array, because each zip member costs ~160 bytes of headers. The
  ``tensors`` table gives each tensor's ``dtype``, ``offset``, ``shape`` and ``encoding``. Blobs of multi-byte
  types are stored byte-shuffled (a ``uint8`` ``[itemsize, count]`` array: all first bytes, then all second
  bytes, ...), which lets the compressor squeeze the low-entropy bytes.

A CSR layer's sparsity pattern is one of (the writer keeps whichever compresses smallest):

- ``positions`` (encoding ``gaps``): the gaps between consecutive flat positions ``row · cols + col`` (the
  first from −1), each as ``k`` bytes 255 then ``gap − 255·k``: one byte per weight below 255, no row pointers;
- ``mask`` (encoding ``bitmap``): the row-major ``rows × cols`` mask, 8 weights per byte, for dense patterns;
- ``indptr`` + ``indices`` (encoding ``row_delta``, formats 1–2): row pointers and column indices delta-coded
  within each row, the first entry absolute.

Every member is a plain ``.npy`` readable with ``numpy.load(path, allow_pickle=False)``; nothing is pickled.

This module imports numpy only. :func:`read_bundle` validates everything the kernels rely on (they run
without bounds checks): sizes are capped from the manifest before anything is decompressed, CSR index
arrays are proven in range, values are finite, and the graph is checked by the executor's shape inference.
"""

from __future__ import annotations

import io
import json
import lzma
import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BundleError, InvalidInputError
from . import plan_record, quant as Q

__all__ = [
    "EXTENSION",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Bundle",
    "BundleWriter",
    "LayerWeight",
    "narrow_uint",
    "read_bundle",
]

FORMAT_NAME = "svdcompress-csr"
FORMAT_VERSION = 3
"""2 added quantised values (a layer's ``quant`` entry, :mod:`.quant`); 3 added LZMA members, ``bitmap`` sparsity
patterns and one byte per quantised code (``packing: byte``). Version-1 and -2 bundles still load."""
EXTENSION = ".csr"
"""The customary file extension of a bundle (any name is accepted)."""

_INDEX_ENCODINGS = ("row_delta", "bitmap", "gaps")
_BLOB_DTYPES = ("float32", "float16", "uint8", "uint16", "uint32", "uint64")
_MAX_MANIFEST_BYTES = 16 << 20
_MAX_JSON_DEPTH = 32
_MAX_TOTAL_BYTES = 8 << 30  # 8 GiB of decoded arrays: far beyond any SVDO model, far below a bomb's claims
_NPY_HEADER_SLACK = 4096  # an .npy header is at most a few hundred bytes
_LZMA_MAX_BYTES = 1 << 20
"""Members (and arrays compared for encodings) up to this size are tried with LZMA as well as DEFLATE; LZMA wins on
small, skewed data (codes, gaps, the manifest: 5-25%), not on large float blobs, and costs ~1 s per MB."""


def _packed_size(a: np.ndarray) -> int:
    """About the bytes ``a`` takes once byte-shuffled and compressed as the writer stores it (to choose encodings):
    LZMA up to :data:`_LZMA_MAX_BYTES`, a fast DEFLATE above (a choice among big arrays needs no exact bytes)."""
    raw = np.ascontiguousarray(a.view(np.uint8).reshape(a.size, a.itemsize).T) if a.itemsize > 1 else a
    data = raw.tobytes()
    return len(_lzma(data)) if len(data) <= _LZMA_MAX_BYTES else len(zlib.compress(data, 1))


def _lzma(data: bytes) -> bytes:
    """LZMA1 with the defaults :mod:`zipfile` writes (``ZIP_LZMA``), so sizes measured here are what a member takes."""
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA1}])


def _encode_gaps(positions: np.ndarray) -> np.ndarray:
    """Increasing flat positions (row · cols + col) as bytes of their gaps: gap = 255·k + t is k bytes 255, then t.

    The first gap counts from −1. Decoding is ``cumsum(bytes)[bytes != 255] − 1``: no row pointers needed.

    Example:
        >>> _encode_gaps(np.array([0, 3, 300])).tolist()
        [1, 3, 255, 42]
    """
    g = np.diff(positions.astype(np.int64), prepend=-1)
    k, t = np.divmod(g, 255)
    out = np.full(int(g.size + k.sum()), 255, np.uint8)
    out[np.cumsum(k + 1) - 1] = t
    return out


def narrow_uint(a: np.ndarray) -> np.ndarray:
    """``a`` (non-negative integers) in the narrowest unsigned type that holds its maximum.

    Example:
        >>> narrow_uint(np.array([0, 300])).dtype.name
        'uint16'
    """
    top = int(a.max()) if a.size else 0
    for t in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(t).max:
            return a.astype(t)
    return a.astype(np.uint64)


# ---------------------------------------------------------------------------------------------- writing


class BundleWriter:
    """Collect tensors into one concatenated 1-D array per dtype, then write the zip.

    Example:
        >>> w = BundleWriter()
        >>> info = w.add_weight("fc.weight", np.eye(4), np.float32)
        >>> info["storage"], info["nnz"]
        ('csr', 4)
    """

    def __init__(self, index_encoding: str = "auto") -> None:
        if index_encoding not in ("auto", *_INDEX_ENCODINGS):
            raise InvalidInputError(
                f"index_encoding must be 'auto' or one of {_INDEX_ENCODINGS}, got {index_encoding!r}",
                param="index_encoding",
            )
        self.index_encoding = index_encoding
        self._parts: dict[str, list[np.ndarray]] = {}
        self._sizes: dict[str, int] = {}
        self.tensors: dict[str, dict[str, Any]] = {}

    def add(self, name: str, arr: np.ndarray, encoding: str = "raw") -> str:
        """Store ``arr`` under ``name``; returns ``name``."""
        key = arr.dtype.name
        if key not in _BLOB_DTYPES:
            raise BundleError(f"tensor {name}: dtype {key} cannot be stored in a bundle")  # internal: writers
        self.tensors[name] = {
            "dtype": key,
            "offset": self._sizes.get(key, 0),
            "shape": list(arr.shape),
            "encoding": encoding,
        }
        self._parts.setdefault(key, []).append(arr.ravel())
        self._sizes[key] = self._sizes.get(key, 0) + arr.size
        return name

    def add_weight(
        self,
        name: str,
        w: np.ndarray,
        vdtype: type[np.floating[Any]],
        quant: Q.Quantized | None = None,
        quant_info: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Store ``w`` as CSR of its ``[out, rest]`` matrix if that is smaller than dense, else dense.

        With ``quant`` (the codes of ``w``'s nonzeros in row-major order, :func:`quant.choose`), the layer is
        stored as CSR with quantised values; ``quant_info`` (error, target, σ) goes into its ``quant`` entry.
        The sparsity pattern is stored as ``gaps`` between flat positions, a ``bitmap`` of the whole matrix, or
        ``row_delta`` column indices plus row pointers, whichever compresses smallest (or the writer's
        ``index_encoding``).
        Returns the layer's manifest entry.
        """
        mat = w.reshape(w.shape[0], -1)  # (out, in*kh*kw)
        rows, cols = np.nonzero(mat)  # row-major order: CSR order
        nnz = int(rows.size)
        counts = np.bincount(rows, minlength=mat.shape[0])
        indptr = narrow_uint(np.concatenate([[0], np.cumsum(counts)]))
        deltas = cols.astype(np.int64)
        deltas[1:] -= cols[:-1]
        starts = indptr[:-1][counts > 0].astype(np.int64)
        deltas[starts] = cols[starts]
        indices = narrow_uint(deltas)
        itemsize = np.dtype(vdtype).itemsize
        csr_bytes = nnz * (itemsize + indices.itemsize) + indptr.nbytes
        info: dict[str, Any] = {
            "shape": list(w.shape),
            "nnz": nnz,
            "density": float(f"{nnz / max(1, w.size):.4g}"),
            "dtype": np.dtype(vdtype).name,
        }
        if quant is not None and quant.count != nnz:
            raise BundleError(f"tensor {name}: {quant.count} quantised codes for {nnz} nonzeros")  # internal
        if quant is not None or csr_bytes < w.size * itemsize:
            info.update(storage="csr", matrix_shape=list(mat.shape))
            gaps = _encode_gaps(rows * mat.shape[1] + cols)

            def bitmap() -> np.ndarray:  # built only where it may be kept
                return np.packbits(mat.reshape(-1) != 0)

            encoding = self.index_encoding
            if encoding == "auto":  # whichever compresses smallest on its own
                sizes = {"gaps": _packed_size(gaps), "row_delta": _packed_size(indptr) + _packed_size(indices)}
                if -(-mat.size // 8) <= 8 * gaps.size:  # sparser than 1 in 64, a bitmap never wins: skip building it
                    sizes["bitmap"] = _packed_size(bitmap())
                encoding = min(sizes, key=lambda k: sizes[k])
            if encoding == "bitmap":
                info["mask"] = self.add(f"{name}.mask", bitmap(), "bitmap")
            elif encoding == "gaps":
                info["positions"] = self.add(f"{name}.positions", gaps, "gaps")
            else:
                info["indptr"] = self.add(f"{name}.indptr", indptr)
                info["indices"] = self.add(f"{name}.indices", indices, "row_delta")
            if quant is None:
                info["values"] = self.add(f"{name}.values", mat[rows, cols].astype(vdtype))
            else:
                info["dtype"] = "float32"  # what the runtime decodes to
                info["quant"] = {
                    "scheme": quant.scheme,
                    "bits": quant.bits,
                    "packing": "byte",
                    "codes": self.add(f"{name}.codes", quant.codes),
                    "table": self.add(f"{name}.table", quant.table),
                    **(quant_info or {}),
                }
        else:
            info.update(storage="dense", values=self.add(f"{name}.values", w.astype(vdtype)))
        return info

    def write(self, path: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
        """Write ``manifest`` (completed with the format keys and tensor tables) and the blobs to ``path``."""
        blobs: dict[str, dict[str, Any]] = {}
        arrays: dict[str, np.ndarray] = {}
        for key, parts in sorted(self._parts.items()):
            flat = np.concatenate(parts)
            shuffle = flat.itemsize > 1
            if shuffle:  # (count,) → (itemsize, count) bytes: high bytes (sign/exponent, zeros) deflate well
                flat = np.ascontiguousarray(flat.view(np.uint8).reshape(flat.size, flat.itemsize).T)
            blobs[key] = {"member": f"{key}.npy", "count": self._sizes[key], "byteshuffle": shuffle}
            arrays[f"{key}.npy"] = flat
        full = {
            **manifest,
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "tensors": self.tensors,
            "blobs": blobs,
        }

        def member(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
            # fixed timestamps: byte-for-byte reproducible bundles; LZMA where it is smaller, else DEFLATE level 9
            zi = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            if len(data) <= _LZMA_MAX_BYTES and len(_lzma(data)) < len(zlib.compress(data, 9)):
                zi.compress_type = zipfile.ZIP_LZMA
                zf.writestr(zi, data)
            else:
                zi.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(zi, data, compresslevel=9)

        with zipfile.ZipFile(path, "w") as zf:
            member(zf, "manifest.json", json.dumps(full, sort_keys=True, separators=(",", ":")).encode())
            for name, arr in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, arr, allow_pickle=False)
                member(zf, name, buf.getvalue())


# ---------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class LayerWeight:
    """One weight layer, decoded and validated: CSR of its ``[rows, cols]`` matrix plus its full shape.

    ``indptr`` is int64 ``(rows + 1,)``, monotone from 0 to nnz; ``indices`` int32 ``(nnz,)``, each in
    ``[0, cols)``, increasing within a row; ``values`` float32 ``(nnz,)``, finite.
    """

    shape: tuple[int, ...]
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64))

    @property
    def nnz(self) -> int:
        return int(self.values.size)

    def dense(self) -> np.ndarray:
        """The ``[rows, cols]`` float32 matrix."""
        mat = np.zeros((self.rows, self.cols), np.float32)
        mat[np.repeat(np.arange(self.rows), np.diff(self.indptr)), self.indices] = self.values
        return mat


@dataclass(frozen=True)
class Bundle:
    """A read and validated bundle: the manifest, its raw tensors and its decoded weight layers."""

    path: str
    manifest: dict[str, Any]
    tensors: dict[str, np.ndarray]
    layers: dict[str, LayerWeight]

    def param(self, name: str, role: str, node: str) -> np.ndarray:
        """A non-weight parameter (bias, BatchNorm scale, index, ...) as stored, validated to exist."""
        if not isinstance(name, str) or name not in self.tensors:
            raise BundleError(f"{self.path}: node {node}: {role} tensor {name!r} is not in the bundle")
        return self.tensors[name]

    def weight(self, name: str, node: str) -> LayerWeight:
        if not isinstance(name, str) or name not in self.layers:
            raise BundleError(f"{self.path}: node {node}: weight {name!r} is not a layer of the bundle")
        return self.layers[name]


def _depth(obj: Any, limit: int) -> int:
    """Nesting depth of a JSON value, stopping at ``limit`` (iterative: no recursion on hostile input)."""
    stack = [(obj, 1)]
    deepest = 0
    while stack:
        o, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)
    return deepest


def _int(v: Any, what: str, path: str, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise BundleError(f"{path}: {what} must be an integer >= {lo}, got {v!r}")
    return v


def _shape(v: Any, what: str, path: str) -> tuple[int, ...]:
    if not isinstance(v, list) or len(v) > 8:
        raise BundleError(f"{path}: {what} must be a list of at most 8 dimensions, got {v!r}")
    return tuple(_int(d, what, path) for d in v)


def _read_manifest(zf: zipfile.ZipFile, path: str) -> dict[str, Any]:
    try:
        zi = zf.getinfo("manifest.json")
    except KeyError:
        raise BundleError(f"{path}: not a CSR bundle (no manifest.json member)") from None
    if zi.file_size > _MAX_MANIFEST_BYTES:
        raise BundleError(f"{path}: manifest.json declares {zi.file_size:,} bytes (limit {_MAX_MANIFEST_BYTES:,})")
    raw = zf.read(zi)
    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"{path}: manifest.json is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: manifest.json must hold a JSON object, got {type(manifest).__name__}")
    if _depth(manifest, _MAX_JSON_DEPTH) > _MAX_JSON_DEPTH:
        raise BundleError(f"{path}: manifest.json is nested deeper than {_MAX_JSON_DEPTH} levels")
    if manifest.get("format") != FORMAT_NAME:
        raise BundleError(f"{path}: not a CSR bundle (format {manifest.get('format')!r}, expected {FORMAT_NAME!r})")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BundleError(f"{path}: format_version {version!r} is not a positive integer")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{path}: format_version {version} is newer than this runtime reads ({FORMAT_VERSION}); upgrade svdcompress"
        )
    for key, kind in (
        ("blobs", dict),
        ("tensors", dict),
        ("layers", dict),
        ("nodes", list),
        ("value_shapes", dict),
        ("input", str),
        ("output", str),
    ):
        if not isinstance(manifest.get(key), kind):
            raise BundleError(
                f"{path}: manifest field {key!r} must be a {kind.__name__}, got {type(manifest.get(key)).__name__}"
            )
    if plan_record.KEY in manifest:
        names = {n["name"] for n in manifest["nodes"] if isinstance(n, dict) and isinstance(n.get("name"), str)}
        plan_record.validate(manifest[plan_record.KEY], names, path)
    return manifest


def _read_blobs(zf: zipfile.ZipFile, manifest: dict[str, Any], path: str) -> dict[str, np.ndarray]:
    blobs: dict[str, np.ndarray] = {}
    total = 0
    for key, meta in manifest["blobs"].items():
        if key not in _BLOB_DTYPES or not isinstance(meta, dict):
            raise BundleError(f"{path}: blob {key!r}: unknown dtype (allowed: {', '.join(_BLOB_DTYPES)})")
        member = f"{key}.npy"
        if meta.get("member") != member:
            raise BundleError(f"{path}: blob {key}: member must be {member!r}, got {meta.get('member')!r}")
        count = _int(meta.get("count"), f"blob {key} count", path)
        dt = np.dtype(key)
        nbytes = count * dt.itemsize
        total += nbytes
        if total > _MAX_TOTAL_BYTES:
            raise BundleError(f"{path}: blobs declare {total:,} bytes, more than the {_MAX_TOTAL_BYTES:,} allowed")
        try:
            zi = zf.getinfo(member)
        except KeyError:
            raise BundleError(f"{path}: member {member} (blob {key}) is missing") from None
        if zi.file_size > nbytes + _NPY_HEADER_SLACK:  # caps decompression before it starts: no bombs
            raise BundleError(
                f"{path}: member {member} declares {zi.file_size:,} bytes, but the manifest's "
                f"{count:,} × {key} need only {nbytes:,}"
            )
        shuffle = meta.get("byteshuffle")
        if not isinstance(shuffle, bool) or shuffle != (dt.itemsize > 1):
            raise BundleError(f"{path}: blob {key}: byteshuffle must be {dt.itemsize > 1}")
        with zf.open(zi) as f:
            data = f.read(nbytes + _NPY_HEADER_SLACK + 1)
        want = (dt.itemsize, count) if shuffle else (count,)
        want_dtype = np.dtype(np.uint8) if shuffle else dt
        buf = io.BytesIO(data)
        try:  # the header first: its shape is checked before any array is allocated
            major, _ = np.lib.format.read_magic(buf)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, got_dtype = read_header(buf)
        except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
            raise BundleError(f"{path}: member {member} is not a valid .npy array ({exc})") from None
        if got_dtype != want_dtype or tuple(shape) != want or fortran:
            raise BundleError(
                f"{path}: member {member} holds {tuple(shape)} {got_dtype}, manifest says {want} {want_dtype}"
            )
        body = data[buf.tell() :]
        if len(body) != nbytes:
            raise BundleError(f"{path}: member {member} holds {len(body):,} bytes of data, manifest says {nbytes:,}")
        arr = np.frombuffer(body, dtype=want_dtype).reshape(want)
        if shuffle:  # (itemsize, count) byte planes → (count,) values
            arr = np.ascontiguousarray(arr.T).view(dt).reshape(-1)
        blobs[key] = arr
    return blobs


def _slice_tensors(manifest: dict[str, Any], blobs: dict[str, np.ndarray], path: str) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    for name, t in manifest["tensors"].items():
        if not isinstance(t, dict):
            raise BundleError(f"{path}: tensor {name}: entry must be an object")
        key = t.get("dtype")
        if key not in blobs:
            raise BundleError(f"{path}: tensor {name}: dtype {key!r} has no blob")
        shape = _shape(t.get("shape"), f"tensor {name} shape", path)
        offset = _int(t.get("offset"), f"tensor {name} offset", path)
        size = math.prod(shape)  # Python ints: np.prod would wrap around for hostile shapes
        blob = blobs[key]
        if offset + size > blob.size:
            raise BundleError(
                f"{path}: tensor {name} (offset {offset}, {size} elements) runs past the end of "
                f"its {key} blob ({blob.size} elements)"
            )
        if t.get("encoding", "raw") not in ("raw", *_INDEX_ENCODINGS):
            raise BundleError(f"{path}: tensor {name}: unknown encoding {t.get('encoding')!r}")
        arr = blob[offset : offset + size].reshape(shape)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise BundleError(f"{path}: tensor {name} holds NaN or infinite values")
        tensors[name] = arr
    return tensors


def _decode_layer(name: str, info: Any, tensors: dict[str, np.ndarray], path: str) -> LayerWeight:
    if not isinstance(info, dict):
        raise BundleError(f"{path}: layer {name}: entry must be an object")
    shape = _shape(info.get("shape"), f"layer {name} shape", path)
    if len(shape) < 2 or 0 in shape:
        raise BundleError(f"{path}: layer {name}: weight shape {list(shape)} must have >= 2 non-zero dimensions")
    rows, cols = shape[0], math.prod(shape[1:])

    def get(role: str) -> np.ndarray:
        tname = info.get(role)
        if not isinstance(tname, str) or tname not in tensors:
            raise BundleError(f"{path}: layer {name}: {role} tensor {tname!r} is missing")
        return tensors[tname]

    storage = info.get("storage")
    quant = info.get("quant")
    if quant is not None and storage != "csr":
        raise BundleError(f"{path}: layer {name}: only CSR-stored layers may be quantised (storage {storage!r})")
    values = get("values") if quant is None else np.zeros(0, np.float32)
    if values.dtype.kind != "f":
        raise BundleError(f"{path}: layer {name}: values must be floating point, got {values.dtype}")
    if storage == "dense":
        if values.size != rows * cols:
            raise BundleError(
                f"{path}: layer {name}: dense values hold {values.size} elements, shape "
                f"{list(shape)} needs {rows * cols}"
            )
        mat = values.astype(np.float32).reshape(rows, cols)
        r, c = np.nonzero(mat)
        indptr = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=rows))]).astype(np.int64)
        return LayerWeight(shape, indptr, c.astype(np.int32), mat[r, c])
    if storage != "csr":
        raise BundleError(f"{path}: layer {name}: storage must be 'csr' or 'dense', got {storage!r}")
    if "mask" in info:
        indptr, idx = _decode_bitmap(name, get("mask"), rows, cols, path)
    elif "positions" in info:
        indptr, idx = _decode_gaps(name, get("positions"), rows, cols, path)
    else:
        indptr, idx = _decode_row_delta(name, get("indptr"), get("indices"), rows, cols, path)
    nnz = int(idx.size)
    if quant is None and values.size != nnz:
        raise BundleError(f"{path}: layer {name}: {values.size} values for {nnz} stored positions")
    if quant is not None:
        values = _dequantize(name, quant, tensors, indptr, rows, nnz, path)
    return LayerWeight(shape, indptr, idx.astype(np.int32), values.astype(np.float32).reshape(-1))


def _decode_bitmap(name: str, mask: np.ndarray, rows: int, cols: int, path: str) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, column indices) of a ``bitmap`` pattern: the packed bits of the row-major ``rows × cols`` mask."""
    need = -(-rows * cols // 8)
    if mask.dtype != np.uint8 or mask.size != need:
        raise BundleError(
            f"{path}: layer {name}: mask must be {need} bytes (a bitmap of {rows} × {cols}), "
            f"got {mask.size} {mask.dtype}"
        )
    bits = np.unpackbits(mask.reshape(-1))
    if bits[rows * cols :].any():
        raise BundleError(f"{path}: layer {name}: mask has bits set past the {rows} × {cols} matrix")
    flat = np.flatnonzero(bits[: rows * cols])
    r, c = np.divmod(flat, cols)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=rows))]).astype(np.int64)
    return indptr, c


def _decode_gaps(name: str, gaps: np.ndarray, rows: int, cols: int, path: str) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, column indices) of a ``gaps`` pattern (:func:`_encode_gaps`), proven increasing and in range."""
    if gaps.dtype != np.uint8:
        raise BundleError(f"{path}: layer {name}: positions must be uint8 gap bytes, got {gaps.dtype}")
    g = gaps.reshape(-1)
    if g.size and g[-1] == 255:
        raise BundleError(f"{path}: layer {name}: positions end inside a gap (last byte 255)")
    pos = np.cumsum(g, dtype=np.int64)[g != 255] - 1
    if pos.size and (pos[0] < 0 or (np.diff(pos) <= 0).any() or pos[-1] >= rows * cols):
        raise BundleError(
            f"{path}: layer {name}: positions must be strictly increasing and below {rows} × {cols} = {rows * cols}"
        )
    r, c = np.divmod(pos, cols)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=rows))]).astype(np.int64)
    return indptr, c


def _decode_row_delta(
    name: str, indptr_raw: np.ndarray, deltas: np.ndarray, rows: int, cols: int, path: str
) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, column indices) from row pointers and ``row_delta`` indices, proven in range and increasing."""
    if indptr_raw.dtype.kind != "u" or deltas.dtype.kind != "u":
        raise BundleError(f"{path}: layer {name}: indptr and indices must be unsigned integers")
    indptr = indptr_raw.astype(np.int64).reshape(-1)
    nnz = deltas.size
    if indptr.size != rows + 1 or indptr[0] != 0 or indptr[-1] != nnz:
        raise BundleError(
            f"{path}: layer {name}: indptr must have {rows + 1} entries from 0 to nnz={nnz} "
            f"(got {indptr.size} entries ending at {indptr[-1] if indptr.size else None})"
        )
    if (np.diff(indptr) < 0).any():
        raise BundleError(f"{path}: layer {name}: indptr is not monotone")
    if deltas.size and int(deltas.max()) >= cols:  # any valid delta (or first column) is below cols
        raise BundleError(f"{path}: layer {name}: column indices must be below {cols}")
    d = deltas.astype(np.int64).reshape(-1)
    cs = np.cumsum(d)  # undo row_delta: restart the running sum at each row
    base = np.concatenate([[0], cs])[indptr[:-1]]
    idx = cs - np.repeat(base, np.diff(indptr))
    first = np.zeros(nnz, bool)
    first[indptr[:-1][np.diff(indptr) > 0]] = True
    if nnz and ((idx >= cols).any() or (idx < 0).any() or ((d <= 0) & ~first).any()):
        raise BundleError(
            f"{path}: layer {name}: column indices must be below {cols} and strictly increasing within each row"
        )
    return indptr, idx


def _dequantize(
    name: str, quant: Any, tensors: dict[str, np.ndarray], indptr: np.ndarray, rows: int, nnz: int, path: str
) -> np.ndarray:
    """A quantised layer's fp32 values, every field validated (bits, table size, codes in range, stream length)."""
    where = f"{path}: layer {name}: quant"
    if not isinstance(quant, dict):
        raise BundleError(f"{where} must be an object")
    scheme, bits = quant.get("scheme"), quant.get("bits")
    if scheme not in Q.SCHEMES:
        raise BundleError(f"{where} scheme must be one of {', '.join(Q.SCHEMES)}, got {scheme!r}")
    lo = 2 if scheme == "uniform" else 1
    if isinstance(bits, bool) or not isinstance(bits, int) or not lo <= bits <= Q.MAX_BITS:
        raise BundleError(f"{where} bits must be an integer from {lo} to {Q.MAX_BITS}, got {bits!r}")
    found: dict[str, np.ndarray] = {}
    for role in ("codes", "table"):
        tname = quant.get(role)
        if not isinstance(tname, str) or tname not in tensors:
            raise BundleError(f"{where} {role} tensor {tname!r} is missing")
        found[role] = tensors[tname].reshape(-1)
    codes, table = found["codes"], found["table"]
    packing = quant.get("packing", "bits")
    if packing not in ("bits", "byte"):
        raise BundleError(f"{where} packing must be 'bits' or 'byte', got {packing!r}")
    need = nnz if packing == "byte" else -(-nnz * bits // 8)
    if codes.dtype != np.uint8 or codes.size != need:
        what = "bytes, one per code" if packing == "byte" else f"packed bytes ({nnz} codes of {bits} bits)"
        raise BundleError(f"{where} codes must be {need} {what}, got {codes.size} {codes.dtype}")
    want = rows if scheme == "uniform" else 1 << bits
    if table.dtype != np.float32 or table.size != want:
        raise BundleError(f"{where} table must hold {want} float32 values, got {table.size} {table.dtype}")
    unpacked = codes.astype(np.int64) if packing == "byte" else Q.unpack_codes(codes, bits, nnz)
    if nnz and int(unpacked.max()) >= 1 << bits:
        raise BundleError(f"{where} codes must be below {1 << bits} for {bits} bits")
    if scheme == "uniform" and nnz and int(unpacked.max()) > 2 * ((1 << (bits - 1)) - 1):
        raise BundleError(f"{where} codes must be at most {2 * ((1 << (bits - 1)) - 1)} for {bits}-bit uniform")
    row_of = np.repeat(np.arange(rows), np.diff(indptr))
    return Q.decode(scheme, bits, unpacked, table, row_of)


def read_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Read and validate a bundle.

    Args:
        path: The bundle file (``.csr`` by custom).

    Returns:
        The :class:`Bundle`: manifest, stored tensors, decoded weight layers.

    Raises:
        BundleError: The file is missing, not a bundle, of a newer format version, or fails validation;
            the message names the file and the tensor.
    """
    p = str(path)
    try:
        with zipfile.ZipFile(path) as zf:
            for zi in zf.infolist():
                if ".." in zi.filename or zi.filename.startswith(("/", "\\")):
                    raise BundleError(f"{p}: member name {zi.filename!r} is not allowed")
            manifest = _read_manifest(zf, p)
            blobs = _read_blobs(zf, manifest, p)
    except BundleError:
        raise
    except FileNotFoundError:
        raise BundleError(f"{p}: no such file") from None
    except (
        OSError,
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        NotImplementedError,
        zlib.error,
        lzma.LZMAError,
        RuntimeError,
    ) as exc:  # RuntimeError: zipfile's 'encrypted member' and similar
        raise BundleError(f"{p}: cannot read CSR bundle ({type(exc).__name__}: {exc})") from None
    tensors = _slice_tensors(manifest, blobs, p)
    layers = {name: _decode_layer(name, info, tensors, p) for name, info in manifest["layers"].items()}
    return Bundle(p, manifest, tensors, layers)
