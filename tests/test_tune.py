"""``svdcompress tune`` and ``--threshold auto``: the pick against an independent brute-force loop, the guards
(test splits, bad .npz files, data that does not fit, outputs that are not class scores), and the choice
recorded in the artifacts."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner, Result
from torch import nn

from svdcompress import InvalidInputError, bundled_checkpoint, mask_model, prune
from svdcompress.cli import main
from svdcompress.export import export_model
from svdcompress.pruning.pt2 import pruned_metadata
from svdcompress.tuning.datasets import FASHION_MNIST_DIR
from svdcompress.tuning.dataspec import check_selectable, load_data, parse_data_spec
from svdcompress.tuning.threshold import tune

_FASHION = FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz"
_NO_FASHION = (
    f"WARNING: Fashion-MNIST is missing ({_FASHION}); the real-data tune test is SKIPPED. "
    "Fix: apt-get install dataset-fashion-mnist (or set SVDCOMPRESS_FASHION_MNIST)."
)


# ---- independent reference: log α, masks and the forward pass written out here, not taken from svdcompress ----


def _independent_log_alpha(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(θ, bias, log α) per layer of TinySVDO, with svdcompress's own formula: log σ² − log(θ² + 1e-8)."""
    out = []
    for name in ("fc1", "fc2", "fc3"):
        layer = model.get_submodule(name)
        theta = layer.weight.detach().clone()
        la = layer.log_sigma2.detach() - torch.log(theta * theta + 1e-8)
        out.append((theta, layer.bias.detach().clone(), la))
    return out


def _forward(layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], x: torch.Tensor, t: float) -> torch.Tensor:
    h = x
    for i, (theta, bias, la) in enumerate(layers):
        w = theta * ((la < t) & (theta != 0)).float()
        h = F.linear(h, w, bias)
        if i < len(layers) - 1:
            h = torch.relu(h)
    return h


def _brute_force(
    layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    y: torch.Tensor,
    thresholds: list[float],
    max_drop: float,
) -> tuple[float, float, dict[float, tuple[int, float]]]:
    """(picked threshold, reference accuracy, threshold → (kept, accuracy)): every threshold scored, the most
    compressed within max_drop points of the unmasked model."""
    with torch.no_grad():
        ref = 100.0 * float((_forward(layers, x, math.inf).argmax(1) == y).float().mean())
        scores = {}
        for t in thresholds:
            kept = sum(int(((la < t) & (theta != 0)).sum()) for theta, _, la in layers)
            acc = 100.0 * float((_forward(layers, x, t).argmax(1) == y).float().mean())
            scores[t] = (kept, acc)
    ok = [t for t, (kept, acc) in scores.items() if acc >= ref - max_drop - 1e-9 and kept > 0]
    pick = min(ok, key=lambda t: (scores[t][0], -t))  # fewest kept = largest compression; ties: larger t
    return pick, ref, scores


