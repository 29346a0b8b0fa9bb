"""Latency of every contender for the bundled LeNets and a wide SVDO MLP, in one run each.

    pip install -e '.[peers]'                    # OpenVINO, for the openvino-* contenders
    python benchmarks/latency.py                 # all three models
    python benchmarks/latency.py --models wide   # just the wide MLP

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
accuracy is meaningless; its speed is the point.
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
from svdcompress.nn.zoo import mlp
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
    ap.add_argument("--batch-sizes", default="1,16,256")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=30)
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
    batch_sizes = tuple(int(b) for b in a.batch_sizes.split(","))
    threads = tuple(int(t) for t in a.threads.split(","))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_json = RESULTS / "latency.json"
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
        if name == "wide":
            model, shape, d = wide_mlp(), (4096,), None
        else:
            r = load_model(svdcompress.bundled_checkpoint(name))
            model, shape, d = r.module, r.input_shape, data
        assert shape is not None
        cfg = BenchConfig(batch_sizes=batch_sizes, threads=threads, repeats=a.repeats)
        report = bench(model, input_shape=shape, config=cfg, data=d, name=name)
        everything["models"][name] = {**report.to_dict(), "markdown": report.markdown()}
        everything["run"]["machine"] = {**everything["run"]["machine"], **report.machine}
        everything["run"]["versions"] = report.versions
        report.plot(RESULTS / f"latency-{name}.png")
        print(report.markdown(), flush=True)
        if name == names[-1]:
            everything["run"].update(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), complete=True)
        _write(out_json, everything)
        (RESULTS / "latency.md").write_text(_markdown(everything))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
