"""Thread plumbing for the runtime: a GIL-free wait on a flag (:mod:`svdcompress.runtime._workers`), and whether
numba's parallel kernels may run in this process (:func:`parallel_layer`)."""

from __future__ import annotations

import os
import threading

import numba
import numpy as np
from numba import njit, prange
from numba.np.ufunc import parallel as _numba_parallel

from ._intrinsics import cpu_relax, load_acquire

__all__ = ["parallel_layer", "spin_until"]

SAFE_LAYERS = ("omp", "tbb")
"""numba threading layers that take parallel regions from several threads at once. The third, ``workqueue``
(numba's fallback when neither OpenMP nor TBB loads), aborts the process when two threads enter it together."""

_layer: str | None = None  # the layer the probe launched, once it has run
_unsafe_after_fork = False
_probe_lock = threading.Lock()  # two first calls at once must not enter a layer that may turn out to be workqueue


@njit(cache=True, nogil=True)
def spin_until(flags: np.ndarray, i: int, want: int, spins: int) -> bool:
    """Poll ``flags[i]`` until it equals ``want``, at most ``spins`` times (each poll is followed by a ``pause``,
    ~20 ns on current x86 cores); True when it does. Runs without the GIL, so Python threads go on meanwhile."""
    for _ in range(spins):
        if load_acquire(flags, i) == want:
            return True
        cpu_relax()
    return bool(load_acquire(flags, i) == want)


@njit(cache=True, nogil=True, parallel=True)
def _probe(n: int) -> int:
    total = 0
    for i in prange(n):
        total += i
    return total


def parallel_layer() -> str | None:
    """The numba threading layer the parallel kernels run on here, or None when they must not run.

    The first call starts numba's threads (a trivial parallel kernel). None when the layer is not one of
    :data:`SAFE_LAYERS` (a served model is called from many threads at once), and in a process forked from one
    whose GNU OpenMP threads had started: libgomp cannot run there (numba terminates the child at its first
    parallel region). Callers then split work on their own threads instead.
    """
    global _layer
    if _unsafe_after_fork:
        return None
    if _layer is None:
        with _probe_lock:
            if _layer is None:
                _probe(2)
                _layer = str(numba.threading_layer())  # type: ignore[attr-defined]  # exported, not in __all__
    return _layer if _layer in SAFE_LAYERS else None


def _after_fork_in_child() -> None:
    global _unsafe_after_fork
    started = _layer is not None or bool(getattr(_numba_parallel, "_is_initialized", False))
    if started:
        try:
            layer = str(numba.threading_layer())  # type: ignore[attr-defined]  # exported, not in __all__
        except ValueError:  # not initialised after all
            return
        # Only GNU OpenMP is known to break in a forked child; TBB and workqueue are fork-safe.
        _unsafe_after_fork = layer == "omp"


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
