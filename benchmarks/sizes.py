"""Bundle size against accuracy for quantised CSR bundles of the bundled LeNets (issue 14's table).

    python benchmarks/sizes.py            # both bundled nets, bits fp32, 16, 8, 6, 5, 4, 3, 2 and auto

Each setting is exported with ``svdcompress.export_model(..., bits=...)`` and its accuracy measured with the CSR
runtime on the 10,000 Fashion-MNIST test images (Debian's ``dataset-fashion-mnist``), against the fp32 bundle's.
Writes ``benchmarks/results/sizes.{json,md}`` and ``sizes.png`` (size ratio vs accuracy, Deep Compression's
39×/40× marked). Bytes per kept weight are split into values (codes + tables, or fp32/fp16 values) and the rest
(column indices, row pointers, biases, manifest), measured from the bundle's members.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

import svdcompress
from svdcompress import runtime
from svdcompress.datasets import load_dataset
from svdcompress.machine import machine_info

RESULTS = Path(__file__).parent / "results"
SETTINGS: tuple[int | str | None, ...] = (None, 16, 8, 6, 5, 4, 3, 2, "auto")
DEEP_COMPRESSION = {"lenet5": 39.0, "lenet300": 40.0}  # Han et al. 2016, Table 1 (pruning + quantisation + Huffman)
TARGETS = {"lenet5": 200.0, "lenet300": 150.0}  # issue 14: ×, within 0.3 points of the fp32 SVDO model
MAX_DROP = 0.3


def _label(bits: int | str | None) -> str:
    return "fp32" if bits is None else "fp16" if bits == 16 else f"{bits} bits" if bits != "auto" else "auto"


def _value_bytes(path: Path) -> int:
    """Stored bytes of weight values: the layers' values, codes and tables, as the manifest lays them out."""
    man = json.loads(zipfile.ZipFile(path).read("manifest.json"))
    total = 0
    for layer in man["layers"].values():
        for tname in [layer.get("values"), *(layer.get("quant", {}).get(k) for k in ("codes", "table"))]:
            if tname:
                t = man["tensors"][tname]
                total += int(np.prod(t["shape"])) * np.dtype(t["dtype"]).itemsize
    return total


