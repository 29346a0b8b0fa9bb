"""Recognise the SVDO checkpoint conventions found in the wild (README.md, "Checkpoints it reads").

Every public implementation stores a weight mean and a log-variance (or log sigma) and
recomputes log alpha; they differ in names, layout, the eps inside the log, whether the
variance is sigma or sigma², the clip applied to log alpha and the comparison that keeps a
weight. :func:`find_svdo_layers` maps all of them onto :class:`SVDOLayer` in PyTorch layout
((out, in) or (out, in, kh, kw)), keeping each convention's own formula, clip and operator so
that kept counts match what its code would prune. Look-alikes that are *not* SVDO (Bayesian
Compression, Structured Bayesian Pruning, hard-concrete L0 gates) are reported, never read.

``weight`` + ``log_sigma2`` is written by three projects with three formulas (pytorch-ard,
BayesWatch, svdcompress itself). What the file says settles it (a checkpoint written by
svdcompress; the class of a pickled module); otherwise pytorch-ard is assumed, the layer
records the alternatives, and ``convention=`` picks one.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .._io import release_pages
from ..errors import CheckpointError, InvalidInputError, NoSVDOLayersError

__all__ = [
    "AMBIGUOUS",
    "BAYESWATCH",
    "CONVENTIONS",
    "CONVENTION_NAMES",
    "PYTORCH_ARD",
    "RULE_ATTR",
    "SVDCOMPRESS",
    "Convention",
    "SVDOLayer",
    "central_data_layers",
    "check_finite",
    "convention_of_module",
    "find_svdo_layers",
    "keep_mask",
    "keep_rule",
    "known_pairs",
    "layer_kind",
    "log_alpha",
    "module_layer",
    "module_reader",
]


@dataclass(frozen=True)
class Convention:
    """One naming/layout/formula scheme.

    Attributes:
        name: short id shown in reports and accepted by ``convention=`` / ``--convention``.
        theta: suffix of the weight-mean tensor.
        variance: suffix of the variance tensor.
        variance_is: "log_sigma2" or "log_sigma" (then log sigma² = 2 · log sigma).
        eps: constant inside the log of theta (0: none, so theta = 0 gives log alpha = +inf before the clip).
        eps_mode: "square" → log(theta² + eps); "abs" → 2 · log(|theta| + eps).
        layout: "torch" ((out, in), (out, in, kh, kw)) or "in_out" ((in, out), TF conv (kh, kw, in, out)).
        source: where the convention comes from.
        clip: log alpha is clamped to [-clip, clip] before the comparison (None: not clipped), for 2-D weights.
        clip_conv: the same for conv kernels (pytorch-ard clips its Linear at 10, its Conv2d at 8).
        keep_equal: the project zeroes only where log alpha > threshold, so log alpha == threshold is kept
            (kefirski, Chainer); otherwise a weight is kept where log alpha < threshold.
        bias_names: suffixes read as the layer's bias.
    """

    name: str
    theta: str
    variance: str
    variance_is: str
    eps: float
    eps_mode: str
    layout: str
    source: str
    clip: float | None = None
    clip_conv: float | None = None
    keep_equal: bool = False
    bias_names: tuple[str, ...] = ("bias", "b", "biases")

    def clip_for(self, dims: int) -> float | None:
        """The clip applied to a weight with ``dims`` dimensions."""
        return self.clip if dims == 2 else self.clip_conv

    @property
    def keep_op(self) -> str:
        """The comparison that keeps a weight: "<" or "<="."""
        return "<=" if self.keep_equal else "<"

    def formula(self) -> str:
        """log alpha as the project writes it, for messages and docs."""
        if self.eps_mode == "abs":
            inner = f"2·log(|θ| + {self.eps:g})"
        else:
            inner = f"log(θ² + {self.eps:g})" if self.eps else "log(θ²)"
        var = "2·log σ" if self.variance_is == "log_sigma" else "log σ²"
        clip = "" if self.clip is None else f", clipped to ±{self.clip:g}"
        if self.clip_conv != self.clip:
            clip = f", clipped to ±{self.clip:g} (conv ±{self.clip_conv:g})"
        return f"{var} − {inner}{clip}, keep log α {self.keep_op} threshold"


PYTORCH_ARD = Convention(
    "pytorch-ard",
    "weight",
    "log_sigma2",
    "log_sigma2",
    1e-15,
    "abs",
    "torch",
    "pytorch-ard 0.2.4 LinearARD/Conv2dARD",
    clip=10.0,
    clip_conv=8.0,
)
BAYESWATCH = Convention(
    "bayeswatch",
    "weight",
    "log_sigma2",
    "log_sigma2",
    1e-8,
    "square",
    "torch",
    "BayesWatch pytorch-variational-dropout / reliable-train (Linear, Conv2d)",
    clip=8.0,
    clip_conv=8.0,
)
SVDCOMPRESS = Convention(
    "svdcompress",
    "weight",
    "log_sigma2",
    "log_sigma2",
    1e-8,
    "square",
    "torch",
    "svdcompress.nn.layers (LinearSVDO/Conv2dSVDO)",
)


def _state_of_sparsity(theta: str) -> Convention:
    return Convention(
        "state-of-sparsity",
        theta,
        "log_sigma2",
        "log_sigma2",
        1e-8,
        "square",
        "in_out",
        "google-research state_of_sparsity, BayesWatch tf-variational-dropout (TF)",
        clip=8.0,
        clip_conv=8.0,
    )


def _nupic(theta: str, variance: str, source: str) -> Convention:
    return Convention(
        "nupic", theta, variance, "log_sigma2", 1e-8, "square", "torch", f"numenta nupic.research {source}"
    )


# Order matters: the first convention whose pair of suffixes is present in a prefix wins. The three
# readers of weight + log_sigma2 (AMBIGUOUS) are resolved by find_svdo_layers, PYTORCH_ARD by default.
CONVENTIONS: tuple[Convention, ...] = (
    Convention(
        "svdo-demo",
        "W",
        "log_sigma",
        "log_sigma",
        1e-16,
        "abs",
        "torch",
        "authors' PyTorch demo (LinearSVDO)",
        clip=10.0,
        clip_conv=10.0,
    ),
    PYTORCH_ARD,
    _state_of_sparsity("kernel"),
    _state_of_sparsity("weights"),
    Convention(
        "kefirski",
        "theta",
        "log_sigma2",
        "log_sigma2",
        0.0,
        "square",
        "in_out",
        "kefirski/variational_dropout",
        clip=8.0,
        clip_conv=8.0,
        keep_equal=True,
    ),
    _nupic("w_mu", "w_logsigma2", "(VDropLinear, 2019)"),
    _nupic("weight", "w_logvar", "(early VDrop layers)"),
    _nupic("w_mu", "w_logvar", "(VDropLinear2 / VDropConv2d2)"),
    Convention(
        "chainer",
        "W",
        "log_sigma2",
        "log_sigma2",
        1e-8,
        "square",
        "torch",
        "soskek/variational_dropout_sparsifies_dnn (Chainer save_npz)",
        clip=8.0,
        clip_conv=8.0,
        keep_equal=True,
    ),
)

AMBIGUOUS: tuple[Convention, ...] = (PYTORCH_ARD, BAYESWATCH, SVDCOMPRESS)
"""The conventions that store ``weight`` + ``log_sigma2``; the first is assumed when nothing else decides."""

# The authors' Lasagne code: positional lists, no names. Its dense layer has no eps, its conv layer 1e-8.
LASAGNE = Convention(
    "lasagne",
    "W",
    "ls2",
    "log_sigma2",
    1e-8,
    "square",
    "lasagne",
    "authors' Theano/Lasagne code (np.save of a positional list)",
    clip=8.0,
    clip_conv=8.0,
)
_LASAGNE_DENSE = dataclasses.replace(LASAGNE, eps=0.0, layout="in_out")

CONVENTION_NAMES: tuple[str, ...] = tuple(
    dict.fromkeys(c.name for c in (*CONVENTIONS, BAYESWATCH, SVDCOMPRESS, LASAGNE))
)
"""Every name ``convention=`` accepts."""

# Suffixes that identify look-alike methods, with the explanation shown to the user.
_LOOKALIKES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("z_mu", "z_logvar"), "Bayesian Compression (Louizos et al.) group gates z_mu/z_logvar"),
    (("mu", "log_sigma"), "Structured Bayesian Pruning per-neuron mu/log_sigma (pruned by signal-to-noise ratio)"),
    (("log_alpha",), "a tensor named log_alpha (hard-concrete L0 gates use this name; SVDO stores log sigma²)"),
)


def log_alpha(theta: torch.Tensor, log_sigma2: torch.Tensor, conv: Convention) -> torch.Tensor:
    """log alpha = log sigma² − log theta², with the convention's eps and clip. At least float32.

    This is the only implementation of the formula: the training layers (:mod:`svdcompress.nn.layers`),
    masking and the analysis all call it with their convention. svdcompress's own convention does not
    clip (its KL term clips separately).
    """
    dtype = torch.promote_types(theta.dtype, torch.float32)  # fp16: eps 1e-8 would underflow
    theta, log_sigma2 = theta.to(dtype), log_sigma2.to(dtype)
    if conv.eps_mode == "abs":
        la = log_sigma2 - 2.0 * torch.log(theta.abs() + conv.eps)
    else:
        la = log_sigma2 - torch.log(theta * theta + conv.eps)
    clip = conv.clip_for(theta.dim())
    return la if clip is None else la.clamp(-clip, clip)


def keep_rule(
    log_alpha: torch.Tensor, theta: torch.Tensor, threshold: float, conv: Convention | None = None
) -> torch.Tensor:
    """The mask rule: a weight is kept where log α < threshold (``<=`` for conventions with
    ``keep_equal``) and θ ≠ 0.

    (θ = 0 contributes nothing whether kept or not; leaving it out makes kept counts count non-zeros.)
    """
    below = (log_alpha <= threshold) if conv is not None and conv.keep_equal else (log_alpha < threshold)
    return below & (theta != 0)


def keep_mask(theta: torch.Tensor, log_sigma2: torch.Tensor, threshold: float, conv: Convention) -> torch.Tensor:
    """Boolean keep-mask of one layer under ``conv``'s log α formula, clip and :func:`keep_rule`."""
    return keep_rule(log_alpha(theta, log_sigma2, conv), theta, threshold, conv)


