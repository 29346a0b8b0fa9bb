"""Quantised weight values for CSR bundles: uniform per-row integers or a per-layer k-means codebook.

A CSR layer's ``nnz`` kept values become ``bits``-bit codes, stored one per byte (format 3, ``packing: byte``:
the bundle's LZMA members entropy-code them, so a peaked distribution of codes costs less than ``bits`` each),
or in format 2 packed little-endian into bytes (code ``i`` holds bits ``i·bits … i·bits + bits - 1`` of the
stream), plus either

- ``uniform``: one fp32 step per row; value = (code − (2^(bits−1) − 1)) · step[row]. Symmetric, so the grid
  holds 0 and ±max|row| exactly; ``bits`` ≥ 2.
- ``codebook``: 2^bits fp32 centroids of a 1-D k-means over the layer's values; value = codebook[code].

The runtime decodes once at load into the fp32 values its kernels take, so kernel speed is unchanged. This module
imports numpy only (the runtime uses it); the exporter picks schemes and bit widths (:func:`choose`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError

__all__ = [
    "AUTO_C",
    "MAX_BITS",
    "POSITION_BYTES",
    "SCHEMES",
    "Quantized",
    "choose",
    "codebook",
    "decode",
    "entropy_bytes",
    "pack_codes",
    "uniform",
    "unpack_codes",
]

SCHEMES = ("uniform", "codebook")
POSITION_BYTES = 1.0
"""Bytes of sparsity pattern (``gaps`` or ``row_delta``, LZMA-coded) a stored weight costs, about 0.9–1.1 on the
bundled LeNets: a grid that rounds more weights to 0 saves this much per weight besides their codes."""
MAX_BITS = 8
AUTO_C = 1 / 32
"""``bits="auto"``: the fewest bits whose quantisation noise variance stays within ``AUTO_C`` × the median posterior
variance σ² of the layer's kept weights (for a uniform step Δ: Δ²/12 ≤ c·σ², an RMS error of σ/√32 ≈ 0.18σ; a
codebook is held to the same RMS error). Training perturbs every weight by N(0, σ²), but the ELBO only keeps the
*loss under* that noise low: the accuracy at the posterior mean still pays for noise, about in proportion to its
variance (the second-order loss change ½·tr(H·Σ) is linear in it). So c is a fraction of the posterior noise whose
cost is small, not one the network "tolerates": at c = 1/4 the bundled LeNet-5 lost 0.95 points on its 55,000
training images (0.68 on the test set), at 1/8 0.47, at 1/16 0.32, at 1/32 0.20, the same as 1/64, where its
conv1 (whose σ is finer than an 8-bit grid) is at :data:`MAX_BITS` and the other layers cost little
(LeNet-300-100: 0.37, 0.14, 0.05, 0.05, 0.04). Export still verifies the outputs, but checks accuracy only with
``--data``."""


@dataclass(frozen=True)
class Quantized:
    """One layer's quantised values: the scheme, bits, codes (one per byte) and the scheme's table."""

    scheme: str
    bits: int
    codes: np.ndarray  # uint8, one code per byte
    table: np.ndarray  # float32: per-row steps (uniform) or 2^bits centroids (codebook)
    count: int

    def zero(self) -> np.ndarray:
        """Which codes decode to exactly 0: the exporter drops those weights from the sparsity pattern."""
        if self.scheme == "uniform":
            out: np.ndarray = self.codes == (1 << (self.bits - 1)) - 1
        else:
            out = self.table[self.codes.astype(np.int64)] == 0
        return out

    @property
    def nbytes(self) -> int:
        """Estimated stored size (what scheme choice compares): the entropy of the codes of the weights that stay
        nonzero, the table, and :data:`POSITION_BYTES` of sparsity pattern per weight that stays."""
        stay = ~self.zero()
        return entropy_bytes(self.codes[stay]) + int(self.table.nbytes) + math.ceil(POSITION_BYTES * int(stay.sum()))


def entropy_bytes(codes: np.ndarray) -> int:
    """Bytes an order-0 entropy coder needs for ``codes``: ⌈n·H/8⌉ with H the empirical entropy in bits.

    Example:
        >>> entropy_bytes(np.array([0, 1] * 8))  # one bit per code
        2
    """
    if codes.size == 0:
        return 0
    p = np.bincount(codes.reshape(-1).astype(np.int64)) / codes.size
    p = p[p > 0]
    return math.ceil(float(-(p * np.log2(p)).sum()) * codes.size / 8)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ``codes`` (each < 2^bits) into bytes, little-endian bit order.

    Example:
        >>> pack_codes(np.array([1, 2, 3]), 2).tolist()  # 01 10 11 -> 0b00111001
        [57]
    """
    c = np.asarray(codes, np.uint32)
    planes = (c[:, None] >> np.arange(bits, dtype=np.uint32)) & 1  # (n, bits), least significant first
    return np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little")


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The ``count`` codes of width ``bits`` in ``packed`` (as written by :func:`pack_codes`), int64."""
    flat = np.unpackbits(np.asarray(packed, np.uint8), count=count * bits, bitorder="little")
    planes = flat.reshape(count, bits).astype(np.int64)
    out: np.ndarray = (planes << np.arange(bits, dtype=np.int64)).sum(axis=1)
    return out


def uniform(values: np.ndarray, rows: np.ndarray, nrows: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes, per-row steps): symmetric round-to-nearest on each row's grid of 2^bits − 1 levels."""
    half = (1 << (bits - 1)) - 1
    top = np.zeros(nrows, np.float64)
    np.maximum.at(top, rows, np.abs(values.astype(np.float64)))
    step = (top / half).astype(np.float32)
    safe = np.where(step > 0, step, 1.0).astype(np.float64)
    q = np.clip(np.rint(values / safe[rows]), -half, half).astype(np.int64)
    return q + half, step


