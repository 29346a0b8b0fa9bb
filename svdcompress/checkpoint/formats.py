"""Read checkpoints from disk: .pt/.pth (torch.save), safetensors, and Lasagne positional .npy lists.

The result is a flat ``{name: tensor}`` mapping plus whatever svdcompress metadata the
file carries. Recognising SVDO layers in it is :mod:`svdcompress.checkpoint.conventions`' job.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .._io import atomic_path
from ..errors import CheckpointError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LoadedCheckpoint",
    "load_checkpoint",
    "save_checkpoint",
]

FORMAT_NAME = "svdcompress-checkpoint"
FORMAT_VERSION = 1

# Keys under which training scripts nest a state_dict, in the order we look for them.
_NEST_KEYS = ("state_dict", "model_state_dict", "net", "model", "state", "params", "weights")


@dataclass
class LoadedCheckpoint:
    """A checkpoint read from disk.

    Attributes:
        path: the file it came from.
        tensors: flat ``{name: tensor}``; for Lasagne lists the names are ``"0"``, ``"1"``, ...
        source: "torch", "safetensors", "npz" (named arrays) or "lasagne-npy" (a positional list).
        meta: svdcompress metadata (arch, arch_kwargs, input_shape, threshold, provenance) if the
            file was written by :func:`save_checkpoint`, else empty.
        module: a whole pickled ``nn.Module``, only when loaded with ``trust_pickle=True``.
        classes: ``{submodule name: "module.ClassName"}`` of a pickled model (whole, or nested as
            BayesWatch saves ``{'net': model}``); it settles which convention ``weight`` + ``log_sigma2`` use.
    """

    path: Path
    tensors: dict[str, torch.Tensor]
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    module: nn.Module | None = None
    classes: dict[str, str] = field(default_factory=dict)

    @property
    def arch(self) -> str | None:
        a = self.meta.get("arch")
        return a if isinstance(a, str) else None


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    arch: str,
    arch_kwargs: Mapping[str, Any] | None = None,
    input_shape: tuple[int, ...] | None = None,
    threshold: float = 3.0,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``model`` with the architecture and provenance needed to rebuild it without code.

    The file is a plain ``torch.save`` dict that loads with ``weights_only=True``.
    """
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs or {}),
        "input_shape": list(input_shape) if input_shape is not None else None,
        "threshold": float(threshold),
        # A JSON round trip keeps only plain types, so the file loads with weights_only=True
        # (torch.__version__, for one, is a TorchVersion object that safe loading refuses).
        "provenance": json.loads(json.dumps(dict(provenance or {}), default=str)),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def _flatten(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(obj, (list, tuple)) and obj and all(isinstance(v, torch.Tensor) for v in obj):
        for i, v in enumerate(obj):
            out[f"{prefix}.{i}" if prefix else str(i)] = v


def _extract_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Find the state_dict inside whatever a training script saved."""
    if isinstance(obj, Mapping):
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        for key in _NEST_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return {str(k): v for k, v in inner.items()}
            if isinstance(inner, nn.Module):
                return dict(inner.state_dict())
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    flat: dict[str, torch.Tensor] = {}
    _flatten(obj, "", flat)
    return flat


def _classes_of(obj: Any) -> dict[str, str]:
    """``{submodule name: "module.ClassName"}`` of a pickled model, whole or nested under a _NEST_KEYS key."""
    module = obj if isinstance(obj, nn.Module) else None
    if module is None and isinstance(obj, Mapping):
        module = next((obj[k] for k in _NEST_KEYS if isinstance(obj.get(k), nn.Module)), None)
    if module is None:
        return {}
    return {name: f"{type(m).__module__}.{type(m).__name__}" for name, m in module.named_modules()}


# numpy scalars and dtypes build values, never run code: pytorch-ard's example saves its 'compression' as a
# numpy.float64 next to the state_dict, and weights_only loading would refuse the file for it.
_NUMPY_DTYPE_CLASSES = {type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"}
_NUMPY_SCALAR = np.float64(0).__reduce__()[0]  # numpy.core.multiarray.scalar (numpy._core in numpy 2)
_NUMPY_SAFE_GLOBALS: list[Any] = [
    np.dtype,
    *_NUMPY_DTYPE_CLASSES,
    (_NUMPY_SCALAR, "numpy._core.multiarray.scalar"),  # written by numpy 2
    (_NUMPY_SCALAR, "numpy.core.multiarray.scalar"),  # written by numpy 1.x
]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and lists of them, nothing else: no code can run.

    Python 2 strings (the authors' Lasagne files were written by Python 2) are read as latin1, which
    is how numpy turns the raw bytes of a Python 2 array back into data.
    """

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            # numpy 2 renamed numpy.core to numpy._core; the old path still resolves, but may warn.
            return super().find_class(module.replace("numpy.core.", "numpy._core."), name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_npy(path: Path, trust_pickle: bool) -> Any:
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
        except ValueError as e:
            raise CheckpointError(f"{path}: corrupt .npy header ({e})") from None
        if dtype.hasobject:
            # A list of arrays saved with np.save is an object array: a pickle. Read it with an
            # unpickler that only builds numpy arrays, unless the user trusts the file.
            try:
                if trust_pickle:
                    return np.load(path, allow_pickle=True, encoding="latin1")
                return _NumpyOnlyUnpickler(f, encoding="latin1").load()
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
                raise CheckpointError(
                    f"{path}: the .npy object array holds more than numpy arrays ({e}); "
                    "pass trust_pickle=True only if you trust its source"
                ) from None
        # A lying header must not make np.load allocate what the file cannot hold (10^12 elements: MemoryError).
        need = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        have = os.fstat(f.fileno()).st_size - f.tell()
        if need > have:
            raise CheckpointError(
                f"{path}: truncated or corrupt .npy file (header promises shape {shape}, "
                f"{need:,} bytes, but {have:,} bytes follow)"
            )
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        raise CheckpointError(f"{path}: truncated or corrupt .npy file ({e})") from None


def _from_positional(arrays: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(arrays, np.ndarray) and arrays.dtype != object:
        raise CheckpointError(
            f"{path}: holds one array of shape {arrays.shape}, not a list of layer parameters; "
            "expected the Lasagne list W, b, ls2 per layer"
        )
    out: dict[str, torch.Tensor] = {}
    for i, a in enumerate(list(arrays)):
        if not isinstance(a, np.ndarray):
            raise CheckpointError(f"{path}: entry {i} is a {type(a).__name__}, not an array")
        out[str(i)] = torch.from_numpy(np.ascontiguousarray(a))
    return out


def _load_npz(p: Path, names: list[str], trust_pickle: bool) -> LoadedCheckpoint:
    """``np.savez(path, *params)`` (arr_0, arr_1, ...) is a Lasagne list; named entries (Chainer's save_npz,
    TF variables dumped with ``np.savez(path, **variables)``) are a flat ``{name: tensor}`` mapping."""
    try:
        with np.load(p, allow_pickle=trust_pickle, encoding="latin1") as npz:
            keys = list(npz.files)
            if keys == [f"arr_{i}" for i in range(len(names))]:
                return LoadedCheckpoint(p, _from_positional([npz[k] for k in keys], p), "lasagne-npy")
            tensors: dict[str, torch.Tensor] = {}
            for k in keys:
                try:
                    a = npz[k]
                except ValueError:  # an object array (a pickle) among the named arrays: not a weight
                    continue
                if a.dtype.kind in "biuf":  # strings and other bookkeeping a trainer snapshot holds are not weights
                    tensors[k] = torch.from_numpy(np.ascontiguousarray(a))
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"{p}: corrupt .npz ({e})") from None
    if not tensors:
        raise CheckpointError(f"{p}: the .npz holds no numeric arrays; expected layer weights")
    return LoadedCheckpoint(p, tensors, "npz")


# torch.save's legacy (non-zip) format starts with this pickled int, after the protocol header and frame.
_TORCH_LEGACY_MAGIC = b"\x8a\x0a" + torch.serialization.MAGIC_NUMBER.to_bytes(10, "little")


def _sniff(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(32)
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory; give the checkpoint file inside it") from None
    except PermissionError:
        raise CheckpointError(f"{path}: permission denied; check the file's permissions") from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        out: dict[str, torch.Tensor] = {}
        # safe_open memory-maps the file: tensors are read when touched, keeping peak memory low.
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():  # noqa: SIM118 - safe_open has keys(), not __iter__
                out[k] = f.get_tensor(k)
        return out
    except Exception as e:  # safetensors raises its own SafetensorError and plain OSError/ValueError
        raise CheckpointError(
            f"{path}: invalid safetensors file ({e}); re-save it with safetensors.torch.save_file"
        ) from None


class _MissingClassError(Exception):
    """A trusted pickle names a class (or function) that cannot be imported here."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


class _NamingUnpickler(pickle.Unpickler):
    """pickle's Unpickler, but a class it cannot import is reported by module and name."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            raise _MissingClassError(module, name) from None


class _NamingPickleModule:
    """The ``pickle_module`` torch.load uses with ``trust_pickle``: the standard pickle with the unpickler above."""

    Unpickler = _NamingUnpickler
    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return _NamingUnpickler(file, **kwargs).load()


def _missing_class_message(path: Path, e: _MissingClassError) -> str:
    where = (
        "it was pickled from a script run as __main__, which is not importable here"
        if e.module == "__main__"
        else f"is {e.module} installed and on PYTHONPATH?"
    )
    return (
        f"{path}: the pickled model's class {e.name} from module {e.module} cannot be imported ({where}). "
        "Re-save the weights as a state_dict (torch.save(model.state_dict(), path)) and pass "
        "model=package.module:factory with a function that builds the model, or move the class into an "
        "importable module before pickling"
    )


def _load_torch(path: Path, trust_pickle: bool) -> Any:
    try:
        # mmap keeps tensors on disk until touched: analysis of a huge file stays within bounded memory.
        if trust_pickle:
            return torch.load(
                path,
                map_location="cpu",
                weights_only=False,
                mmap=zipfile.is_zipfile(path),
                pickle_module=_NamingPickleModule,
            )
        with torch.serialization.safe_globals(_NUMPY_SAFE_GLOBALS), warnings.catch_warnings():
            # torch warns that its safe unpickler may not read a legacy file's protocol; if it cannot,
            # the error below says so in one line.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except _MissingClassError as e:
        raise CheckpointError(_missing_class_message(path, e)) from None
    except pickle.UnpicklingError as e:
        if trust_pickle:
            raise CheckpointError(f"{path}: cannot unpickle ({str(e).splitlines()[0]})") from None
        lines = [ln.strip() for ln in str(e).splitlines()]
        at = next((i for i, ln in enumerate(lines) if "WeightsUnpickler error:" in ln), None)
        if at is None:
            why = lines[0] if lines else ""
        else:  # the reason follows "error:" on the same line, or (newer torch) on the next non-empty one
            rest = [lines[at].split("error:", 1)[1].strip(), *lines[at + 1 :]]
            why = next((ln for ln in rest if ln), "").split(" was not", 1)[0]
        head = _sniff(path)
        if why.startswith("Unsupported operand") and _TORCH_LEGACY_MAGIC in head and head[1] > 2:
            raise CheckpointError(
                f"{path}: was written by torch.save in the legacy (non-zip) format with pickle protocol "
                f"{head[1]}, which safe loading cannot read. Re-save it with torch.save's default format, or "
                "pass trust_pickle=True only if you trust its source"
            ) from None
        if why.startswith("Unsupported operand"):  # garbage bytes, not a refused object: trusting would not help
            raise CheckpointError(
                f"{path}: truncated or corrupt torch checkpoint ({why[:160]}); re-save it with torch.save"
            ) from None
        raise CheckpointError(
            f"{path}: holds Python objects that safe loading refuses ({why[:160]}). "
            "Unpickling can run code: pass trust_pickle=True only if you trust its source"
        ) from None
    except (
        RuntimeError,
        EOFError,
        ValueError,
        OSError,
        zipfile.BadZipFile,
        KeyError,
        AttributeError,
        ModuleNotFoundError,
        TypeError,
        IndexError,
        struct.error,
    ) as e:
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{path}: truncated or corrupt torch checkpoint ({msg}); re-save it with torch.save"
        ) from None


def _check_meta(path: Path, meta: Mapping[str, Any]) -> None:
    """The metadata save_checkpoint writes must have its types: a damaged file must not fail later, inside pruning."""
    shape = meta.get("input_shape")
    if shape is not None and not (
        isinstance(shape, list)
        and shape
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise CheckpointError(
            f"{path}: records input_shape {shape!r}, not a list of positive integers; "
            "the file is damaged: re-save it with svdcompress.checkpoint.formats.save_checkpoint"
        )
    for key, kind in (("arch", str), ("arch_kwargs", Mapping)):
        value = meta.get(key)
        if value is not None and not isinstance(value, kind):
            raise CheckpointError(
                f"{path}: records {key} as a {type(value).__name__}, not a {kind.__name__}; "
                "the file is damaged: re-save it with svdcompress.checkpoint.formats.save_checkpoint"
            )


def load_checkpoint(path: str | os.PathLike[str], *, trust_pickle: bool = False) -> LoadedCheckpoint:
    """Read a checkpoint file of any supported format.

    Args:
        path: a .pt/.pth (torch.save of a state_dict, possibly nested under ``net``, ``state_dict``, ...),
            .safetensors, or .npy/.npz (the Lasagne positional list); ``"bundled:lenet5"`` names a checkpoint
            shipped with the package, as on the command line (a file of that name wins).
        trust_pickle: allow arbitrary unpickling (runs code from the file). Off by default.

    Raises:
        CheckpointError: missing, unreadable, truncated or unsupported file, with the fix in the message.
    """
    p = Path(path)
    if isinstance(path, str) and path.startswith("bundled:") and not p.exists():
        from .bundled import bundled_checkpoint

        p = bundled_checkpoint(path.removeprefix("bundled:"))
    try:
        return _load(p, trust_pickle)
    except MemoryError:  # a header or pickle claiming huge sizes, or a file that really does not fit
        raise CheckpointError(
            f"{p}: not enough memory to load it (or the file is corrupt and claims sizes it does not hold)"
        ) from None


def _load(p: Path, trust_pickle: bool) -> LoadedCheckpoint:
    if not p.exists():
        raise CheckpointError(f"{p}: no such file; check the path")
    head = _sniff(p)
    if not head:
        raise CheckpointError(f"{p}: file is empty; it is not a checkpoint")

    if head.startswith(b"\x93NUMPY"):
        return LoadedCheckpoint(p, _from_positional(_read_npy(p, trust_pickle), p), "lasagne-npy")
    if head.startswith(b"PK") and zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
        if names and all(n.endswith(".npy") for n in names):
            return _load_npz(p, names, trust_pickle)
        if not any(n.endswith("data.pkl") for n in names):
            raise CheckpointError(
                f"{p}: is a zip archive but not a torch checkpoint (no data.pkl inside); "
                "expected a file written by torch.save"
            )
    elif head.startswith(b"PK\x03\x04"):
        raise CheckpointError(
            f"{p}: starts like a zip archive (torch.save, .npz) but has no zip directory at its end: "
            "the file is truncated or corrupt; copy or re-save it"
        )
    elif len(head) >= 9 and head[8:9] == b"{":
        return LoadedCheckpoint(p, _load_safetensors(p), "safetensors")
    elif head.lstrip()[:1] in (b"{", b"["):
        raise CheckpointError(
            f"{p}: looks like JSON or text, not a checkpoint; "
            "give the .pt/.safetensors/.npy file that holds the weights"
        )
    elif not head.startswith(b"\x80"):
        raise CheckpointError(
            f"{p}: not a checkpoint svdcompress can read; expected .pt/.pth (torch.save), "
            ".safetensors or a Lasagne .npy/.npz list"
        )
    elif _TORCH_LEGACY_MAGIC not in head:
        raise CheckpointError(
            f"{p}: is a plain Python pickle (pickle.dump), not a file written by torch.save; load it in Python "
            "and re-save its tensors with torch.save(state_dict, path) or safetensors.torch.save_file"
        )

    obj = _load_torch(p, trust_pickle)
    if isinstance(obj, nn.Module):
        return LoadedCheckpoint(p, dict(obj.state_dict()), "torch", module=obj, classes=_classes_of(obj))
    meta: dict[str, Any] = {}
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT_NAME:
        version = obj.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(
                f"{p}: svdcompress checkpoint format version {version!r} is newer than this "
                f"svdcompress understands ({FORMAT_VERSION}); upgrade svdcompress"
            )
        meta = {k: obj.get(k) for k in ("arch", "arch_kwargs", "input_shape", "threshold", "provenance")}
        meta["format_version"] = version
        _check_meta(p, meta)
    tensors = _extract_state_dict(obj)
    if not tensors:
        kind = type(obj).__name__
        raise CheckpointError(
            f"{p}: holds a {kind} with no tensors; expected a state_dict "
            "(or a dict nesting one under 'net', 'state_dict' or 'model')"
        )
    # BayesWatch saves {'net': model}: with trust_pickle the nested module is the architecture too.
    nested = None
    if isinstance(obj, Mapping):
        nested = next((obj[k] for k in _NEST_KEYS if isinstance(obj.get(k), nn.Module)), None)
    return LoadedCheckpoint(p, tensors, "torch", meta=meta, module=nested, classes=_classes_of(obj))
