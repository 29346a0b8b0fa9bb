"""Kernel building blocks written in LLVM IR, where numba's loops leave speed on the table, each with a
pure-numba twin.

- :func:`stack_f32`: a private, non-aliasing float32 accumulator on the stack, which LLVM keeps in registers.
- :func:`load_acquire` and :func:`cpu_relax`: an atomic (acquire) load of an int64 flag and the CPU's spin-wait
  hint, for the worker threads' GIL-free wait (:func:`svdcompress.runtime.kernels.sync.spin_until`).
- :func:`transpose16`: a 16×16 float32 block transpose in registers (16 vector loads, 64 two-source
  shuffles, 16 vector stores), where a scalar strided copy costs a load and a store per element.
- :func:`csr_row_dot`: one CSR row times a gathered input vector, eight nonzeros per vector multiply-add (the
  inputs assembled by element inserts, the values loaded as one vector), the values prefetched ahead. Scalar
  code needs two floating-point loads per nonzero.

All are plain LLVM IR: any SIMD width LLVM targets gets correct code (it splits or widens the vectors), and the
tests compare the kernels that use them against torch. Why each exists, with the measurements:
``benchmarks/results/kernel_notes.md``.

Pure-numba twins
----------------
Each intrinsic has a twin in plain numba (``_pure_*``) that computes the same result, bit for bit:
:data:`TWINS` pairs them, and ``tests/test_intrinsics.py`` compares each pair. The kernels call the names above,
which are bound once, at import, to one side:

- ``SVDCOMPRESS_PURE_NUMBA=1`` in the environment (any value but empty, ``0``, ``false``, ``no``, ``off``): the
  twins. The kernels are then slower (a heap buffer instead of the stack accumulator, a scalar transpose and
  row dot), but need nothing from LLVM beyond what numba's own loops need. The spin-wait then reduces to one
  check (a plain load in a loop may be hoisted out of it): idle workers block at once instead of polling.
  Kernels compiled this way are cached apart from the others (``pure-numba`` below the usual cache directory).
- Otherwise the intrinsics, once a probe (:func:`_probe`) has built and run each one and checked its result,
  in a child process (LLVM may crash on IR it rejects rather than raise). The probe runs once per numba and
  llvmlite version (a stamp file in the kernels' cache directory remembers that it passed). If it fails, for
  instance after a numba or llvmlite upgrade whose LLVM no longer accepts the IR, the kernels use the twins,
  with one ``RuntimeWarning`` saying why.

:data:`PURE_NUMBA` says which side was chosen, :data:`FALLBACK_REASON` why the twins were taken if the probe
failed.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import llvmlite
import llvmlite.ir as llir
import numba
import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.numpy_support import carray

__all__ = [
    "FALLBACK_REASON",
    "PURE_NUMBA",
    "PURE_NUMBA_ENV",
    "TWINS",
    "cpu_relax",
    "csr_row_dot",
    "load_acquire",
    "stack_f32",
    "transpose16",
]

PURE_NUMBA_ENV = "SVDCOMPRESS_PURE_NUMBA"
"""The environment variable that selects the pure-numba twins (read once, at import)."""


# ---------------------------------------------------------------------------------------------- LLVM IR


@intrinsic
def _llvm_load_acquire(typingctx: Any, arr: Any, i: Any) -> Any:
    """``arr[i]`` of a 1-D int64 array as an atomic acquire load: re-read from memory on every call (a plain
    load in a wait loop may be hoisted out of it), and ordered before the loads that follow."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1):
        return None
    if not isinstance(i, types.Integer):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        idx = context.cast(builder, args[1], sig.args[1], types.intp)
        return builder.load_atomic(builder.gep(data, [idx]), "acquire", 8)

    return types.int64(arr, i), codegen


@intrinsic
def _llvm_cpu_relax(typingctx: Any) -> Any:
    """The spin-wait hint (x86 ``pause``): a polling loop yields the core's resources and draws less power."""

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        import platform

        if platform.machine().lower() in ("x86_64", "amd64", "i686", "x86"):
            fn = cgutils.get_or_insert_function(
                builder.module, llir.FunctionType(llir.VoidType(), []), "llvm.x86.sse2.pause"
            )
            builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _stack_ptr_f32(typingctx: Any, n: Any) -> Any:
    """A pointer to ``n`` (a compile-time constant) float32s on the stack of the function being compiled."""
    if not isinstance(n, types.IntegerLiteral):
        return None
    size = n.literal_value

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        with builder.goto_entry_block():
            ptr = builder.alloca(llir.ArrayType(llir.FloatType(), size))
        ptr.align = 64
        return builder.bitcast(ptr, llir.PointerType(llir.FloatType()))

    return types.CPointer(types.float32)(n), codegen


