"""Bounded memory: peak RSS of ``svdcompress analyze`` on a ~1 GB SVDO checkpoint.

Writes a plain state_dict of a few SVDO Linear layers (theta + log sigma² pairs summing to ~1 GB, the
largest pair ~450 MB) as .pt (torch.save) and .safetensors in a temporary directory, runs
``svdcompress analyze`` on each in a subprocess, and measures the child's peak RSS with
``getrusage(RUSAGE_CHILDREN).ru_maxrss`` from a fresh wrapper process per measurement (so no other child is
counted). The wrapper also samples /proc/PID/status to split the peak into anonymous memory and mapped file
pages. The baseline is the peak RSS of ``python -c "import svdcompress.cli"``.

Target: peak <= 1.5 × largest pair + baseline. Results go to benchmarks/results/memory_analyze.{json,md};
the generated files are deleted at the end.

    python benchmarks/memory_analyze.py            # ~1 GB, a few minutes of disk I/O
    python benchmarks/memory_analyze.py --scale 0.1   # quick check of the script itself
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Layer shapes (out, in) at scale 1: pairs of 450, 200, 200 and 150 MB of float32.
LAYERS = {"fc1": (7500, 7500), "fc2": (5000, 5000), "fc3": (5000, 5000), "fc4": (3750, 5000)}

RESULTS = Path(__file__).resolve().parent / "results"
MB = 1 << 20

# Runs argv[1:] and reports the child's peak RSS. Started fresh per measurement: RUSAGE_CHILDREN then holds
# exactly one child. Polling /proc adds the split into anonymous and file-backed pages (sampled, so a lower bound).
_WRAPPER = r"""
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
peak = {"RssAnon": 0, "RssFile": 0, "RssShmem": 0}
import threading
def sample():
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    key = line.split(":", 1)[0]
                    if key in peak:
                        peak[key] = max(peak[key], int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
        time.sleep(0.02)
th = threading.Thread(target=sample, daemon=True)
th.start()
out, err = proc.communicate()
wall = time.perf_counter() - t0
th.join(timeout=1)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": proc.returncode, "wall_s": wall, "maxrss_kb": ru.ru_maxrss,
                  "sampled_peak_kb": peak, "stdout": out.decode(errors="replace")[-6000:],
                  "stderr": err.decode(errors="replace")[-3000:]}))
