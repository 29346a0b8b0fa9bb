"""Each LLVM IR building block of the kernels against its pure-numba twin (``kernels._intrinsics.TWINS``): the same
results, bit for bit; and how ``SVDCOMPRESS_PURE_NUMBA`` and a failing probe choose between them."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from numba import njit

from svdcompress.runtime.kernels import _intrinsics as I

LLVM, PURE = 0, 1


def test_every_building_block_has_a_twin() -> None:
    assert set(I.TWINS) == {"load_acquire", "cpu_relax", "stack_f32", "transpose16", "csr_row_dot"}
    side = PURE if I.PURE_NUMBA else LLVM
    for name, pair in I.TWINS.items():
        assert getattr(I, name) is pair[side], name


def _csr_row_dot(side: int) -> Any:
    dot = I.TWINS["csr_row_dot"][side]

    @njit
    def run(vals: np.ndarray, idx: np.ndarray, x: np.ndarray, j: int, e: int) -> float:
        return dot(vals, idx, x, np.uint64(j), np.uint64(e))

    return run


@pytest.mark.parametrize("itype", [np.uint8, np.uint16, np.uint32, np.uint64])
def test_csr_row_dot_twins(itype: Any) -> None:
    """Every row length mod 8 and past the 16-nonzero step, rows that start unaligned, every index width."""
    llvm, pure = _csr_row_dot(LLVM), _csr_row_dot(PURE)
    rng = np.random.default_rng(3)
    cols = 200 if itype == np.uint8 else 3000
    x = rng.standard_normal(cols).astype(np.float32)
    vals = rng.standard_normal(400).astype(np.float32)
    idx = rng.integers(0, cols, 400).astype(itype)
    for start in (0, 1, 3, 8, 13):
        for length in [*range(0, 20), 31, 32, 33, 63, 64, 65, 250]:
            got, want = llvm(vals, idx, x, start, start + length), pure(vals, idx, x, start, start + length)
            assert np.float32(got).tobytes() == np.float32(want).tobytes(), (start, length)


def _transpose16(side: int) -> Any:
    tr = I.TWINS["transpose16"][side]

    @njit
    def run(src: np.ndarray, soff: int, spitch: int, dst: np.ndarray, doff: int, dpitch: int) -> None:
        tr(src, np.uint64(soff), np.uint64(spitch), dst, np.uint64(doff), np.uint64(dpitch))

    return run


def test_transpose16_twins() -> None:
    llvm, pure = _transpose16(LLVM), _transpose16(PURE)
    rng = np.random.default_rng(4)
    src = rng.standard_normal(40 * 20 + 5).astype(np.float32)
    for soff, spitch, doff, dpitch in ((0, 16, 0, 16), (5, 20, 3, 40), (1, 50, 0, 17)):
        a = np.full(17 * 40 + 16, np.nan, np.float32)
        b = a.copy()
        llvm(src, soff, spitch, a, doff, dpitch)
        pure(src, soff, spitch, b, doff, dpitch)
        assert a.tobytes() == b.tobytes()  # the untouched NaNs too
        block = src[soff : soff + 15 * spitch + 16].copy()
        want = np.stack([block[i * spitch : i * spitch + 16] for i in range(16)]).T
        assert np.array_equal(np.stack([a[doff + k * dpitch : doff + k * dpitch + 16] for k in range(16)]), want)


def _stack_f32(side: int) -> Any:
    stack = I.TWINS["stack_f32"][side]

    @njit
    def run(x: np.ndarray) -> tuple[float, float]:
        a = stack(16)
        b = stack(16)  # a second buffer, not the first one again
        for i in range(16):
            a[i] = x[i]
            b[i] = 2.0 * x[i]
        sa = np.float32(0.0)
        sb = np.float32(0.0)
        for i in range(16):
            sa += a[i]
            sb += b[i]
        return sa, sb

    return run


def test_stack_f32_twins() -> None:
    x = np.random.default_rng(5).standard_normal(16).astype(np.float32)
    got, want = _stack_f32(LLVM)(x), _stack_f32(PURE)(x)
    assert np.float32(got[0]).tobytes() == np.float32(want[0]).tobytes()
    assert np.float32(got[1]).tobytes() == np.float32(want[1]).tobytes()
    assert got[1] == pytest.approx(2 * got[0])


def _flags(side: int) -> Any:
    load, relax = I.TWINS["load_acquire"][side], I.TWINS["cpu_relax"][side]

    @njit
    def run(flags: np.ndarray) -> np.ndarray:
        out = np.empty(flags.size, np.int64)
        for i in range(flags.size):
            relax()
            out[i] = load(flags, i)
        return out

    return run


def test_load_acquire_and_cpu_relax_twins() -> None:
    flags = np.array([0, -1, 7, 1 << 62], np.int64)
    assert _flags(LLVM)(flags).tolist() == _flags(PURE)(flags).tolist() == flags.tolist()


def test_choose() -> None:
    def ok() -> None:
        pass

    def broken() -> None:
        raise RuntimeError("LLVM IR parsing error\n<string>:12: invalid intrinsic")

    for value in ("1", "yes", "true", " 1 "):
        assert I.choose({I.PURE_NUMBA_ENV: value}, broken) == (True, None)  # the probe is not run
    for value in ("", "0", "false", "off"):
        assert I.choose({I.PURE_NUMBA_ENV: value}, ok) == (False, None)
    assert I.choose({}, broken) == (True, "RuntimeError: LLVM IR parsing error")


def test_probe_passes() -> None:
    I._probe()
    I._probe_in_child()  # as at import: in a fresh interpreter running _intrinsics.py alone


def test_a_failing_probe_process_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(I.sys, "executable", "/bin/false")
    with pytest.raises(RuntimeError, match="the probe process exited with 1"):
        I._probe_in_child()


def test_environment_variable_selects_the_twins_and_their_cache(tmp_path: Any) -> None:
    """Read at import: the kernels then call the twins, and are cached apart from the intrinsics' builds."""
    code = (
        "import numba\n"
        "from svdcompress.runtime.kernels import _intrinsics as I, linear\n"
        "assert I.PURE_NUMBA and I.FALLBACK_REASON is None\n"
        "assert linear.csr_row_dot is I.TWINS['csr_row_dot'][1]\n"
        "print(numba.config.CACHE_DIR)\n"
    )
    env = {**os.environ, I.PURE_NUMBA_ENV: "1", "NUMBA_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(tmp_path / "pure-numba")