@njit(cache=True, inline="always")
def _llvm_stack_f32(n: int) -> np.ndarray:
    """``n`` (a compile-time constant) uninitialised float32s on the stack of the calling kernel, as an array.

    An accumulator there cannot alias any array argument, so LLVM neither emits runtime overlap checks around
    the vector loop nor reloads and stores the accumulator per tap: it keeps it in registers across the taps.
    Stack memory is also private to each call, hence to each thread. (Inlined by numba, so the stack is the
    caller's.)
    """
    return carray(_stack_ptr_f32(n), (n,))


def _masks(b: int) -> tuple[list[int], list[int]]:
    """Shuffle masks of one transpose stage: rows ``i`` and ``i + b`` swap their off-diagonal ``b``-blocks.

    Lanes ``0..15`` select from row ``i``, ``16..31`` from row ``i + b``. After the stages ``b`` = 8, 4, 2, 1
    (a 2×2 block transpose at every scale), row ``i`` holds column ``i``.
    """
    low = [j if not j & b else 16 + j - b for j in range(16)]
    high = [j + b if not j & b else 16 + j for j in range(16)]
    return low, high


@intrinsic
def _llvm_transpose16(typingctx: Any, src: Any, soff: Any, spitch: Any, dst: Any, doff: Any, dpitch: Any) -> Any:
    """``dst[doff + k·dpitch + i] = src[soff + i·spitch + k]`` for ``i, k < 16``: a 16×16 block, transposed.

    ``src`` and ``dst`` are 1-D float32 arrays; offsets and pitches are uint64 element counts. No bounds
    checks: the caller guarantees that all 16 rows of 16 lie inside both arrays.
    """
    if not all(isinstance(a, types.Array) and a.dtype == types.float32 and a.ndim == 1 for a in (src, dst)):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        i64, i32 = llir.IntType(64), llir.IntType(32)
        vec = llir.VectorType(llir.FloatType(), 16)
        sp = context.make_array(sig.args[0])(context, builder, args[0]).data
        dp = context.make_array(sig.args[3])(context, builder, args[3]).data

        def row(base: Any, off: Any, pitch: Any, i: int) -> Any:
            at = builder.add(off, builder.mul(pitch, llir.Constant(i64, i)))
            return builder.bitcast(builder.gep(base, [at]), vec.as_pointer())

        rows = [builder.load(row(sp, args[1], args[2], i), align=4) for i in range(16)]
        for b in (8, 4, 2, 1):
            low, high = (llir.Constant(llir.VectorType(i32, 16), m) for m in _masks(b))
            new = list(rows)
            for i in range(16):
                if not i & b:
                    new[i] = builder.shuffle_vector(rows[i], rows[i + b], low)
                    new[i + b] = builder.shuffle_vector(rows[i], rows[i + b], high)
            rows = new
        for i in range(16):
            builder.store(rows[i], row(dp, args[4], args[5], i), align=4)
        return context.get_dummy_value()

    u64 = types.uint64
    return types.void(src, u64, u64, dst, u64, u64), codegen


def _contiguous_1d(a: Any, dtype: Any) -> bool:
    return isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and (dtype is None or a.dtype == dtype)


PREFETCH_AHEAD = 1024
"""How far ahead (in nonzeros, 4 kB of values) :func:`csr_row_dot` asks for the values it will read: far enough
to hide a miss to memory when the weights are not in cache, at one prefetch per 16 nonzeros."""


def _prefetch_name(ptr: Any) -> str:
    """The name of LLVM's prefetch intrinsic for a pointer argument of type ``ptr``: ``llvm.prefetch.p0`` where
    llvmlite writes opaque pointers (``ptr``, LLVM 15 and later), the typed-pointer ``llvm.prefetch.p0i8``
    otherwise."""
    return "llvm.prefetch.p0" if str(ptr) == "ptr" else "llvm.prefetch.p0i8"


