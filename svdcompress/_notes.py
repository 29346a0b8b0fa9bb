"""Notes on long work, for whoever drives the library: the command line prints them; the library stays silent.

Kept apart from the modules that do the work so that setting the hook imports neither torch nor numba.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["slow_work"]

slow_work: Callable[[str], None] | None = None
"""Called (from a timer thread) with one line when a step turns out long, e.g. the CSR runtime compiling its
kernels on first use on a machine. None: say nothing."""
