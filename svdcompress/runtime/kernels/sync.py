"""A GIL-free wait on a flag, for the runtime's worker threads (:mod:`svdcompress.runtime._workers`)."""

from __future__ import annotations

import numpy as np
from numba import njit

from ._intrinsics import cpu_relax, load_acquire

__all__ = ["spin_until"]


@njit(cache=True, nogil=True)
def spin_until(flags: np.ndarray, i: int, want: int, spins: int) -> bool:
    """Poll ``flags[i]`` until it equals ``want``, at most ``spins`` times (each poll is followed by a ``pause``,
    ~20 ns on current x86 cores); True when it does. Runs without the GIL, so Python threads go on meanwhile."""
    for _ in range(spins):
        if load_acquire(flags, i) == want:
            return True
        cpu_relax()
    return bool(load_acquire(flags, i) == want)