def _by_name(name: str | None) -> tuple[Convention, ...]:
    """The conventions called ``name`` (several share one: state-of-sparsity, nupic); () for None."""
    if name is None:
        return ()
    found = tuple(c for c in (*CONVENTIONS, BAYESWATCH, SVDCOMPRESS, LASAGNE) if c.name == name)
    if not found:
        raise InvalidInputError(f"convention={name!r} is not known; choose one of {', '.join(CONVENTION_NAMES)}")
    return found


# Class names of pickled/live modules that settle weight + log_sigma2 (module path, class name).
def _convention_of_class(module: str, cls: str) -> Convention | None:
    if module.startswith("svdcompress.") and cls in ("LinearSVDO", "Conv2dSVDO"):
        return SVDCOMPRESS
    if cls in ("LinearARD", "Conv2dARD"):
        return PYTORCH_ARD
    # BayesWatch names its layers plainly Linear / Conv2d, in its own module (not torch.nn).
    if cls in ("Linear", "Conv2d") and not module.startswith("torch."):
        return BAYESWATCH
    return None


def convention_of_module(
    module: torch.nn.Module, convention: str | None = None
) -> tuple[Convention, tuple[Convention, ...]]:
    """The convention of a live layer storing ``weight`` + ``log_sigma2``, and the alternatives left open.

    svdcompress's own layers, pytorch-ard's ``LinearARD``/``Conv2dARD`` and BayesWatch's ``Linear``/``Conv2d``
    are known by their class; ``convention`` (one of :data:`AMBIGUOUS`' names) overrides; anything else is
    read as pytorch-ard, with the other two returned as alternatives.
    """
    forced = [c for c in _by_name(convention) if c in AMBIGUOUS]
    if forced:
        return forced[0], ()
    cls = type(module)
    known = _convention_of_class(cls.__module__, cls.__name__)
    if known is not None:
        return known, ()
    return AMBIGUOUS[0], AMBIGUOUS[1:]


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
        alternatives: other conventions the same names could mean (``weight`` + ``log_sigma2`` with nothing in
            the file to decide); empty when the convention is certain.
    """

    name: str
    kind: str
    theta: torch.Tensor
    log_sigma2: torch.Tensor
    bias: torch.Tensor | None
    convention: Convention
    theta_key: str
    variance_key: str
    alternatives: tuple[Convention, ...] = ()


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
    file: str,
    name: str,
    tkey: str,
    vkey: str,
    bkey: str | None,
    tensors: Mapping[str, torch.Tensor],
    conv: Convention,
    check_values: bool = True,
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
    if check_values:
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
        if check_values:
            check_finite(file, bkey, b)
        bias = b.reshape(-1)  # the demo stores (1, out)
    return SVDOLayer(name, layer_kind(theta), theta, log_sigma2, bias, conv, tkey, vkey)


_SEP = re.compile(r"[./]")


def _split(key: str) -> tuple[str, str]:
    """``fc1.weight`` → (fc1, weight); TF and Chainer join with ``/``: ``conv1/kernel`` → (conv1, kernel)."""
    parts = _SEP.split(key)
    suffix = parts[-1]
    return key[: len(key) - len(suffix) - 1] if len(parts) > 1 else "", suffix


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
        # Lasagne dense W is (in, out) and its log alpha has no eps; conv W is already (out, in, kh, kw).
        conv = LASAGNE if a.dim() != 2 else _LASAGNE_DENSE
        layers.append(_make_layer(file, f"layer{len(layers)}", str(i), vkey, bkey, tensors, conv))
        i += 3
    return layers


def _central_data_message(
    file: str, prefix: str, suffixes: Mapping[str, str], tensors: Mapping[str, torch.Tensor]
) -> str:
    n = tensors[suffixes["z_mu"]].numel()
    return (
        f"'{suffixes['z_mu']}' and '{suffixes['z_logvar']}' are numenta's VDropCentralData: the weights of every "
        f"VDrop layer in one flat vector of {n:,}. The per-layer slices (z_chunk_sizes) and shapes are Python "
        "attributes that state_dict() does not save, so the layers cannot be cut out of the file; pass the live "
        "model to svdcompress.analyze(model) instead"
    )


def _is_central_data(suffixes: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> bool:
    """numenta's VDropCentralData: flat 1-D z_mu / z_logvar, with no per-layer weight_mu (that is Bayesian
    Compression, whose z_mu/z_logvar are per-unit gates next to a weight_mu/weight_logvar pair)."""
    if not ("z_mu" in suffixes and "z_logvar" in suffixes) or "weight_mu" in suffixes:
        return False
    mu, lv = tensors[suffixes["z_mu"]], tensors[suffixes["z_logvar"]]
    return isinstance(mu, torch.Tensor) and isinstance(lv, torch.Tensor) and mu.dim() == 1 and mu.shape == lv.shape


def find_svdo_layers(
    tensors: Mapping[str, torch.Tensor],
    *,
    file: str = "<state_dict>",
    source: str = "torch",
    own: bool = False,
    classes: Mapping[str, str] | None = None,
    convention: str | None = None,
) -> list[SVDOLayer]:
    """Find every SVDO layer in a flat ``{name: tensor}`` mapping.

    Names are split on the last ``.`` or ``/`` (TF and Chainer keys), so ``conv1/kernel`` is layer ``conv1``.

    Args:
        tensors: flat mapping; Lasagne lists use the keys "0", "1", ...
        file: shown in error messages.
        source: "lasagne-npy" for positional lists, anything else for named tensors.
        own: the file was written by svdcompress; ``weight``/``log_sigma2`` then use svdcompress's formula.
        classes: ``{layer prefix: "module.ClassName"}`` of a pickled model; settles ``weight``/``log_sigma2``
            for pytorch-ard, BayesWatch and svdcompress layers.
        convention: a name from :data:`CONVENTION_NAMES`: layers whose names it reads use it, whatever
            else would have decided (e.g. ``"bayeswatch"`` for a BayesWatch state_dict).

    Raises:
        CheckpointError: a recognised layer has unusable tensors (shape mismatch, NaN, integer dtype).
        NoSVDOLayersError: nothing recognisable; the message lists look-alikes found, if any.
        InvalidInputError: ``convention`` is not a known name, or reads none of the file's layers.
    """
    forced = _by_name(convention)
    if source == "lasagne-npy":
        if forced and forced[0].name != "lasagne":
            raise InvalidInputError(
                f"{file}: convention={convention!r} does not apply: the file is a positional Lasagne list"
            )
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
    central: list[str] = []
    for prefix, suffixes in by_prefix.items():
        found: Convention | None = None
        alternatives: tuple[Convention, ...] = ()
        for conv in (*forced, *CONVENTIONS):
            if conv.theta in suffixes and conv.variance in suffixes:
                found = conv
                break
        if found is not None and found in AMBIGUOUS and found not in forced:
            cls = (classes or {}).get(prefix)
            by_class = _convention_of_class(*cls.rsplit(".", 1)) if cls and "." in cls else None
            if own:
                found = SVDCOMPRESS
            elif by_class is not None:
                found = by_class
            else:
                alternatives = tuple(c for c in AMBIGUOUS if c is not found)
        if _is_central_data(suffixes, tensors):
            central.append(_central_data_message(file, prefix, suffixes, tensors))
        else:
            for names, why in _LOOKALIKES:
                if all(n in suffixes for n in names):
                    lookalikes.append(f"'{suffixes[names[0]]}' ({why})")
        if found is None:
            continue
        if any(all(n in suffixes for n in names) for names, _ in _LOOKALIKES):
            continue  # a look-alike that happens to also carry a weight/variance pair: do not misread it
        bkey = next((suffixes[b] for b in found.bias_names if b in suffixes), None)
        layer = _make_layer(file, prefix, suffixes[found.theta], suffixes[found.variance], bkey, tensors, found)
        layers.append(dataclasses.replace(layer, alternatives=alternatives))

    if forced and not any(layer.convention in forced for layer in layers):
        pairs = " or ".join(f"{c.theta} + {c.variance}" for c in forced)
        raise InvalidInputError(f"{file}: convention={convention!r} reads {pairs} pairs; the file has none")
    if not layers:
        if central:
            raise NoSVDOLayersError(f"{file}: {central[0]}")
        listed = ", ".join(list(tensors)[:6]) + (" ..." if len(tensors) > 6 else "")
        hint = f" Found look-alikes that are not SVDO: {'; '.join(lookalikes)}." if lookalikes else ""
        known = "; ".join(sorted({f"{c.theta}+{c.variance}" for c in CONVENTIONS}))
        raise NoSVDOLayersError(
            f"{file}: no SVDO layers found among {len(tensors)} tensors ({listed or 'none'}).{hint} "
            f"Expected a weight and log-variance pair per layer ({known}; names split on '.' or '/'); "
            "a plain (non-SVDO) checkpoint has nothing to prune"
        )
    return layers


# --- live modules: the layer a module holds in its own tensors, by name, class, tag or convention=

RULE_ATTR = "_svdcompress_convention"
"""Attribute that :func:`svdcompress.load_model` sets on a live layer when the file settled its convention
(svdcompress's own checkpoint, a pickled module's class, ``convention=``, a Lasagne list mapped onto a factory):
the :class:`Convention` whose formula, clip and comparison mask that layer, whatever names the module stores its
tensors under."""


def known_pairs() -> str:
    """Every weight + log-variance pair a live layer is recognised by, with the conventions that write it."""
    by_pair: dict[str, list[str]] = {}
    for c in (*CONVENTIONS, BAYESWATCH, SVDCOMPRESS):
        names = by_pair.setdefault(f"{c.theta} + {c.variance}", [])
        if c.name not in names:
            names.append(c.name)
    return "; ".join(f"{pair} ({', '.join(names)})" for pair, names in by_pair.items())


def _own_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    tensors = {k: v.detach() for k, v in module.named_parameters(recurse=False)}
    tensors.update((k, v.detach()) for k, v in module.named_buffers(recurse=False) if v is not None)
    return tensors


def _reader(tensors: Mapping[str, torch.Tensor], forced: tuple[Convention, ...] = ()) -> Convention | None:
    """The convention whose names a module's own tensors carry (look-alikes excluded), or None."""
    if any(all(n in tensors for n in names) for names, _ in _LOOKALIKES):
        return None
    return next((c for c in (*forced, *CONVENTIONS) if c.theta in tensors and c.variance in tensors), None)


