"""Threshold sweep on the bundled LeNets: accuracy vs compression vs latency.

    python benchmarks/threshold_sweep.py

For each log α threshold: Fashion-MNIST test accuracy of the masked model, compression
|W| / |W≠0|, and the median latency of the compressed contenders at batch 1 and 256 (one
thread). Writes ``benchmarks/results/threshold_sweep.{json,md,png}``. log α is bimodal, so
accuracy is flat over a wide band of thresholds; pick the threshold on validation data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import svdcompress
from svdcompress.benchmark.harness import BenchConfig, bench
from svdcompress.nn.architecture import load_model
from svdcompress.pruning.masking import mask_model
from svdcompress.tuning.datasets import load_dataset

RESULTS = Path(__file__).parent / "results"
CONTENDERS = ("ort-dense", "torch-pruned", "ort-compact", "csr-runtime")


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    hits = sum(int((model(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum()) for i in range(0, len(x), 1000))
    return hits / len(x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--thresholds", default="-2,-1,0,1,2,3,4,5,6")
    ap.add_argument("--repeats", type=int, default=15)
    a = ap.parse_args(argv)
    thresholds = [float(t) for t in a.thresholds.split(",")]
    x, y = load_dataset("fashion-mnist", "test")
    rows: list[dict[str, Any]] = []
    torch.set_num_threads(1)
    for name in ("lenet5", "lenet300"):
        r = load_model(svdcompress.bundled_checkpoint(name))
        assert r.input_shape is not None
        for thr in tqdm(thresholds, desc=name):
            total = svdcompress.analyze(r.module, threshold=thr).total
            acc = accuracy(mask_model(r.module, thr), x, y)
            cfg = BenchConfig(
                batch_sizes=(1, 256), threads=(1,), repeats=a.repeats, contenders=CONTENDERS, threshold=thr
            )
            rep = bench(r.module, input_shape=r.input_shape, config=cfg, progress=False, name=name)
            lat = {f"{q.contender}@{q.batch_size}": q.median_us for q in rep.results}
            rows.append(
                {
                    "model": name,
                    "threshold": thr,
                    "accuracy": acc,
                    "compression": total["compression"],
                    "kept": total["kept"],
                    "latency_us": lat,
                }
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "threshold_sweep.json").write_text(json.dumps(rows, indent=2))
    cols = [f"{c}@{b}" for b in (1, 256) for c in CONTENDERS]
    md = [
        "# Threshold sweep (Fashion-MNIST test, 1 thread, fp32, median µs per batch)",
        "",
        "| model | threshold | accuracy % | compression | " + " | ".join(cols) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(cols),
    ]
    for row in rows:
        md.append(
            f"| {row['model']} | {row['threshold']:g} | {100 * row['accuracy']:.2f} | "
            f"{row['compression']:.1f}× | " + " | ".join(f"{row['latency_us'][c]:,.0f}" for c in cols) + " |"
        )
    (RESULTS / "threshold_sweep.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, ax in zip(("lenet5", "lenet300"), axes, strict=True):
        rs = [q for q in rows if q["model"] == name]
        ax.plot([q["compression"] for q in rs], [100 * q["accuracy"] for q in rs], marker="o")
        for q in rs:
            ax.annotate(f"{q['threshold']:g}", (q["compression"], 100 * q["accuracy"]), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("compression |W| / |W≠0| (labels: log α threshold)")
        ax.set_ylabel("test accuracy %")
        ax.set_title(f"{name}, Fashion-MNIST")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "threshold_sweep.png", dpi=110)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
