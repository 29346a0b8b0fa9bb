"""Cold start of the CSR runtime: a fresh process's ``import`` + ``runtime.load`` + first call.

Each case runs in its own ``python -c`` process, so nothing is imported or compiled beforehand:

- ``export, cold cache``: ``svdcompress export bundled:NAME --format csr`` with an empty numba cache (the README's
  first step on a fresh machine); its bundle, which records the kernel plan chosen on this CPU, is the one the
  next cases load;
- ``cold cache``: load + first call with an empty cache (``NUMBA_CACHE_DIR`` is a new temporary directory), so
  every kernel the plan runs is compiled on first use;
- ``warm cache``: the same directory, again, after the first run filled it (``tests/test_runtime.py`` checks
  that the cache also works when the package directory is read-only or was filled by another user).

Phases are timed inside the child: ``import svdcompress.runtime``, ``load`` (read + validate, and the kernel
choice when the bundle has no plan for this CPU), and the first call (which compiles on a cold cache). Each
child also reports its peak RSS and how many kernel signatures numba compiled and loaded from the cache.
``torch_imported`` says whether torch was pulled in.

    python benchmarks/cold_start.py            # writes benchmarks/results/cold_start.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import svdcompress
from svdcompress.benchmark.harness import machine_info

RESULTS = Path(__file__).parent / "results"

_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import numpy as np
import svdcompress.runtime as rt
from svdcompress.runtime.warmup import kernel_stats
t1 = time.perf_counter()
model = rt.load(sys.argv[1])
t2 = time.perf_counter()
model(np.zeros((1, *model.input_shape), np.float32))
t3 = time.perf_counter()
model(np.zeros((64, *model.input_shape), np.float32))
t4 = time.perf_counter()
compiled, loaded = kernel_stats()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_call_s": t3 - t2, "first_batch64_s": t4 - t3,
                  "total_s": t3 - t0, "torch_imported": "torch" in sys.modules, "compiled": compiled,
                  "loaded": loaded, "timed": model.kernels_timed,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

_EXPORT = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from svdcompress.cli import main
try:
    main(["export", "bundled:" + sys.argv[1], "--format", "csr", "-o", sys.argv[2], "--force"], standalone_mode=False)
finally:
    from svdcompress.runtime.warmup import kernel_stats
    compiled, loaded = kernel_stats()
    print(json.dumps({"total_s": time.perf_counter() - t0, "compiled": compiled, "loaded": loaded,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _child(args: list[str], cache: Path, script: str = _CHILD) -> dict[str, Any]:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    out = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, check=True, timeout=1800
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="lenet5,lenet300")
    ap.add_argument("--repeats", type=int, default=3, help="warm-cache runs per model (median reported)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    records: list[dict[str, Any]] = []
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            bundle = Path(tmp) / f"{name}.csr"
            export_cache, cache = Path(tmp) / f"export-cache-{name}", Path(tmp) / f"cache-{name}"
            export_cache.mkdir()
            cache.mkdir()
            print(f"{name}: export, cold cache ...", file=sys.stderr, flush=True)
            exported = _child([name, str(bundle)], export_cache, _EXPORT)
            records.append({"model": name, "case": "export, cold cache", "runs": 1, **exported})
            print(f"{name}: cold cache ...", file=sys.stderr, flush=True)
            cold = _child([str(bundle)], cache)
            warm = []
            for i in range(args.repeats):
                print(f"{name}: warm cache {i + 1}/{args.repeats} ...", file=sys.stderr, flush=True)
                warm.append(_child([str(bundle)], cache))
            for case, runs in (("cold cache", [cold]), ("warm cache", warm)):
                rec = {"model": name, "case": case, "runs": len(runs)}
                for key in ("import_s", "load_s", "first_call_s", "first_batch64_s", "total_s", "peak_rss_mb"):
                    rec[key] = statistics.median(r[key] for r in runs)
                for key in ("compiled", "loaded", "timed"):
                    rec[key] = max(r[key] for r in runs)
                rec["torch_imported"] = any(r["torch_imported"] for r in runs)
                records.append(rec)
    result = {
        "machine": machine_info(),
        "python": platform.python_version(),
        "svdcompress": svdcompress.__version__,
        "loadavg_before": load_before,
        "loadavg_after": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "records": records,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cold_start.json").write_text(json.dumps(result, indent=2))
    m = result["machine"]
    lines = [
        f"Fresh `python -c` process per row; CPU: {m.get('cpu', '?')}; load average before the run "
        f"{result['loadavg_before']}, after {result['loadavg_after']}; medians of {args.repeats} warm runs.",
        "Time to first answer = import + load + first batch-1 call (kernels compile at the first call on a cold "
        "cache); kernels = numba signatures compiled / loaded from the cache by the process.",
        "",
        "| model | case | import s | load s | first call s | **first answer s** | first batch-64 call s | "
        "peak RSS MB | kernels compiled / cached | candidates timed | torch imported |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in records:
        if r["case"].startswith("export"):
            lines.append(
                f"| {r['model']} | {r['case']} (`svdcompress export bundled:{r['model']} --format csr`) | | | | "
                f"**{r['total_s']:.1f}** (whole command) | | {r['peak_rss_mb']:.0f} | {r['compiled']} / "
                f"{r['loaded']} | | yes |"
            )
            continue
        lines.append(
            f"| {r['model']} | {r['case']} | {r['import_s']:.2f} | {r['load_s']:.2f} | "
            f"{r['first_call_s']:.3f} | **{r['total_s']:.2f}** | {r['first_batch64_s']:.3f} | "
            f"{r['peak_rss_mb']:.0f} | {r['compiled']} / {r['loaded']} | {r['timed']} | "
            f"{'yes' if r['torch_imported'] else 'no'} |"
        )
    (args.out / "cold_start.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
