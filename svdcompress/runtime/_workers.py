"""Worker threads that take one part of a split call: they wait for work spinning without the GIL, then block.

A worker that blocks as soon as it is idle leaves its core idle, and an idle core can run the next calls several
times slower (measurements: ``benchmarks/results/kernel_notes.md``). So each worker, after a part, polls its
flag for :data:`SPIN_S` (a nogil numba loop with the CPU's ``pause`` hint: other Python threads run meanwhile)
before it blocks on a condition; the caller waits for the parts the same way. Between bursts of calls nothing
spins for longer than that.

Flags live in one int64 array, a 128-byte row per worker (no false sharing): ``[w, 0]`` is the number of the part
posted to worker ``w``, ``[w, 8]`` the number of the part it finished. Parts are handed over in Python objects
written before the flag (under the GIL) and read after it is seen (acquire load).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from .kernels.sync import spin_until

__all__ = ["SPIN_S", "SpinningWorkers"]

SPIN_S = 0.002
"""How long an idle worker (or a caller waiting for a part) polls before it blocks: about one or two calls of a
model big enough to split (:data:`svdcompress.runtime.PARALLEL_MIN_MACS`)."""
_SPIN_NS = 25  # one poll + pause, in ns (about that on current x86 cores)
_POSTED, _DONE, _ROW = 0, 8, 16


class SpinningWorkers:
    """``n`` worker threads, each running one part of a call at a time (:meth:`map`). One caller at a time:
    :meth:`try_map` returns None when another call holds the workers, so concurrent callers run whole instead."""

    def __init__(self, n: int, name: str = "svdcompress-runtime") -> None:
        self._flags = np.zeros(n * _ROW, np.int64)
        self._spins = max(1, int(SPIN_S * 1e9 / _SPIN_NS))
        self._jobs: list[tuple[Callable[[Any], Any], Any] | None] = [None] * n
        self._results: list[tuple[bool, Any]] = [(True, None)] * n
        self._posted = [0] * n
        self._cond = threading.Condition()
        self._busy = threading.Lock()
        self._stop = False
        self._threads = [
            threading.Thread(target=self._loop, args=(w,), name=f"{name}-{w}", daemon=True) for w in range(n)
        ]
        for t in self._threads:
            t.start()

    def try_map(self, fn: Callable[[Any], Any], first: Any, rest: list[Any]) -> list[Any] | None:
        """``[fn(first), *map(fn, rest)]``: ``rest`` on the workers, ``first`` on the calling thread; None (nothing
        run) when another caller is using the workers or they are stopped."""
        if len(rest) > len(self._threads) or not self._busy.acquire(blocking=False):
            return None
        try:
            if self._stop:
                return None
            for w, part in enumerate(rest):
                self._jobs[w] = (fn, part)
                self._posted[w] += 1
                self._flags[w * _ROW + _POSTED] = self._posted[w]
            with self._cond:
                self._cond.notify_all()
            try:
                head: tuple[bool, Any] = (True, fn(first))
            except BaseException as exc:  # the workers' parts are still collected: they may not outlive the call
                head = (False, exc)
            parts = [head]
            for w in range(len(rest)):
                self._wait(w * _ROW + _DONE, self._posted[w])
                parts.append(self._results[w])
                self._jobs[w] = None
                self._results[w] = (True, None)
            for ok, value in parts:
                if not ok:
                    raise value
            return [value for _, value in parts]
        finally:
            self._busy.release()

    def close(self, wait: bool = True) -> None:
        """Stop the workers (idempotent); a part in progress finishes first. ``wait``: join the threads."""
        self._stop = True
        with self._cond:
            self._cond.notify_all()
        if wait:
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join()

    def _wait(self, i: int, want: int) -> None:
        if spin_until(self._flags, i, want, self._spins):
            return
        with self._cond:
            while self._flags[i] != want:
                self._cond.wait()

    def _loop(self, w: int) -> None:
        done = 0
        while True:
            want = done + 1
            if not spin_until(self._flags, w * _ROW + _POSTED, want, self._spins):
                with self._cond:
                    while self._flags[w * _ROW + _POSTED] != want and not self._stop:
                        self._cond.wait()
            if self._flags[w * _ROW + _POSTED] != want:  # stopped while idle
                return
            job = self._jobs[w]
            assert job is not None
            fn, part = job
            try:
                self._results[w] = (True, fn(part))
            except BaseException as exc:  # handed to the caller, who raises it
                self._results[w] = (False, exc)
            # An idle worker must not keep the model alive (fn is its bound method): the model's __del__ stops us.
            del job, fn, part
            done = want
            self._flags[w * _ROW + _DONE] = done
            with self._cond:
                self._cond.notify_all()
