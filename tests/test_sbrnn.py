"""SparseBayesianRNN (tipt0p, Theano/Lasagne) lists: built by hand as its ``utils.save_net`` writes them
(``np.save(file, lasagne.layers.get_all_param_values(net))`` of a ``ClassificationNet``), and counted as its
``get_ard`` + ``compute_compression_masks`` + ``compress()`` count them, at several thresholds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import svdcompress
from svdcompress import CheckpointError
from svdcompress.checkpoint.conventions import find_svdo_layers, keep_mask
from svdcompress.checkpoint.formats import load_checkpoint
from svdcompress.cli import main

V, E, H, C = 12, 5, 4, 3  # vocabulary, embedding, hidden units, classes (E != H: the layout is unambiguous)


def _params(config: str, seed: int = 0, E: int = E, H: int = H) -> dict[str, np.ndarray]:
    """The parameters of ClassificationNet(V, E, H, C, config), by name, as its layers create them."""
    rng = np.random.default_rng(seed)
    f32 = np.float32

    def w(*shape: int) -> np.ndarray:
        return rng.normal(0, 0.3, shape).astype(f32)

    def ls(*shape: int) -> np.ndarray:  # log σ: log α = 2 ls - 2 log|w| spreads over roughly -6 ... 8
        return rng.uniform(-3.5, 1.5, shape).astype(f32)

    p: dict[str, np.ndarray] = {"emb.W": w(V, E)}
    if config[0] == "L":
        p["emb.log_sigma_w"] = ls(V, E)
    if config[1] == "L":
        p["emb.mu_in"], p["emb.log_in"] = np.ones(V, f32), ls(V)
    for g in ("ingate", "forgetgate", "cell", "outgate"):
        p[f"lstm.W_in_to_{g}"], p[f"lstm.W_hid_to_{g}"], p[f"lstm.b_{g}"] = w(E, H), w(H, H), w(H)
    p["lstm.hid_init"], p["lstm.cell_init"] = np.zeros((1, H), f32), np.zeros((1, H), f32)
    if config[2] == "L":
        p["lstm.logsig_w_in"], p["lstm.logsig_w_hid"] = ls(4, E, H), ls(4, H, H)
    if config[4] == "L":
        p["lstm.mu_in"], p["lstm.logsig_in"] = np.ones(E, f32) + w(E), ls(E)
        p["lstm.mu_hid"], p["lstm.logsig_hid"] = np.ones(H, f32) + w(H), ls(H)
    if config[3] == "L":
        p["lstm.mu_gates"], p["lstm.logsig_gates"] = np.ones((4, H), f32) + w(4, H), ls(4, H)
    p["dense.W"], p["dense.b"] = w(H, C), w(C)
    if config[5] == "L":
        p["dense.log_sigma"] = ls(H, C)
    if config[2] == "L" and config[5] == "L" and H > 2:
        # Units whose fate is decided across layers: hidden unit 1 is read by no recurrent weight but by the dense
        # layer (alive), unit 2 by neither (dead: its input and recurrent weights go too); embedding dimension 0
        # is read by no LSTM input weight (dead: its column goes from the embedding).
        p["lstm.logsig_w_hid"][:, 1:3, :] = 20.0
        p["dense.log_sigma"][1, :] = -20.0
        p["dense.log_sigma"][2, :] = 20.0
        p["lstm.logsig_w_in"][:, 0, :] = 20.0
    return p


def _save(path: Path, p: dict[str, np.ndarray]) -> Path:
    arr = np.empty(len(p), dtype=object)  # a list of differently shaped arrays: np.save pickles an object array
    arr[:] = list(p.values())
    np.save(path, arr, allow_pickle=True)
    return path


def _la(log_sigma: np.ndarray, mu: np.ndarray) -> np.ndarray:
    return 2 * log_sigma.astype(np.float64) - 2 * np.log(np.abs(mu.astype(np.float64)))


def _reference_kept(p: dict[str, np.ndarray], config: str, t: float) -> dict[str, int]:
    """What the project's code keeps: get_ard per layer, compute_compression_masks, compress()'s gate zeroing."""
    w_in = np.stack([p[f"lstm.W_in_to_{g}"] for g in ("ingate", "forgetgate", "cell", "outgate")])
    w_hid = np.stack([p[f"lstm.W_hid_to_{g}"] for g in ("ingate", "forgetgate", "cell", "outgate")])
    # BayesianEmbedding.get_ard
    mask_w = _la(p["emb.log_sigma_w"], p["emb.W"]) < t if config[0] == "L" else np.ones((V, E), bool)
    z_voc = _la(p["emb.log_in"], p["emb.mu_in"]) < t if config[1] == "L" else mask_w.any(axis=1)
    z_emb = mask_w.any(axis=0)
    # BayesianLSTM.get_ard
    mask_w_in = _la(p["lstm.logsig_w_in"], w_in) < t
    mask_w_hid = _la(p["lstm.logsig_w_hid"], w_hid) < t
    mask_in = mask_w_in.any(axis=2).any(axis=0)
    mask_hid_by_w = mask_w_hid.any(axis=2).any(axis=0)
    mask_hid_by_z = np.ones(H, bool)
    if config[4] == "L":
        mask_in &= _la(p["lstm.logsig_in"], p["lstm.mu_in"]) < t
        mask_hid_by_z = _la(p["lstm.logsig_hid"], p["lstm.mu_hid"]) < t
    gates = np.concatenate([mask_w_in, mask_w_hid], axis=1).any(axis=1)
    if config[3] == "L":
        gates &= _la(p["lstm.logsig_gates"], p["lstm.mu_gates"]) < t
    # BayesianDense.get_ard
    mask_dense = _la(p["dense.log_sigma"], p["dense.W"]) < t
    # ClassificationNet.compute_compression_masks
    mask_emb = z_emb & mask_in
    mask_hidden = (mask_hid_by_w | mask_dense.any(axis=1)) & mask_hid_by_z
    mask_w[~z_voc] = False
    mask_w[:, ~mask_emb] = False
    mask_w_in[:, ~mask_emb, :] = False
    mask_w_in[:, :, ~mask_hidden] = False
    mask_w_hid[:, ~mask_hidden, :] = False
    mask_w_hid[:, :, ~mask_hidden] = False
    mask_dense[~mask_hidden] = False
    if config[3] == "L":  # compress(): W[:, inv(mask_gates[j])] = 0 for W^x and W^h
        mask_w_in &= gates[:, None, :]
        mask_w_hid &= gates[:, None, :]
    return {
        "embedding": int(mask_w.sum()),
        "lstm.weight_ih_l0": int(mask_w_in.sum()),
        "lstm.weight_hh_l0": int(mask_w_hid.sum()),
        "dense": int(mask_dense.sum()),
    }


@pytest.mark.parametrize("config", ["LLLLLL", "LCLCCL", "LLLLCL"])
def test_sparse_bayesian_rnn_lists_are_counted_as_its_code_counts(tmp_path: Path, config: str) -> None:
    p = _params(config)
    f = _save(tmp_path / "weights_LLLLLL_epoch_800.npy", p)
    for t in (3.0, 1.0, -1.5, 6.0):  # the units' removals hold at every threshold, not only at 3
        report = svdcompress.analyze(f, threshold=t)  # recognised without convention=
        assert {r.name: r.kept for r in report.layers} == _reference_kept(p, config, t), (config, t)
        assert {r.convention for r in report.layers} == {"sparse-bayesian-rnn"}
    report = svdcompress.analyze(f, convention="sparse-bayesian-rnn")
    rows = {r.name: r for r in report.layers}
    assert [rows[n].kind for n in rows] == ["embedding", "lstm", "lstm", "linear"]
    assert rows["embedding"].shape == [V, E] and rows["dense"].shape == [C, H]  # PyTorch layout
    assert rows["lstm.weight_ih_l0"].shape == [4 * H, E] and rows["lstm.weight_hh_l0"].shape == [4 * H, H]
    assert rows["lstm.weight_ih_l0"].biases == 4 * H and rows["embedding"].biases == 0


def test_sparse_bayesian_rnn_gates_follow_pytorchs_order(tmp_path: Path) -> None:
    """Lasagne's ingate, forgetgate, cell, outgate are rows [0:H], [H:2H], [2H:3H], [3H:4H] of weight_ih_l0, each
    W_in_to_g (E, H) transposed; a word with a dropped multiplier is a zero row."""
    p = _params("LLLCCL")
    for k in ("emb.log_sigma_w", "lstm.logsig_w_in", "lstm.logsig_w_hid", "dense.log_sigma"):
        p[k][:] = -20.0  # every weight kept ...
    p["lstm.logsig_w_in"][2] = 20.0  # ... but the cell gate's input weights
    p["emb.log_in"][:] = -20.0
    p["emb.log_in"][7] = 20.0  # and word 7
    ckpt = load_checkpoint(_save(tmp_path / "w.npy", p))
    layers = {layer.name: layer for layer in find_svdo_layers(ckpt.tensors, source=ckpt.source)}
    ih = layers["lstm.weight_ih_l0"]
    np.testing.assert_array_equal(ih.theta[2 * H : 3 * H].numpy(), p["lstm.W_in_to_cell"].T)
    keep = keep_mask(ih.theta, ih.log_sigma2, 3.0, ih.convention)
    assert not keep[2 * H : 3 * H].any() and keep[: 2 * H].all() and keep[3 * H :].all()
    emb = layers["embedding"]
    keep = keep_mask(emb.theta, emb.log_sigma2, 3.0, emb.convention)
    assert not keep[7].any() and int(keep.sum()) == (V - 1) * E


def test_sparse_bayesian_rnn_layout_errors_name_the_entry(tmp_path: Path) -> None:
    p = _params("LCLCCL")
    del p["dense.b"]
    with pytest.raises(CheckpointError, match=r"tensor '\d+'.*expected dense b"):
        svdcompress.analyze(_save(tmp_path / "cut.npy", p))
    # emb size = hidden size and one pair of per-neuron vectors (config I or R): which? Refused, not guessed.
    q = _params("LCLCIL".replace("I", "C"), E=4, H=4)
    r = {}
    for k, v in q.items():
        r[k] = v
        if k == "lstm.logsig_w_hid":
            r["lstm.mu_in"], r["lstm.logsig_in"] = np.ones(4, np.float32), np.zeros(4, np.float32)
    with pytest.raises(CheckpointError, match="input or the hidden multipliers"):
        svdcompress.analyze(_save(tmp_path / "ambiguous.npy", r), convention="sparse-bayesian-rnn")


def test_prune_refuses_a_sparse_bayesian_rnn_list_and_says_analyze_reads_it(tmp_path: Path) -> None:
    f = _save(tmp_path / "w.npy", _params("LCLCCL"))
    with pytest.raises(CheckpointError, match=r"SparseBayesianRNN list.*analyze only"):
        svdcompress.load_model(f, model="svdcompress.nn.zoo:lenet300")
    runner = CliRunner()
    res = runner.invoke(
        main, ["prune", str(f), "-o", str(tmp_path / "x.pt2"), "--model", "svdcompress.nn.zoo:lenet300"]
    )
    assert res.exit_code == 1 and "analyze only" in res.output
    res = runner.invoke(main, ["analyze", str(f)])
    assert res.exit_code == 0 and "lstm.weight_hh_l0" in res.output