def module_reader(module: nn.Module) -> Convention | None:
    """The convention whose names (and so layout and variance form) a live layer stores its tensors under."""
    return _reader(_own_tensors(module))


def module_layer(module: nn.Module, name: str = "", convention: str | None = None) -> SVDOLayer | None:
    """The SVDO layer a live module holds in its own parameters and buffers, in PyTorch layout; None if none.

    Its tensors are found by the names of :data:`CONVENTIONS` (as in a file: ``theta`` (in, out) is transposed,
    the demo's log σ doubled). The formula that masks it comes, in this order, from ``convention`` (when it reads
    the module's names), from the :data:`RULE_ATTR` tag :func:`svdcompress.load_model` leaves on layers whose file
    settled it, from the class (svdcompress's, pytorch-ard's and BayesWatch's layers), else from the names, with
    ``weight`` + ``log_sigma2`` read as pytorch-ard and the other two readers of those names as ``alternatives``.
    Look-alikes (Bayesian Compression, Structured Bayesian Pruning), vectors and pairs of different shapes are not
    layers.
    """
    tensors = _own_tensors(module)
    # Lasagne's names belong to positional lists; a live layer loaded from one carries the tag instead
    forced = tuple(c for c in _by_name(convention) if c is not LASAGNE)
    reader = _reader(tensors, forced)
    if reader is None:
        return None
    theta, var = tensors[reader.theta], tensors[reader.variance]
    if theta.shape != var.shape or theta.dim() < 2 or not (theta.is_floating_point() and var.is_floating_point()):
        return None
    rule: Convention = reader
    alternatives: tuple[Convention, ...] = ()
    tag = getattr(module, RULE_ATTR, None)
    if reader in forced:
        pass
    elif isinstance(tag, Convention):
        rule = tag
    elif reader in AMBIGUOUS:
        rule, alternatives = convention_of_module(module)
    bkey = next((b for b in reader.bias_names if b in tensors), None)
    where = f"module '{name or '<model>'}' ({type(module).__name__})"
    layer = _make_layer(where, name or "<model>", reader.theta, reader.variance, bkey, tensors, reader, False)
    prefix = f"{name}." if name else ""
    return dataclasses.replace(
        layer,
        convention=rule,
        alternatives=alternatives,
        theta_key=prefix + reader.theta,
        variance_key=prefix + reader.variance,
    )