def _all_boundaries(layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> list[float]:
    """One threshold between each pair of adjacent distinct log α values (θ ≠ 0), and one above them all."""
    vals = np.unique(np.concatenate([la[theta != 0].numpy().ravel() for theta, _, la in layers]))
    pairs = list(itertools.pairwise(vals))
    mids = [float(np.float32((a + b) / 2)) for a, b in pairs]
    return [t for t, (a, b) in zip(mids, pairs, strict=True) if a < np.float32(t) < b] + [float(vals[-1]) + 1.0]


def _held_out_blobs(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """New draws from the blobs trained_tiny learned (conftest.make_blobs(512, seed=0): its class centres)."""
    g = torch.Generator().manual_seed(0)
    torch.randint(0, 4, (512,), generator=g)  # make_blobs draws the labels first, then the centres
    centers = torch.randn(4, 6, generator=g) * 2.5
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 20, generator=g)
    x[:, :6] += centers[y]
    return x, y


@pytest.fixture
def val_npz(tmp_path: Path) -> Path:
    x, y = _held_out_blobs(300)
    path = tmp_path / "val.npz"
    np.savez(path, x=x.numpy(), y=y.numpy())
    return path


def _val(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(path) as z:
        return torch.from_numpy(z["x"]), torch.from_numpy(z["y"])


# ---- the pick ----


@pytest.mark.parametrize("max_drop", [0.0, 0.5, 2.0])
def test_tune_over_every_threshold_picks_what_brute_force_picks(
    trained_tiny: nn.Module, val_npz: Path, max_drop: float
) -> None:
    layers = _independent_log_alpha(trained_tiny)
    thresholds = _all_boundaries(layers)
    x, y = _val(val_npz)
    pick, ref, scores = _brute_force(layers, x, y, thresholds, max_drop)

    result = tune(trained_tiny, str(val_npz), max_drop=max_drop, thresholds=thresholds)

    assert result.reference_accuracy == pytest.approx(ref)
    assert result.threshold == pick
    assert (result.chosen.kept, result.chosen.accuracy) == pytest.approx(scores[pick])
    for row in result.rows:
        assert (row.kept, row.accuracy) == pytest.approx(scores[row.threshold]), row.threshold


def test_default_sweep_scores_its_candidates_exactly_and_picks_the_best_of_them(
    trained_tiny: nn.Module, val_npz: Path
) -> None:
    layers = _independent_log_alpha(trained_tiny)
    x, y = _val(val_npz)
    result = tune(trained_tiny, str(val_npz), max_drop=0.5)

    ts = [r.threshold for r in result.rows]
    pick, ref, scores = _brute_force(layers, x, y, ts, 0.5)
    assert result.threshold == pick
    assert result.reference_accuracy == pytest.approx(ref)
    for row in result.rows:
        assert (row.kept, row.accuracy) == pytest.approx(scores[row.threshold])
    kept = [r.kept for r in result.rows]
    assert len(set(kept)) == len(kept) or 3.0 in ts  # distinct quantiles (3.0 may repeat a kept count)
    assert 3.0 in ts
    assert 10 <= len(ts) <= 40
    # Over every threshold there is: on this net the quantile sweep and its refinement find that optimum too
    # (a property of this accuracy curve, not a guarantee: the sweep scores ~25 of 1,216 thresholds).
    best, _, every = _brute_force(layers, x, y, _all_boundaries(layers), 0.5)
    assert result.chosen.kept == every[best][0]


def test_the_model_scored_is_the_one_mask_model_builds(trained_tiny: nn.Module, val_npz: Path) -> None:
    result = tune(trained_tiny, str(val_npz))
    x, y = _val(val_npz)
    for row in result.rows:
        with torch.no_grad():
            acc = 100.0 * float((mask_model(trained_tiny, row.threshold)(x).argmax(1) == y).float().mean())
        assert acc == pytest.approx(row.accuracy)
    assert trained_tiny.fc1.__class__.__name__ == "LinearSVDO"  # untouched
    d = result.to_dict()
    assert d["threshold"] == result.threshold and d["data"] == str(val_npz) and len(d["rows"]) == len(result.rows)
    assert "chosen threshold" in result.format_table()


@pytest.mark.skipif(not _FASHION.exists(), reason=_NO_FASHION)
def test_bundled_lenet5_on_real_validation_images(tmp_path: Path) -> None:
    x, y = load_data("fashion-mnist:val")
    path = tmp_path / "val300.npz"
    np.savez(path, x=x[:300].numpy(), y=y[:300].numpy())
    result = tune(bundled_checkpoint("lenet5"), str(path))
    assert result.chosen.accuracy >= result.reference_accuracy - 0.5
    assert result.chosen.compression > 20


def test_a_validation_split_the_model_was_trained_on_is_flagged() -> None:
    from svdcompress.tuning.threshold import _overlap_warning

    val = parse_data_spec("fashion-mnist:val")
    all_train = {"provenance": {"data": "fashion-mnist", "train_size": 60000}}  # trained on all 60,000 images
    assert "not held out" in _overlap_warning(all_train, val)[0]
    assert _overlap_warning({"provenance": {"data": "fashion-mnist", "train_size": 55000}}, val) == []
    assert _overlap_warning(all_train, parse_data_spec("mnist5k:val")) == []
    for name in ("lenet5", "lenet300"):  # both bundled nets were trained with fashion-mnist:val held out
        assert _overlap_warning(torch.load(bundled_checkpoint(name), weights_only=True), val) == []


# ---- guards ----


@pytest.mark.parametrize("spec", ["fashion-mnist:test", "mnist5k:test", "fashion-mnist", "mnist5k", "FMNIST:Test"])
def test_test_splits_cannot_choose(trained_tiny: nn.Module, spec: str) -> None:
    with pytest.raises(InvalidInputError, match=r"test split.*cannot choose the threshold"):
        tune(trained_tiny, spec)
    with pytest.raises(InvalidInputError, match="test split"):
        prune(trained_tiny, threshold="auto", data=spec, input_shape=(20,))
    with pytest.raises(InvalidInputError, match="test split"):
        export_model(trained_tiny, "csr", "unused.csr", input_shape=(20,), threshold="auto", data=spec)


def test_auto_needs_data_and_data_needs_auto(trained_tiny: nn.Module, val_npz: Path) -> None:
    with pytest.raises(InvalidInputError, match="threshold='auto' chooses the threshold on held-out data"):
        export_model(trained_tiny, "csr", "unused.csr", input_shape=(20,), threshold="auto")
    with pytest.raises(InvalidInputError, match="got neither"):  # data= chooses a threshold or checks quantisation
        export_model(trained_tiny, "csr", "unused.csr", input_shape=(20,), threshold=2.0, data=str(val_npz))
    with pytest.raises(InvalidInputError, match="threshold='auto'"):
        prune(trained_tiny, threshold="auto", input_shape=(20,))


def _npz(path: Path, **arrays: object) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"x": np.zeros((4, 20), np.float32)}, "no array 'y'"),
        ({"inputs": np.zeros((4, 20), np.float32), "labels": np.zeros(4, np.int64)}, "no array 'x' or 'y'"),
        ({"x": np.zeros((4, 20), np.float32), "y": np.zeros(5, np.int64)}, "4 examples but y has 5 labels"),
        ({"x": np.array([["a"] * 20] * 4), "y": np.zeros(4, np.int64)}, "x has dtype <U1"),
        ({"x": np.zeros((4, 20), np.uint8), "y": np.zeros(4, np.int64)}, "/ 255"),
        ({"x": np.array([object()] * 4, dtype=object), "y": np.zeros(4, np.int64)}, "Object arrays cannot be loaded"),
        ({"x": np.zeros((4, 20), np.float32), "y": np.zeros(4, np.float32)}, "integer class labels"),
        ({"x": np.zeros((4, 20), np.float32), "y": np.zeros((4, 1), np.int64)}, "integer class labels"),
        ({"x": np.zeros((4, 20), np.float32), "y": -np.ones(4, np.int64)}, "negative labels"),
        ({"x": np.full((4, 20), np.nan, np.float32), "y": np.zeros(4, np.int64)}, "NaN"),
        ({"x": np.zeros(4, np.float32), "y": np.zeros(4, np.int64)}, "batch of inputs"),
    ],
)
def test_bad_npz_files_name_the_file_and_the_fix(tmp_path: Path, arrays: dict[str, object], fragment: str) -> None:
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InvalidInputError, match=r"bad\.npz") as info:
        load_data(str(path))
    assert fragment in str(info.value)


