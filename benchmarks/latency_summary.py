"""Issue-10 targets and the README's latency table, computed from ``benchmarks/results/latency.json``.

    python benchmarks/latency_summary.py            # print the targets table
    python benchmarks/latency_summary.py --readme   # also rewrite README.md's table between its markers

``latency.py`` calls :func:`targets_markdown` and appends it to ``latency.md``; the README table is only
rewritten on request (atomically). Every figure comes from the one run stored in the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
README = Path(__file__).parent.parent / "README.md"
LABELS = {
    "lenet5": "LeNet-5, bundled",
    "lenet300": "LeNet-300-100, bundled",
    "wide": "MLP 4096-4096-4096-1000, 2% dense",
}
README_CONTENDERS = ("torch-dense", "ort-dense", "openvino-dense", "ort-compact", "openvino-compact", "csr-runtime")
WITHIN = 1.10  # "the fastest contender, or within 10% of it"


def _rows(everything: dict[str, Any], model: str) -> list[dict[str, Any]]:
    return list(everything["models"].get(model, {}).get("results", []))


def _get(rows: list[dict[str, Any]], contender: str, batch: int, threads: int) -> dict[str, Any] | None:
    for r in rows:
        if r["contender"] == contender and r["batch_size"] == batch and r["threads"] == threads:
            return r
    return None


def targets(everything: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 10: what, goal, measured value, met (None when the run lacks the cells)."""
    out: list[dict[str, Any]] = []

    def ratio(model: str, batch: int, key: str, goal: float, what: str) -> None:
        r = _get(_rows(everything, model), "csr-runtime", batch, 1)
        val = r.get(key) if r else None
        out.append({"target": what, "goal": f"≥ {goal:g}×", "value": val, "met": None if val is None else val >= goal})

    ratio("lenet5", 1, "speedup_vs_ort_dense", 4, "LeNet-5, batch 1: vs ort-dense")
    ratio("lenet5", 256, "speedup_vs_best_dense", 2.5, "LeNet-5, batch 256: vs best dense")
    ratio("lenet5", 1, "speedup_vs_torch_dense", 15, "LeNet-5, batch 1: vs torch-dense")
    ratio("lenet300", 1, "speedup_vs_ort_dense", 3, "LeNet-300-100, batch 1: vs ort-dense")
    ratio("lenet300", 256, "speedup_vs_ort_dense", 5, "LeNet-300-100, batch 256: vs ort-dense")
    ratio("wide", 1, "speedup_vs_torch_dense", 25, "wide MLP, batch 1: vs torch-dense")
    r = _get(_rows(everything, "wide"), "csr-runtime", 1, 1)
    floor = r.get("times_bandwidth_floor") if r else None
    out.append(
        {
            "target": "wide MLP, batch 1: × its bandwidth floor",
            "goal": "≤ 1.5×",
            "value": floor,
            "met": None if floor is None else floor <= 1.5,
        }
    )
    cells = won = 0
    for model in everything["models"]:
        rows = _rows(everything, model)
        for b, t in sorted({(r["batch_size"], r["threads"]) for r in rows}):
            csr = _get(rows, "csr-runtime", b, t)
            if csr is None:
                continue
            best = min(r["median_us"] for r in rows if r["batch_size"] == b and r["threads"] == t)
            cells += 1
            won += csr["median_us"] <= WITHIN * best
    out.append(
        {
            "target": "every (model, batch, threads) cell: fastest or within 10%",
            "goal": f"{cells}/{cells}",
            "value": f"{won}/{cells}",
            "met": None if not cells else won == cells,
        }
    )
    for model in everything["models"]:
        one = _get(_rows(everything, model), "csr-runtime", 256, 1)
        two = _get(_rows(everything, model), "csr-runtime", 256, 2)
        val = one["median_us"] / two["median_us"] if one and two else None
        out.append(
            {
                "target": f"{LABELS.get(model, model)}, batch 256: 1 → 2 threads",
                "goal": "≥ 1.6×",
                "value": val,
                "met": None if val is None else val >= 1.6,
            }
        )
    return out


def targets_markdown(everything: dict[str, Any]) -> str:
    lines = ["## Targets (issue 10), from this run", "", "| target | goal | measured | met |", "|---|---|---:|---|"]
    for t in targets(everything):
        v = t["value"]
        shown = "–" if v is None else v if isinstance(v, str) else f"{v:.2f}×"
        met = "–" if t["met"] is None else "yes" if t["met"] else "**no**"
        lines.append(f"| {t['target']} | {t['goal']} | {shown} | {met} |")
    return "\n".join(lines) + "\n"


def _fmt(us: float) -> str:
    return f"{us:,.1f}" if us < 100 else f"{us:,.0f}"


def readme_table(everything: dict[str, Any]) -> str:
    """The README block: a header naming the run's CPU, then one row per (model, batch) at 1 thread."""
    m = everything["run"]["machine"]
    simd = m.get("simd", [])
    isa = "AVX-512" if any(s.startswith("avx512") for s in simd) else "AVX2" if "avx2" in simd else "no AVX2"
    lines = [
        f"Median latency per batch in µs, fp32, **1 thread**, {m.get('cpu', '?')} ({isa}; "
        f"{m.get('logical_cores', '?')} cores, shared VM; run {everything['run']['started'][:10]}), all contenders",
        "interleaved in one run per model (`python benchmarks/latency.py`; 2-thread figures, p90, GMAC/s, the",
        "bandwidth floor and the targets table in [benchmarks/results/latency.md](benchmarks/results/latency.md)).",
        '`csr-runtime` is the CSR bundle in svdcompress\'s own runtime; "best dense" is the faster of `ort-dense`',
        "and `openvino-dense`:",
        "",
        "| model | batch | " + " | ".join(README_CONTENDERS) + " | csr vs best dense | csr vs all |",
        "|---|---:|" + "---:|" * len(README_CONTENDERS) + "---:|---|",
    ]
    for model, label in LABELS.items():
        rows = _rows(everything, model)
        for b in sorted({r["batch_size"] for r in rows}):
            cells = {c: _get(rows, c, b, 1) for c in README_CONTENDERS}
            csr = cells["csr-runtime"]
            if csr is None:
                continue
            others = [r for r in rows if r["batch_size"] == b and r["threads"] == 1 and r["contender"] != "csr-runtime"]
            best = min(others, key=lambda r: r["median_us"]) if others else None
            if best is None or csr["median_us"] <= best["median_us"]:
                verdict = "**fastest**"
            else:
                verdict = f"{csr['median_us'] / best['median_us']:.2f}× slower than {best['contender']}"
            vals = " | ".join(_fmt(c["median_us"]) if c else "–" for c in cells.values())
            speed = csr.get("speedup_vs_best_dense")
            sp = f"{speed:.1f}×" if isinstance(speed, float) and math.isfinite(speed) else "–"
            lines.append(f"| {label} | {b} | {vals} | {sp} | {verdict} |")
    return "\n".join(lines) + "\n"


def update_readme(everything: dict[str, Any], readme: Path = README) -> None:
    text = readme.read_text()
    start, end = "<!-- bench-table -->\n", "<!-- /bench-table -->"
    i, j = text.index(start) + len(start), text.index(end)
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(text[:i] + readme_table(everything) + text[j:])
    tmp.replace(readme)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=RESULTS / "latency.json")
    ap.add_argument("--readme", action="store_true", help="rewrite README.md's latency table from the JSON")
    a = ap.parse_args(argv)
    everything = json.loads(a.json.read_text())
    print(targets_markdown(everything))
    if a.readme:
        update_readme(everything)
        print(f"README.md: latency table rewritten from {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
