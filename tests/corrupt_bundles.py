"""Generate a corpus of corrupted CSR bundles from a valid one (used by ``test_bundle_corpus.py``; not a test module).

Every case is built by code from a valid bundle into a directory the caller chooses (a pytest ``tmp_path``),
never into the working tree. :data:`CASES` maps a case id to a function ``make(src, dst)`` that reads the
valid bundle ``src`` and writes the corrupted one to ``dst``. Zip files are written by a small writer of our
own (:func:`write_zip`), so that a case can lie in the zip headers (sizes, flags, compression method) where
:mod:`zipfile` would refuse to.

The valid bundle must hold (see ``test_bundle_corpus.valid_model``): a conv2d layer stored as CSR followed by
relu and max_pool2d, a grouped conv2d, a reshape, a gather, a CSR linear layer, and a dense-stored linear layer.
The cases in :data:`SEQ_CASES` are built from a second valid bundle, a small attention block
(``test_bundle_corpus.valid_seq_model``: layer_norm, linear over time, reshape, transpose, index, matmul, mul by a
scalar, softmax over the last axis, gelu, constant, expand, cat, add, reduce and an LSTM).
This module imports numpy only.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from svdcompress.runtime.bundle import FORMAT_VERSION

__all__ = ["CASES", "SEQ_CASES", "Bundle", "write_zip"]

_DOS_DATE = (1 << 5) | 1  # 1980-01-01
_BOMB_BYTES = 1 << 30  # 1 GiB of zeros, deflated to about 1 MB


# ---------------------------------------------------------------------------------------------- zip writer


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def write_zip(path: Path, members: list[dict[str, Any]]) -> None:
    """Write a zip archive member by member, headers as given.

    Each member: ``name``; either ``data`` (bytes, deflated here) or ``raw`` (already deflated bytes) with
    ``crc`` and ``size``; optional ``method`` (8 = deflate, 0 = stored), ``flags``, ``declared_size`` (the
    uncompressed size written into the headers, default the real one).
    """
    out = io.BytesIO()
    central = []
    for m in members:
        name = m["name"].encode()
        method = m.get("method", zipfile.ZIP_DEFLATED)
        if "raw" in m:
            comp, crc, size = m["raw"], m["crc"], m["size"]
        else:
            data = m["data"]
            comp = _deflate(data) if method == zipfile.ZIP_DEFLATED else data
            crc, size = zlib.crc32(data), len(data)
        size = m.get("declared_size", size)
        flags = m.get("flags", 0)
        offset = out.tell()
        out.write(
            struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, flags, method, 0, _DOS_DATE, crc, len(comp), size, len(name), 0)
        )
        out.write(name)
        out.write(comp)
        central.append(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                20,
                20,
                flags,
                method,
                0,
                _DOS_DATE,
                crc,
                len(comp),
                size,
                len(name),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
            + name
        )
    cd_offset = out.tell()
    cd = b"".join(central)
    out.write(cd)
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), len(cd), cd_offset, 0))
    path.write_bytes(out.getvalue())


# ---------------------------------------------------------------------------------------------- bundle editing


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


class Bundle:
    """A valid bundle taken apart: the manifest (a dict to edit) and each blob decoded to a 1-D array."""

    def __init__(self, src: Path) -> None:
        with zipfile.ZipFile(src) as zf:
            self.manifest: dict[str, Any] = json.loads(zf.read("manifest.json"))
            self.blobs: dict[str, np.ndarray] = {}
            for key, meta in self.manifest["blobs"].items():
                arr = np.lib.format.read_array(io.BytesIO(zf.read(meta["member"])), allow_pickle=False)
                if meta["byteshuffle"]:
                    arr = np.ascontiguousarray(arr.T).view(np.dtype(key)).reshape(-1)
                self.blobs[key] = arr.copy()
        self.extra: list[dict[str, Any]] = []  # members appended after the blobs
        self.drop: set[str] = set()  # member names to leave out

    # -- lookups
    def nodes(self, op: str) -> list[dict[str, Any]]:
        return [n for n in self.manifest["nodes"] if n["op"] == op]

    def layer(self, op: str, storage: str = "csr") -> dict[str, Any]:
        """The manifest entry of the first ``op`` layer stored as ``storage``."""
        for n in self.nodes(op):
            info = self.manifest["layers"][n["params"]["weight"]]
            if info["storage"] == storage:
                return info
        raise LookupError(f"the valid bundle has no {storage} {op} layer")

    def tensor(self, name: str) -> np.ndarray:
        """A writable view of tensor ``name`` in its blob."""
        t = self.manifest["tensors"][name]
        size = int(np.prod(t["shape"], dtype=np.int64))
        return self.blobs[t["dtype"]][t["offset"] : t["offset"] + size]

    def decoded_indices(self, info: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """(indptr, absolute column indices) of a CSR layer."""
        indptr = self.tensor(info["indptr"]).astype(np.int64)
        d = self.tensor(info["indices"]).astype(np.int64)
        idx = d.copy()
        for r in range(indptr.size - 1):
            idx[indptr[r] : indptr[r + 1]] = np.cumsum(d[indptr[r] : indptr[r + 1]])
        return indptr, idx

    def set_tensor(self, name: str, arr: np.ndarray, encoding: str | None = None) -> None:
        """Store ``arr`` as tensor ``name`` at the end of the blob of its dtype (created if needed)."""
        key = arr.dtype.name
        blob = self.blobs.get(key, np.zeros(0, arr.dtype))
        t = self.manifest["tensors"][name]
        t.update(dtype=key, offset=int(blob.size), shape=list(arr.shape))
        if encoding is not None:
            t["encoding"] = encoding
        self.blobs[key] = np.concatenate([blob, arr.ravel()])
        self.manifest["blobs"][key] = {
            "member": f"{key}.npy",
            "count": int(self.blobs[key].size),
            "byteshuffle": arr.dtype.itemsize > 1,
        }

    # -- writing
    def members(self) -> list[dict[str, Any]]:
        out = [{"name": "manifest.json", "data": json.dumps(self.manifest).encode()}]
        for key, arr in self.blobs.items():
            if arr.dtype.itemsize > 1:
                arr = np.ascontiguousarray(arr.view(np.uint8).reshape(arr.size, arr.dtype.itemsize).T)
            out.append({"name": f"{key}.npy", "data": _npy(arr)})
        return [m for m in out if m["name"] not in self.drop] + self.extra

    def write(self, dst: Path) -> None:
        write_zip(dst, self.members())


Make = Callable[[Path, Path], "str | None"]
CASES: dict[str, Make] = {}
"""Case id → ``make(src, dst)``: writes the case and returns a name the error message must contain (the
offending tensor, layer, node, value or member), or None where the whole file is at fault."""

Expect = Callable[[Bundle], str] | str | None


def case(name: str, expect: Expect = None) -> Callable[[Callable[[Bundle], None]], Callable[[Bundle], None]]:
    """Register ``edit(bundle)`` as case ``name``: load the valid bundle, edit it, write it.

    ``expect``: the name the message must contain, or a function of the unedited bundle returning it.
    """

    def register(edit: Callable[[Bundle], None]) -> Callable[[Bundle], None]:
        def make(src: Path, dst: Path) -> str | None:
            b = Bundle(src)
            want = expect(b) if callable(expect) else expect
            edit(b)
            b.write(dst)
            return want

        CASES[name] = make
        return edit

    return register


def raw_case(
    name: str, expect: str | None = None
) -> Callable[[Callable[[Path, Path], None]], Callable[[Path, Path], None]]:
    """Register ``make(src, dst)`` as case ``name`` (cases that write bytes themselves)."""

    def register(make: Callable[[Path, Path], None]) -> Callable[[Path, Path], None]:
        def run(src: Path, dst: Path) -> str | None:
            make(src, dst)
            return expect

        CASES[name] = run
        return make

    return register


def _layer(op: str, role: str | None = None, storage: str = "csr") -> Callable[[Bundle], str]:
    """The weight name of the first ``op`` layer (or the name of its ``role`` tensor)."""

    def name(b: Bundle) -> str:
        for n in b.nodes(op):
            if b.manifest["layers"][n["params"]["weight"]]["storage"] == storage:
                return str(n["params"]["weight"]) if role is None else str(b.layer(op, storage)[role])
        raise LookupError(op)

    return name


def _node(op: str, i: int = 0, role: str | None = None) -> Callable[[Bundle], str]:
    """The name of the ``i``-th ``op`` node (or of its ``role`` parameter tensor)."""
    return lambda b: str(b.nodes(op)[i]["name"] if role is None else b.nodes(op)[i]["params"][role])


def _conv(b: Bundle, i: int = 0) -> dict[str, Any]:
    return b.nodes("conv2d")[i]


# ---------------------------------------------------------------------------------------------- offsets


@case("offset-past-end", _layer("linear", "values"))
def _(b: Bundle) -> None:
    t = b.manifest["tensors"][b.layer("linear")["values"]]
    t["offset"] = b.manifest["blobs"]["float32"]["count"] - 1  # the tensor runs past the blob's end


@case("offset-huge", _layer("conv2d", "indices"))
def _(b: Bundle) -> None:
    b.manifest["tensors"][b.layer("conv2d")["indices"]]["offset"] = 2**62


@case("offset-negative", _layer("conv2d", "values"))
def _(b: Bundle) -> None:
    b.manifest["tensors"][b.layer("conv2d")["values"]]["offset"] = -3


@case("offset-float", _layer("linear", "indptr"))
def _(b: Bundle) -> None:
    b.manifest["tensors"][b.layer("linear")["indptr"]]["offset"] = 1.5


@case("blob-count-huge")
def _(b: Bundle) -> None:
    b.manifest["blobs"]["float32"]["count"] = 2**40  # 4 TB declared: refused before anything is read


@case("blob-count-short", "float32.npy")
def _(b: Bundle) -> None:
    b.manifest["blobs"]["float32"]["count"] -= 1  # the member holds one more value than declared


# ---------------------------------------------------------------------------------------------- column indices


@case("indices-ge-cols", _layer("conv2d"))
def _(b: Bundle) -> None:
    info = b.layer("conv2d")
    indptr, _ = b.decoded_indices(info)
    cols = int(np.prod(info["shape"][1:]))
    r = int(np.flatnonzero(np.diff(indptr))[-1])  # the last non-empty row
    last = int(indptr[r + 1]) - 1
    b.tensor(info["indices"])[last] += cols  # its last column moves past the end


@case("indices-first-ge-cols", _layer("linear"))
def _(b: Bundle) -> None:
    info = b.layer("linear")
    indptr, _ = b.decoded_indices(info)
    r = int(np.flatnonzero(np.diff(indptr))[0])
    b.tensor(info["indices"])[indptr[r]] = info["shape"][1]  # first (absolute) index == cols


@case("indices-not-increasing", _layer("linear"))
def _(b: Bundle) -> None:
    info = b.layer("linear")
    indptr, _ = b.decoded_indices(info)
    r = int(np.flatnonzero(np.diff(indptr) >= 2)[0])
    b.tensor(info["indices"])[indptr[r] + 1] = 0  # a repeated column: delta 0


@case("indices-uint64-negative", _layer("conv2d"))
def _(b: Bundle) -> None:
    # uint64 deltas wrap to negative int64: the first column of a row becomes -1 (reads before the input)
    info = b.layer("conv2d")
    d = b.tensor(info["indices"]).astype(np.uint64)
    d[0] = np.uint64(2**64 - 1)
    b.set_tensor(info["indices"], d)


@case("indices-uint64-decreasing", _layer("linear"))
def _(b: Bundle) -> None:
    # a row [a, b] with b = a - 1 written as the delta 2**64 - 1: in range, but not increasing
    info = b.layer("linear")
    indptr, idx = b.decoded_indices(info)
    r = int(np.flatnonzero(np.diff(indptr) >= 2)[0])
    d = b.tensor(info["indices"]).astype(np.uint64)
    j = int(indptr[r])
    d[j] = max(int(idx[j]), 1)
    d[j + 1] = np.uint64(2**64 - 1)
    b.set_tensor(info["indices"], d)


@case("indices-wrong-count", _layer("conv2d"))
def _(b: Bundle) -> None:
    info = b.layer("conv2d")
    b.manifest["tensors"][info["indices"]]["shape"][0] -= 1


# ---------------------------------------------------------------------------------------------- indptr


@case("indptr-not-monotone", _layer("conv2d"))
def _(b: Bundle) -> None:
    ptr = b.tensor(b.layer("conv2d")["indptr"])
    assert ptr[2] < ptr[-1]
    ptr[1] = ptr[-1]  # jumps to nnz, then falls back


# ---------------------------------------------------------------------------------------------- gaps and bitmaps


def _to_gaps(b: Bundle, op: str) -> tuple[dict[str, Any], np.ndarray]:
    """Re-store ``op``'s first CSR layer as a ``gaps`` pattern (format 3); returns its entry and the gap bytes."""
    info = b.layer(op)
    indptr, idx = b.decoded_indices(info)
    cols = int(np.prod(info["shape"][1:]))
    pos = np.repeat(np.arange(indptr.size - 1), np.diff(indptr)) * cols + idx
    g = np.diff(pos, prepend=-1)
    k, t = np.divmod(g, 255)
    gaps = np.full(int(g.size + k.sum()), 255, np.uint8)
    gaps[np.cumsum(k + 1) - 1] = t
    name = info.pop("indptr").rsplit(".", 1)[0] + ".positions"
    del b.manifest["tensors"][info.pop("indices")]
    b.manifest["tensors"][name] = {"dtype": "uint8", "offset": 0, "shape": [0], "encoding": "gaps"}
    info["positions"] = name
    return info, gaps


