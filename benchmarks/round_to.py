"""Compact ONNX in ONNX Runtime: dense vs structurally pruned at ragged widths vs pruned with round_to.

    python benchmarks/round_to.py                       # the LeNets; ResNet, MobileNetV2, VGG-like at 90%
    python benchmarks/round_to.py --models resnet --batch-sizes 1,64

For each model (the bundled LeNets as trained; the CNNs with seeded synthetic SVDO sparsity, 25% dead units,
``svdcompress.nn.zoo.synthetic_svdo_``): the
masked dense ONNX (``ort-dense``'s shapes), and the pruned ONNX at ``round_to`` 1 (ragged), 4, 8 and 16, all timed
in ONNX Runtime on one thread, interleaved in one process (a round robin of samples, each the median of several
calls), so that the ratios come from one run. Writes ``benchmarks/results/round_to.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from svdcompress import bundled_checkpoint, export_model, load_model, mask_model
from svdcompress.benchmark.machine import machine_info
from svdcompress.export import export_onnx
from svdcompress.export.onnx import ort_session
from svdcompress.nn.zoo import INPUT_SHAPES, build, synthetic_svdo_

RESULTS = Path(__file__).parent / "results"
MODELS: dict[str, dict[str, Any]] = {
    "lenet5": {"bundled": "lenet5"},
    "lenet300": {"bundled": "lenet300"},
    "resnet": {"arch": "resnet"},
    "mobilenet_v2": {"arch": "mobilenet_v2", "width": 0.5},
    "vgg_like": {"arch": "vgg_like", "k": 0.25},
}
ROUNDS = (1, 4, 8, 16)


def _time(sessions: dict[str, Any], x: np.ndarray, repeats: int) -> dict[str, float]:
    """Median µs per call of each session on ``x``: a round robin of ``repeats`` samples of a few calls each."""
    calls = max(1, int(2000 / max(1, x.shape[0])))
    samples: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        for _ in range(3):
            s.run(None, {s.get_inputs()[0].name: x})
    for r in range(repeats):
        order = list(sessions.items())
        order = order[r % len(order) :] + order[: r % len(order)]
        for name, s in order:
            feed = {s.get_inputs()[0].name: x}
            s.run(None, feed)
            t0 = time.perf_counter()
            for _ in range(min(calls, 20)):
                s.run(None, feed)
            samples[name].append((time.perf_counter() - t0) / min(calls, 20) * 1e6)
    return {k: statistics.median(v) for k, v in samples.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batch-sizes", default="1,64")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--repeats", type=int, default=25)
    a = ap.parse_args(argv)
    batches = [int(b) for b in a.batch_sizes.split(",")]
    out: dict[str, Any] = {
        "run": {
            "command": " ".join(["python", "benchmarks/round_to.py", *(sys.argv[1:] if argv is None else argv)]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine_info(),
            "sparsity": a.sparsity,
        },
        "models": {},
    }
    md = ["# Compact ONNX in ONNX Runtime: ragged widths vs round_to", ""]
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        for name in a.models.split(","):
            spec = dict(MODELS[name])
            if "bundled" in spec:  # the trained LeNets, as shipped
                resolved = load_model(bundled_checkpoint(spec["bundled"]))
                net, shape = resolved.module.eval(), resolved.input_shape or (1, 28, 28)
            else:
                arch = spec.pop("arch")
                net = synthetic_svdo_(build(arch, svdo=True, **spec), sparsity=a.sparsity, seed=0)
                shape = INPUT_SHAPES[arch]
            print(f"== {name}: exporting", file=sys.stderr, flush=True)
            paths = {"ort-dense": Path(d) / f"{name}-dense.onnx"}
            export_onnx(mask_model(net, 3.0).eval(), paths["ort-dense"], input_shape=shape)
            for r in ROUNDS:
                key = f"ort-compact round_to={r}"
                paths[key] = Path(d) / f"{name}-r{r}.onnx"
                export_model(net, "onnx", paths[key], input_shape=shape, round_to=r)
            sessions = {k: ort_session(p, threads=1) for k, p in paths.items()}
            rows: dict[str, dict[str, float]] = {}
            for b in batches:
                x = np.random.default_rng(0).standard_normal((b, *shape)).astype(np.float32)
                print(f"   timing batch {b}", file=sys.stderr, flush=True)
                rows[str(b)] = _time(sessions, x, a.repeats)
            out["models"][name] = {"median_us": rows, "bytes": {k: p.stat().st_size for k, p in paths.items()}}
            md += [f"## {name}", "", "| artifact | " + " | ".join(f"batch {b} µs | × vs dense" for b in batches) + " |"]
            md += ["|---|" + "---:|---:|" * len(batches)]
            for k in paths:
                cells = []
                for b in batches:
                    t = rows[str(b)][k]
                    cells += [f"{t:,.0f}", f"{rows[str(b)]['ort-dense'] / t:.2f}×"]
                md.append(f"| {k} | " + " | ".join(cells) + " |")
            md.append("")
    m = out["run"]["machine"]
    md[1:1] = [
        "",
        f"Run {out['run']['started']}: `{out['run']['command']}`; CPU {m.get('cpu', '?')}; 1 thread, fp32.",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "round_to.json").write_text(json.dumps(out, indent=2))
    (RESULTS / "round_to.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
