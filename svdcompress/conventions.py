"""Recognise the SVDO checkpoint conventions found in the wild (DESIGN.md §2).

Every public implementation stores a weight mean and a log-variance (or log sigma) and
recomputes log alpha; they differ in names, layout, the eps inside the log and whether the
variance is sigma or sigma². :func:`find_svdo_layers` maps all of them onto
:class:`SVDOLayer` in PyTorch layout ((out, in) or (out, in, kh, kw)), keeping each
convention's own log alpha formula so that kept counts match what its code would prune.
Look-alikes that are *not* SVDO (Bayesian Compression, Structured Bayesian Pruning,
hard-concrete L0 gates) are reported, never read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ._io import release_pages
from .errors import CheckpointError, NoSVDOLayersError

__all__ = [
    "CONVENTIONS",
    "PYTORCH_ARD",
    "SVDCOMPRESS",
    "Convention",
    "SVDOLayer",
    "check_finite",
    "find_svdo_layers",
    "keep_mask",
    "keep_rule",
    "layer_kind",
    "log_alpha",
]


@dataclass(frozen=True)
class Convention:
    """One naming/layout/formula scheme.

    Attributes:
        name: short id shown in reports.
        theta: suffix of the weight-mean tensor.
        variance: suffix of the variance tensor.
        variance_is: "log_sigma2" or "log_sigma" (then log sigma² = 2 · log sigma).
        eps: constant inside the log of theta.
        eps_mode: "square" → log(theta² + eps); "abs" → 2 · log(|theta| + eps).
        layout: "torch" ((out, in), (out, in, kh, kw)) or "in_out" ((in, out), TF conv (kh, kw, in, out)).
        source: where the convention comes from.
    """

    name: str
    theta: str
    variance: str
    variance_is: str
    eps: float
    eps_mode: str
    layout: str
    source: str
    bias_names: tuple[str, ...] = ("bias", "b")


# Order matters: the first convention whose pair of suffixes is present in a prefix wins.
CONVENTIONS: tuple[Convention, ...] = (
    Convention("svdo-demo", "W", "log_sigma", "log_sigma", 1e-16, "abs", "torch", "authors' PyTorch demo (LinearSVDO)"),
    Convention(
        "pytorch-ard",
        "weight",
        "log_sigma2",
        "log_sigma2",
        1e-15,
        "abs",
        "torch",
        "pytorch-ard LinearARD/Conv2dARD (also svdcompress state_dicts)",
    ),
    Convention(
        "state-of-sparsity",
        "kernel",
        "log_sigma2",
        "log_sigma2",
        1e-8,
        "square",
        "in_out",
        "google-research state_of_sparsity (TF)",
    ),
    Convention(
        "state-of-sparsity",
        "weights",
        "log_sigma2",
        "log_sigma2",
        1e-8,
        "square",
        "in_out",
        "google-research state_of_sparsity (TF)",
    ),
    Convention(
        "kefirski", "theta", "log_sigma2", "log_sigma2", 0.0, "square", "in_out", "kefirski/variational_dropout"
    ),
    Convention("nupic", "w_mu", "w_logsigma2", "log_sigma2", 1e-8, "square", "torch", "numenta nupic.research"),
    Convention("nupic", "weight", "w_logvar", "log_sigma2", 1e-8, "square", "torch", "numenta nupic.research"),
)

PYTORCH_ARD = next(c for c in CONVENTIONS if c.name == "pytorch-ard")
SVDCOMPRESS = Convention(
    "svdcompress",
    "weight",
    "log_sigma2",
    "log_sigma2",
    1e-8,
    "square",
    "torch",
    "svdcompress.svdo (LinearSVDO/Conv2dSVDO)",
)
LASAGNE = Convention(
    "lasagne",
    "W",
    "ls2",
    "log_sigma2",
    1e-8,
    "square",
    "lasagne",
    "authors' Theano/Lasagne code (np.save of a positional list)",
)

# Suffixes that identify look-alike methods, with the explanation shown to the user.
_LOOKALIKES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("z_mu", "z_logvar"), "Bayesian Compression (Louizos et al.) group gates z_mu/z_logvar"),
    (("mu", "log_sigma"), "Structured Bayesian Pruning per-neuron mu/log_sigma (pruned by signal-to-noise ratio)"),
    (("log_alpha",), "a tensor named log_alpha (hard-concrete L0 gates use this name; SVDO stores log sigma²)"),
)


def log_alpha(theta: torch.Tensor, log_sigma2: torch.Tensor, conv: Convention) -> torch.Tensor:
    """log alpha = log sigma² − log theta², with the convention's eps. Unclipped; at least float32.

    This is the only implementation of the formula: the training layers (:mod:`svdcompress.svdo`),
    masking and the analysis all call it with their convention.
    """
    dtype = torch.promote_types(theta.dtype, torch.float32)  # fp16: eps 1e-8 would underflow
    theta, log_sigma2 = theta.to(dtype), log_sigma2.to(dtype)
    if conv.eps_mode == "abs":
        return log_sigma2 - 2.0 * torch.log(theta.abs() + conv.eps)
    return log_sigma2 - torch.log(theta * theta + conv.eps)


def keep_rule(log_alpha: torch.Tensor, theta: torch.Tensor, threshold: float) -> torch.Tensor:
    """The mask rule, the same everywhere: a weight is kept where log α < threshold and θ ≠ 0.

    (θ = 0 contributes nothing whether kept or not; leaving it out makes kept counts count non-zeros.)
    """
    return (log_alpha < threshold) & (theta != 0)


def keep_mask(theta: torch.Tensor, log_sigma2: torch.Tensor, threshold: float, conv: Convention) -> torch.Tensor:
    """Boolean keep-mask of one layer under ``conv``'s log α formula and :func:`keep_rule`."""
    return keep_rule(log_alpha(theta, log_sigma2, conv), theta, threshold)