def _to_bitmap(b: Bundle, op: str) -> tuple[dict[str, Any], np.ndarray]:
    """Re-store ``op``'s first CSR layer as a ``bitmap`` pattern; returns its entry and the (unpacked) mask."""
    info = b.layer(op)
    indptr, idx = b.decoded_indices(info)
    rows, cols = info["shape"][0], int(np.prod(info["shape"][1:]))
    mask = np.zeros(rows * cols, np.uint8)
    mask[np.repeat(np.arange(rows), np.diff(indptr)) * cols + idx] = 1
    name = info.pop("indptr").rsplit(".", 1)[0] + ".mask"
    del b.manifest["tensors"][info.pop("indices")]
    b.manifest["tensors"][name] = {"dtype": "uint8", "offset": 0, "shape": [0], "encoding": "bitmap"}
    info["mask"] = name
    return info, mask


@case("gaps-zero-gap", _layer("linear"))
def _(b: Bundle) -> None:
    info, gaps = _to_gaps(b, "linear")
    gaps[1] = 0  # a repeated position: not strictly increasing
    b.set_tensor(info["positions"], gaps)


@case("gaps-past-the-matrix", _layer("conv2d"))
def _(b: Bundle) -> None:
    info, gaps = _to_gaps(b, "conv2d")
    b.set_tensor(info["positions"], np.concatenate([gaps[:-1], np.full(40, 255, np.uint8), gaps[-1:]]))


