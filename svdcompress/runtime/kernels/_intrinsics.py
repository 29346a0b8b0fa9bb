"""Kernel building blocks written in LLVM IR, where numba's loops leave speed on the table.

- :func:`stack_f32`: a private, non-aliasing accumulator on the stack, which LLVM keeps in registers.
- :func:`load_acquire` and :func:`cpu_relax`: an atomic (acquire) load of an int64 flag and the CPU's spin-wait
  hint, for the worker threads' GIL-free wait (:func:`svdcompress.runtime.kernels.sync.spin_until`).
- :func:`transpose16`: a 16×16 float32 block transpose in registers (16 vector loads, 64 two-source
  shuffles, 16 vector stores). The scalar strided copy it replaces ran at ~2 cycles per element (LeNet-300-100's
  batch-256 input: ~115 µs; this: ~19 µs, AMD Zen 4, one core), most of a batched Linear chain's time.

Both are pure data movement: any SIMD width LLVM targets gets correct code (it splits or widens the vectors),
and the tests compare the kernels that use them against torch.
"""

from __future__ import annotations

from typing import Any

import llvmlite.ir as llir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["cpu_relax", "load_acquire", "stack_f32", "transpose16"]


@intrinsic
def load_acquire(typingctx: Any, arr: Any, i: Any) -> Any:
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
def cpu_relax(typingctx: Any) -> Any:
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
def stack_f32(typingctx: Any, n: Any) -> Any:
    """A pointer to ``n`` (a compile-time constant) float32s on the stack of the calling kernel.

    An accumulator there cannot alias any array argument, so LLVM neither emits runtime overlap checks around
    the vector loop nor reloads and stores the accumulator per tap: it keeps it in registers across the taps.
    Stack memory is also private to each call, hence to each thread.
    """
    if not isinstance(n, types.IntegerLiteral):
        return None
    size = n.literal_value

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        with builder.goto_entry_block():
            ptr = builder.alloca(llir.ArrayType(llir.FloatType(), size))
        ptr.align = 64
        return builder.bitcast(ptr, llir.PointerType(llir.FloatType()))

    return types.CPointer(types.float32)(n), codegen


def _masks(b: int) -> tuple[list[int], list[int]]:
    """Shuffle masks of one transpose stage: rows ``i`` and ``i + b`` swap their off-diagonal ``b``-blocks.

    Lanes ``0..15`` select from row ``i``, ``16..31`` from row ``i + b``. After the stages ``b`` = 8, 4, 2, 1
    (a 2×2 block transpose at every scale), row ``i`` holds column ``i``.
    """
    low = [j if not j & b else 16 + j - b for j in range(16)]
    high = [j + b if not j & b else 16 + j for j in range(16)]
    return low, high


@intrinsic
def transpose16(typingctx: Any, src: Any, soff: Any, spitch: Any, dst: Any, doff: Any, dpitch: Any) -> Any:
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
