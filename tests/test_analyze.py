"""Checkpoint reading across conventions, the analyze report, and its CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import svdcompress
from svdcompress.checkpoint.analysis import analyze
from svdcompress.checkpoint.conventions import find_svdo_layers
from svdcompress.checkpoint.formats import load_checkpoint, save_checkpoint
from svdcompress.cli import main
from svdcompress.errors import CheckpointError, NoSVDOLayersError

LAYERS = ("fc1", "fc2", "fc3")


def _params(model: torch.nn.Module) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """theta (out, in), log sigma², bias per layer, as numpy."""
    out = {}
    for name in LAYERS:
        m = getattr(model, name)
        out[name] = (
            m.weight.detach().numpy().copy(),
            m.log_sigma2.detach().numpy().copy(),
            m.bias.detach().numpy().copy(),
        )
    return out


def _save_all(model: torch.nn.Module, d: Path) -> dict[str, tuple[Path, dict[str, int]]]:
    """Save ``model`` in seven conventions; return path and kept counts recomputed independently here."""
    p = _params(model)
    files: dict[str, tuple[Path, dict[str, int]]] = {}

    def kept(fn) -> dict[str, int]:  # fn(theta, ls2) -> log alpha, computed with numpy in float64
        return {
            n: int(((fn(t.astype(np.float64), s.astype(np.float64)) < 3.0) & (t != 0)).sum())
            for n, (t, s, _) in p.items()
        }

    # 1. svdcompress's own checkpoint
    f = d / "own.pt"
    save_checkpoint(f, model, arch="tiny", input_shape=(20,))
    files["svdcompress"] = (f, kept(lambda t, s: s - np.log(t * t + 1e-8)))
    # 2. pytorch-ard: nested under 'net', weight/log_sigma2/bias
    f = d / "ard.pth"
    torch.save(
        {
            "net": {
                f"{n}.{k}": torch.from_numpy(v)
                for n, (t, s, b) in p.items()
                for k, v in (("weight", t), ("log_sigma2", s), ("bias", b))
            },
            "acc": 0.9,
            "epoch": 3,
        },
        f,
    )
    files["pytorch-ard"] = (f, kept(lambda t, s: s - 2 * np.log(np.abs(t) + 1e-15)))
    # 3. the authors' PyTorch demo: W (out, in), log_sigma (not squared), bias (1, out)
    f = d / "demo.pt"
    torch.save(
        {
            f"{n}.{k}": torch.from_numpy(v)
            for n, (t, s, b) in p.items()
            for k, v in (("W", t), ("log_sigma", s / 2), ("bias", b[None, :]))
        },
        f,
    )
    files["svdo-demo"] = (f, kept(lambda t, s: 2 * (s / 2) - 2 * np.log(1e-16 + np.abs(t))))
    # 4. kefirski: theta (in, out), no eps
    f = d / "kefirski.pt"
    torch.save(
        {
            "state_dict": {
                f"{n}.{k}": torch.from_numpy(np.ascontiguousarray(v))
                for n, (t, s, b) in p.items()
                for k, v in (("theta", t.T), ("log_sigma2", s.T), ("bias", b))
            }
        },
        f,
    )
    with np.errstate(divide="ignore"):
        files["kefirski"] = (f, kept(lambda t, s: s - np.log(t * t)))
    # 5. numenta: w_mu / w_logsigma2
    f = d / "nupic.pt"
    torch.save(
        {
            f"{n}.{k}": torch.from_numpy(v)
            for n, (t, s, b) in p.items()
            for k, v in (("w_mu", t), ("w_logsigma2", s), ("bias", b))
        },
        f,
    )
    files["nupic"] = (f, kept(lambda t, s: s - np.log(t * t + 1e-8)))
    # 6. state_of_sparsity names, (in, out) kernels, in safetensors
    f = d / "sos.safetensors"
    save_file(
        {
            f"{n}.{k}": torch.from_numpy(np.ascontiguousarray(v))
            for n, (t, s, b) in p.items()
            for k, v in (("kernel", t.T), ("log_sigma2", s.T), ("bias", b))
        },
        str(f),
    )
    files["state-of-sparsity"] = (f, kept(lambda t, s: s - np.log(t * t + 1e-8)))
    # 7. the authors' Lasagne list: np.save of [W (in, out), b, ls2] per layer, an object array
    f = d / "lasagne.npy"
    arr = np.empty(9, dtype=object)
    for i, (t, s, b) in enumerate(p.values()):
        arr[3 * i], arr[3 * i + 1], arr[3 * i + 2] = t.T.copy(), b, s.T.copy()
    np.save(f, arr, allow_pickle=True)
    files["lasagne"] = (f, kept(lambda t, s: s - np.log(t * t)))  # the Lasagne dense layer has no eps
    return files


def test_every_convention_gives_the_same_kept_counts(trained_tiny, tmp_path: Path) -> None:
    files = _save_all(trained_tiny, tmp_path)
    reference = None
    for convention, (path, expected) in files.items():
        report = analyze(path, threshold=3.0)
        got = [r.kept for r in report.layers]
        assert got == [expected[n] for n in LAYERS], convention
        assert {r.convention for r in report.layers} == {convention}, convention
        assert [r.shape for r in report.layers] == [[32, 20], [16, 32], [4, 16]], convention
        reference = got if reference is None else reference
        assert got == reference, f"{convention} disagrees with svdcompress"
    # The model really is sparse after training, and something is kept.
    total = analyze(files["svdcompress"][0]).total
    assert 1.5 < total["compression"] < math.inf


def test_module_and_state_dict_sources_agree(trained_tiny) -> None:
    from_module = analyze(trained_tiny)
    from_sd = analyze(dict(trained_tiny.state_dict()))
    assert [r.kept for r in from_module.layers] == [r.kept for r in from_sd.layers]
    for name, r in zip(LAYERS, from_module.layers, strict=True):
        layer = getattr(trained_tiny, name)
        assert r.kept == int(((layer.log_alpha < 3.0) & (layer.weight != 0)).sum())
        w = layer.masked_weight()
        assert r.dead_outputs == int((w.abs().sum(1) == 0).sum())
        assert r.dead_inputs == int((w.abs().sum(0) == 0).sum())


def test_dead_units_are_found_and_the_threshold_moves_the_count(trained_tiny) -> None:
    report = analyze(trained_tiny)
    # Only 6 of 20 inputs carry signal: SVDO learns to ignore several of the rest.
    assert report.layers[0].dead_inputs >= 4
    assert analyze(trained_tiny, threshold=-1.0).total["kept"] < report.total["kept"]


def test_report_json_fields(trained_tiny, tmp_path: Path) -> None:
    f = tmp_path / "own.pt"
    save_checkpoint(f, trained_tiny, arch="tiny")
    res = CliRunner().invoke(main, ["analyze", str(f), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    for key in (
        "name",
        "kind",
        "shape",
        "weights",
        "kept",
        "sparsity",
        "compression",
        "dead_outputs",
        "dead_inputs",
        "log_alpha_min",
        "log_alpha_median",
        "log_alpha_max",
    ):
        assert key in data["layers"][0]
    assert set(data["total"]) >= {"weights", "kept", "compression", "biases"}
    assert data["total"]["weights"] == 32 * 20 + 16 * 32 + 4 * 16
    assert data["biases_counted_separately"] is True


def test_cli_table_and_plot(trained_tiny, tmp_path: Path) -> None:
    f = tmp_path / "own.pt"
    save_checkpoint(f, trained_tiny, arch="tiny")
    png = tmp_path / "hist.png"
    res = CliRunner().invoke(main, ["analyze", str(f), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert "total" in res.output and "biases are counted apart" in res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = CliRunner().invoke(main, ["analyze", str(f), "--plot", str(png)])
    assert again.exit_code == 1 and "--force" in again.output


def test_lookalikes_are_not_read_as_svdo(tmp_path: Path) -> None:
    bc = {
        "fc1.weight_mu": torch.randn(4, 3),
        "fc1.weight_logvar": torch.randn(4, 3),
        "fc1.z_mu": torch.randn(3),
        "fc1.z_logvar": torch.randn(3),
    }
    with pytest.raises(NoSVDOLayersError, match="Bayesian Compression"):
        find_svdo_layers(bc)
    l0 = {"fc1.weight": torch.randn(4, 3), "fc1.log_alpha": torch.randn(4, 3)}
    with pytest.raises(NoSVDOLayersError, match="L0"):
        find_svdo_layers(l0)
    # An L0 layer that also happens to carry log_sigma2 is still not read as SVDO.
    mixed = {**l0, "fc1.log_sigma2": torch.randn(4, 3)}
    with pytest.raises(NoSVDOLayersError, match="log_alpha"):
        find_svdo_layers(mixed)


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        ({"a.weight": torch.randn(4, 3), "a.log_sigma2": torch.randn(3, 4)}, "same shape"),
        ({"a.weight": torch.full((4, 3), float("nan")), "a.log_sigma2": torch.randn(4, 3)}, "NaN"),
        ({"a.weight": torch.randn(4, 3), "a.log_sigma2": torch.tensor([[float("inf")] * 3] * 4)}, "NaN or inf"),
        ({"a.weight": torch.ones(4, 3, dtype=torch.int64), "a.log_sigma2": torch.randn(4, 3)}, "floating point"),
        ({"a.weight": torch.tensor(1.0), "a.log_sigma2": torch.tensor(1.0)}, "matrix"),
        ({"a.weight": torch.randn(4, 3), "a.log_sigma2": torch.randn(4, 3), "a.bias": torch.randn(5)}, "bias"),
        ({"a.weight": torch.randn(4, 3), "a.bias": torch.randn(4)}, "no SVDO layers"),
    ],
)
def test_bad_tensors_name_the_tensor(tensors: dict[str, torch.Tensor], match: str, tmp_path: Path) -> None:
    f = tmp_path / "bad.pt"
    torch.save(tensors, f)
    with pytest.raises(CheckpointError, match=match) as info:
        analyze(f)
    assert str(f) in str(info.value)
    res = CliRunner().invoke(main, ["analyze", str(f)])
    assert res.exit_code == 1
    assert "Traceback" not in res.output and res.output.count("\n") == 1


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "empty"),
        (b"\x00\x01garbage" * 20, "not a checkpoint"),
        (b'{"weights": [1, 2, 3]}', "JSON"),
    ],
)
def test_bad_files(content: bytes, match: str, tmp_path: Path) -> None:
    f = tmp_path / "x.pt"
    f.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(f)
    res = CliRunner().invoke(main, ["analyze", str(f)])
    assert res.exit_code == 1 and "Traceback" not in res.output


def test_truncated_and_missing(trained_tiny, tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    save_checkpoint(good, trained_tiny, arch="tiny")
    bad = tmp_path / "trunc.pt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated|corrupt|not a torch"):
        analyze(bad)
    with pytest.raises(CheckpointError, match="no such file"):
        analyze(tmp_path / "missing.pt")
    res = CliRunner().invoke(main, ["analyze", str(tmp_path)])
    assert res.exit_code == 1 and "directory" in res.output


def test_pickled_objects_need_trust(trained_tiny, tmp_path: Path) -> None:
    f = tmp_path / "whole.pt"
    torch.save(trained_tiny, f)
    with pytest.raises(CheckpointError, match="trust_pickle=True"):
        analyze(f)
    report = analyze(f, trust_pickle=True)
    assert [r.name for r in report.layers] == list(LAYERS)


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
def test_bundled_checkpoints_match_their_training_log(name: str) -> None:
    path = svdcompress.bundled_checkpoint(name)
    report = analyze(path)
    prov = report.meta["provenance"]
    assert report.total["kept"] == prov["kept"]
    assert report.total["weights"] == prov["weights"]
    assert report.total["compression"] == pytest.approx(prov["compression"])
    assert prov["data"] == "fashion-mnist"


def test_the_api_takes_bundled_names_as_the_cli_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from svdcompress.checkpoint.bundled import bundled_checkpoint

    by_name = svdcompress.analyze("bundled:lenet300")
    by_path = svdcompress.analyze(bundled_checkpoint("lenet300"))
    assert by_name.total == by_path.total
    with pytest.raises(svdcompress.SvdcompressError, match="no bundled checkpoint 'nope'"):
        svdcompress.analyze("bundled:nope")
    monkeypatch.chdir(tmp_path)  # a file literally named "bundled:x" is read as that file
    (tmp_path / "bundled:x").write_bytes(b"not a checkpoint")
    with pytest.raises(svdcompress.SvdcompressError, match="bundled:x"):
        svdcompress.analyze("bundled:x")