@case("gaps-trailing-escape", _layer("linear"))
def _(b: Bundle) -> None:
    info, gaps = _to_gaps(b, "linear")
    b.set_tensor(info["positions"], np.concatenate([gaps, [255]]).astype(np.uint8))


@case("gaps-one-position-short", _layer("linear"))
def _(b: Bundle) -> None:
    info, gaps = _to_gaps(b, "linear")
    b.set_tensor(info["positions"], gaps[:-1])  # one value more than positions


@case("gaps-wrong-dtype", _layer("conv2d"))
def _(b: Bundle) -> None:
    info, gaps = _to_gaps(b, "conv2d")
    b.set_tensor(info["positions"], gaps.astype(np.uint16))


@case("bitmap-short", _layer("conv2d"))
def _(b: Bundle) -> None:
    info, mask = _to_bitmap(b, "conv2d")
    b.set_tensor(info["mask"], np.packbits(mask)[:-1])


@case("bitmap-extra-bit", _layer("linear"))
def _(b: Bundle) -> None:
    info, mask = _to_bitmap(b, "linear")
    mask[np.flatnonzero(mask == 0)[0]] = 1  # one position more than values
    b.set_tensor(info["mask"], np.packbits(mask))


@case("bitmap-padding-bits", _layer("linear"))
def _(b: Bundle) -> None:
    info, mask = _to_bitmap(b, "linear")
    packed = np.packbits(mask)
    if mask.size % 8 == 0:  # no padding bits to set: a byte more than the matrix needs
        packed = np.concatenate([packed, [1]]).astype(np.uint8)
    else:
        packed[-1] |= 1
    b.set_tensor(info["mask"], packed)


