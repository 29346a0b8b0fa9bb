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
import tempfile
import warnings
from pathlib import Path

import numba


def _writable(d: Path) -> bool:
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=d):
            pass
    except OSError:
        return False
    return True


def _cache_dir() -> str | None:
    """Where compiled kernels go when ``__pycache__`` beside this package is not writable.

    numba itself falls back to a user-wide directory, but raises at import ("no locator available") when
    that is not writable either (a service user without a home, a read-only image), or when
    ``$NUMBA_CACHE_DIR`` names a directory it cannot write. Then use the first writable of
    ``$XDG_CACHE_HOME``/``~/.cache`` and the temporary directory (with a warning if ``$NUMBA_CACHE_DIR`` was set).
    """
    asked = os.environ.get("NUMBA_CACHE_DIR")
    if asked:
        if _writable(Path(asked)):
            return None
    elif _writable(Path(__file__).parent / "__pycache__"):
        return None
    candidates = [
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "svdcompress-numba",
        Path(tempfile.gettempdir()) / f"svdcompress-numba-{os.getuid() if hasattr(os, 'getuid') else 0}",
    ]
    for c in candidates:
        try:
            if _writable(c):
                if asked:
                    warnings.warn(
                        f"NUMBA_CACHE_DIR={asked} is not a writable directory; svdcompress caches its compiled "
                        f"kernels in {c} instead",
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
        stamp = d / "svdcompress-kernels.stamp"
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