def test_unreadable_or_missing_npz(tmp_path: Path) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_text("not a zip")
    with pytest.raises(InvalidInputError, match=r"not an \.npz archive"):
        load_data(str(junk))
    with pytest.raises(InvalidInputError, match="no such file"):
        load_data(str(tmp_path / "missing.npz"))


def test_data_specs_parse_and_refuse_clearly() -> None:
    assert str(parse_data_spec("fashion_mnist:VAL")) == "fashion-mnist:val"
    assert parse_data_spec("mnist5k").bare and parse_data_spec("mnist5k").split == "test"
    assert not parse_data_spec("inputs.npy").labelled
    with pytest.raises(InvalidInputError, match="unknown data set 'cifar-10'"):
        parse_data_spec("cifar-10")
    with pytest.raises(InvalidInputError, match="unknown split 'dev'"):
        parse_data_spec("mnist5k:dev")
    with pytest.raises(InvalidInputError, match=r"must end in \.npz"):
        parse_data_spec("data/val.csv")
    with pytest.raises(InvalidInputError, match="without labels"):
        check_selectable("inputs.npy")


@pytest.mark.skipif(not _FASHION.exists(), reason=_NO_FASHION)
def test_fashion_mnist_splits_are_the_documented_slices() -> None:
    xv, yv = load_data("fashion-mnist:val")
    xt, _ = load_data("fashion-mnist:train")
    assert (len(xv), len(yv), len(xt)) == (5000, 5000, 55000)
    from svdcompress.tuning.datasets import load_fashion_mnist

    full, _ = load_fashion_mnist("train")
    assert torch.equal(full[-5000:], xv) and torch.equal(full[:55000], xt)


