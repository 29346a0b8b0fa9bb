"""Run a CSR bundle on a CPU with svdcompress's own numba kernels, without the model's code and without torch.

This package imports numpy and numba only (plus :mod:`svdcompress.errors`), so a served model pays neither
torch's import time nor its memory. Calls take and return numpy arrays, or torch tensors when given one.

Example:
    >>> import numpy as np, svdcompress.runtime as rt          # doctest: +SKIP
    >>> model = rt.load("lenet5.csr")                          # doctest: +SKIP
    >>> model(np.zeros((8, 1, 28, 28), np.float32)).shape      # doctest: +SKIP
    (8, 10)
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from typing import Any

import numba
import numpy as np

from ..errors import BundleError, InvalidInputError
from . import kernels as K, plan_record
from ._workers import SpinningWorkers
from .bundle import EXTENSION, FORMAT_NAME, FORMAT_VERSION, Bundle, read_bundle
from .executor import BATCHED, KERNELS, OPS, build_plan
from .warmup import warmup

__all__ = [
    "BATCHED",
    "EXTENSION",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "KERNELS",
    "PARALLEL_MIN_ITEMS",
    "PARALLEL_MIN_MACS",
    "PRANGE_MIN_MACS",
    "SLOW_LOAD_S",
    "SUPPORTED_OPS",
    "Bundle",
    "CSRModel",
    "load",
    "read_bundle",
    "warmup",
]

SUPPORTED_OPS = frozenset(OPS)
"""Manifest op names this runtime executes."""

PARALLEL_MIN_MACS = 4_000_000
"""A call is split across ``threads`` only when it executes at least this many multiply-adds: handing part of a
batch to a waiting worker thread and collecting it costs tens of µs, so smaller calls run whole on the caller's
thread (measurements: ``benchmarks/results/kernel_notes.md``)."""

PRANGE_MIN_MACS = 400_000
"""A model made of Linear chains alone runs a call on several threads in one numba parallel region
(:func:`svdcompress.runtime.kernels.chain_batched_parallel`, one thread per block of 64 examples at most)
from this many multiply-adds: such a region costs a few µs while numba's threads are awake."""

_log = logging.getLogger(__name__)

SLOW_LOAD_S = 3.0
"""A :func:`load` still running after this many seconds says why, as an INFO record of the ``svdcompress.runtime``
logger (the command line shows it; a library user sees it once logging shows INFO): numba is compiling the
kernels, once per machine."""

PARALLEL_MIN_ITEMS = 16
"""Nor is a call split into parts of fewer examples than this: the batched kernels work on blocks of 16
interleaved images (convolutions) or 16-64 examples (Linear chains), and half-empty blocks cost more than the
second thread gives."""