@case("indptr-wrong-end", _layer("linear"))
def _(b: Bundle) -> None:
    b.tensor(b.layer("linear")["indptr"])[-1] -= 1


@case("indptr-end-beyond-nnz", _layer("conv2d"))
def _(b: Bundle) -> None:
    b.tensor(b.layer("conv2d", "csr")["indptr"])[-1] += 7


@case("indptr-nonzero-start", _layer("linear"))
def _(b: Bundle) -> None:
    b.tensor(b.layer("linear")["indptr"])[0] = 1


@case("indptr-too-short", _layer("linear"))
def _(b: Bundle) -> None:
    b.manifest["tensors"][b.layer("linear")["indptr"]]["shape"][0] -= 1


@case("indptr-too-long", _layer("conv2d"))
def _(b: Bundle) -> None:
    info = b.layer("conv2d")
    ptr = b.tensor(info["indptr"])
    b.set_tensor(info["indptr"], np.concatenate([ptr, ptr[-1:]]))


@case("indptr-signed-dtype", _layer("linear"))
def _(b: Bundle) -> None:
    info = b.layer("linear")
    b.set_tensor(info["indptr"], b.tensor(info["indptr"]).astype(np.float32))  # float row pointers


# ---------------------------------------------------------------------------------------------- shapes


@case("shape-layer-cols", _node("linear"))
def _(b: Bundle) -> None:
    b.layer("linear")["shape"][1] += 1  # the weight no longer fits its input features


@case("shape-layer-rows", _layer("conv2d"))
def _(b: Bundle) -> None:
    b.layer("conv2d")["shape"][0] += 1  # one more output channel than indptr rows


@case("shape-layer-zero", _layer("linear"))
def _(b: Bundle) -> None:
    b.layer("linear")["shape"] = [0, 12]


@case("shape-layer-1d", _layer("linear", storage="dense"))
def _(b: Bundle) -> None:
    b.layer("linear", "dense")["shape"] = [30]


@case("shape-dense-values", _layer("linear", storage="dense"))
def _(b: Bundle) -> None:
    b.layer("linear", "dense")["shape"][0] += 1  # dense values hold fewer elements than the shape needs


@case("shape-value-declared", _node("conv2d", 1))
def _(b: Bundle) -> None:
    name = _conv(b, 1)["outputs"][0]
    b.manifest["value_shapes"][name] = [6, 3, 3]


@case("shape-input-2d", _node("conv2d"))
def _(b: Bundle) -> None:
    b.manifest["input_shape"] = [8, 8]
    b.manifest["value_shapes"][b.manifest["input"]] = [8, 8]


@case("shape-output")
def _(b: Bundle) -> None:
    b.manifest["output_shape"] = [4]


@case("shape-overflow", _layer("linear", "values"))
def _(b: Bundle) -> None:
    # 2**32 · 2**32 wraps to 0 in int64: a tensor that claims 2**64 elements but "needs" none
    b.manifest["tensors"][b.layer("linear")["values"]]["shape"] = [2**32, 2**32]


@case("shape-overflow-negative", _layer("conv2d", "values"))
def _(b: Bundle) -> None:
    b.manifest["tensors"][b.layer("conv2d")["values"]]["shape"] = [2**62, 3]


@case("shape-bias", _node("linear"))
def _(b: Bundle) -> None:
    node = b.nodes("linear")[0]
    b.manifest["tensors"][node["params"]["bias"]]["shape"] = [3]


@case("shape-reshape-target", _node("reshape"))
def _(b: Bundle) -> None:
    b.nodes("reshape")[0]["attrs"]["shape"] = [25]


@case("shape-value-huge", _node("max_pool2d"))
def _(b: Bundle) -> None:
    # an adaptive pool to 2**15 × 2**15: 4 · 2**30 values per example, more than a value may hold
    n = b.nodes("max_pool2d")[0]
    n["op"] = "adaptive_avg_pool2d"
    n["attrs"] = {"output_size": [2**15, 2**15]}


