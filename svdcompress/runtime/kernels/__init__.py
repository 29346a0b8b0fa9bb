"""CPU kernels compiled with numba (``cache=True``: a second process loads machine code from disk).

Every kernel trusts its arguments: :func:`svdcompress.runtime.bundle.read_bundle` and the executor validate
indices, shapes and attributes once at load, so the kernels run without bounds checks. Each kernel has a
plain reference twin in the tests (``F.conv2d``, ``F.linear``, ``F.max_pool2d``, ...).

Kernels release the GIL (``nogil=True``). :class:`svdcompress.runtime.CSRModel` runs a large batch on several
threads in one of two ways. A model made of Linear chains alone calls :func:`chain_batched_parallel`, one
numba ``prange`` region over the batch's blocks (only on a thread-safe threading layer, see
:func:`parallel_layer`). Any other model hands parts of the batch to its own worker threads
(:mod:`svdcompress.runtime._workers`): a convolution step is several kernel calls, and a parallel region
per call is slow to launch when its threads have gone to sleep (measurements: ``benchmarks/results/kernel_notes.md``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numba

_STAMP = "svdcompress-kernels.stamp"


def _writable(d: Path) -> bool:
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=d):
            pass
    except OSError:
        return False
    return True


def _numba_subdir(base: str | Path) -> Path:
    """The folder numba caches this package's kernels in below a ``NUMBA_CACHE_DIR`` of ``base``."""
    from numba.core.caching import UserProvidedCacheLocator

    return Path(base) / UserProvidedCacheLocator.get_suitable_cache_subpath(__file__)


def _seed(src: Path, dst: Path) -> int:
    """Copy the compiled kernels (and the sources stamp) in ``src`` that ``dst`` lacks; the number copied.

    Kernels compiled by another user (``svdcompress warmup`` as root in an image build) sit in a folder this
    process may read but not write; numba needs a writable one, so they are read from a copy.
    """
    n = 0
    try:
        dst.mkdir(parents=True, exist_ok=True)
        stamps = [d / _STAMP for d in (src, dst)]
        fresh = [p.read_text() if p.exists() else None for p in stamps]
        if fresh[0] != fresh[1]:  # compiled from other sources than the copy: start the copy again
            for f in [*dst.glob("*.nbi"), *dst.glob("*.nbc"), stamps[1]]:
                f.unlink(missing_ok=True)
        for f in src.iterdir():
            if f.suffix in (".nbi", ".nbc", ".stamp") and not (dst / f.name).exists():
                shutil.copyfile(f, dst / f.name)
                n += 1
    except OSError:
        pass
    return n


def _cache_dir() -> str | None:
    """Where compiled kernels go when numba's own choice cannot be written; None when it can.

    numba writes beside this package (``__pycache__``) or below ``$NUMBA_CACHE_DIR``, and raises at import
    ("no locator available") when its folder is not writable: a service user without a home, a read-only
    image, or a ``$NUMBA_CACHE_DIR`` whose subfolder another user created (root's ``svdcompress warmup`` in an
    image build makes it 0755 inside a 1777 folder). Then the kernels go to the first writable of
    ``$XDG_CACHE_HOME``/``~/.cache`` and the temporary directory, seeded with a copy of whatever was compiled
    in the unwritable folder (so a warmed cache still serves), with one warning when ``$NUMBA_CACHE_DIR`` was set.
    """
    asked = os.environ.get("NUMBA_CACHE_DIR")
    if asked:
        wanted = _numba_subdir(asked)
        if _writable(Path(asked)) and _writable(wanted):
            return None
    else:
        wanted = Path(__file__).parent / "__pycache__"
        if _writable(wanted):
            return None
    candidates = [
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "svdcompress-numba",
        Path(tempfile.gettempdir()) / f"svdcompress-numba-{os.getuid() if hasattr(os, 'getuid') else 0}",
    ]
    for c in candidates:
        try:
            if _writable(c):
                copied = _seed(wanted, _numba_subdir(c)) if wanted.is_dir() else 0
                if asked:
                    what = (
                        f"NUMBA_CACHE_DIR={asked} is not a writable directory"
                        if not _writable(Path(asked))
                        else f"NUMBA_CACHE_DIR={asked}: {wanted} is not writable by this user"
                    )
                    warnings.warn(
                        f"{what}; svdcompress caches its compiled kernels in {c} instead"
                        + (f" (starting from a copy of the {copied} files compiled there)" if copied else ""),
                        RuntimeWarning,
                        stacklevel=2,
                    )
                return str(c)
        except RuntimeError:  # Path.home() without a home directory
            continue
    return None