@dataclass
class SVDOLayer:
    """One SVDO layer in PyTorch layout.

    Attributes:
        name: the layer's prefix in the checkpoint (e.g. ``"fc1"``), or ``"layer3"`` for Lasagne lists.
        kind: "linear", "conv1d" or "conv2d".
        theta: weight mean, (out, in) or (out, in/groups, kh, kw).
        log_sigma2: log sigma², same shape as ``theta``.
        bias: (out,) or None.
        convention: the scheme it was read with.
        theta_key, variance_key: the tensor names in the file (for error messages).
    """

    name: str
    kind: str
    theta: torch.Tensor
    log_sigma2: torch.Tensor
    bias: torch.Tensor | None
    convention: Convention
    theta_key: str
    variance_key: str


def _fail(file: str, key: str, what: str, fix: str) -> CheckpointError:
    return CheckpointError(f"{file}: tensor '{key}' {what}; {fix}")


def _check_tensor(file: str, key: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise _fail(file, key, f"is a {type(t).__name__}, not a tensor", "store tensors in the checkpoint")
    if not t.is_floating_point():
        raise _fail(
            file,
            key,
            f"has dtype {str(t.dtype).replace('torch.', '')}, expected floating point",
            "save the float parameters, not integer or boolean buffers",
        )
    return t


def check_finite(file: str, key: str, t: torch.Tensor) -> None:
    # Chunked so a huge tensor does not need a second full-size boolean copy; the pages read are handed back.
    flat = t.reshape(-1)
    step = 1 << 22
    for i in range(0, flat.numel(), step):
        if not bool(torch.isfinite(flat[i : i + step]).all()):
            raise _fail(file, key, "contains NaN or inf", "the training run diverged; use an earlier checkpoint")
        release_pages(flat[i : i + step])


def _to_torch_layout(file: str, key: str, t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "in_out":
        if t.dim() == 2:
            return t.t()  # (in, out) -> (out, in)
        if t.dim() == 4:
            return t.permute(3, 2, 0, 1)  # TF (kh, kw, in, out) -> (out, in, kh, kw)
    if t.dim() not in (2, 3, 4):
        raise _fail(
            file,
            key,
            f"has shape {tuple(t.shape)}, expected a matrix or a conv kernel (2 to 4 dims)",
            "check that the file holds layer weights",
        )
    return t


def layer_kind(t: torch.Tensor) -> str:
    """ "linear", "conv1d" or "conv2d" from a weight's number of dims (2, 3 or 4)."""
    return {2: "linear", 3: "conv1d", 4: "conv2d"}[t.dim()]


def _make_layer(
    file: str, name: str, tkey: str, vkey: str, bkey: str | None, tensors: Mapping[str, torch.Tensor], conv: Convention
) -> SVDOLayer:
    theta = _check_tensor(file, tkey, tensors[tkey])
    var = _check_tensor(file, vkey, tensors[vkey])
    if theta.shape != var.shape:
        raise _fail(
            file,
            vkey,
            f"has shape {tuple(var.shape)} but '{tkey}' has {tuple(theta.shape)}",
            "theta and its log-variance must have the same shape; the file mixes two models",
        )
    if theta.dim() < 2:
        raise _fail(
            file,
            tkey,
            f"has shape {tuple(theta.shape)}, expected a matrix or a conv kernel",
            "a scalar or vector cannot be an SVDO weight",
        )
    # Before the layout change: a transposed view would make _check_finite copy the whole tensor.
    check_finite(file, tkey, theta)
    check_finite(file, vkey, var)
    theta = _to_torch_layout(file, tkey, theta, conv.layout)
    var = _to_torch_layout(file, vkey, var, conv.layout)
    log_sigma2 = 2.0 * var if conv.variance_is == "log_sigma" else var
    bias = None
    if bkey is not None:
        b = _check_tensor(file, bkey, tensors[bkey])
        if b.numel() != theta.shape[0]:
            raise _fail(
                file,
                bkey,
                f"has {b.numel()} entries but '{tkey}' has {theta.shape[0]} outputs",
                "the bias does not belong to this weight",
            )
        check_finite(file, bkey, b)
        bias = b.reshape(-1)  # the demo stores (1, out)
    return SVDOLayer(name, layer_kind(theta), theta, log_sigma2, bias, conv, tkey, vkey)


def _split(key: str) -> tuple[str, str]:
    prefix, _, suffix = key.rpartition(".")
    return prefix, suffix


def _lasagne_layers(file: str, tensors: Mapping[str, torch.Tensor]) -> list[SVDOLayer]:
    """Positional list W, b, ls2 (or W, ls2, b) per layer; 1-D BatchNorm params in between are skipped."""
    arrs = [tensors[str(i)] for i in range(len(tensors))]
    layers: list[SVDOLayer] = []
    i = 0
    while i < len(arrs):
        a = arrs[i]
        if isinstance(a, torch.Tensor) and a.dim() <= 1:
            i += 1  # bias-free BatchNorm beta/gamma/mean/inv_std
            continue
        if i + 2 >= len(arrs):
            raise _fail(
                file,
                str(i),
                f"(shape {tuple(a.shape)}) starts a layer but the list ends after {len(arrs) - i} more array(s)",
                "a Lasagne SVDO list holds W, b, ls2 per layer; the list is truncated or not from SVDO",
            )
        nxt, nxt2 = arrs[i + 1], arrs[i + 2]
        if nxt2.shape == a.shape and nxt.dim() == 1:
            bkey, vkey = str(i + 1), str(i + 2)
        elif nxt.shape == a.shape and nxt2.dim() == 1:
            vkey, bkey = str(i + 1), str(i + 2)
        else:
            raise _fail(
                file,
                str(i),
                f"(shape {tuple(a.shape)}) is followed by shapes {tuple(nxt.shape)} and {tuple(nxt2.shape)}",
                "expected W, b, ls2 with ls2 shaped like W",
            )
        # Lasagne dense W is (in, out); conv W is already (out, in, kh, kw).
        conv = LASAGNE if a.dim() != 2 else dataclasses.replace(LASAGNE, layout="in_out")
        layers.append(_make_layer(file, f"layer{len(layers)}", str(i), vkey, bkey, tensors, conv))
        i += 3
    return layers


def find_svdo_layers(
    tensors: Mapping[str, torch.Tensor],
    *,
    file: str = "<state_dict>",
    source: str = "torch",
    own: bool = False,
) -> list[SVDOLayer]:
    """Find every SVDO layer in a flat ``{name: tensor}`` mapping.

    Args:
        tensors: flat mapping; Lasagne lists use the keys "0", "1", ...
        file: shown in error messages.
        source: "lasagne-npy" for positional lists, anything else for named tensors.
        own: the file was written by svdcompress; ``weight``/``log_sigma2`` then use svdcompress's formula.

    Raises:
        CheckpointError: a recognised layer has unusable tensors (shape mismatch, NaN, integer dtype).
        NoSVDOLayersError: nothing recognisable; the message lists look-alikes found, if any.
    """
    if source == "lasagne-npy":
        layers = _lasagne_layers(file, tensors)
        if not layers:
            raise NoSVDOLayersError(
                f"{file}: no W/b/ls2 triple found in the positional list; expected the authors' Lasagne np.save format"
            )
        return layers

    by_prefix: dict[str, dict[str, str]] = {}
    for key in tensors:
        prefix, suffix = _split(key)
        by_prefix.setdefault(prefix, {})[suffix] = key

    layers = []
    lookalikes: list[str] = []
    for prefix, suffixes in by_prefix.items():
        found = None
        for conv in CONVENTIONS:
            if conv.theta in suffixes and conv.variance in suffixes:
                found = SVDCOMPRESS if (own and conv.name == "pytorch-ard") else conv
                break
        for names, why in _LOOKALIKES:
            if all(n in suffixes for n in names):
                lookalikes.append(f"'{suffixes[names[0]]}' ({why})")
        if found is None:
            continue
        if any(all(n in suffixes for n in names) for names, _ in _LOOKALIKES):
            continue  # a look-alike that happens to also carry a weight/variance pair: do not misread it
        bkey = next((suffixes[b] for b in found.bias_names if b in suffixes), None)
        layers.append(_make_layer(file, prefix, suffixes[found.theta], suffixes[found.variance], bkey, tensors, found))

    if not layers:
        listed = ", ".join(list(tensors)[:6]) + (" ..." if len(tensors) > 6 else "")
        hint = f" Found look-alikes that are not SVDO: {'; '.join(lookalikes)}." if lookalikes else ""
        known = "; ".join(sorted({f"{c.theta}+{c.variance}" for c in CONVENTIONS}))
        raise NoSVDOLayersError(
            f"{file}: no SVDO layers found among {len(tensors)} tensors ({listed or 'none'}).{hint} "
            f"Expected a weight and log-variance pair per layer ({known}); "
            "a plain (non-SVDO) checkpoint has nothing to prune"
        )
    return layers