# ---------------------------------------------------------------------------------------------- attributes


@case("attr-stride-zero", _node("conv2d"))
def _(b: Bundle) -> None:
    _conv(b)["attrs"]["stride"] = [0, 1]


@case("attr-groups-not-dividing", _node("conv2d", 1))
def _(b: Bundle) -> None:
    _conv(b, 1)["attrs"]["groups"] = 3  # 4 input channels


@case("attr-groups-zero", _node("conv2d", 1))
def _(b: Bundle) -> None:
    _conv(b, 1)["attrs"]["groups"] = 0


@case("attr-negative-padding", _node("conv2d"))
def _(b: Bundle) -> None:
    _conv(b)["attrs"]["padding"] = [-1, 1]


@case("attr-kernel-bigger-than-input", _node("conv2d", 1))
def _(b: Bundle) -> None:
    _conv(b, 1)["attrs"]["dilation"] = [5, 5]  # a 3×3 kernel spanning 11×11 on a 4×4 plane


@case("attr-kernel-size-mismatch", _node("conv2d"))
def _(b: Bundle) -> None:
    _conv(b)["attrs"]["kernel_size"] = [5, 5]  # the weight is 3×3


@case("attr-padding-huge", _node("conv2d"))
def _(b: Bundle) -> None:
    # padding 2**20 on an 8×8 input, with a stride that brings the output back to 8×8: the graph stays valid,
    # but the padded plane has 4.4·10**12 values
    conv = _conv(b)
    hp = 8 + 2 * 2**20
    stride = (hp - 3) // 7  # (hp - 3) // stride + 1 == 8
    conv["attrs"]["padding"] = [2**20, 2**20]
    conv["attrs"]["stride"] = [stride, stride]


@case("attr-padding-type", _node("conv2d"))
def _(b: Bundle) -> None:
    _conv(b)["attrs"]["padding"] = "full"


@case("attr-pool-kernel-bigger-than-plane", _node("max_pool2d"))
def _(b: Bundle) -> None:
    b.nodes("max_pool2d")[0]["attrs"].update(kernel_size=[20, 20], stride=[20, 20])


@case("attr-pool-padding-over-half", _node("max_pool2d"))
def _(b: Bundle) -> None:
    b.nodes("max_pool2d")[0]["attrs"]["padding"] = [2, 2]  # kernel 2×2


@case("attr-pool-stride-bool", _node("max_pool2d"))
def _(b: Bundle) -> None:
    b.nodes("max_pool2d")[0]["attrs"]["stride"] = [True, True]


@case("attr-gather-index-out-of-range", _node("gather"))
def _(b: Bundle) -> None:
    node = b.nodes("gather")[0]
    b.tensor(node["params"]["index"])[-1] = 24  # the gather reads 24 features


@case("attr-leaky-slope-nan", _node("relu"))
def _(b: Bundle) -> None:
    node = b.nodes("relu")[0]
    node["op"] = "leaky_relu"
    node["attrs"]["negative_slope"] = float("nan")


# ---------------------------------------------------------------------------------------------- graph


@case("graph-cycle", lambda b: b.manifest["nodes"][0]["name"])
def _(b: Bundle) -> None:
    nodes = b.manifest["nodes"]
    nodes[0]["inputs"] = [nodes[-1]["outputs"][0]]  # the first node reads the last one's output


@case("graph-self-loop", _node("gather"))
def _(b: Bundle) -> None:
    n = b.nodes("gather")[0]
    n["inputs"] = [n["outputs"][0]]


@case("graph-undefined-input", "nowhere")
def _(b: Bundle) -> None:
    b.nodes("linear")[0]["inputs"] = ["nowhere"]


@case("graph-undefined-output", "nowhere")
def _(b: Bundle) -> None:
    b.manifest["output"] = "nowhere"


@case("graph-duplicate-value", lambda b: b.nodes("linear")[0]["outputs"][0])
def _(b: Bundle) -> None:
    lin = b.nodes("linear")
    lin[1]["outputs"] = [lin[0]["outputs"][0]]


@case("graph-redefines-input", lambda b: b.manifest["input"])
def _(b: Bundle) -> None:
    b.nodes("reshape")[0]["outputs"] = [b.manifest["input"]]


@case("graph-unknown-op", "conv3d")
def _(b: Bundle) -> None:
    b.nodes("reshape")[0]["op"] = "conv3d"


@case("graph-node-not-object")
def _(b: Bundle) -> None:
    b.manifest["nodes"].insert(1, ["relu"])


@case("graph-two-outputs")
def _(b: Bundle) -> None:
    n = b.nodes("gather")[0]
    n["outputs"] = [n["outputs"][0], "extra"]


@case("graph-missing-weight", "no.such.weight")
def _(b: Bundle) -> None:
    b.nodes("linear")[0]["params"]["weight"] = "no.such.weight"


@case("graph-nodes-not-list", "nodes")
def _(b: Bundle) -> None:
    b.manifest["nodes"] = {"a": 1}


# ---------------------------------------------------------------------------------------------- values


@case("values-nan", _layer("conv2d", "values"))
def _(b: Bundle) -> None:
    b.tensor(b.layer("conv2d")["values"])[0] = np.nan


