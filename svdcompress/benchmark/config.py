"""What ``bench`` times: the contender names and :class:`BenchConfig`. Imports neither torch nor numba, so the
command line can check options before any of them loads."""

from __future__ import annotations

from dataclasses import dataclass

from ..checkpoint import DEFAULT_THRESHOLD

__all__ = ["CONTENDERS", "DENSE_REFERENCES", "OPENVINO_CONTENDERS", "BenchConfig"]

CONTENDERS = (
    "torch-dense",
    "ort-dense",
    "openvino-dense",
    "torch-masked",
    "torch-pruned",
    "ort-compact",
    "openvino-compact",
    "ort-sparse",
    "csr-runtime",
)
OPENVINO_CONTENDERS = ("openvino-dense", "openvino-compact")
# speedup_vs_best_dense divides the faster of these (same batch size and threads) by a contender's median.
DENSE_REFERENCES = ("ort-dense", "openvino-dense")


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. ``repeats`` timed samples per contender and setting, after ``warmup`` calls."""

    batch_sizes: tuple[int, ...] = (1, 16, 256)
    threads: tuple[int, ...] = (1,)
    repeats: int = 30
    warmup: int = 5
    sample_ms: float = 2.0
    contenders: tuple[str, ...] = CONTENDERS
    threshold: float = DEFAULT_THRESHOLD
    convention: str | None = None  # for weight + log_sigma2 layers whose class does not say (see analyze)

    def __post_init__(self) -> None:
        from ..pruning.masking import check_threshold
        from ..pruning.structural import PruneConfig

        check_threshold(self.threshold)
        PruneConfig(convention=self.convention)  # an unknown name: the same message as prune's