def central_data_layers(model: nn.Module) -> list[SVDOLayer]:
    """numenta's VDropLinear / VDropConv2d over a VDropCentralData: each layer's weights are a slice of the
    central flat z_mu / z_logvar. The slices (z_chunk_sizes, data_index) and shapes live on the modules, not
    in the state_dict, so only a live model can be read. ``name`` is the layer module's qualified name."""
    nupic = next(c for c in CONVENTIONS if c.theta == "w_mu" and c.variance == "w_logvar")
    out = []
    for name, m in model.named_modules():
        holder, index = getattr(m, "central_data", None), getattr(m, "data_index", None)
        if not (isinstance(holder, list) and len(holder) == 1 and isinstance(index, int)):
            continue
        central = holder[0]
        z_mu, z_logvar = getattr(central, "z_mu", None), getattr(central, "z_logvar", None)
        sizes = getattr(central, "z_chunk_sizes", None)
        if not (isinstance(z_mu, torch.Tensor) and isinstance(z_logvar, torch.Tensor) and isinstance(sizes, list)):
            continue
        if hasattr(m, "in_features"):
            shape: tuple[int, ...] = (int(m.out_features), int(m.in_features))
        else:
            shape = (int(m.out_channels), -1, *(int(k) for k in m.kernel_size))
        start, n = sum(sizes[:index]), int(sizes[index])
        theta = z_mu.detach()[start : start + n]
        z_mask = getattr(central, "z_mask", None)  # MaskedVDropCentralData: pruned entries are 0
        if isinstance(z_mask, torch.Tensor):
            theta = theta * z_mask[start : start + n].to(theta.dtype)
        known = math.prod(d for d in shape if d != -1)
        if n == 0 or n % known or (-1 not in shape and n != known):
            continue  # one z per group of weights (group variational dropout): not per-weight SVDO
        theta = theta.reshape(shape)
        bias = getattr(m, "bias", None)
        out.append(
            SVDOLayer(
                name,
                layer_kind(theta),
                theta,
                z_logvar.detach()[start : start + n].reshape(theta.shape),
                bias.detach().reshape(-1) if isinstance(bias, torch.Tensor) else None,
                nupic,
                f"z_mu[{start}:{start + n}]",
                f"z_logvar[{start}:{start + n}]",
            )
        )
    return out