@case("values-inf", _layer("linear", "values", storage="dense"))
def _(b: Bundle) -> None:
    b.tensor(b.layer("linear", "dense")["values"])[-1] = -np.inf


@case("bias-inf", _node("linear", role="bias"))
def _(b: Bundle) -> None:
    b.tensor(b.nodes("linear")[0]["params"]["bias"])[0] = np.inf


@case("values-integer", _layer("linear"))
def _(b: Bundle) -> None:
    info = b.layer("linear")
    b.set_tensor(info["values"], np.ones(info["nnz"], np.uint8))


@case("encoding-unknown", _layer("conv2d", "indices"))
def _(b: Bundle) -> None:
    b.manifest["tensors"][b.layer("conv2d")["indices"]]["encoding"] = "zstd"


@case("storage-unknown", _layer("linear"))
def _(b: Bundle) -> None:
    b.layer("linear")["storage"] = "coo"


# ---------------------------------------------------------------------------------------------- manifest


@case("format-name")
def _(b: Bundle) -> None:
    b.manifest["format"] = "onnx"


@case("format-version-newer")
def _(b: Bundle) -> None:
    b.manifest["format_version"] = FORMAT_VERSION + 1


@case("format-version-string")
def _(b: Bundle) -> None:
    b.manifest["format_version"] = "1"


@case("manifest-field-missing", "layers")
def _(b: Bundle) -> None:
    del b.manifest["layers"]


@case("manifest-input-shape-strings")
def _(b: Bundle) -> None:
    b.manifest["input_shape"] = ["one", 8, 8]


@case("manifest-deep-inside", "manifest.json")
def _(b: Bundle) -> None:
    deep: Any = 0
    for _ in range(40):
        deep = {"a": deep}
    b.manifest["provenance"] = deep  # 40 levels where 32 are allowed


@raw_case("manifest-not-object", "manifest.json")
def _(src: Path, dst: Path) -> None:
    b = Bundle(src)
    members = b.members()
    members[0]["data"] = b"[1, 2, 3]"
    write_zip(dst, members)


@raw_case("manifest-not-json", "manifest.json")
def _(src: Path, dst: Path) -> None:
    members = Bundle(src).members()
    members[0]["data"] = b'{"format": "svdcompress-csr", '
    write_zip(dst, members)


@raw_case("manifest-deeply-nested", "manifest.json")
def _(src: Path, dst: Path) -> None:
    members = Bundle(src).members()
    members[0]["data"] = b"[" * 100_000 + b"]" * 100_000
    write_zip(dst, members)


@raw_case("manifest-declares-huge", "manifest.json")
def _(src: Path, dst: Path) -> None:
    members = Bundle(src).members()
    members[0]["declared_size"] = 1 << 31  # a 2 GB manifest, by its header
    write_zip(dst, members)


@raw_case("manifest-missing", "manifest.json")
def _(src: Path, dst: Path) -> None:
    write_zip(dst, Bundle(src).members()[1:])


# ---------------------------------------------------------------------------------------------- members


@case("member-missing", "uint8.npy")
def _(b: Bundle) -> None:
    b.drop.add("uint8.npy")


@case("member-dotdot", "../../evil.npy")
def _(b: Bundle) -> None:
    b.extra.append({"name": "../../evil.npy", "data": _npy(np.zeros(3, np.float32))})


@case("member-absolute", "/etc/evil.npy")
def _(b: Bundle) -> None:
    b.extra.append({"name": "/etc/evil.npy", "data": b"x"})


@case("member-named-by-manifest-dotdot", "float32")
def _(b: Bundle) -> None:
    b.manifest["blobs"]["float32"]["member"] = "../float32.npy"


@case("member-not-npy", "uint8.npy")
def _(b: Bundle) -> None:
    b.drop.add("uint8.npy")
    b.extra.append({"name": "uint8.npy", "data": b"\x93NUMPY garbage"})


@case("member-pickled-object-array", "uint8.npy")
def _(b: Bundle) -> None:
    b.drop.add("uint8.npy")
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    b.extra.append({"name": "uint8.npy", "data": buf.getvalue()})


@case("member-wrong-dtype", "uint8.npy")
def _(b: Bundle) -> None:
    b.drop.add("uint8.npy")
    count = b.manifest["blobs"]["uint8"]["count"]
    b.extra.append({"name": "uint8.npy", "data": _npy(np.zeros(count, np.int8))})


@case("blob-dtype-unknown", "int64")
def _(b: Bundle) -> None:
    b.manifest["blobs"]["int64"] = {"member": "int64.npy", "count": 1, "byteshuffle": True}
    b.extra.append({"name": "int64.npy", "data": _npy(np.zeros((8, 1), np.uint8))})