def _accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    m = runtime.load(path)
    pred = np.concatenate([m(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)])
    return float((pred == y).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="lenet5,lenet300")
    a = ap.parse_args(argv)
    try:
        xt, yt = load_dataset("fashion-mnist", "test")
    except svdcompress.SvdcompressError as exc:
        print(f"sizes.py: needs the Fashion-MNIST test set ({exc})", file=sys.stderr)
        return 2
    x, y = xt.numpy().astype(np.float32), yt.numpy()
    out: dict[str, Any] = {"run": {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info()}}
    out["models"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models.split(","):
            rows = []
            for i, bits in enumerate(SETTINGS):
                print(f"[{name} {i + 1}/{len(SETTINGS)}] {_label(bits)}", file=sys.stderr, flush=True)
                path = Path(tmp) / f"{name}-{_label(bits).replace(' ', '')}.csr"
                t0 = time.perf_counter()
                res = svdcompress.export_model(svdcompress.bundled_checkpoint(name), "csr", path, bits=bits, force=True)
                t_export = time.perf_counter() - t0
                t0 = time.perf_counter()
                runtime.read_bundle(path)
                t_read = time.perf_counter() - t0
                layers = json.loads(zipfile.ZipFile(path).read("manifest.json"))["layers"]
                nnz = sum(v["nnz"] for v in layers.values())
                vbytes = _value_bytes(path)
                rows.append(
                    {
                        "setting": _label(bits),
                        "bits": bits,
                        "file_bytes": res.file_bytes,
                        "ratio_vs_dense_fp32": res.bytes_ratio,
                        "accuracy": _accuracy(path, x, y),
                        "nnz": nnz,
                        "value_bytes_per_weight": vbytes / nnz,
                        "other_bytes_per_weight": (res.file_bytes - vbytes) / nnz,
                        "layers": res.quant,
                        "read_s": t_read,
                        "export_s": t_export,
                    }
                )
            base = rows[0]["accuracy"]
            for r in rows:
                r["drop_points"] = 100 * (base - r["accuracy"])
                r["within_drop"] = r["drop_points"] <= MAX_DROP
            ok = [r for r in rows if r["within_drop"]]
            best = max(ok, key=lambda r: r["ratio_vs_dense_fp32"]) if ok else None
            out["models"][name] = {
                "rows": rows,
                "best_within_drop": best["setting"] if best else None,
                "target_ratio": TARGETS[name],
                "target_met": bool(best and best["ratio_vs_dense_fp32"] >= TARGETS[name]),
                "deep_compression_ratio": DEEP_COMPRESSION[name],
            }
    out["run"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp_json = RESULTS / "sizes.json.tmp"
    tmp_json.write_text(json.dumps(out, indent=2))
    tmp_json.replace(RESULTS / "sizes.json")
    md = _markdown(out)
    (RESULTS / "sizes.md").write_text(md)
    print(md)
    _plot(out, RESULTS / "sizes.png")
    return 0


def _markdown(out: dict[str, Any]) -> str:
    m = out["run"]["machine"]
    lines = [
        "# Quantised CSR bundles: size against accuracy",
        "",
        f"Run {out['run']['started']} → {out['run']['finished']}: `python benchmarks/sizes.py`; CPU {m.get('cpu')}.",
        "Accuracy: the CSR runtime on the 10,000 Fashion-MNIST test images; drop in points against the fp32 bundle.",
        "× = dense fp32 weights (4 B per weight and bias of the unpruned model) ÷ bundle bytes. Bytes per kept",
        "weight: values (fp32/fp16 values, or codes + steps/codebook) and the rest (indices, row pointers, biases,",
        "manifest, zip headers). `read s`: decoding the bundle at load.",
        "",
    ]
    for name, rep in out["models"].items():
        lines += [
            f"## {name}",
            "",
            f"Target: ≥ {rep['target_ratio']:.0f}× within {MAX_DROP} points; Deep Compression: "
            f"{rep['deep_compression_ratio']:.0f}×. Best within {MAX_DROP} points: **{rep['best_within_drop']}** "
            f"(target {'met' if rep['target_met'] else 'missed'}).",
            "",
            "| setting | bytes | × dense fp32 | accuracy | drop (points) | value B/weight | other B/weight | read s |"
            " bits per layer |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in rep["rows"]:
            per = ", ".join(
                f"{k.rsplit('.', 1)[0]} {q['bits']}{q['scheme'][0]}" for k, q in (r["layers"] or {}).items()
            )
            cells = [
                r["setting"],
                f"{r['file_bytes']:,}",
                f"{r['ratio_vs_dense_fp32']:.1f}×",
                f"{100 * r['accuracy']:.2f}%",
                f"{r['drop_points']:+.2f}",
                f"{r['value_bytes_per_weight']:.2f}",
                f"{r['other_bytes_per_weight']:.2f}",
                f"{r['read_s']:.3f}",
                per or "–",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Per layer: bits and scheme (u = uniform per-row integers, c = k-means codebook).")
    return "\n".join(lines) + "\n"


def _plot(out: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("sizes.py: matplotlib is not installed; no plot (pip install 'svdcompress[plot]')", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, len(out["models"]), figsize=(6 * len(out["models"]), 4.2), squeeze=False)
    for ax, (name, rep) in zip(axes[0], out["models"].items(), strict=True):
        fixed = [r for r in rep["rows"] if r["setting"] != "auto"]
        ax.plot([r["ratio_vs_dense_fp32"] for r in fixed], [100 * r["accuracy"] for r in fixed], "o-", label="bits")
        for r in fixed:
            ax.annotate(
                r["setting"],
                (r["ratio_vs_dense_fp32"], 100 * r["accuracy"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        auto = next(r for r in rep["rows"] if r["setting"] == "auto")
        ax.plot([auto["ratio_vs_dense_fp32"]], [100 * auto["accuracy"]], "r*", markersize=12, label="auto")
        ax.axvline(rep["deep_compression_ratio"], color="gray", ls="--", label="Deep Compression")
        ax.axvline(rep["target_ratio"], color="green", ls=":", label="target")
        base = 100 * rep["rows"][0]["accuracy"]
        ax.axhline(base - MAX_DROP, color="orange", ls=":", label=f"fp32 − {MAX_DROP} points")
        ax.set_xscale("log")
        ax.set_xlabel("× smaller than dense fp32 weights")
        ax.set_ylabel("test accuracy, %")
        ax.set_title(name)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