@intrinsic
def _llvm_csr_row_dot(typingctx: Any, vals: Any, idx: Any, x: Any, start: Any, end: Any) -> Any:
    """``Σ vals[k] · x[idx[k]]`` over ``k`` in ``[start, end)`` (uint64), as float32.

    Lane ``q`` of the vector accumulator sums the nonzeros ``start + 8i + q`` in order (multiply-add fused where
    the scalar code's ``contract`` fuses it: ``llvm.fmuladd``), the last ``(end − start) mod 8`` go to lane 0 in
    order, and the lanes are added as ``((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))``: the sum of
    :func:`_pure_csr_row_dot`, bit for bit. The loop takes two 8-blocks per step and prefetches the values
    :data:`PREFETCH_AHEAD` ahead, one cache line per step.

    ``vals`` and ``x`` are C-contiguous 1-D float32 arrays, ``idx`` a 1-D array of any unsigned integer type. No
    bounds checks: the caller guarantees ``end ≤ len(vals), len(idx)`` and every ``idx[k] < len(x)`` (validated
    when the bundle is loaded). A prefetch past the end of ``vals`` is harmless (it never faults).
    """
    if not (_contiguous_1d(vals, types.float32) and _contiguous_1d(x, types.float32) and _contiguous_1d(idx, None)):
        return None
    if not (isinstance(idx.dtype, types.Integer) and idx.dtype in types.unsigned_domain):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        f32, i64, i32, i8p = llir.FloatType(), llir.IntType(64), llir.IntType(32), llir.IntType(8).as_pointer()
        v8 = llir.VectorType(f32, 8)
        vp, ip, xp = (
            context.make_array(t)(context, builder, a).data for t, a in zip(sig.args[:3], args[:3], strict=True)
        )
        end = args[4]
        mod = builder.module
        vfma = cgutils.get_or_insert_function(mod, llir.FunctionType(v8, [v8] * 3), "llvm.fmuladd.v8f32")
        sfma = cgutils.get_or_insert_function(mod, llir.FunctionType(f32, [f32] * 3), "llvm.fmuladd.f32")
        prefetch = cgutils.get_or_insert_function(
            mod, llir.FunctionType(llir.VoidType(), [i8p, i32, i32, i32]), _prefetch_name(i8p)
        )

        def n(v: int) -> Any:
            return llir.Constant(i64, v)

        def x_at(k: Any) -> Any:  # x[idx[k]]
            c = builder.load(builder.gep(ip, [k]))
            return builder.load(builder.gep(xp, [builder.zext(c, i64) if c.type.width < 64 else c]))

        def block8(j: Any, acc: Any) -> Any:  # acc + vals[j:j+8] * x[idx[j:j+8]], lane by lane
            w = builder.load(builder.bitcast(builder.gep(vp, [j]), v8.as_pointer()), align=4)
            xv = llir.Constant(v8, llir.Undefined)
            for q in range(8):
                xv = builder.insert_element(xv, x_at(builder.add(j, n(q))), llir.Constant(i32, q))
            return builder.call(vfma, [w, xv, acc])

        def block16(j: Any, acc: Any) -> Any:
            ahead = builder.bitcast(builder.gep(vp, [builder.add(j, n(PREFETCH_AHEAD))]), i8p)
            builder.call(prefetch, [ahead, llir.Constant(i32, 0), llir.Constant(i32, 3), llir.Constant(i32, 1)])
            return block8(builder.add(j, n(8)), block8(j, acc))

        def one(k: Any, s0: Any) -> Any:
            return builder.call(sfma, [builder.load(builder.gep(vp, [k])), x_at(k), s0])

        def loop(name: str, j0: Any, acc0: Any, step: int, body: Any) -> tuple[Any, Any]:
            """``while j + step <= end: acc = body(j, acc); j += step``; returns the final (j, acc)."""
            entry = builder.block
            head, loop_body, out = (builder.append_basic_block(f"csrdot.{name}.{b}") for b in ("head", "body", "out"))
            builder.branch(head)
            builder.position_at_end(head)
            j, acc = builder.phi(i64), builder.phi(acc0.type)
            j.add_incoming(j0, entry)
            acc.add_incoming(acc0, entry)
            nxt = builder.add(j, n(step))
            builder.cbranch(builder.icmp_unsigned("<=", nxt, end), loop_body, out)
            builder.position_at_end(loop_body)
            new = body(j, acc)
            j.add_incoming(nxt, builder.block)
            acc.add_incoming(new, builder.block)
            builder.branch(head)
            builder.position_at_end(out)
            return j, acc

        j, acc = loop("by16", args[3], llir.Constant(v8, [0.0] * 8), 16, block16)
        j, acc = loop("by8", j, acc, 8, block8)  # at most one 8-block left
        _, s0 = loop("by1", j, builder.extract_element(acc, llir.Constant(i32, 0)), 1, one)
        s = [s0] + [builder.extract_element(acc, llir.Constant(i32, q)) for q in range(1, 8)]
        add = builder.fadd
        return add(add(add(s[0], s[1]), add(s[2], s[3])), add(add(s[4], s[5]), add(s[6], s[7])))

    u64 = types.uint64
    return types.float32(vals, idx, x, u64, u64), codegen


