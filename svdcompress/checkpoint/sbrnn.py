"""The checkpoints of tipt0p/SparseBayesianRNN (Lobacheva, Chirkova, Vetrov: Bayesian sparsification of RNNs).

That code (Theano/Lasagne) saves ``np.save(file, lasagne.layers.get_all_param_values(net))``: a positional
list, no names. Its classifier (``ClassificationNet``) is a ``BayesianEmbedding``, a ``BayesianLSTM`` and a
``Dense``/``BayesianDense``; each layer adds its parameters in this order:

- embedding: ``W`` (vocab, emb); ``log_sigma_w`` (vocab, emb) when its weights are Bayesian; ``mu_in``,
  ``log_in`` (vocab,) when its per-word multipliers are (the vocabulary gates of Chirkova et al. 2018);
- LSTM, per gate (ingate, forgetgate, cell, outgate): ``W_in_to_g`` (emb, H), ``W_hid_to_g`` (H, H), ``b_g``
  (H,); then ``hid_init``, ``cell_init`` (1, H); ``logsig_w_in`` (4, emb, H) and ``logsig_w_hid`` (4, H, H)
  when the weights are Bayesian; per-neuron multipliers ``mu_in``/``logsig_in`` (emb,) and
  ``mu_hid``/``logsig_hid`` (H,) (all four, only the input pair, only the hidden pair, or ``mu_in``, ``mu_hid``
  alone when deterministic); gate multipliers ``mu_gates`` (4, H) and ``logsig_gates`` (4, H);
- dense: ``W`` (H, classes), ``b`` (classes,), and ``log_sigma`` (H, classes) for ``BayesianDense``.

Its formula is the one of ``get_ard``, which the code's ``compress()`` and reported compression use: log α =
2 · log σ − 2 · log|θ| (log σ, not log σ²; no eps; no clip), a weight kept where log α < 3, a multiplier z kept
where 2 · log σ_z − 2 · log|μ_z| < 3. (The ``clip=True`` test-time path clips to ±8 and keeps embedding and LSTM
weights where log α ≤ 3: the same weights except at exact ties.) ``compute_compression_masks`` then removes, as
``compress()`` does: the rows of dropped words; the embedding dimensions no word or no LSTM input weight uses (or
whose input multiplier is dropped); the hidden units no recurrent or dense weight reads or whose multiplier is
dropped, in the LSTM's input and recurrent weights and the dense layer's rows; and the gate columns whose gate
multiplier is dropped. Each such unit dies at every threshold at or below a level (the least log α of the
weights keeping it alive, or its multiplier's), so each weight is read with log α = the largest of its own and
its units' levels: kept counts are what ``compress()`` keeps, at every threshold.

Layers come out in PyTorch layout and names: ``embedding`` (vocab, emb), ``lstm.weight_ih_l0`` (4H, emb),
``lstm.weight_hh_l0`` (4H, H) with the gates in PyTorch's order (i, f, g, o is Lasagne's ingate, forgetgate,
cell, outgate), ``dense`` (classes, H). Only weights with a log σ are layers. The LSTM uses hard sigmoids and
learned initial states, which ``nn.LSTM`` does not compute: the list is read for ``analyze``, not mapped onto a
model.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch

from .conventions import SPARSE_BAYESIAN_RNN, SVDOLayer, _check_tensor, _fail, check_finite

__all__ = ["SPARSE_BAYESIAN_RNN", "looks_like_sbrnn", "sbrnn_layers"]


def looks_like_sbrnn(arrays: list[torch.Tensor]) -> bool:
    """A positional list with an LSTM's stacked log σ of the input weights, (4, emb, H), next to (4, H, H): no
    Lasagne SVDO LeNet list holds a 3-D array."""
    return any(
        a.dim() == 3 and a.shape[0] == 4 and b.dim() == 3 and b.shape == (4, a.shape[2], a.shape[2])
        for a, b in itertools.pairwise(arrays)
    )


class _Reader:
    """Walks the list in the order the Lasagne layers added their parameters."""

    def __init__(self, file: str, arrays: list[torch.Tensor]) -> None:
        self.file, self.arrays, self.i = file, arrays, 0

    def peek(self, *shape: int) -> bool:
        return self.i < len(self.arrays) and tuple(self.arrays[self.i].shape) == shape

    def take(self, what: str, *shape: int) -> torch.Tensor:
        if not self.peek(*shape):
            got = tuple(self.arrays[self.i].shape) if self.i < len(self.arrays) else "the end of the list"
            raise _fail(
                self.file,
                str(self.i),
                f"is {got}, expected {what} of shape {shape}",
                "the list is not SparseBayesianRNN's embedding, LSTM and dense layers (ClassificationNet) in the "
                "order lasagne.layers.get_all_param_values saves them",
            )
        a = self.arrays[self.i].float()
        self.i += 1
        return a

    def maybe(self, what: str, *shape: int) -> torch.Tensor | None:
        return self.take(what, *shape) if self.peek(*shape) else None


def _la(log_sigma: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    return 2.0 * log_sigma - 2.0 * torch.log(mu.abs())


def sbrnn_layers(file: str, tensors: Mapping[str, torch.Tensor]) -> list[SVDOLayer]:
    """The SVDO layers of a SparseBayesianRNN classifier list (keys "0", "1", ...), each weight's log α raised to
    the levels of the units ``compress()`` would remove with it (see the module docstring).

    Raises:
        CheckpointError: the list does not follow the layout; the message names the entry and what was expected.
    """
    arrays = [_check_tensor(file, str(i), tensors[str(i)]) for i in range(len(tensors))]
    for i, a in enumerate(arrays):
        check_finite(file, str(i), a)
    r = _Reader(file, arrays)
    if not arrays or arrays[0].dim() != 2:
        raise _fail(file, "0", "is not a matrix", "expected the embedding W (vocab, emb) first")
    vocab, emb = arrays[0].shape
    w_emb = r.take("embedding W", vocab, emb)
    ls_emb = r.maybe("embedding log_sigma_w", vocab, emb)
    mu_voc = ls_voc = None
    if r.peek(vocab) and r.i + 1 < len(arrays) and tuple(arrays[r.i + 1].shape) == (vocab,):
        mu_voc, ls_voc = r.take("embedding mu_in", vocab), r.take("embedding log_in", vocab)
    if r.i >= len(arrays) or arrays[r.i].dim() != 2 or arrays[r.i].shape[0] != emb:
        raise _fail(file, str(r.i), "does not start an LSTM", "expected W_in_to_ingate (emb, H) after the embedding")
    hidden = int(arrays[r.i].shape[1])
    w_in, w_hid, b = [], [], []
    for gate in ("ingate", "forgetgate", "cell", "outgate"):
        w_in.append(r.take(f"W_in_to_{gate}", emb, hidden))
        w_hid.append(r.take(f"W_hid_to_{gate}", hidden, hidden))
        b.append(r.take(f"b_{gate}", hidden))
    r.take("hid_init", 1, hidden)
    r.take("cell_init", 1, hidden)
    ls_in = r.maybe("logsig_w_in", 4, emb, hidden)
    ls_hid = r.take("logsig_w_hid", 4, hidden, hidden) if ls_in is not None else None
    z_in: torch.Tensor | None = None  # log α of the per-neuron multipliers, where they are Bayesian
    z_hid: torch.Tensor | None = None
    vectors = []
    while r.i < len(arrays) and arrays[r.i].dim() == 1:
        vectors.append(arrays[r.i].float())
        r.i += 1
    sizes = [v.numel() for v in vectors]
    if sizes == [emb, emb, hidden, hidden]:  # L / N: mu_in, logsig_in, mu_hid, logsig_hid
        z_in, z_hid = _la(vectors[1], vectors[0]), _la(vectors[3], vectors[2])
    elif len(sizes) == 2 and emb == hidden:
        raise _fail(
            file,
            str(r.i - 2),
            f"and the next are two per-neuron vectors of {emb}; with emb size = hidden size the list cannot say "
            "whether they are the input or the hidden multipliers",
            "read the file with SparseBayesianRNN's own code (get_ard), or save it with both pairs (config L)",
        )
    elif sizes == [emb, emb]:  # I: mu_in, logsig_in
        z_in = _la(vectors[1], vectors[0])
    elif sizes == [hidden, hidden]:  # R: mu_hid, logsig_hid
        z_hid = _la(vectors[1], vectors[0])
    elif sizes not in ([], [emb, hidden]):  # C: none; D: mu_in, mu_hid, deterministic
        raise _fail(file, str(r.i - len(sizes)), f"starts 1-D vectors of sizes {sizes}", "expected the LSTM's z")
    mu_gates = r.maybe("mu_gates", 4, hidden)
    ls_gates = r.maybe("logsig_gates", 4, hidden) if mu_gates is not None else None
    classes = int(arrays[r.i].shape[1]) if r.i < len(arrays) and arrays[r.i].dim() == 2 else -1
    w_dense = r.take("dense W", hidden, classes)
    b_dense = r.take("dense b", classes)
    ls_dense = r.maybe("dense log_sigma", hidden, classes)
    if r.i != len(arrays):
        raise _fail(file, str(r.i), "follows the dense layer", "expected the list to end there")

    # get_ard's log α per layer (-inf where a weight has no log σ: always kept), then compute_compression_masks'
    # removals as "levels": a unit dies at thresholds at or below its level, so a weight is kept at t exactly where
    # max(its log α, the levels of its units) < t, at every t.
    inf = float("inf")
    theta_in, theta_hid = torch.stack(w_in), torch.stack(w_hid)  # (4, emb, H), (4, H, H)
    la_emb = _la(ls_emb, w_emb) if ls_emb is not None else torch.full_like(w_emb, -inf)
    la_in = _la(ls_in, theta_in) if ls_in is not None else torch.full_like(theta_in, -inf)
    la_hid = _la(ls_hid, theta_hid) if ls_hid is not None else torch.full_like(theta_hid, -inf)
    la_dense = _la(ls_dense, w_dense) if ls_dense is not None else torch.full_like(w_dense, -inf)
    # a word: its multiplier's log α, or (without one) the least log α of its row
    lvl_word = _la(ls_voc, mu_voc) if ls_voc is not None and mu_voc is not None else la_emb.amin(1)
    # an embedding dimension: some word's weight and some LSTM input weight must read it, and its z be kept
    lvl_dim = torch.maximum(la_emb.amin(0), la_in.amin(dim=(0, 2)))
    if z_in is not None:
        lvl_dim = torch.maximum(lvl_dim, z_in)
    # a hidden unit: some recurrent weight (as a source) or dense weight reads it, and its z is kept
    lvl_hidden = torch.minimum(la_hid.amin(dim=(0, 2)), la_dense.amin(1))
    if z_hid is not None:
        lvl_hidden = torch.maximum(lvl_hidden, z_hid)
    eff_emb = torch.maximum(la_emb, torch.maximum(lvl_word[:, None], lvl_dim[None, :]))
    eff_in = torch.maximum(la_in, torch.maximum(lvl_dim[None, :, None], lvl_hidden[None, None, :]))
    eff_hid = torch.maximum(la_hid, torch.maximum(lvl_hidden[None, :, None], lvl_hidden[None, None, :]))
    eff_dense = torch.maximum(la_dense, lvl_hidden[:, None])
    if mu_gates is not None and ls_gates is not None:  # compress(): W[:, ~mask_gates[j]] = 0
        lvl_gate = torch.maximum(torch.cat([la_in, la_hid], dim=1).amin(1), _la(ls_gates, mu_gates))  # (4, H)
        eff_in = torch.maximum(eff_in, lvl_gate[:, None, :])
        eff_hid = torch.maximum(eff_hid, lvl_gate[:, None, :])

    def stored(eff: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """The log σ² that gives log α = ``eff`` under the convention's formula (θ = 0: never kept anyway)."""
        return torch.where(theta != 0, eff + 2.0 * torch.log(theta.abs()), torch.zeros_like(theta))

    def gates_torch(t: torch.Tensor) -> torch.Tensor:  # (4, in, H) -> (4H, in), gates i, f, g, o
        return t.transpose(1, 2).reshape(4 * hidden, -1)

    conv = SPARSE_BAYESIAN_RNN
    layers = []
    if ls_emb is not None:
        layers.append(SVDOLayer("embedding", "embedding", w_emb, stored(eff_emb, w_emb), None, conv, "0", "1"))
    if ls_in is not None:
        bias = torch.cat(b)
        first = 1 + (ls_emb is not None) + 2 * (mu_voc is not None)
        for name, theta, eff, key, lkey in (
            ("lstm.weight_ih_l0", theta_in, eff_in, str(first), str(first + 14)),
            ("lstm.weight_hh_l0", theta_hid, eff_hid, str(first + 1), str(first + 15)),
        ):
            layers.append(
                SVDOLayer(name, "lstm", gates_torch(theta), gates_torch(stored(eff, theta)), bias, conv, key, lkey)
            )
    if ls_dense is not None:
        n = len(arrays)
        layers.append(
            SVDOLayer(
                "dense", "linear", w_dense.t(), stored(eff_dense, w_dense).t(), b_dense, conv, str(n - 3), str(n - 1)
            )
        )
    if not layers:
        raise _fail(
            file,
            "0",
            "starts a SparseBayesianRNN list with no Bayesian weights (no log σ next to any W)",
            "nothing in it was sparsified; train with config L for the weights",
        )
    return layers