def test_data_that_does_not_fit_or_outputs_that_are_not_class_scores(trained_tiny: nn.Module, tmp_path: Path) -> None:
    wide = _npz(tmp_path / "wide.npz", x=np.zeros((8, 21), np.float32), y=np.zeros(8, np.int64))
    with pytest.raises(InvalidInputError, match=r"examples have shape \(21,\) but the model takes \(20,\)"):
        tune(trained_tiny, str(wide), input_shape=(20,))
    with pytest.raises(InvalidInputError, match=r"examples of shape \(21,\) do not run through TinySVDO"):
        tune(trained_tiny, str(wide))
    labels = _npz(tmp_path / "labels.npz", x=np.zeros((8, 20), np.float32), y=np.arange(8))
    with pytest.raises(InvalidInputError, match="labels go up to 7 but the model outputs 4 class scores"):
        tune(trained_tiny, str(labels))

    class Pairs(nn.Module):  # per-example (4, 1) outputs: not (N, C) class scores
        def __init__(self) -> None:
            super().__init__()
            self.net = trained_tiny

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x).unsqueeze(-1)

    ok = _npz(tmp_path / "ok.npz", x=np.zeros((8, 20), np.float32), y=np.zeros(8, np.int64))
    with pytest.raises(InvalidInputError, match=r"output .* has shape \(2, 4, 1\).*class scores of shape \(N, C\)"):
        tune(Pairs(), str(ok))


def test_bad_options(trained_tiny: nn.Module, val_npz: Path) -> None:
    with pytest.raises(InvalidInputError, match="max_drop"):
        tune(trained_tiny, str(val_npz), max_drop=-1)
    with pytest.raises(InvalidInputError, match="unknown metric"):
        tune(trained_tiny, str(val_npz), metric="f1")
    with pytest.raises(InvalidInputError, match="none of the thresholds given"):
        tune(trained_tiny, str(val_npz), thresholds=[-50.0], max_drop=0.0)


# ---- the choice in the artifacts, and the CLI ----


