"""Latency of every contender for the bundled LeNets, a wide SVDO MLP and the CNNs people deploy, in one run each.

    pip install -e '.[peers]'                    # OpenVINO, for the openvino-* contenders
    python benchmarks/latency.py                 # the LeNets and the wide MLP
    python benchmarks/latency.py --models wide   # just the wide MLP
    python benchmarks/latency.py --models resnet-90,mobilenet_v2-90,vgg_like-90   # CNNs, batches 1 and 64

Writes ``benchmarks/results/latency.{json,md}`` (with the issue-10 targets table from
``latency_summary.py``; ``python benchmarks/latency_summary.py --readme`` then rewrites the README's
table from the JSON) and ``latency-<model>.png`` from this invocation
only (earlier results are replaced, never merged): every contender, the OpenVINO peers included,
interleaved in one run per model, all models in one process. The JSON holds ``{"run": {machine
info incl. CPU model, SIMD extensions and the measured sgemm peak, versions, command, start and end
time, complete}, "models": {name: BenchReport.to_dict() + "markdown"}}``; it is rewritten after each
model with ``"complete": false`` until the last one is done. Ratios are taken within one run, since
this machine is shared and noisy.

Without ``openvino`` the script stops (the results would lack the dense peer to beat), unless
``--allow-missing-peers`` is given.

The wide MLP (4096-4096-4096-1000) is not trained: its log σ² is drawn so that about 2% of
weights survive the threshold, with whole dead rows, the way trained SVDO layers look. Its
accuracy is meaningless; its speed is the point. So are the CNNs named ``ARCH-PERCENT`` (``resnet-90``,
``mobilenet_v2-95``, ``vgg_like-80``): the zoo's architecture with seeded synthetic SVDO sparsity and 25% dead
units (``svdcompress.nn.zoo.synthetic_svdo_``), timed at batches 1 and 64 unless ``--batch-sizes`` says otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from latency_summary import targets_markdown

import svdcompress
from svdcompress.benchmark.harness import BenchConfig, bench
from svdcompress.nn.architecture import load_model
from svdcompress.nn.zoo import INPUT_SHAPES, build, mlp, synthetic_svdo_
from svdcompress.tuning.datasets import load_dataset

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


# The CNN benchmark models: architecture and arguments (widths that run here in seconds per call).
CNNS: dict[str, dict[str, Any]] = {
    "resnet": {},
    "mobilenet_v2": {"width": 0.5},
    "vgg_like": {"k": 0.25},
}
CNN_BATCHES = (1, 64)


def synthetic_cnn(name: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """``resnet-90`` → the zoo's ResNet with 90% synthetic SVDO sparsity (seed 0) and its input shape."""
    arch, _, percent = name.rpartition("-")
    model = build(arch, svdo=True, **CNNS[arch])
    return synthetic_svdo_(model, sparsity=int(percent) / 100, seed=0), INPUT_SHAPES[arch]


def _write(out_json: Path, everything: dict[str, Any]) -> None:
    tmp = out_json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(everything, indent=2))
    tmp.replace(out_json)


def _markdown(everything: dict[str, Any]) -> str:
    run = everything["run"]
    m = run["machine"]
    peaks = ", ".join(f"{v:,.1f} GMAC/s at {k} thread(s)" for k, v in m.get("sgemm_peak_gmac_per_s", {}).items())
    md = [
        "# Latency, every contender, one run per model",
        "",
        f"Run {run['started']} → {run['finished'] or 'unfinished'}: `{run['command']}`.",
        f"CPU: {m.get('cpu', '?')}, {m.get('logical_cores', '?')} logical cores; SIMD: {', '.join(m.get('simd', []))}.",
        *([f"Practical peak (fp32 sgemm, measured in this run): {peaks}."] if peaks else []),
        "Versions: " + ", ".join(f"{k} {v}" for k, v in run["versions"].items()) + ".",
        "",
    ]
    md += [targets_markdown(everything), ""]
    for name, rep in everything["models"].items():
        md += [f"## {name}", "", rep["markdown"], ""]
    return "\n".join(md)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="lenet5,lenet300,wide")
    ap.add_argument("--batch-sizes", default=None, help="default: 1,16,256 (the CNNs: 1,64)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument(
        "--out",
        default="latency",
        help="file stem under benchmarks/results/ (default latency: the README's table; e.g. latency-cnn)",
    )
    ap.add_argument(
        "--allow-missing-peers",
        action="store_true",
        help="run without openvino (its contenders are then skipped with a note)",
    )
    a = ap.parse_args(argv)
    if importlib.util.find_spec("openvino") is None and not a.allow_missing_peers:
        print(
            "latency.py: openvino is not installed, so openvino-dense/-compact cannot run; "
            "pip install -e '.[peers]' (or pass --allow-missing-peers)",
            file=sys.stderr,
        )
        return 2
    asked = None if a.batch_sizes is None else tuple(int(b) for b in a.batch_sizes.split(","))
    threads = tuple(int(t) for t in a.threads.split(","))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_json = RESULTS / f"{a.out}.json"
    everything: dict[str, Any] = {
        "run": {
            "command": " ".join(["python", "benchmarks/latency.py", *(sys.argv[1:] if argv is None else argv)]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "finished": None,
            "complete": False,
            "machine": {},
            "versions": {},
        },
        "models": {},
    }
    data = load_dataset("fashion-mnist", "test")
    names = a.models.split(",")
    for name in names:
        print(f"== {name}", file=sys.stderr, flush=True)
        batch_sizes = asked or (1, 16, 256)
        if name == "wide":
            model, shape, d = wide_mlp(), (4096,), None
        elif name.rpartition("-")[0] in CNNS:
            (model, shape), d = synthetic_cnn(name), None
            batch_sizes = asked or CNN_BATCHES
        else:
            r = load_model(svdcompress.bundled_checkpoint(name))
            model, shape, d = r.module, r.input_shape, data
        assert shape is not None
        cfg = BenchConfig(batch_sizes=batch_sizes, threads=threads, repeats=a.repeats)
        report = bench(model, input_shape=shape, config=cfg, data=d, name=name)
        everything["models"][name] = {**report.to_dict(), "markdown": report.markdown()}
        everything["run"]["machine"] = {**everything["run"]["machine"], **report.machine}
        everything["run"]["versions"] = report.versions
        report.plot(RESULTS / f"{a.out}-{name}.png")
        print(report.markdown(), flush=True)
        if name == names[-1]:
            everything["run"].update(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), complete=True)
        _write(out_json, everything)
        (RESULTS / f"{a.out}.md").write_text(_markdown(everything))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