# ---------------------------------------------------------------------------------------------- bombs


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """A version-1.0 .npy header for a uint8 array of ``shape`` (no data)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _bomb(src: Path, dst: Path, declared: int | None) -> None:
    """Replace float32.npy by a valid .npy header and 1 GiB of zeros, deflated to about 1 MB.

    The stream is one compressed 16 MiB block repeated: after a full flush the compressor starts afresh,
    so every block compresses to the same bytes and the 1 GiB never has to be compressed.
    """
    b = Bundle(src)
    count = b.manifest["blobs"]["float32"]["count"]
    header = _npy_header((4, count))
    chunk = bytes(1 << 24)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(header)
    for _ in range(_BOMB_BYTES // len(chunk)):
        crc = zlib.crc32(chunk, crc)
    raw = head + block * (_BOMB_BYTES // len(chunk)) + c.flush()
    members = [m for m in b.members() if m["name"] != "float32.npy"]
    member: dict[str, Any] = {"name": "float32.npy", "raw": raw, "crc": crc, "size": len(header) + _BOMB_BYTES}
    if declared is not None:
        member["declared_size"] = declared
    members.append(member)
    write_zip(dst, members)


@raw_case("bomb-declared-1gb", "float32.npy")
def _(src: Path, dst: Path) -> None:
    _bomb(src, dst, declared=None)  # honest headers: 1 GiB of zeros where the manifest needs < 1 KB


@raw_case("bomb-lying-header", "float32.npy")
def _(src: Path, dst: Path) -> None:
    _bomb(src, dst, declared=800)  # the zip headers claim 800 bytes; the stream inflates to 1 GiB


@raw_case("bomb-npy-header-huge-shape", "uint8.npy")
def _(src: Path, dst: Path) -> None:
    # a small member whose .npy header declares 2**40 bytes: memory must not follow the header's word
    b = Bundle(src)
    members = [m for m in b.members() if m["name"] != "uint8.npy"]
    members.append({"name": "uint8.npy", "data": _npy_header((2**40,)) + bytes(64)})
    write_zip(dst, members)


# ---------------------------------------------------------------------------------------------- containers


@raw_case("zip-truncated")
def _(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])


@raw_case("zip-truncated-tail")
def _(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[:-10])  # the end-of-central-directory record is cut


@raw_case("not-a-zip")
def _(src: Path, dst: Path) -> None:
    dst.write_bytes(b"svdcompress-csr but not a zip archive\n" * 20)


@raw_case("empty-file")
def _(src: Path, dst: Path) -> None:
    dst.write_bytes(b"")


@raw_case("zip-bad-crc", "float32.npy")
def _(src: Path, dst: Path) -> None:
    members = Bundle(src).members()
    data = members[1]["data"]
    members[1] = {"name": members[1]["name"], "raw": _deflate(data), "crc": zlib.crc32(data) ^ 1, "size": len(data)}
    write_zip(dst, members)


@raw_case("zip-encrypted-flag")
def _(src: Path, dst: Path) -> None:
    members = Bundle(src).members()
    members[1]["flags"] = 1  # "encrypted": zipfile asks for a password
    write_zip(dst, members)


@raw_case("zip-unknown-method")
def _(src: Path, dst: Path) -> None:
    members = Bundle(src).members()
    members[0]["method"] = 99
    members[0]["raw"] = members[0]["data"]
    members[0]["crc"] = zlib.crc32(members[0]["data"])
    members[0]["size"] = len(members[0]["data"])
    write_zip(dst, members)


@raw_case("zip-garbage-deflate")
def _(src: Path, dst: Path) -> None:
    members = Bundle(src).members()
    data = members[1]["data"]
    members[1] = {"name": members[1]["name"], "raw": bytes(range(256)) * 4, "crc": zlib.crc32(data), "size": len(data)}
    write_zip(dst, members)


# ---------------------------------------------------------------------------------------------- sequence ops

SEQ_CASES: set[str] = set()
"""Case ids built from the sequence bundle (``valid_seq_model``) rather than the image one."""


def seq_case(name: str, op: str | None = None, expect: str | None = None) -> Callable[[Callable[[Bundle], None]], Any]:
    """A :func:`case` on the sequence bundle; the message must name the first ``op`` node (or ``expect``)."""
    SEQ_CASES.add(name)
    return case(name, _node(op) if op is not None else expect)


def _first(b: Bundle, op: str) -> dict[str, Any]:
    return b.nodes(op)[0]


@seq_case("seq-layer-norm-eps-negative", "layer_norm")
def _(b: Bundle) -> None:
    _first(b, "layer_norm")["attrs"]["eps"] = -1.0


@seq_case("seq-layer-norm-gamma-size", "layer_norm")
def _(b: Bundle) -> None:
    _first(b, "layer_norm")["params"]["gamma"] = _first(b, "constant")["params"]["value"]


@seq_case("seq-matmul-shapes", "matmul")
def _(b: Bundle) -> None:
    n = _first(b, "matmul")
    n["inputs"] = [n["inputs"][0], n["inputs"][0]]  # q @ q: (H, N, hd) @ (H, N, hd)


@seq_case("seq-matmul-one-input", "matmul")
def _(b: Bundle) -> None:
    n = _first(b, "matmul")
    n["inputs"] = n["inputs"][:1]


@seq_case("seq-softmax-over-batch", "softmax")
def _(b: Bundle) -> None:
    _first(b, "softmax")["attrs"]["dim"] = 0


@seq_case("seq-softmax-axis-huge", "softmax")
def _(b: Bundle) -> None:
    _first(b, "softmax")["attrs"]["dim"] = 2**40


@seq_case("seq-transpose-moves-batch", "transpose")
def _(b: Bundle) -> None:
    perm = _first(b, "transpose")["attrs"]["perm"]
    perm[0], perm[1] = perm[1], perm[0]


@seq_case("seq-transpose-repeated-axis", "transpose")
def _(b: Bundle) -> None:
    perm = _first(b, "transpose")["attrs"]["perm"]
    perm[-1] = perm[-2]


@seq_case("seq-index-out-of-range", "index")
def _(b: Bundle) -> None:
    _first(b, "index")["attrs"]["index"][0] = 99


@seq_case("seq-index-slice-step-zero", "index")
def _(b: Bundle) -> None:
    _first(b, "index")["attrs"]["index"][0] = [0, 1, 0]


@seq_case("seq-index-too-many-entries", "index")
def _(b: Bundle) -> None:
    _first(b, "index")["attrs"]["index"] = [0] * 9


@seq_case("seq-constant-shape-mismatch", "constant")
def _(b: Bundle) -> None:
    _first(b, "constant")["attrs"]["shape"] = [999]


@seq_case("seq-constant-shape-huge", "constant")
def _(b: Bundle) -> None:
    _first(b, "constant")["attrs"]["shape"] = [2**40, 2**40]


@seq_case("seq-constant-with-input", "constant")
def _(b: Bundle) -> None:
    _first(b, "constant")["inputs"] = [b.manifest["input"]]


@seq_case("seq-expand-misfit", "expand")
def _(b: Bundle) -> None:
    _first(b, "expand")["attrs"]["shape"] = [3, 7, 5]


@seq_case("seq-mul-scalar-nan", "mul")
def _(b: Bundle) -> None:
    _first(b, "mul")["attrs"]["scalar"] = float("nan")


@seq_case("seq-mul-no-scalar", "mul")
def _(b: Bundle) -> None:
    del _first(b, "mul")["attrs"]["scalar"]


@seq_case("seq-add-shapes-misfit", "add")
def _(b: Bundle) -> None:
    n = _first(b, "add")
    n["inputs"] = [n["inputs"][0], b.manifest["input"]]


@seq_case("seq-reduce-unknown-kind", "reduce")
def _(b: Bundle) -> None:
    _first(b, "reduce")["attrs"]["kind"] = "median"


@seq_case("seq-reduce-over-batch", "reduce")
def _(b: Bundle) -> None:
    _first(b, "reduce")["attrs"]["dims"] = [0]


@seq_case("seq-cat-dim-out-of-range", "cat")
def _(b: Bundle) -> None:
    _first(b, "cat")["attrs"]["dim"] = 7


@seq_case("seq-embedding-on-a-float-input")
def _(b: Bundle) -> None:
    n = _first(b, "layer_norm")
    n["op"], n["params"] = "embedding", {"weight": _first(b, "linear")["params"]["weight"]}


@seq_case("seq-lstm-weight-misfit", "lstm")
def _(b: Bundle) -> None:
    _first(b, "lstm")["params"]["weight_hh"] = _first(b, "linear")["params"]["weight"]  # (12, 12): not (4H, H)


@seq_case("seq-lstm-gates-misfit", "lstm")
def _(b: Bundle) -> None:
    n = _first(b, "lstm")
    n["inputs"] = [b.manifest["input"]]  # (5, 12) is not (T, 4H) for H = 2


@seq_case("seq-input-dtype-unknown", expect="input_dtype")
def _(b: Bundle) -> None:
    b.manifest["input_dtype"] = "complex128"


@seq_case("seq-int-input-read-by-layer-norm", "layer_norm")
def _(b: Bundle) -> None:
    b.manifest["input_dtype"] = "int64"


def build(case_id: str, src: Path, dst: Path) -> str | None:
    """Write case ``case_id`` made from the valid bundle ``src`` to ``dst``.

    Returns the name its error message must contain (see :data:`CASES`), or None.
    """
    return CASES[case_id](src, dst)


# ---------------------------------------------------------------------------------------------- kernel plan


def _plan(b: Bundle, choice: Any) -> dict[str, Any]:
    node = b.nodes("conv2d")[0]["name"]
    return {
        "cpu": {"name": "generic", "features": "0" * 16},
        "layers": {node: {"batch1": choice, "batched": {"kernel": "sparse", "layout": "blocked16"}}},
        "single": True,
    }


@case("kernel-plan-layout", "kernel_plan")
def _(b: Bundle) -> None:
    b.manifest["kernel_plan"] = _plan(b, {"kernel": "sparse", "layout": "../../etc/passwd"})


@case("kernel-plan-kernel-type", "kernel_plan")
def _(b: Bundle) -> None:
    b.manifest["kernel_plan"] = _plan(b, {"kernel": ["sparse"], "layout": "wide"})


@case("kernel-plan-unknown-layer", "kernel_plan")
def _(b: Bundle) -> None:
    plan = _plan(b, {"kernel": "sparse", "layout": "wide"})
    plan["layers"]["no-such-node"] = plan["layers"].popitem()[1]
    b.manifest["kernel_plan"] = plan


@case("kernel-plan-not-object", "kernel_plan")
def _(b: Bundle) -> None:
    b.manifest["kernel_plan"] = "fastest please"