# ---------------------------------------------------------------------------------------------- pure numba


@njit(cache=True, inline="always")
def _pure_load_acquire(arr: np.ndarray, i: int) -> int:
    """``arr[i]``, a plain load: on x86 every load is an acquire load, but the compiler may hoist it out of a
    loop that does nothing else (a wait loop then checks once)."""
    return arr[i]


@njit(cache=True, inline="always")
def _pure_cpu_relax() -> None:
    """No spin-wait hint: nothing."""


@njit(cache=True, inline="always")
def _pure_stack_f32(n: int) -> np.ndarray:
    """``n`` uninitialised float32s on the heap (freed when the caller drops them)."""
    return np.empty(n, np.float32)


@njit(cache=True, inline="always")
def _pure_transpose16(
    src: np.ndarray, soff: np.uint64, spitch: np.uint64, dst: np.ndarray, doff: np.uint64, dpitch: np.uint64
) -> None:
    """:func:`_llvm_transpose16` element by element."""
    u16 = np.uint64(16)
    for i in range(u16):
        s = soff + i * spitch
        for k in range(u16):
            dst[doff + k * dpitch + i] = src[s + k]


@njit(cache=True, fastmath={"contract"})  # not inlined by numba: the caller's fastmath flags would apply
def _pure_csr_row_dot(vals: np.ndarray, idx: np.ndarray, x: np.ndarray, start: np.uint64, end: np.uint64) -> np.float32:
    """:func:`_llvm_csr_row_dot`'s sum in scalar code: eight partial sums (sum ``q`` takes the nonzeros
    ``start + 8i + q``), the rest into the first, then a fixed pairwise order."""
    u1, u2, u3, u4 = np.uint64(1), np.uint64(2), np.uint64(3), np.uint64(4)
    u5, u6, u7, u8 = np.uint64(5), np.uint64(6), np.uint64(7), np.uint64(8)
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
    j = start
    while j + u8 <= end:
        s0 += vals[j] * x[idx[j]]
        s1 += vals[j + u1] * x[idx[j + u1]]
        s2 += vals[j + u2] * x[idx[j + u2]]
        s3 += vals[j + u3] * x[idx[j + u3]]
        s4 += vals[j + u4] * x[idx[j + u4]]
        s5 += vals[j + u5] * x[idx[j + u5]]
        s6 += vals[j + u6] * x[idx[j + u6]]
        s7 += vals[j + u7] * x[idx[j + u7]]
        j += u8
    while j < end:
        s0 += vals[j] * x[idx[j]]
        j += u1
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


TWINS: dict[str, tuple[Any, Any]] = {
    "load_acquire": (_llvm_load_acquire, _pure_load_acquire),
    "cpu_relax": (_llvm_cpu_relax, _pure_cpu_relax),
    "stack_f32": (_llvm_stack_f32, _pure_stack_f32),
    "transpose16": (_llvm_transpose16, _pure_transpose16),
    "csr_row_dot": (_llvm_csr_row_dot, _pure_csr_row_dot),
}
"""Each building block's (LLVM IR, pure numba) implementations."""


# ---------------------------------------------------------------------------------------------- choice


def _probe_kernel(
    vals: np.ndarray, idx: np.ndarray, x: np.ndarray, src: np.ndarray, dst: np.ndarray, flags: np.ndarray
) -> tuple[float, float, int]:
    """Every LLVM IR building block once (compiled by :func:`_probe`)."""
    buf = _llvm_stack_f32(16)
    for i in range(16):
        buf[i] = x[i]
    _llvm_transpose16(src, np.uint64(0), np.uint64(16), dst, np.uint64(0), np.uint64(16))
    _llvm_cpu_relax()
    dot = _llvm_csr_row_dot(vals, idx, x, np.uint64(0), np.uint64(vals.size))
    return dot, buf[15], _llvm_load_acquire(flags, 1)


