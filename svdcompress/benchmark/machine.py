"""What the machine is and what it can do: CPU model and SIMD extensions, copy bandwidth, practical fp32 peak.

Benchmarks write these beside every figure, since the CPU changes between sessions here; the peak and the
bandwidth turn a kernel's time into a fraction of what the machine allows.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["copy_bandwidth", "cpu_simd_flags", "machine_info", "sgemm_peak", "time_once", "torch_threads"]


# /proc/cpuinfo flags that say which vector instructions kernels can use (x86 and Arm).
_SIMD_PREFIXES = ("sse", "ssse3", "avx", "fma", "f16c", "amx", "asimd", "sve", "neon", "vnni")


def cpu_simd_flags(flags: Sequence[str]) -> list[str]:
    """The SIMD-relevant entries of a CPU flag list (SSE/AVX/AVX-512/AMX/FMA/F16C on x86, NEON/SVE on Arm)."""
    return sorted({f for f in flags if f.startswith(_SIMD_PREFIXES)})


def machine_info() -> dict[str, Any]:
    """CPU model, its SIMD extensions (from ``/proc/cpuinfo`` flags), core count, platform and Python."""
    cpu = platform.processor() or "unknown"
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and cpu in ("unknown", platform.processor()):
                    cpu = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = value.split()
                if cpu != "unknown" and flags:
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "simd": cpu_simd_flags(flags),
        "logical_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Set torch's intra-op thread count to ``n`` for the block; restore the previous count on exit."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def copy_bandwidth(threads: int = 1, nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Memory copy bandwidth in bytes/s, STREAM convention (bytes read + bytes written).

    Runs with ``threads`` torch threads and restores the caller's thread count.
    """
    with torch_threads(threads):
        src = torch.ones(nbytes // 4, dtype=torch.float32)
        dst = torch.empty_like(src)
        dst.copy_(src)
        best = min(time_once(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * nbytes / best


def sgemm_peak(threads: int = 1, n: int = 1024, repeats: int = 5) -> dict[str, float]:
    """The machine's practical fp32 peak in GMAC/s: the best of ``repeats`` n×n×n matrix products.

    Two BLAS libraries are timed and the faster one counts, since either may be the better-tuned one for a
    CPU: torch's (``torch.mm`` under :func:`torch_threads`, which torch honours reliably at any time) and
    numpy's (``np.matmul``, limited to ``threads`` with ``threadpoolctl`` when that is installed; without it
    numpy's BLAS cannot be limited reliably after import, so it is left out). Process state is restored.

    Returns:
        ``{"torch": GMAC/s, "numpy": GMAC/s (when measured), "peak": the larger}``.
    """
    macs = float(n) ** 3
    out: dict[str, float] = {}
    with torch_threads(threads):
        a = torch.rand(n, n, dtype=torch.float32)
        b = torch.rand(n, n, dtype=torch.float32)
        torch.mm(a, b)
        out["torch"] = macs / min(time_once(lambda: torch.mm(a, b)) for _ in range(repeats)) / 1e9
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        an, bn = a.numpy(), b.numpy()
        with threadpool_limits(limits=threads, user_api="blas"):
            np.matmul(an, bn)
            out["numpy"] = macs / min(time_once(lambda: np.matmul(an, bn)) for _ in range(repeats)) / 1e9
    out["peak"] = max(out.values())
    return out


def time_once(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