def _pure_cache_dir() -> str | None:
    """Where kernels built on the pure-numba twins (:mod:`._intrinsics`) go: ``pure-numba`` below the directory
    the others use, so that neither kind is ever loaded in place of the other (numba's cache index knows the
    source file, not which building blocks it was compiled with). None if it cannot be written."""
    base = getattr(numba.config, "CACHE_DIR", "") or str(Path(__file__).parent / "__pycache__")
    d = Path(base) / "pure-numba"
    return str(d) if _writable(d) else None


_dir = _cache_dir()
if _dir is not None:
    numba.config.CACHE_DIR = _dir  # type: ignore[attr-defined]  # numba.config is built at runtime

# Which building blocks the kernels use is settled at import of _intrinsics (it may compile a probe, so after
# the cache directory is set); the kernel modules compile (and look up their cache) at import: configure numba
# for them next.
from . import _intrinsics  # noqa: E402

if _intrinsics.PURE_NUMBA:
    _dir = _pure_cache_dir()
    if _dir is not None:
        numba.config.CACHE_DIR = _dir  # type: ignore[attr-defined]

from . import conv, linear, net, pointwise, sync  # noqa: E402  # the modules, for their dispatchers' cache paths
from .conv import (  # noqa: E402
    LANES,
    blocked_scratch_sizes,
    conv2d,
    conv2d_blocked,
    conv2d_im2col,
    conv2d_shifted,
    conv_offsets,
    conv_scratch_sizes,
    im2col_scratch_sizes,
    im2col_taps,
    shifted_offsets,
    shifted_scratch_sizes,
)
from .layout import ACT_CODES, MONOTONE_ACTS, POOL_AVG, POOL_MAX, POOL_NONE  # noqa: E402
from .linear import (  # noqa: E402
    chain_batched,
    chain_batched_parallel,
    chain_single,
    spmm_tile,
)
from .net import CONV_IM2COL, CONV_SHIFTED, CONV_WIDE, net_single  # noqa: E402
from .pointwise import activation, adaptive_avg_pool2d, pool2d  # noqa: E402
from .sync import parallel_layer  # noqa: E402


def _sources_digest() -> str:
    """A hash of every kernel module's source: what the compiled kernels were built from."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def drop_stale_cache(dirs: set[Path], digest: str) -> None:
    """Delete cached kernels in ``dirs`` that were compiled from other kernel sources than ``digest``'s.

    numba checks a cached kernel against the modification time of its own source file only, but the kernels
    inline helpers from sibling modules (``_scalar``, ``_intrinsics``): after an edit to a helper alone, numba
    would keep running machine code compiled from the old helper. A stamp file with the digest of all kernel
    sources sits beside the cache; when it differs, the cache goes (each kernel then recompiles once). An
    unwritable directory is left alone: numba does not write there either.
    """
    for d in dirs:
        stamp = d / _STAMP
        try:
            if stamp.read_text() == digest:
                continue
        except OSError:
            pass
        try:
            for f in [*d.glob("*.nbi"), *d.glob("*.nbc")]:
                f.unlink(missing_ok=True)
            stamp.write_text(digest)
        except OSError:
            continue


def _cache_dirs() -> set[Path]:
    """The directories numba caches this package's kernels in (one per source directory)."""
    out: set[Path] = set()
    for mod in (conv, linear, net, pointwise, sync):
        for obj in vars(mod).values():
            path = getattr(getattr(obj, "_cache", None), "_cache_path", None)  # numba's FunctionCache
            if isinstance(path, str):
                out.add(Path(path))
    return out


drop_stale_cache(_cache_dirs(), _sources_digest())


def dispatchers() -> list[Any]:
    """Every numba dispatcher of the kernel modules (the fused pass's variants included), for statistics."""
    from . import _intrinsics, _scalar

    seen: dict[int, Any] = {}
    for mod in (conv, linear, net, pointwise, sync, _scalar, _intrinsics):
        for obj in vars(mod).values():
            if hasattr(obj, "stats") and hasattr(obj, "py_func"):
                seen[id(obj)] = obj
    for d in net._VARIANTS.values():
        seen[id(d)] = d
    return list(seen.values())


__all__ = [
    "ACT_CODES",
    "CONV_IM2COL",
    "CONV_SHIFTED",
    "CONV_WIDE",
    "LANES",
    "MONOTONE_ACTS",
    "POOL_AVG",
    "POOL_MAX",
    "POOL_NONE",
    "activation",
    "adaptive_avg_pool2d",
    "blocked_scratch_sizes",
    "chain_batched",
    "chain_batched_parallel",
    "chain_single",
    "conv2d",
    "conv2d_blocked",
    "conv2d_im2col",
    "conv2d_shifted",
    "conv_offsets",
    "conv_scratch_sizes",
    "dispatchers",
    "drop_stale_cache",
    "im2col_scratch_sizes",
    "im2col_taps",
    "net_single",
    "parallel_layer",
    "pool2d",
    "shifted_offsets",
    "shifted_scratch_sizes",
    "spmm_tile",
]
