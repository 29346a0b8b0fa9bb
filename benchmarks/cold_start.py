"""Cold start of the CSR runtime: a fresh process's ``import`` + ``runtime.load`` + first call.

Each case runs in its own ``python -c`` process, so nothing is imported or compiled beforehand:

- ``cold cache``: numba's on-disk cache is empty (``NUMBA_CACHE_DIR`` is a new temporary directory), so every
  kernel is compiled on first use;
- ``warm cache``: the same directory, again, after the first run filled it (``tests/test_runtime.py`` checks
  that the cache also works when the package directory is read-only).

Phases are timed inside the child: ``import svdcompress.runtime``, ``load`` (read + validate + compile +
measure the per-layer kernel choice), and the first call. ``torch_imported`` says whether torch was pulled in.

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
from svdcompress.export import export_model

RESULTS = Path(__file__).parent / "results"

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import svdcompress.runtime as rt
t1 = time.perf_counter()
model = rt.load(sys.argv[1])
t2 = time.perf_counter()
model(np.zeros((1, *model.input_shape), np.float32))
t3 = time.perf_counter()
model(np.zeros((64, *model.input_shape), np.float32))
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_call_s": t3 - t2, "first_batch64_s": t4 - t3,
                  "total_s": t3 - t0, "torch_imported": "torch" in sys.modules}))
"""


def _child(bundle: Path, cache: Path, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), **(extra_env or {})}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(bundle)], env=env, capture_output=True, text=True, check=True, timeout=900
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="lenet5,lenet300")
    ap.add_argument("--repeats", type=int, default=3, help="warm-cache runs per model (median reported)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            bundle = Path(tmp) / f"{name}.csr"
            export_model(svdcompress.bundled_checkpoint(name), "csr", bundle)
            cache = Path(tmp) / f"cache-{name}"
            cache.mkdir()
            print(f"{name}: cold cache ...", file=sys.stderr, flush=True)
            cold = _child(bundle, cache)
            warm = []
            for i in range(args.repeats):
                print(f"{name}: warm cache {i + 1}/{args.repeats} ...", file=sys.stderr, flush=True)
                warm.append(_child(bundle, cache))
            for case, runs in (("cold cache", [cold]), ("warm cache", warm)):
                rec = {"model": name, "case": case, "runs": len(runs)}
                for key in ("import_s", "load_s", "first_call_s", "first_batch64_s", "total_s"):
                    rec[key] = statistics.median(r[key] for r in runs)
                rec["torch_imported"] = any(r["torch_imported"] for r in runs)
                records.append(rec)
    result = {
        "machine": machine_info(),
        "python": platform.python_version(),
        "svdcompress": svdcompress.__version__,
        "records": records,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cold_start.json").write_text(json.dumps(result, indent=2))
    m = result["machine"]
    lines = [
        f"Fresh `python -c` process per row; CPU: {m.get('cpu', '?')}; medians of {args.repeats} warm runs.",
        "`load` includes validation, kernel compilation or cache load, and the per-layer kernel timing.",
        "",
        "| model | numba cache | import s | load s | first call s | total s (import+load+call) | "
        "first batch-64 call s | torch imported |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['model']} | {r['case']} | {r['import_s']:.2f} | {r['load_s']:.2f} | "
            f"{r['first_call_s']:.3f} | **{r['total_s']:.2f}** | {r['first_batch64_s']:.3f} | "
            f"{'yes' if r['torch_imported'] else 'no'} |"
        )
    (args.out / "cold_start.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
