"""Latency of every contender for the bundled LeNets and a wide SVDO MLP, in one run each.

    python benchmarks/latency.py                 # all three models
    python benchmarks/latency.py --models wide   # just the wide MLP

Writes ``benchmarks/results/latency.{json,md}`` and ``latency-<model>.png``. Ratios are taken
within one run (contenders interleaved), since this machine is shared and noisy.

The wide MLP (4096-4096-4096-1000) is not trained: its log σ² is drawn so that about 2% of
weights survive the threshold, with whole dead rows, the way trained SVDO layers look. Its
accuracy is meaningless; its speed is the point.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

import svdcompress
from svdcompress.bench import BenchConfig, bench
from svdcompress.datasets import load_dataset
from svdcompress.models import load_model
from svdcompress.zoo import mlp

RESULTS = Path(__file__).parent / "results"


def wide_mlp(density: float = 0.02, dead_rows: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """An SVDO MLP 4096-4096-4096-1000 where ~``density`` of weights have log α < 3."""
    g = torch.Generator().manual_seed(seed)
    model = mlp((4096, 4096, 4096, 1000), svdo=True)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, svdcompress.LinearSVDO):
                keep = torch.rand(layer.weight.shape, generator=g) < density / (1 - dead_rows)
                if layer.out_features > 1000:
                    keep[torch.rand(layer.out_features, generator=g) < dead_rows] = False
                layer.weight.normal_(0, 0.05, generator=g)
                # log α = log σ² − log θ²: far below the threshold where kept, far above elsewhere.
                la = torch.where(keep, torch.full_like(layer.weight, -6.0), torch.full_like(layer.weight, 8.0))
                layer.log_sigma2.copy_(la + torch.log(layer.weight**2 + 1e-8))
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="lenet5,lenet300,wide")
    ap.add_argument("--batch-sizes", default="1,16,256")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=30)
    a = ap.parse_args(argv)
    batch_sizes = tuple(int(b) for b in a.batch_sizes.split(","))
    threads = tuple(int(t) for t in a.threads.split(","))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_json = RESULTS / "latency.json"
    everything: dict[str, Any] = json.loads(out_json.read_text()) if out_json.exists() else {}
    data = load_dataset("fashion-mnist", "test")
    for name in a.models.split(","):
        print(f"== {name}", file=sys.stderr, flush=True)
        if name == "wide":
            model, shape, d = wide_mlp(), (4096,), None
            cfg = BenchConfig(batch_sizes=batch_sizes, threads=threads, repeats=a.repeats)
        else:
            r = load_model(svdcompress.bundled_checkpoint(name))
            model, shape, d = r.module, r.input_shape, data
            cfg = BenchConfig(batch_sizes=batch_sizes, threads=threads, repeats=a.repeats)
        assert shape is not None
        report = bench(model, input_shape=shape, config=cfg, data=d, name=name)
        everything[name] = report.to_dict()
        everything[name]["markdown"] = report.markdown()
        report.plot(RESULTS / f"latency-{name}.png")
        print(report.markdown(), flush=True)
        out_json.write_text(json.dumps(everything, indent=2))
    md = ["# Latency, every contender, one run per model", ""]
    for name, rep in everything.items():
        md += [f"## {name}", "", rep["markdown"], ""]
    (RESULTS / "latency.md").write_text("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
