"""Kernel building blocks written in LLVM IR, where numba's loops leave speed on the table.

- :func:`stack_f32`: a private, non-aliasing accumulator on the stack, which LLVM keeps in registers.
- :func:`load_acquire` and :func:`cpu_relax`: an atomic (acquire) load of an int64 flag and the CPU's spin-wait
  hint, for the worker threads' GIL-free wait (:func:`svdcompress.runtime.kernels.sync.spin_until`).
- :func:`transpose16`: a 16×16 float32 block transpose in registers (16 vector loads, 64 two-source
  shuffles, 16 vector stores). The scalar strided copy it replaces ran at ~2 cycles per element (LeNet-300-100's
  batch-256 input: ~115 µs; this: ~19 µs, AMD Zen 4, one core), most of a batched Linear chain's time.
- :func:`csr_row_dot`: one CSR row times a gathered input vector, eight nonzeros per vector multiply-add (the
  inputs assembled by element inserts, the values loaded as one vector), the values prefetched ahead. Scalar code
  needs two floating-point loads per nonzero, and Zen 4 issues two per cycle: 1.25 cycles per nonzero measured;
  this: 0.95-0.99 with the weights in cache (AVX-512 hardware gathers: 1.67 for 8 lanes, slower still for 16).
  What bounds it now is the element inserts (one shuffle each); broadcast-and-blend would avoid them, but LLVM
  folds it back into inserts, and numba's JIT cannot assemble inline asm.

All are plain LLVM IR: any SIMD width LLVM targets gets correct code (it splits or widens the vectors), and the
tests compare the kernels that use them against torch.
"""

from __future__ import annotations

from typing import Any

import llvmlite.ir as llir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["cpu_relax", "csr_row_dot", "load_acquire", "stack_f32", "transpose16"]


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


def _contiguous_1d(a: Any, dtype: Any) -> bool:
    return isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and (dtype is None or a.dtype == dtype)


PREFETCH_AHEAD = 1024
"""How far ahead (in nonzeros, 4 kB of values) :func:`csr_row_dot` asks for the values it will read. Measured on a
4096×4096 layer at 2% (Zen 4): with the weights evicted from cache between calls, 1024 cut a row sweep from
~180-200 to ~170 µs; with them in cache it costs nothing (a second prefetch per step for the column indices did:
+6%, and 2048 or more gained less)."""


@intrinsic
def csr_row_dot(typingctx: Any, vals: Any, idx: Any, x: Any, start: Any, end: Any) -> Any:
    """``Σ vals[k] · x[idx[k]]`` over ``k`` in ``[start, end)`` (uint64), as float32.

    The sum is the one :func:`~svdcompress.runtime.kernels.chain_single`'s scalar loop formed, bit for bit: lane
    ``q`` of the vector accumulator sums the nonzeros ``start + 8i + q`` in order (multiply-add fused where the
    scalar code's ``contract`` fused it: ``llvm.fmuladd``), the last ``(end − start) mod 8`` go to lane 0 in
    order, and the lanes are added as ``((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))``. The loop takes two
    8-blocks per step and prefetches the values :data:`PREFETCH_AHEAD` ahead, one cache line per step.

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
            mod, llir.FunctionType(llir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0i8"
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
