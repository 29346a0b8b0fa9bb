"""bench: process state is restored, speed-ups and compute figures are derived right, peers are optional.

Nothing here asserts on a measured time: timings only feed the arithmetic under test.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from svdcompress.benchmark.harness import (
    BenchConfig,
    BenchResult,
    bench,
    copy_bandwidth,
    cpu_simd_flags,
    machine_info,
    sgemm_peak,
    torch_threads,
)

from .conftest import TinySVDO

# The module itself: `svdcompress.benchmark.harness` as an attribute is the bench() function the package re-exports.
bench_mod = importlib.import_module("svdcompress.benchmark.harness")
contenders_mod = importlib.import_module("svdcompress.benchmark.contenders")
HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
HAVE_THREADPOOLCTL = importlib.util.find_spec("threadpoolctl") is not None


def _mixed_mode_model() -> TinySVDO:
    torch.manual_seed(0)
    model = TinySVDO().train()
    model.fc2.eval()  # a mix, so restoring "train" or "eval" wholesale would be caught
    return model


def _modes(model: torch.nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def _tiny_config(**kw: object) -> BenchConfig:
    base: dict[str, object] = {
        "batch_sizes": (1,),
        "threads": (2,),
        "repeats": 3,
        "warmup": 1,
        "sample_ms": 0.1,
        "contenders": ("torch-dense", "torch-masked"),
    }
    base.update(kw)
    return BenchConfig(**base)  # type: ignore[arg-type]


def test_bench_restores_thread_count_and_train_eval_flags() -> None:
    model = _mixed_mode_model()
    before = _modes(model)
    torch.set_num_threads(1)
    report = bench(model, input_shape=(20,), config=_tiny_config(threads=(2,)), progress=False)
    assert {r.contender for r in report.results} == {"torch-dense", "torch-masked"}
    assert torch.get_num_threads() == 1
    assert _modes(model) == before


def test_bench_restores_state_after_an_error() -> None:
    model = _mixed_mode_model()
    before = _modes(model)
    torch.set_num_threads(1)
    with pytest.raises(Exception, match="warp-drive"):
        bench(model, input_shape=(20,), config=_tiny_config(contenders=("torch-dense", "warp-drive")), progress=False)
    assert torch.get_num_threads() == 1
    assert _modes(model) == before


def test_torch_threads_restores_on_exit_and_on_error() -> None:
    torch.set_num_threads(1)
    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 1
    with pytest.raises(RuntimeError), torch_threads(2):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 1


def test_copy_bandwidth_and_sgemm_peak_restore_thread_count() -> None:
    torch.set_num_threads(1)
    assert copy_bandwidth(threads=2, nbytes=1 << 20, repeats=2) > 0
    assert torch.get_num_threads() == 1
    peak = sgemm_peak(threads=2, n=64, repeats=2)
    assert torch.get_num_threads() == 1
    assert peak["peak"] == max(v for k, v in peak.items() if k != "peak") > 0


@pytest.mark.skipif(not HAVE_THREADPOOLCTL, reason="threadpoolctl is optional: sgemm_peak then times torch only")
def test_sgemm_peak_restores_numpy_blas_limits() -> None:
    import threadpoolctl

    before = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    peak = sgemm_peak(threads=1, n=64, repeats=2)
    assert "numpy" in peak
    assert [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"] == before


def _r(contender: str, median: float, batch: int = 1, threads: int = 1) -> BenchResult:
    return BenchResult(contender, batch, threads, median, median, batch / (median / 1e6), 0)


def test_speedup_vs_best_dense_takes_the_faster_dense_peer_per_batch_and_threads() -> None:
    results = [
        _r("ort-dense", 100.0),
        _r("openvino-dense", 80.0),
        _r("csr-runtime", 20.0),
        _r("torch-dense", 400.0),
        _r("ort-dense", 1000.0, batch=16),
        _r("openvino-dense", 1200.0, batch=16),
        _r("csr-runtime", 250.0, batch=16),
        _r("csr-runtime", 10.0, threads=2),  # no dense peer at 2 threads
    ]
    bench_mod._add_speedups(results)
    by = {(r.contender, r.batch_size, r.threads): r for r in results}
    assert by["csr-runtime", 1, 1].speedup_vs_best_dense == pytest.approx(4.0)
    assert by["csr-runtime", 1, 1].best_dense == "openvino-dense"
    assert by["csr-runtime", 1, 1].speedup_vs_ort_dense == pytest.approx(5.0)
    assert by["csr-runtime", 1, 1].speedup_vs_torch_dense == pytest.approx(20.0)
    assert by["ort-dense", 1, 1].speedup_vs_best_dense == pytest.approx(0.8)
    assert by["csr-runtime", 16, 1].speedup_vs_best_dense == pytest.approx(4.0)
    assert by["csr-runtime", 16, 1].best_dense == "ort-dense"
    assert by["csr-runtime", 1, 2].speedup_vs_best_dense is None


def test_compute_figures_for_csr_runtime_only() -> None:
    results = [_r("csr-runtime", 50.0, batch=10), _r("ort-dense", 100.0, batch=10), _r("csr-runtime", 50.0, threads=2)]
    bench_mod._add_compute_figures(results, 500_000, {1: 100.0, 2: 200.0}, floor_us=7.5)
    csr1, ort, csr2 = results
    # 500k MACs × 10 items in 50 µs = 100 GMAC/s, the whole 1-thread peak.
    assert csr1.macs_per_item == 500_000
    assert csr1.gmac_per_s == pytest.approx(100.0)
    assert csr1.fraction_of_peak == pytest.approx(1.0)
    assert csr1.bandwidth_floor_us == 7.5
    assert csr1.times_bandwidth_floor == pytest.approx(50.0 / 7.5)
    assert csr2.fraction_of_peak == pytest.approx(10.0 / 200.0)
    assert ort.gmac_per_s is None and ort.bandwidth_floor_us is None


def test_compute_figures_without_macs_keep_the_floor() -> None:
    results = [_r("csr-runtime", 50.0)]
    bench_mod._add_compute_figures(results, None, {1: 100.0}, floor_us=7.5)
    assert results[0].gmac_per_s is None and results[0].fraction_of_peak is None
    assert results[0].bandwidth_floor_us == 7.5


def test_runtime_info_prefers_what_the_runtime_reports() -> None:
    new = SimpleNamespace(macs_per_item=350_000, weight_bytes=40_000, layer_kernels={"conv1": "dense", "fc1": "sparse"})
    info = contenders_mod.runtime_info(new)
    assert info["csr_macs_per_item"] == 350_000
    assert (info["csr_weight_bytes"], info["csr_weight_bytes_source"]) == (40_000, "runtime")
    assert info["csr_kernels"] == {"conv1": "dense", "fc1": "sparse"}
    old = SimpleNamespace(
        layer_kernels={"fc1": "csr", "fc2": "dense"},
        nnz={"fc1": 100, "fc2": 30},
        manifest={"layers": {"fc2.weight": {"shape": [10, 5]}}},
    )
    info = contenders_mod.runtime_info(old)
    assert info["csr_macs_per_item"] is None
    assert (info["csr_weight_bytes"], info["csr_weight_bytes_source"]) == (8 * 100 + 4 * 50, "estimate")
    assert info["csr_nnz"] == 130


def test_cpu_simd_flags_keeps_vector_extensions_only() -> None:
    simd = [
        "sse",
        "sse2",
        "ssse3",
        "sse4_1",
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512_bf16",
        "amx_tile",
    ]
    assert cpu_simd_flags(["fpu", "vme", *simd, "misalignsse", "aes"]) == sorted(simd)
    assert cpu_simd_flags(["fp", "asimd", "asimdhp", "sve", "sve2", "crc32"]) == ["asimd", "asimdhp", "sve", "sve2"]


def test_machine_info_records_cpu_and_simd() -> None:
    info = machine_info()
    assert info["cpu"] and isinstance(info["simd"], list)
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return
    if " avx2 " in text.replace("\n", " "):
        assert "avx2" in info["simd"]


def test_missing_openvino_is_skipped_with_one_note(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(contenders_mod, "import_openvino", lambda: None)
    cfg = _tiny_config(threads=(1, 2), contenders=("torch-dense", "openvino-dense", "openvino-compact"))
    report = bench(TinySVDO(), input_shape=(20,), config=cfg, progress=False)
    notes = [r.getMessage() for r in caplog.records if r.name == "svdcompress.benchmark.harness"]
    assert notes == [
        "skipping openvino-dense, openvino-compact: openvino is not installed (pip install 'svdcompress[peers]')"
    ]
    assert {r.contender for r in report.results} == {"torch-dense"}
    assert set(report.model["skipped"]) == {"openvino-dense", "openvino-compact"}
    assert "Skipped openvino-dense" in report.markdown()


@pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino is not installed (pip install -e '.[peers]')")
def test_openvino_contenders_run_and_feed_best_dense(trained_tiny: TinySVDO) -> None:
    cfg = _tiny_config(threads=(1,), contenders=("ort-dense", "openvino-dense", "ort-compact", "openvino-compact"))
    report = bench(trained_tiny, input_shape=(20,), config=cfg, progress=False)
    by = {r.contender: r for r in report.results}
    assert set(by) == set(cfg.contenders)
    best = min(by["ort-dense"].median_us, by["openvino-dense"].median_us)
    for r in report.results:
        assert r.speedup_vs_best_dense == pytest.approx(best / r.median_us)
    assert by["openvino-dense"].artifact_bytes == by["ort-dense"].artifact_bytes
    assert by["openvino-compact"].artifact_bytes == by["ort-compact"].artifact_bytes
    assert "openvino" in report.versions


@pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino is not installed (pip install -e '.[peers]')")
def test_openvino_runner_computes_the_onnx_model_in_fp32(tmp_path, trained_tiny: TinySVDO) -> None:
    import openvino as ov

    from svdcompress.export import export_onnx

    dense = contenders_mod.dense_original(trained_tiny)
    path = tmp_path / "dense.onnx"
    export_onnx(dense, path, input_shape=(20,), reference=dense, force=True)
    run = contenders_mod.openvino_runner(ov, contenders_mod.openvino_compiled(ov, path, threads=1))
    for batch in (1, 7):
        x = torch.randn(batch, 20, generator=torch.Generator().manual_seed(batch))
        with torch.inference_mode():
            ref = dense(x).numpy()
        # 1e-5 relative: a bf16 inference precision would miss this by orders of magnitude.
        np.testing.assert_allclose(np.array(run(x.numpy())), ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))
