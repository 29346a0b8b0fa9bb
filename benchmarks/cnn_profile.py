"""Where the CSR runtime's time goes on the CNNs: each step of a bundle's plan timed alone.

    python benchmarks/cnn_profile.py                          # resnet-90, mobilenet_v2-90, vgg_like-90
    python benchmarks/cnn_profile.py --models resnet-95 --batch-sizes 1,64

For each model (the zoo's architecture with seeded synthetic SVDO sparsity, as ``benchmarks/latency.py`` builds
it), the CSR bundle is exported and loaded with ``kernel="auto"``; every step of its plan (a convolution with its
fused activation and pooling, a Linear chain, a BatchNorm, an add, a pool, a reshape) is then timed on its own
input, one thread, at each batch size: the median of interleaved samples. The table gives per step its output
shape, its multiply-adds (the kept weights it reads; 0 for the steps without weights), its share of the whole pass,
and its GMAC/s against the machine's sgemm peak measured in the same run. Writes
``benchmarks/results/cnn_profile.{json,md}``.
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
from latency import synthetic_cnn

from svdcompress import export_model, runtime
from svdcompress.benchmark.machine import machine_info, sgemm_peak

RESULTS = Path(__file__).parent / "results"


def profile(name: str, batches: list[int], repeats: int, workdir: Path) -> dict[str, Any]:
    model, shape = synthetic_cnn(name)
    path = workdir / f"{name}.csr"
    export_model(model, "csr", path, input_shape=shape)
    m = runtime.load(path, threads=1)
    plan = m._plan  # the steps, as the runtime runs them
    out: dict[str, Any] = {"macs_per_item": plan.macs_per_item, "batches": {}}
    for b in batches:
        x = np.random.default_rng(0).standard_normal((b, *shape)).astype(np.float32)
        v: list[Any] = [None] * plan.nslots
        v[0] = x
        inputs: list[list[Any]] = []
        for step in plan.steps:  # record every step's input slots once
            inputs.append(list(v))
            step(v)
        samples: list[list[float]] = [[] for _ in plan.steps]
        calls = max(1, 64 // b)
        for _ in range(repeats):
            for i, step in enumerate(plan.steps):
                w = list(inputs[i])
                t0 = time.perf_counter()
                for _ in range(calls):
                    step(w)
                samples[i].append((time.perf_counter() - t0) / calls * 1e6)
        rows = []
        for i, _step in enumerate(plan.steps):
            after: list[Any] = list(inputs[i])
            plan.steps[i](after)
            changed = [k for k in range(plan.nslots) if after[k] is not None and after[k] is not inputs[i][k]]
            shape_out = tuple(after[changed[-1]].shape[1:]) if changed else ()
            frag = plan.fragments.get(i)
            rows.append(
                {
                    "step": i,
                    "kind": frag.kind if frag is not None else "other",
                    "out_shape": list(shape_out),
                    "median_us": statistics.median(samples[i]),
                }
            )
        total = sum(r["median_us"] for r in rows)
        whole = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            m(x)
            whole.append((time.perf_counter() - t0) * 1e6)
        out["batches"][str(b)] = {"steps": rows, "sum_us": total, "whole_call_us": statistics.median(whole)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet-90,mobilenet_v2-90,vgg_like-90")
    ap.add_argument("--batch-sizes", default="1,64")
    ap.add_argument("--repeats", type=int, default=15)
    a = ap.parse_args(argv)
    batches = [int(b) for b in a.batch_sizes.split(",")]
    peak = sgemm_peak(1)["peak"]
    result: dict[str, Any] = {
        "run": {
            "command": " ".join(["python", "benchmarks/cnn_profile.py", *(sys.argv[1:] if argv is None else argv)]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine_info(),
            "sgemm_peak_gmac_per_s": peak,
        },
        "models": {},
    }
    md = [
        "# Where the CSR runtime's time goes on the CNNs",
        "",
        f"Run {result['run']['started']}: `{result['run']['command']}`; CPU {result['run']['machine'].get('cpu')}; "
        f"1 thread, fp32; sgemm peak {peak:.1f} GMAC/s measured in this run.",
        "",
    ]
    with tempfile.TemporaryDirectory() as d:
        for name in a.models.split(","):
            print(f"== {name}", file=sys.stderr, flush=True)
            prof = profile(name, batches, a.repeats, Path(d))
            result["models"][name] = prof
            macs = prof["macs_per_item"]
            md += [f"## {name}", "", f"Kept multiply-adds per image: {macs:,}.", ""]
            for b, rec in prof["batches"].items():
                gmacs = macs * int(b) / rec["whole_call_us"] / 1e3
                md += [
                    f"Batch {b}: whole call {rec['whole_call_us']:,.0f} µs ({gmacs:.2f} GMAC/s, "
                    f"{100 * gmacs / peak:.1f}% of peak); steps timed alone sum to {rec['sum_us']:,.0f} µs.",
                    "",
                    "| step | kind | output | µs | share |",
                    "|---:|---|---|---:|---:|",
                ]
                for r in sorted(rec["steps"], key=lambda r: -r["median_us"])[:12]:
                    shape = "×".join(str(s) for s in r["out_shape"])
                    share = 100 * r["median_us"] / rec["sum_us"]
                    md.append(f"| {r['step']} | {r['kind']} | {shape} | {r['median_us']:,.1f} | {share:.1f}% |")
                md.append("")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cnn_profile.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "cnn_profile.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