def _probe() -> None:
    """Build and run every LLVM IR building block (one kernel, compiled here, not cached), and check what they
    return; raises if any fails to build or returns something else."""
    kernel = njit(nogil=True)(_probe_kernel)
    rng = np.random.default_rng(0)
    vals = rng.standard_normal(37).astype(np.float32)
    idx = rng.integers(0, 16, 37).astype(np.uint16)
    x = rng.standard_normal(16).astype(np.float32)
    src = np.arange(256, dtype=np.float32)
    dst = np.zeros(256, np.float32)
    dot, last, flag = kernel(vals, idx, x, src, dst, np.array([3, 7], np.int64))
    want = float(np.dot(vals.astype(np.float64), x[idx].astype(np.float64)))
    if not (
        abs(dot - want) <= 1e-5 * (1.0 + float(np.abs(vals).sum()))
        and last == x[15]
        and flag == 7
        and np.array_equal(dst, src.reshape(16, 16).T.reshape(-1))
    ):
        raise RuntimeError("an LLVM IR building block returned a wrong result")


_PROBE_CHILD_ENV = "_SVDCOMPRESS_INTRINSICS_PROBE"
PROBE_TIMEOUT_S = 600.0


def _probe_in_child() -> None:
    """:func:`_probe` in a fresh interpreter running this file alone: LLVM may abort or crash the process on IR
    it rejects, rather than raise. Raises if the child fails; in-process when there is no interpreter to run."""
    if not sys.executable:
        _probe()
        return
    env = {k: v for k, v in os.environ.items() if k != PURE_NUMBA_ENV}
    env[_PROBE_CHILD_ENV] = "1"
    cache_dir = getattr(numba.config, "CACHE_DIR", "")
    if cache_dir:  # the child's cache=True decorators need a writable place, as here
        env["NUMBA_CACHE_DIR"] = str(cache_dir)
    code = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='_svdcompress_intrinsics_probe')"
    proc = subprocess.run(
        [sys.executable, "-c", code, __file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        how = f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited with {proc.returncode}"
        last = (proc.stderr.strip().splitlines() or [""])[-1][:200]
        raise RuntimeError(f"the probe process {how}" + (f": {last}" if last else ""))


def _probe_once() -> None:
    """:func:`_probe_in_child`, unless a stamp beside the kernels' cache says it passed with this numba, llvmlite
    and source; writes the stamp when it passes (if the directory is writable)."""
    base = getattr(numba.config, "CACHE_DIR", "") or str(Path(__file__).parent / "__pycache__")
    key = hashlib.sha256(
        f"{numba.__version__} {llvmlite.__version__} {platform.machine()}".encode() + Path(__file__).read_bytes()
    ).hexdigest()[:16]
    stamp = Path(base) / f"svdcompress-intrinsics-{key}.ok"
    if stamp.exists():
        return
    _probe_in_child()
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()
    except OSError:
        pass


def choose(env: Mapping[str, str], probe: Callable[[], None]) -> tuple[bool, str | None]:
    """(use the pure-numba twins, why the probe failed or None), from the environment and the probe."""
    if env.get(PURE_NUMBA_ENV, "").strip().lower() not in ("", "0", "false", "no", "off"):
        return True, None
    try:
        probe()
    except Exception as exc:  # any failure to build or run: numba's, llvmlite's or LLVM's error types
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return True, f"{type(exc).__name__}: {first}"
    return False, None


if os.environ.get(_PROBE_CHILD_ENV) and __name__ == "_svdcompress_intrinsics_probe":
    _probe()  # the child of _probe_in_child: a failure exits non-zero
    sys.exit(0)

PURE_NUMBA, FALLBACK_REASON = choose(os.environ, _probe_once)
"""Whether the kernels use the pure-numba twins; and why, if the intrinsics' probe failed (else None)."""
if FALLBACK_REASON is not None:
    warnings.warn(
        f"svdcompress's LLVM IR kernel building blocks failed to build with this numba/llvmlite ({FALLBACK_REASON}); "
        f"the runtime uses their pure-numba twins instead (correct, slower). Set {PURE_NUMBA_ENV}=1 to choose them "
        "without this check.",
        RuntimeWarning,
        stacklevel=2,
    )

_side = 1 if PURE_NUMBA else 0
load_acquire = TWINS["load_acquire"][_side]
cpu_relax = TWINS["cpu_relax"][_side]
stack_f32 = TWINS["stack_f32"][_side]
transpose16 = TWINS["transpose16"][_side]
csr_row_dot = TWINS["csr_row_dot"][_side]