def _labelled_by_model(tmp_path: Path, ckpt: str, n: int = 200) -> Path:
    """Inputs the bundled model's own dense predictions label: a validation file without any data set."""
    from svdcompress.nn.architecture import load_model
    from svdcompress.pruning.masking import dense_copy

    resolved = load_model(bundled_checkpoint(ckpt))
    x = torch.rand((n, *(resolved.input_shape or ())), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = dense_copy(resolved.module)(x).argmax(1)
    path = tmp_path / f"{ckpt}-val.npz"
    np.savez(path, x=x.numpy(), y=y.numpy())
    return path


def _cli(args: list[str]) -> Result:
    res = CliRunner().invoke(main, args)
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    return res


def test_export_auto_records_threshold_and_data_in_the_bundle(tmp_path: Path) -> None:
    import svdcompress.runtime as rt

    data = _labelled_by_model(tmp_path, "lenet300")
    out = tmp_path / "m.csr"
    res = _cli(
        ["export", "bundled:lenet300", "--threshold", "auto", "--data", str(data), "--format", "csr", "-o", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "threshold auto:" in res.output
    manifest = rt.load(out).manifest
    sel = manifest["threshold_selection"]
    assert manifest["threshold"] == sel["threshold"]
    assert sel["data"] == str(data) and sel["metric"] == "accuracy" and sel["max_drop"] == 0.5
    assert len(sel["data_sha256"]) == 64
    assert sel["accuracy"] >= sel["reference_accuracy"] - 0.5
    # the same selection as tune's, on the same data
    direct = tune(bundled_checkpoint("lenet300"), str(data))
    assert direct.threshold == sel["threshold"]


def test_prune_auto_records_threshold_and_data_in_the_pt2(tmp_path: Path) -> None:
    data = _labelled_by_model(tmp_path, "lenet300", n=100)
    out = tmp_path / "m.pt2"
    res = _cli(["prune", "bundled:lenet300", "--threshold", "auto", "--data", str(data), "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    meta = pruned_metadata(out)
    assert meta["threshold"] == meta["threshold_selection"]["threshold"]
    assert meta["threshold_selection"]["data"] == str(data)
    report = json.loads(res.stdout)
    assert report["threshold"] == meta["threshold"]


def test_tune_cli_prints_the_table_and_the_choice(tmp_path: Path) -> None:
    data = _labelled_by_model(tmp_path, "lenet300", n=100)
    res = _cli(
        ["tune", "bundled:lenet300", "--data", str(data), "--max-drop", "1", "--json-out", str(tmp_path / "t.json")]
    )
    assert res.exit_code == 0, res.output
    assert "chosen threshold" in res.output and "← chosen" in res.output
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["max_drop"] == 1.0 and saved["source"] == "bundled:lenet300"
    assert saved["chosen"]["accuracy"] >= saved["reference_accuracy"] - 1.0


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["tune", "bundled:lenet300", "--data", "fashion-mnist:test"], 2, "cannot choose the threshold"),
        (["tune", "bundled:lenet300", "--data", "fashion-mnist"], 2, "means its test split"),
        (["tune", "bundled:lenet300", "--data", "{tmp}/junk.npz"], 1, "not an .npz archive"),
        (["tune", "bundled:lenet300"], 2, "Missing option '--data'"),
        (["export", "bundled:lenet300", "-o", "{tmp}/m.csr", "--threshold", "auto"], 2, "add --data SPEC"),
        (["export", "bundled:lenet300", "-o", "{tmp}/m.csr", "--data", "mnist5k:val"], 2, "--threshold auto"),
        (
            ["prune", "bundled:lenet300", "-o", "{tmp}/m.pt2", "--threshold", "auto", "--data", "mnist5k:test"],
            2,
            "test split",
        ),
        (["bench", "bundled:lenet300", "--threshold", "auto", "--data", "{tmp}/x.npy"], 2, "without labels"),
        (["bench", "bundled:lenet300", "--max-drop", "1"], 2, "--max-drop is used with --threshold auto"),
    ],
)
def test_cli_refuses_bad_selection_input_in_one_line(tmp_path: Path, args: list[str], code: int, fragment: str) -> None:
    (tmp_path / "junk.npz").write_text("junk")
    res = _cli([a.replace("{tmp}", str(tmp_path)) for a in args])
    assert res.exit_code == code, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and fragment in errors[0], res.output
    assert not (tmp_path / "m.csr").exists() and not (tmp_path / "m.pt2").exists()


def test_api_auto_in_prune_and_onnx_export(trained_tiny: nn.Module, val_npz: Path, tmp_path: Path) -> None:
    import onnx

    result = prune(trained_tiny, threshold="auto", data=str(val_npz), max_drop=1.0, input_shape=(20,))
    assert result.tuned is not None and result.tuned.max_drop == 1.0
    direct = tune(trained_tiny, str(val_npz), max_drop=1.0)
    assert result.tuned.threshold == direct.threshold
    x, _ = _val(val_npz)
    with torch.no_grad():
        torch.testing.assert_close(result.masked(x), mask_model(trained_tiny, direct.threshold)(x))

    res = export_model(
        trained_tiny, "onnx", tmp_path / "m.onnx", input_shape=(20,), threshold="auto", data=str(val_npz)
    )
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert float(props["svdcompress.threshold"]) == res.threshold == tune(trained_tiny, str(val_npz)).threshold
    assert json.loads(props["svdcompress.threshold_selection"])["data"] == str(val_npz)
    assert res.threshold_selection is not None and res.threshold_selection["threshold"] == res.threshold


def test_bench_auto_benchmarks_the_chosen_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI path only: the benchmark itself is replaced (no timing runs in unit tests)."""
    import svdcompress.benchmark.harness as bench_mod

    seen: dict[str, object] = {}

    def fake_bench(model: nn.Module, **kwargs: object) -> bench_mod.BenchReport:
        seen.update(kwargs)
        return bench_mod.BenchReport([], {}, {}, {"name": "lenet300"})

    monkeypatch.setattr(bench_mod, "bench", fake_bench)
    data = _labelled_by_model(tmp_path, "lenet300", n=100)
    res = _cli(["bench", "bundled:lenet300", "--threshold", "auto", "--data", str(data), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    chosen = report["model"]["threshold_selection"]["threshold"]
    assert seen["config"].threshold == chosen  # type: ignore[attr-defined]
    assert len(seen["data"][0]) == 100  # type: ignore[index]  # accuracy on the data the threshold was chosen on