class CSRModel:
    """A loaded bundle: call it on a batch ``(N, *input_shape)`` to get ``(N, *output_shape)`` in fp32.

    Safe to call from many threads at once: each call allocates its own activations and scratch; the kernels
    share nothing but the read-only weights.

    With ``threads > 1``, a large batch runs on several threads. A model made of Linear chains alone runs it in
    one numba parallel region (:data:`PRANGE_MIN_MACS`; numba's threads wait for the next region as its
    threading layer does, then sleep). Any other model splits it into ``threads`` parts: the caller's thread
    runs one, the model's worker threads (created on first need) the rest, and the kernels release the GIL. An
    idle worker polls for its next part for 2 ms without the GIL (:mod:`._workers`: an idle core runs the next
    call slower), then blocks. While one call is running on several
    threads, a concurrent call runs whole on its own thread.

    Attributes:
        manifest: The bundle's manifest, as read.
        input_shape, output_shape: One example's shapes, without the batch dim.
        threads: Threads a call of :data:`PARALLEL_MIN_MACS` or more multiply-adds (and at least
            2 × :data:`PARALLEL_MIN_ITEMS` examples) is split across.
        layer_kernels: Layer name → ``"sparse"`` or ``"dense"``: the kernel that runs it at batch 1.
        layer_kernels_batched: The same for larger batches.
        nnz: Layer name → non-zero weights.
        macs_per_item: Multiply-adds the batch-1 kernels execute per example.
        weight_bytes: Bytes of weight data (values, indices, row pointers) the batch-1 kernels read per call.
        kernel_plan: The kernel and layout each layer runs per batch regime, whether batch 1 runs as one fused
            call, and this CPU: what ``export`` records in the bundle (:mod:`.plan_record`).
        kernels_timed: Candidate kernels timed during the load (0 when the bundle's record decided everything).
    """

    def __init__(self, bundle: Bundle, kernel: str = "auto", threads: int | None = None) -> None:
        if kernel not in KERNELS:
            raise InvalidInputError(f"kernel must be one of {', '.join(KERNELS)}; got {kernel!r}")
        avail = os.cpu_count() or 1
        if threads is None:
            threads = 1
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise InvalidInputError(f"threads must be a positive integer, got {threads!r}")
        if threads > avail:
            warnings.warn(
                f"threads={threads} but this machine has {avail} cores; using {avail}", RuntimeWarning, stacklevel=3
            )
            threads = avail
        self._pool: SpinningWorkers | None = None
        self._pool_lock = threading.Lock()
        self.manifest = bundle.manifest
        self.path = bundle.path
        self.threads = threads
        self.input_shape = tuple(int(d) for d in bundle.manifest["input_shape"])
        plan = build_plan(bundle, kernel)
        self._plan = plan
        self._ids = bundle.manifest.get("input_dtype") == "int64"  # token ids (validated by build_plan)
        self.output_shape = plan.output_shape
        self.layer_kernels = plan.layer_kernels
        self.layer_kernels_batched = plan.layer_kernels_batched
        self.nnz = plan.nnz
        self.macs_per_item = plan.macs_per_item
        self.weight_bytes = plan.weight_bytes
        self.kernel_plan: dict[str, Any] = {
            "cpu": dict(plan_record.cpu_identity()),
            "layers": plan.choices,
            "single": plan.single is not None,
        }
        self.kernels_timed = plan.timed
        self._prange = plan.parallel_only()
        self._prange_lock = threading.Lock()

    def __call__(self, x: Any) -> Any:
        """Run the model.

        Args:
            x: ``(N, *input_shape)`` numpy array or torch tensor (any float dtype; computed in fp32), or
                integer token ids when the manifest declares ``input_dtype: int64``.

        Returns:
            ``(N, *output_shape)`` float32: a numpy array, or a CPU torch tensor if ``x`` was a tensor.

        Raises:
            InvalidInputError: ``x`` does not have shape ``(N, *input_shape)``.
        """
        # Checks ordered for the common case (a float32 numpy array): each costs a noticeable part of a small call.
        is_torch = type(x) is not np.ndarray and type(x).__module__.split(".")[0] == "torch"
        arr = x.detach().cpu().numpy() if is_torch else x
        if self._ids and np.asarray(arr).dtype.kind not in "iu":  # token ids: never truncate floats silently
            raise InvalidInputError(f"{self.path}: this model takes int64 token ids, got {np.asarray(arr).dtype}")
        arr = np.ascontiguousarray(arr, dtype=np.int64 if self._ids else np.float32)
        if arr.shape[1:] != self.input_shape:
            raise InvalidInputError(
                f"{self.path}: expected input of shape (N, "
                f"{', '.join(map(str, self.input_shape))}), got {tuple(arr.shape)}"
            )
        n = arr.shape[0]
        if n == 0:
            out = np.zeros((0, *self.output_shape), np.float32)
        elif n == 1 and self._plan.single is not None:
            out = self._plan.single(arr)
        elif self.threads > 1 and n >= 2 * PARALLEL_MIN_ITEMS and (team := self._prange_team(n)) > 1:
            if self._prange_lock.acquire(blocking=False):  # a concurrent call runs whole on its own thread
                # numba's team size is per calling thread: set it to the parts for the call, then restore it
                # (each set costs about a µs, so only when it differs).
                prev = numba.get_num_threads()
                try:
                    if prev != team:
                        numba.set_num_threads(team)
                    out = self._run(arr, team)
                finally:
                    if prev != team:
                        numba.set_num_threads(prev)
                    self._prange_lock.release()
            else:
                out = self._run(arr)
        elif self.threads > 1 and n >= 2 * PARALLEL_MIN_ITEMS and n * self.macs_per_item >= PARALLEL_MIN_MACS:
            parts = np.array_split(arr, min(self.threads, n // PARALLEL_MIN_ITEMS))
            done = self._workers().try_map(self._run, parts[0], parts[1:])
            out = self._run(arr) if done is None else np.concatenate(done)
        else:
            out = self._run(arr)
        if is_torch:
            return sys.modules["torch"].from_numpy(out)
        return out

    def _workers(self) -> SpinningWorkers:
        with self._pool_lock:
            if self._pool is None:
                self._pool = SpinningWorkers(self.threads - 1)
            return self._pool

    def _prange_team(self, n: int) -> int:
        """Threads for a call of ``n`` examples in one numba parallel region (see :data:`PRANGE_MIN_MACS`): no
        more than the chain kernel's blocks of examples; 1 when the call does not run in one."""
        if not self._prange or n * self.macs_per_item < PRANGE_MIN_MACS:
            return 1
        blocks = -(-n // K.spmm_tile(n))
        most = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]  # numba.config is built at runtime
        team = min(self.threads, blocks, most)
        return team if team > 1 and K.parallel_layer() is not None else 1

    def _run(self, arr: np.ndarray, parts: int = 1) -> np.ndarray:
        v: list[Any] = [None] * self._plan.nslots
        v[0] = arr
        par = self._plan.parallel if parts > 1 else {}
        for i, step in enumerate(self._plan.steps):
            twin = par.get(i)
            if twin is None:
                step(v)
            else:
                twin(v, parts)
        return np.ascontiguousarray(v[self._plan.output_slot], dtype=np.float32)

    def close(self) -> None:
        """Stop the worker threads (they are also stopped when the model is garbage-collected or at exit)."""
        with self._pool_lock:
            if self._pool is not None:
                self._pool.close(wait=True)
                self._pool = None

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.close(wait=False)

    def __repr__(self) -> str:
        kinds = ", ".join(f"{k}={v}" for k, v in self.layer_kernels.items())
        return (
            f"CSRModel({os.path.basename(self.path)}, input_shape={self.input_shape}, "
            f"output_shape={self.output_shape}, threads={self.threads}, kernels: {kinds})"
        )


def load(path: str | os.PathLike[str], *, threads: int | None = None, kernel: str = "auto") -> CSRModel:
    """Load, validate and compile a CSR bundle written by :func:`svdcompress.export_csr`.

    Args:
        path: The bundle file (``.csr`` by custom).
        threads: Threads a large call is split across (default 1; see :data:`PARALLEL_MIN_MACS`). Affects
            this model only, never the process.
        kernel: ``"auto"`` (each layer runs the kernel measured faster on its shape, at batch 1 and at
            :data:`BATCHED`), ``"sparse"`` or ``"dense"``.

    Returns:
        A callable :class:`CSRModel`.

    Raises:
        BundleError: The file is missing, not a bundle, corrupt, or uses an op this runtime does not know;
            the message names the file and the tensor or node.
        InvalidInputError: Unknown ``kernel`` or a non-positive ``threads``.
    """
    if kernel not in KERNELS:
        raise InvalidInputError(f"kernel must be one of {', '.join(KERNELS)}; got {kernel!r}")
    bundle = read_bundle(path)
    note = _slow_load_note()
    try:
        return CSRModel(bundle, kernel, threads)
    except (BundleError, InvalidInputError):
        raise
    except (KeyError, IndexError, TypeError, ValueError, OverflowError) as exc:  # a manifest of the wrong shape
        raise BundleError(f"{path}: manifest is malformed ({type(exc).__name__}: {exc})") from None
    finally:
        if note is not None:
            note.cancel()


def _slow_load_note() -> threading.Timer | None:
    """A started timer that logs one line if the load outlasts :data:`SLOW_LOAD_S` (without the file's name: the
    command line's own checks load a temporary file); None when nobody listens to INFO records."""
    if not _log.isEnabledFor(logging.INFO):
        return None
    message = (
        "CSR runtime: loading takes a while: on their first use on a machine numba compiles the kernels the "
        "model runs (~10-60 s for the LeNets; cached on disk, later loads take under a second; `svdcompress "
        "warmup BUNDLE` compiles them ahead of time), and a bundle without a kernel plan for this CPU times each "
        "layer's best two candidates on its shape"
    )
    timer = threading.Timer(SLOW_LOAD_S, _log.info, args=(message,))
    timer.daemon = True
    timer.start()
    return timer