"""


def _stage(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # analysis is I/O bound; keep the machine calm
    return env


def measure(argv: list[str]) -> dict[str, Any]:
    """Run ``argv`` under a fresh wrapper process; return rc, wall time and peak RSS in bytes."""
    res = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *argv], capture_output=True, text=True, env=_child_env(), check=True
    )
    rec: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    rec["peak_rss_bytes"] = rec.pop("maxrss_kb") * 1024  # Linux reports KiB
    rec["sampled_peak_bytes"] = {k: v * 1024 for k, v in rec.pop("sampled_peak_kb").items()}
    return rec


def make_state_dict(scale: float) -> tuple[dict[str, Any], int, int]:
    """SVDO Linear layers built one at a time. Returns the state_dict, the largest pair's and all pairs' bytes."""
    import torch

    torch.manual_seed(0)
    sd: dict[str, Any] = {}
    largest = total = 0
    for name, (o, i) in LAYERS.items():
        o, i = max(1, round(o * scale**0.5)), max(1, round(i * scale**0.5))
        theta = torch.randn(o, i).mul_(0.05)
        ls2 = torch.empty(o, i).uniform_(-14.0, 0.0)  # log alpha spreads around the threshold: some kept
        sd[f"{name}.weight"] = theta
        sd[f"{name}.log_sigma2"] = ls2
        sd[f"{name}.bias"] = torch.zeros(o)
        pair = theta.nbytes + ls2.nbytes
        largest, total = max(largest, pair), total + pair
        _stage(f"  built {name}: {o}×{i}, pair {pair / MB:,.0f} MB")
    return sd, largest, total


def _fmt_mb(b: float) -> str:
    return f"{b / MB:,.0f} MB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="Size multiplier (1.0 → ~1 GB of theta + log σ²).")
    ap.add_argument("--workdir", type=Path, default=None, help="Where to write the temporary checkpoints.")
    ap.add_argument("--out", type=Path, default=RESULTS, help="Directory for memory_analyze.json/.md.")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="svdc-mem-", dir=a.workdir))
    _stage(f"working in {tmp}")
    try:
        _stage("baseline: python -c 'import svdcompress.cli'")
        base = measure([sys.executable, "-c", "import svdcompress.cli"])
        if base["rc"] != 0:
            raise SystemExit(f"import failed: {base['stderr']}")
        _stage(f"  baseline peak RSS {_fmt_mb(base['peak_rss_bytes'])}")
        # The CLI imports lazily, so that baseline lacks torch. What analyze imports before it reads any data:
        _stage("baseline with torch: python -c 'import svdcompress.cli, svdcompress.checkpoint.analysis'")
        base_torch = measure([sys.executable, "-c", "import svdcompress.cli, svdcompress.checkpoint.analysis"])
        _stage(f"  baseline peak RSS with torch {_fmt_mb(base_torch['peak_rss_bytes'])}")

        _stage(f"generating the checkpoint (scale {a.scale:g})")
        import torch
        from safetensors.torch import save_file

        sd, largest, total = make_state_dict(a.scale)
        pt, st = tmp / "big.pt", tmp / "big.safetensors"
        t0 = time.perf_counter()
        torch.save(sd, pt)
        _stage(f"  wrote {pt.name}: {_fmt_mb(pt.stat().st_size)} in {time.perf_counter() - t0:.1f}s")
        t0 = time.perf_counter()
        save_file(sd, str(st))
        _stage(f"  wrote {st.name}: {_fmt_mb(st.stat().st_size)} in {time.perf_counter() - t0:.1f}s")
        del sd

        cli = [sys.executable, "-m", "svdcompress.cli", "analyze"]
        runs: dict[str, dict[str, Any]] = {}
        for label, path in (("pt", pt), ("safetensors", st)):
            _stage(f"analyze {path.name} in a subprocess")
            rec = measure([*cli, str(path)])
            if rec["rc"] != 0:
                raise SystemExit(f"analyze failed on {path}:\n{rec['stderr']}")
            rec["file_bytes"] = path.stat().st_size
            rec["ratio_over_baseline"] = (rec["peak_rss_bytes"] - base["peak_rss_bytes"]) / largest
            rec["ratio_over_torch_baseline"] = (rec["peak_rss_bytes"] - base_torch["peak_rss_bytes"]) / largest
            runs[label] = rec
            s = rec["sampled_peak_bytes"]
            _stage(
                f"  peak RSS {_fmt_mb(rec['peak_rss_bytes'])} (sampled anon {_fmt_mb(s['RssAnon'])}, file "
                f"{_fmt_mb(s['RssFile'])}); (peak − baseline) / largest pair = {rec['ratio_over_baseline']:.2f}, "
                f"over the torch baseline {rec['ratio_over_torch_baseline']:.2f}; {rec['wall_s']:.1f}s"
            )

        # The constant is what analyze costs before it reads data (torch imported); see the .md for both ratios.
        target = 1.5 * largest + base_torch["peak_rss_bytes"]
        result = {
            "scale": a.scale,
            "layers": {k: list(v) for k, v in LAYERS.items()},
            "file_bytes": {k: r["file_bytes"] for k, r in runs.items()},
            "largest_pair_bytes": largest,
            "all_pairs_bytes": total,
            "baseline_import_rss_bytes": base["peak_rss_bytes"],
            "baseline_import_with_torch_rss_bytes": base_torch["peak_rss_bytes"],
            "target_peak_bytes": target,
            "runs": {k: {kk: vv for kk, vv in r.items() if kk not in ("stdout", "stderr")} for k, r in runs.items()},
            "meets_target": {k: r["peak_rss_bytes"] <= target for k, r in runs.items()},
            "analyze_output_pt": runs["pt"]["stdout"].splitlines()[-12:],
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M"),
        }
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "memory_analyze.json").write_text(json.dumps(result, indent=2) + "\n")
        (a.out / "memory_analyze.md").write_text(_markdown(result))
        _stage(f"wrote {a.out / 'memory_analyze.json'} and .md")
        print(_markdown(result))
        return 0 if all(result["meets_target"].values()) else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _stage(f"deleted {tmp}")


def _markdown(r: dict[str, Any]) -> str:
    base, largest = r["baseline_import_rss_bytes"], r["largest_pair_bytes"]
    lines = [
        "# Peak memory of `svdcompress analyze`",
        "",
        f"Checkpoint: {len(r['layers'])} SVDO Linear layers, theta + log σ² pairs totalling "
        f"{_fmt_mb(r['all_pairs_bytes'])}; largest pair {_fmt_mb(largest)} ({largest:,} B).",
        "",
        f'Baselines: `python -c "import svdcompress.cli"` peak RSS {_fmt_mb(base)} (the CLI imports lazily, '
        f"without torch); `import svdcompress.cli, svdcompress.checkpoint.analysis` (torch loaded, what analyze needs "
        "before "
        f"reading data) {_fmt_mb(r['baseline_import_with_torch_rss_bytes'])}. Target: peak ≤ 1.5 × largest pair + "
        f"the torch baseline = {_fmt_mb(r['target_peak_bytes'])}.",
        "",
        "| format | file size | peak RSS | sampled anon / file pages | (peak − baseline) / largest pair | "
        "(peak − torch baseline) / largest pair | wall | meets target |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for k, run in r["runs"].items():
        s = run["sampled_peak_bytes"]
        lines.append(
            f"| {k} | {_fmt_mb(r['file_bytes'][k])} | {_fmt_mb(run['peak_rss_bytes'])} | "
            f"{_fmt_mb(s['RssAnon'])} / {_fmt_mb(s['RssFile'])} | {run['ratio_over_baseline']:.2f} | "
            f"{run['ratio_over_torch_baseline']:.2f} | {run['wall_s']:.1f} s | "
            f"{'yes' if r['meets_target'][k] else 'NO'} |"
        )
    lines += [
        "",
        f"Python {r['python']}, torch {r['torch']}, {r['date']}. Peak RSS is getrusage(RUSAGE_CHILDREN)"
        ".ru_maxrss of a fresh wrapper process; anon/file are peaks of /proc/PID/status RssAnon and RssFile "
        "sampled every 20 ms. MB = 2^20 bytes.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
