"""Quantised CSR bundles: bit packing, the two schemes, bits chosen from the posterior, the exactness of the
runtime against the dequantised weights, and corrupted quantised bundles."""

from __future__ import annotations

import copy
import json
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from svdcompress import runtime
from svdcompress.errors import BundleError, ExportError, InvalidInputError
from svdcompress.export import export_csr
from svdcompress.runtime import quant as Q


def _sparse_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 6, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 5 * 5, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    ).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net:
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.mul_(torch.rand(m.weight.shape, generator=g) < 0.3)
    return net


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8])
def test_pack_unpack_round_trip(bits: int) -> None:
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, 1001)
    packed = Q.pack_codes(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == -(-1001 * bits // 8)
    assert np.array_equal(Q.unpack_codes(packed, bits, 1001), codes)


def test_schemes_error_falls_with_bits_and_codebook_meets_uniform() -> None:
    rng = np.random.default_rng(0)
    vals = rng.standard_normal(4000).astype(np.float32)
    rows = np.repeat(np.arange(40), 100)
    errs = {}
    for b in (2, 4, 6, 8):
        codes, steps = Q.uniform(vals, rows, 40, b)
        assert codes.min() >= 0 and codes.max() <= 2 * ((1 << (b - 1)) - 1)
        errs[b] = float(np.sqrt(np.mean((Q.decode("uniform", b, codes, steps, rows) - vals) ** 2)))
        ccodes, cents = Q.codebook(vals, b)
        cb = float(np.sqrt(np.mean((Q.decode("codebook", b, ccodes, cents, rows) - vals) ** 2)))
        grid = np.linspace(vals.min(), vals.max(), 1 << b)  # Lloyd starts here and never raises the error
        flat = float(np.sqrt(np.mean((grid[np.abs(vals[:, None] - grid).argmin(1)] - vals) ** 2)))
        assert cb <= flat * (1 + 1e-6), (b, cb, flat)
    assert errs[2] > errs[4] > errs[6] > errs[8]
    # Each row's largest |value| sits exactly on its grid.
    codes, steps = Q.uniform(vals, rows, 40, 4)
    deq = Q.decode("uniform", 4, codes, steps, rows)
    for r in range(40):
        i = np.argmax(np.abs(vals[rows == r]))
        assert deq[rows == r][i] == pytest.approx(vals[rows == r][i], rel=1e-6)


def test_auto_takes_fewer_bits_where_the_posterior_is_wider() -> None:
    """The same weights with a 16× wider posterior σ tolerate a 16× coarser grid: fewer bits."""
    rng = np.random.default_rng(1)
    vals = rng.standard_normal(3000).astype(np.float32)
    rows = np.repeat(np.arange(30), 100)
    narrow, _, t_narrow = Q.choose(vals, rows, 30, None, sigma=0.01)
    wide, _, t_wide = Q.choose(vals, rows, 30, None, sigma=0.16)
    assert wide.bits < narrow.bits, (wide, narrow)
    assert t_wide == pytest.approx(16 * t_narrow)
    with pytest.raises(ValueError, match="posterior"):
        Q.choose(vals, rows, 30, None, sigma=None)


@pytest.mark.parametrize("bits", [2, 4, 8, "auto"])
def test_runtime_equals_the_dequantised_weights_applied_densely(bits: int | str, tmp_path: Path) -> None:
    net = _sparse_net()
    sigma = {"0": 0.02, "4": 0.01, "6": 0.05}
    res = export_csr(net, tmp_path / "q.csr", input_shape=(1, 12, 12), bits=bits, sigma=sigma)
    assert res.quant and set(res.quant) == {"_0.weight", "_4.weight", "_6.weight"}  # fx names of Sequential items
    if bits != "auto":
        assert all(q["bits"] <= int(bits) for q in res.quant.values())
    m = runtime.load(tmp_path / "q.csr")
    # The torch net with the bundle's decoded weights, applied densely, must give the runtime's output.
    twin = copy.deepcopy(net)
    with torch.no_grad():
        for idx in (0, 4, 6):
            lw = runtime.read_bundle(tmp_path / "q.csr").layers[f"_{idx}.weight"]
            twin[idx].weight.copy_(torch.from_numpy(lw.dense().reshape(twin[idx].weight.shape)))
    x = np.random.default_rng(2).standard_normal((7, 1, 12, 12)).astype(np.float32)
    with torch.no_grad():
        want = twin(torch.from_numpy(x)).numpy()
    got = m(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    assert res.max_abs_diff <= 1e-4 * max(1.0, float(np.abs(want).max()))
    with torch.no_grad():
        fp32 = net(torch.from_numpy(x)).numpy()
    assert not np.array_equal(got, fp32)  # it really is quantised
    assert res.quant_drift is not None and res.quant_drift > 0
    full = export_csr(net, tmp_path / "f.csr", input_shape=(1, 12, 12))
    assert res.file_bytes < full.file_bytes


def test_bits_are_checked_before_any_work(tmp_path: Path) -> None:
    net = _sparse_net()
    for bad in (0, 1, 9, 33, "four", True):
        with pytest.raises(ExportError, match="bits must be"):
            export_csr(net, tmp_path / "b.csr", input_shape=(1, 12, 12), bits=bad)  # type: ignore[arg-type]
    with pytest.raises(ExportError, match="posterior"):
        export_csr(net, tmp_path / "b.csr", input_shape=(1, 12, 12), bits="auto")
    with pytest.raises(ExportError, match="no posterior σ for layer '4'"):
        export_csr(net, tmp_path / "b.csr", input_shape=(1, 12, 12), bits="auto", sigma={"0": 0.1})
    assert not (tmp_path / "b.csr").exists()
    res = export_csr(net, tmp_path / "h.csr", input_shape=(1, 12, 12), bits=16)  # 16 bits: fp16 values
    assert res.quant is None
    assert json.loads(zipfile.ZipFile(tmp_path / "h.csr").read("manifest.json"))["dtype"] == "fp16"


def test_version_1_bundles_still_load(tmp_path: Path) -> None:
    """Bundles written before quantisation (format_version 1, no quant entries) load and run the same."""
    net = _sparse_net()
    export_csr(net, tmp_path / "v2.csr", input_shape=(1, 12, 12))
    old = _rewrite(tmp_path / "v2.csr", tmp_path / "v1.csr", lambda m, _: m.update(format_version=1))
    x = np.random.default_rng(3).standard_normal((3, 1, 12, 12)).astype(np.float32)
    assert np.array_equal(runtime.load(old)(x), runtime.load(tmp_path / "v2.csr")(x))


DATA = Path(__file__).with_name("data")


@pytest.mark.parametrize("name", ["format2_fp32", "format2_fp16", "format2_q3"])
def test_format_2_bundles_still_load(name: str) -> None:
    """Bundles written by the format-2 writer (deflate members, row_delta indices, bit-packed codes; files made
    with svdcompress 15faf62 from :func:`_sparse_net`) load and give the outputs that runtime gave."""
    want = np.load(DATA / "format2_outputs.npz")
    man = json.loads(zipfile.ZipFile(DATA / f"{name}.csr").read("manifest.json"))
    assert man["format_version"] == 2
    got = runtime.load(DATA / f"{name}.csr", kernel="sparse")(want["x"])
    np.testing.assert_allclose(got, want[name], rtol=1e-6, atol=1e-6 * float(np.abs(want[name]).max()))


@pytest.mark.parametrize("bits", [None, 3])
def test_every_index_encoding_gives_the_same_model_and_auto_the_smallest(bits: int | None, tmp_path: Path) -> None:
    net = _sparse_net(1)
    x = np.random.default_rng(4).standard_normal((5, 1, 12, 12)).astype(np.float32)
    sizes, outs = {}, {}
    for enc in ("row_delta", "gaps", "bitmap", "auto"):
        res = export_csr(net, tmp_path / f"{enc}.csr", input_shape=(1, 12, 12), bits=bits, index_encoding=enc)
        sizes[enc] = res.file_bytes
        outs[enc] = runtime.load(tmp_path / f"{enc}.csr", kernel="sparse")(x)
        man = json.loads(zipfile.ZipFile(tmp_path / f"{enc}.csr").read("manifest.json"))
        assert man["format_version"] == 3
        key = {"row_delta": "indices", "gaps": "positions", "bitmap": "mask"}.get(enc)
        csr = [v for v in man["layers"].values() if v["storage"] == "csr"]
        assert csr and (key is None or all(key in v for v in csr))
        with zipfile.ZipFile(tmp_path / f"{enc}.csr") as zf:  # each member: LZMA or DEFLATE, whichever is smaller
            for zi in zf.infolist():
                assert zi.compress_type in (zipfile.ZIP_LZMA, zipfile.ZIP_DEFLATED)
                assert zi.compress_size <= len(zlib.compress(zf.read(zi), 9))
    for enc in ("gaps", "bitmap", "auto"):
        np.testing.assert_array_equal(outs[enc], outs["row_delta"])
    # auto picks per layer by each candidate's compressed size alone: within a few zip bytes of the best
    assert sizes["auto"] <= min(sizes.values()) + 64
    with pytest.raises(ExportError, match="index_encoding"):
        export_csr(net, tmp_path / "x.csr", input_shape=(1, 12, 12), index_encoding="huffman")


def test_weights_that_quantise_to_zero_leave_the_pattern(tmp_path: Path) -> None:
    net = _sparse_net(2)
    with torch.no_grad():  # a row whose maximum is far above its other weights: 3-bit steps round most to 0
        net[4].weight[0, net[4].weight[0] != 0] = 1e-3
        net[4].weight[0, 0] = 5.0
    res = export_csr(net, tmp_path / "z.csr", input_shape=(1, 12, 12), bits=3)
    q = res.quant["_4.weight"]
    assert q["zeroed"] >= 1
    lw = runtime.read_bundle(tmp_path / "z.csr").layers["_4.weight"]
    kept = int((net[4].weight != 0).sum())
    assert lw.nnz == kept - q["zeroed"] and (lw.values != 0).all()
    assert lw.dense()[0, 0] == pytest.approx(5.0)


def test_entropy_bytes_and_the_zero_codes() -> None:
    assert Q.entropy_bytes(np.zeros(100, np.uint8)) == 0
    assert Q.entropy_bytes(np.arange(256).astype(np.uint8)) == 256  # 8 bits each
    codes, table = Q.uniform(np.array([0.01, 1.0, -1.0, 0.5]), np.zeros(4, np.int64), 1, 3)
    q = Q.Quantized("uniform", 3, codes.astype(np.uint8), table, 4)
    assert q.zero().tolist() == [True, False, False, False]  # 0.01 rounds to the grid's 0


def _rewrite(src: Path, dst: Path, edit: Any) -> Path:
    """Copy bundle ``src`` to ``dst`` with ``edit(manifest, arrays)`` applied (arrays: member → bytes)."""
    with zipfile.ZipFile(src) as zf:
        man = json.loads(zf.read("manifest.json"))
        members = {n: zf.read(n) for n in zf.namelist() if n != "manifest.json"}
    edit(man, members)
    with zipfile.ZipFile(dst, "w") as zf:
        zf.writestr("manifest.json", json.dumps(man))
        for n, b in members.items():
            zf.writestr(n, b)
    return dst


def _first_quant(man: dict[str, Any]) -> dict[str, Any]:
    return next(v["quant"] for v in man["layers"].values() if "quant" in v)


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("bits 0", "bits must be an integer"),
        ("bits 33", "bits must be an integer"),
        ("scheme", "scheme must be one of"),
        ("truncated codes", r"codes must be \d+ bytes, one per code"),
        ("code out of range", r"codes must be below \d+ for \d+ bits"),
        ("packing", "packing must be"),
        ("short table", "table must hold"),
        ("missing table", "table tensor"),
        ("dense storage", "only CSR-stored layers"),
    ],
)
def test_corrupted_quantised_bundles_give_a_clean_error(case: str, fragment: str, tmp_path: Path) -> None:
    net = _sparse_net()
    good = tmp_path / "good.csr"
    export_csr(net, good, input_shape=(1, 12, 12), bits=3)

    def edit(m: dict[str, Any], members: dict[str, bytes]) -> None:
        q = _first_quant(m)
        if case == "bits 0":
            q["bits"] = 0
        elif case == "bits 33":
            q["bits"] = 33
        elif case == "scheme":
            q["scheme"] = "huffman"
        elif case == "truncated codes":
            m["tensors"][q["codes"]]["shape"] = [m["tensors"][q["codes"]]["shape"][0] - 1]
        elif case == "code out of range":  # a codebook's codes read with one bit less: some point past the table
            q = next(v["quant"] for v in m["layers"].values() if v.get("quant", {}).get("scheme") == "codebook")
            q["bits"] -= 1
            m["tensors"][q["table"]]["shape"] = [1 << q["bits"]]
        elif case == "packing":
            q["packing"] = "nibble"
        elif case == "short table":  # a codebook index (or a row's step) would point past the table
            m["tensors"][q["table"]]["shape"] = [m["tensors"][q["table"]]["shape"][0] - 1]
        elif case == "missing table":
            q["table"] = "nope"
        elif case == "dense storage":
            next(v for v in m["layers"].values() if "quant" in v)["storage"] = "dense"

    bad = _rewrite(good, tmp_path / "bad.csr", edit)
    with pytest.raises(BundleError, match=fragment) as info:
        runtime.load(bad)
    assert str(bad) in str(info.value)


def _labelled_npz(model: nn.Module, path: Path, n: int = 400) -> Path:
    """Inputs with the labels the fp32 model predicts: its accuracy is 100%, and any drop is quantisation's."""
    x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        y = model(x).argmax(1)
    np.savez(path, x=x.numpy(), y=y.numpy())
    return path


def test_export_checks_a_quantised_bundle_on_data_and_writes_nothing_when_it_loses_too_much(tmp_path: Path) -> None:
    from svdcompress import export_model
    from svdcompress.errors import AccuracyDropError
    from svdcompress.nn.zoo import lenet300
    from svdcompress.pruning.masking import mask_model

    torch.manual_seed(1)  # a net whose 8-bit bundle keeps every prediction on this data (measured)
    net = lenet300(svdo=True).eval()
    data = _labelled_npz(mask_model(net, 3.0), tmp_path / "val.npz")
    with pytest.raises(AccuracyDropError, match=r"loses [\d.]+ accuracy points on .*val\.npz.*no file was written"):
        export_model(net, "csr", tmp_path / "q2.csr", input_shape=(1, 28, 28), bits=2, data=str(data))
    assert not (tmp_path / "q2.csr").exists()
    res = export_model(net, "csr", tmp_path / "q8.csr", input_shape=(1, 28, 28), bits=8, data=str(data))
    assert res.accuracy is not None and res.accuracy["fp32_accuracy"] == 100.0
    assert res.accuracy["examples"] == 400 and res.accuracy["drop_points"] <= 0.3
    # the figure is what the runtime gives on that data
    z = np.load(data)
    pred = runtime.load(tmp_path / "q8.csr")(z["x"]).argmax(1)
    assert res.accuracy["accuracy"] == pytest.approx(100.0 * float((pred == z["y"]).mean()))
    with pytest.raises(InvalidInputError, match="test split"):
        export_model(net, "csr", tmp_path / "t.csr", input_shape=(1, 28, 28), bits=4, data="fashion-mnist:test")
    with pytest.raises(InvalidInputError, match="neither"):
        export_model(net, "csr", tmp_path / "t.csr", input_shape=(1, 28, 28), data=str(data))


def test_bits_auto_on_data_tightens_the_noise_until_the_accuracy_holds(tmp_path: Path) -> None:
    from svdcompress import export_model
    from svdcompress.errors import AccuracyDropError
    from svdcompress.nn.zoo import lenet300
    from svdcompress.pruning.masking import mask_model

    # An untrained SVDO net's σ is wide, so bits="auto" at the default c loses 5.5 points on this data; measured
    # by hand: c/4 loses 4.0, c/16 1.0. With 2 points allowed, the export lands on c/16.
    torch.manual_seed(1)
    net = lenet300(svdo=True).eval()
    data = _labelled_npz(mask_model(net, 3.0), tmp_path / "val.npz")
    free = export_model(net, "csr", tmp_path / "a.csr", input_shape=(1, 28, 28), bits="auto")
    held = export_model(
        net, "csr", tmp_path / "b.csr", input_shape=(1, 28, 28), bits="auto", data=str(data), max_quant_drop=2.0
    )
    assert free.quant is not None and held.quant is not None and held.accuracy is not None
    assert 0 < held.accuracy["drop_points"] <= 2.0
    assert {q["c"] for q in held.quant.values()} == {Q.AUTO_C / 16}
    assert all(held.quant[k]["bits"] >= free.quant[k]["bits"] for k in free.quant)
    assert sum(held.quant[k]["bits"] for k in held.quant) > sum(free.quant[k]["bits"] for k in free.quant)
    with pytest.raises(AccuracyDropError, match="even with quantisation noise held to 1/16"):
        export_model(
            net, "csr", tmp_path / "c.csr", input_shape=(1, 28, 28), bits="auto", data=str(data), max_quant_drop=0.5
        )
    assert not (tmp_path / "c.csr").exists()


def test_cli_export_accuracy_gate(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from svdcompress.checkpoint.formats import save_checkpoint
    from svdcompress.cli import main
    from svdcompress.nn.zoo import lenet300
    from svdcompress.pruning.masking import mask_model

    torch.manual_seed(1)
    net = lenet300(svdo=True).eval()
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, net, arch="lenet300", arch_kwargs={"svdo": True}, input_shape=(1, 28, 28))
    data = _labelled_npz(mask_model(net, 3.0), tmp_path / "val.npz")
    out = tmp_path / "q.csr"
    res = CliRunner().invoke(
        main, ["export", str(ckpt), "--format", "csr", "--bits", "2", "--data", str(data), "-o", str(out)]
    )
    assert res.exit_code == 1 and "no file was written" in res.output and "Traceback" not in res.output
    assert not out.exists()
    res = CliRunner().invoke(
        main, ["export", str(ckpt), "--format", "csr", "--bits", "8", "--data", str(data), "-o", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "accuracy on" in res.output and "quantised" in res.output and out.exists()
    res = CliRunner().invoke(
        main, ["export", str(ckpt), "--format", "csr", "--data", str(data), "-o", str(tmp_path / "x.csr")]
    )
    assert res.exit_code == 2 and "got neither" in res.output


# bits="auto" without data on the bundled nets: the bit widths the default chose when its accuracy was measured on the
# 10,000 Fashion-MNIST test images (benchmarks/results/sizes.md, lenet5 −0.25 points, lenet300 −0.14); at the old
# c = 1/4 LeNet-5 got conv2 5, fc1 4, fc2 6 bits and lost 0.68 points.
_AUTO_BITS = {
    "lenet5": {"conv1": 8, "conv2": 7, "fc1": 6, "fc2": 7},
    "lenet300": {"fc1": 7, "fc2": 7, "fc3": 8},
}


@pytest.mark.parametrize("name", sorted(_AUTO_BITS))
def test_bits_auto_without_data_keeps_the_bundled_nets_within_the_quantisation_target(
    name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from svdcompress import bundled_checkpoint, export_model, load_model, mask_model
    from svdcompress.tuning.datasets import FASHION_MNIST_DIR, load_dataset

    src = bundled_checkpoint(name)
    with caplog.at_level(logging.INFO, logger="svdcompress.export"):
        res = export_model(src, "csr", tmp_path / "a.csr", bits="auto")
    assert "accuracy was not checked" in caplog.text and res.accuracy is None
    assert res.quant is not None
    # without the data set this is what is left to catch a looser rule: no layer gets fewer bits than measured
    got = {k.rsplit(".", 1)[0]: q["bits"] for k, q in res.quant.items()}
    assert all(got[k] >= b for k, b in _AUTO_BITS[name].items()), got
    if not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"{FASHION_MNIST_DIR}: real Fashion-MNIST test images missing; only the bit widths were checked")
    x, y = load_dataset("fashion-mnist", "test")
    with torch.no_grad():
        ref = mask_model(load_model(src).module.eval(), 3.0).eval()(x).argmax(1).numpy()
    bundle = runtime.load(tmp_path / "a.csr")
    xs = x.numpy()
    pred = np.concatenate([bundle(xs[i : i + 2000]).argmax(1) for i in range(0, len(xs), 2000)])
    drop = 100 * float((ref == y.numpy()).mean() - (pred == y.numpy()).mean())
    assert drop <= 0.3, f"{name}: bits='auto' without data loses {drop:.2f} points on the test images"