def codebook(values: np.ndarray, bits: int, iters: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(codes, centroids): Lloyd's 1-D k-means with 2^bits centroids.

    It starts from the evenly spaced grid over [min, max]; Lloyd's steps never raise the squared error, so the
    codebook is never worse than that layer-wide uniform grid.
    """
    v = values.astype(np.float64)
    k = 1 << bits
    cents = np.linspace(v.min(), v.max(), k) if v.size else np.zeros(k)
    for _ in range(iters):
        cents = np.sort(cents)
        edges = (cents[1:] + cents[:-1]) / 2
        codes = np.searchsorted(edges, v)
        sums = np.bincount(codes, weights=v, minlength=k)
        counts = np.bincount(codes, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), cents)
        if np.allclose(new, cents, rtol=0, atol=1e-12):
            break
        cents = new
    cents = np.sort(cents)
    codes = np.searchsorted((cents[1:] + cents[:-1]) / 2, v)
    return codes.astype(np.int64), cents.astype(np.float32)


def decode(scheme: str, bits: int, codes: np.ndarray, table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """fp32 values from unpacked ``codes``: ``rows`` gives each value's row (uniform's steps are per row)."""
    if scheme == "uniform":
        half = (1 << (bits - 1)) - 1
        out: np.ndarray = ((codes.astype(np.int64) - half).astype(np.float32) * table[rows]).astype(np.float32)
    else:
        out = table[codes].astype(np.float32)
    return out


def _encode(scheme: str, values: np.ndarray, rows: np.ndarray, nrows: int, bits: int) -> tuple[Quantized, float]:
    if scheme == "uniform":
        codes, table = uniform(values, rows, nrows, bits)
    else:
        codes, table = codebook(values, bits)
    approx = decode(scheme, bits, codes, table, rows)
    rms = float(np.sqrt(np.mean((approx.astype(np.float64) - values) ** 2))) if values.size else 0.0
    return Quantized(scheme, bits, codes.astype(np.uint8), table, int(values.size)), rms


def choose(
    values: np.ndarray,
    rows: np.ndarray,
    nrows: int,
    bits: int | None,
    sigma: float | None = None,
    c: float = AUTO_C,
) -> tuple[Quantized, float, float]:
    """The smallest encoding of a layer's kept ``values`` at a target RMS error; returns (it, rms, target).

    ``bits`` given: the target is the uniform scheme's error at ``bits``; a codebook of as many or fewer bits
    that meets it wins when it is smaller ("by size at equal error"). ``bits=None`` (auto): the target is
    √(:data:`AUTO_C`)·``sigma`` (the median posterior standard deviation of the kept weights), and each scheme
    takes the fewest bits (2 to :data:`MAX_BITS`) that meet it, or :data:`MAX_BITS`.
    """
    if bits is None:
        if sigma is None or not math.isfinite(sigma) or sigma < 0:
            raise InvalidInputError(
                "bits='auto' needs the layer's median posterior standard deviation (sigma=); give bits=2..8 for a "
                "model without SVDO layers",
                param="sigma",
            )
        if not (math.isfinite(c) and c > 0):
            raise InvalidInputError(f"c must be a positive number, got {c!r}", param="c")
        target = math.sqrt(c) * sigma
        widths = range(2, MAX_BITS + 1)
    else:
        target = _encode("uniform", values, rows, nrows, bits)[1]
        widths = range(2, bits + 1)
    best: tuple[Quantized, float] | None = None
    for scheme in SCHEMES:
        pick: tuple[Quantized, float] | None = None
        for b in widths:
            q, rms = _encode(scheme, values, rows, nrows, b)
            pick = (q, rms)
            if rms <= target * (1 + 1e-9):
                break
        assert pick is not None
        ok = pick[1] <= target * (1 + 1e-9)
        if best is None:
            best = pick
            continue
        best_ok = best[1] <= target * (1 + 1e-9)
        if (ok and not best_ok) or (ok == best_ok and (pick[0].nbytes, pick[1]) < (best[0].nbytes, best[1])):
            best = pick
    assert best is not None
    return best[0], best[1], target
