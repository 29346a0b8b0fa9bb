"""Where a checkpoint's architecture comes from (README.md, "Where the architecture comes from").

A state_dict has no graph. In order of preference the graph comes from: a live
``nn.Module`` (Python API); a checkpoint written by svdcompress, which records its zoo
architecture; ``--model package.module:factory``; a whole pickled model, only with
``--trust-pickle``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from .._inputs import parse_int_list
from ..checkpoint.conventions import RULE_ATTR, SVDOLayer, check_finite, find_svdo_layers, module_layer, module_reader
from ..checkpoint.formats import LoadedCheckpoint, load_checkpoint
from ..errors import CheckpointError, InvalidInputError, NoSVDOLayersError

__all__ = ["ResolvedModel", "load_model", "parse_input_shape"]


@dataclass
class ResolvedModel:
    """A model rebuilt from a checkpoint, ready for masking and pruning."""

    module: nn.Module
    input_shape: tuple[int, ...] | None
    checkpoint: LoadedCheckpoint
    origin: str  # "svdcompress", "factory", "pickle"
    meta: dict[str, Any] = field(default_factory=dict)


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    """``"1,28,28"`` → ``(1, 28, 28)`` (per example, without the batch axis); None for None or "".

    Raises:
        InvalidInputError: not a list of positive integers.
    """
    if text is None or text == "":
        return None
    return parse_int_list(text, "input_shape")


# Module paths of svdcompress 0.1's flat layout that users wrote in --model and scripts, and where they live now.
_MOVED_MODULES = {"svdcompress.zoo": "svdcompress.nn.zoo", "svdcompress.svdo": "svdcompress.nn.layers"}


def _import_factory(spec: str) -> Any:
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise InvalidInputError(
            f"model={spec!r}: expected package.module:factory, e.g. mypkg.nets:make_lenet", param="model"
        )
    mod_name = _MOVED_MODULES.get(mod_name, mod_name)
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as e:
        raise InvalidInputError(
            f"model={spec!r}: cannot import {mod_name} ({e}); is it on PYTHONPATH?", param="model"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InvalidInputError(f"model={spec!r}: {mod_name} has no attribute {attr!r}", param="model")
        obj = getattr(obj, part)
    return obj


def _check_weights(
    ckpt: LoadedCheckpoint, require_svdo: bool, convention: str | None
) -> tuple[list[SVDOLayer], NoSVDOLayersError | None]:
    """load_state_dict silently casts integer tensors and accepts NaN/inf: refuse them before building the
    model, with the same per-tensor messages as ``analyze``. With ``require_svdo``, a checkpoint without SVDO
    layers is refused here too, with ``analyze``'s message, before any model is built.

    Returns the file's SVDO layers, read as ``analyze`` reads them, and the error for a file without any when it
    is not raised (a factory's live model may hold layers the file alone cannot describe: numenta's
    VDropCentralData)."""
    checked: set[str] = set()
    layers: list[SVDOLayer] = []
    missing: NoSVDOLayersError | None = None
    try:
        layers = find_svdo_layers(
            ckpt.tensors,
            file=str(ckpt.path),
            source=ckpt.source,
            own=bool(ckpt.meta),
            classes=ckpt.classes,
            convention=convention,
        )
        for layer in layers:
            checked |= {layer.theta_key, layer.variance_key}
    except NoSVDOLayersError as e:
        if require_svdo:
            raise
        missing = e
    for key, t in ckpt.tensors.items():
        if key not in checked and t.is_floating_point():
            check_finite(str(ckpt.path), key, t)
    return layers, missing


def _match_keys(tensors: Mapping[str, torch.Tensor], module_keys: list[str]) -> dict[str, str] | None:
    """module key → file key when the names differ only in ways a saver introduces, else None.

    TensorFlow and Chainer join names with ``/`` (``conv1/kernel`` is ``conv1.kernel``); a Chainer trainer
    snapshot holds the model under a prefix (``updater/model:main/predictor/``); counters saved next to the
    weights (``global_step``, ``updater/iteration``: not floating point) are not the model's. Floating-point
    tensors under the prefix that the model does not hold are never dropped: the model does not fit then.
    """
    if not module_keys or set(module_keys) == set(tensors):
        return None
    norm = {k.replace("/", "."): k for k in tensors}
    if len(norm) != len(tensors):
        return None
    wanted, first = set(module_keys), module_keys[0]
    prefixes = {nk[: len(nk) - len(first)] for nk in norm if nk == first or nk.endswith("." + first)}
    fits = []
    for prefix in prefixes:
        under = {nk[len(prefix) :]: norm[nk] for nk in norm if nk.startswith(prefix)}
        extra = under.keys() - wanted
        if wanted <= under.keys() and not any(tensors[under[k]].is_floating_point() for k in extra):
            fits.append(prefix)
    if len(fits) != 1:
        return None
    return {k: norm[fits[0] + k] for k in module_keys}


def _load_state(module: nn.Module, ckpt: LoadedCheckpoint) -> dict[str, str]:
    """Load the file into ``module`` (names matched by :func:`_match_keys`); return module key → file key."""
    keys = list(module.state_dict())
    mapping = _match_keys(ckpt.tensors, keys)
    state = ckpt.tensors if mapping is None else {k: ckpt.tensors[f] for k, f in mapping.items()}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) or first[0]
        raise CheckpointError(
            f"{ckpt.path}: weights do not fit the model ({detail[:300]}); "
            "check that model= builds the architecture the checkpoint was trained with"
        ) from None
    return mapping or {k: k for k in keys}


def _tag(module: nn.Module, layers: list[SVDOLayer], keymap: Mapping[str, str]) -> None:
    """Leave on each live layer the convention its file settled (svdcompress's own checkpoint, a pickled class,
    ``convention=``): masking then applies that formula, as ``analyze`` counts it, whatever the layer's class."""
    module_key = {f: m for m, f in keymap.items()}
    for layer in layers:
        key = module_key.get(layer.theta_key)
        if layer.alternatives or key is None:
            continue
        setattr(module.get_submodule(key.rpartition(".")[0]), RULE_ATTR, layer.convention)


_BN = nn.modules.batchnorm._BatchNorm


def _weight_shape(m: nn.Module) -> tuple[int, ...] | None:
    """The PyTorch-layout weight shape of a layer a Lasagne list can map onto, or None."""
    layer = module_layer(m)
    if layer is not None:
        return tuple(layer.theta.shape)
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        return tuple(m.weight.shape)
    return None


@torch.no_grad()
def _store(m: nn.Module, layer: SVDOLayer) -> None:
    """Write a Lasagne layer's θ, log σ² and bias into an SVDO layer, in the names and layout it stores them."""
    reader = module_reader(m)
    if reader is None:  # pragma: no cover - _weight_shape read the layer
        raise CheckpointError(f"{type(m).__name__} holds no SVDO pair")
    theta, ls2 = layer.theta, layer.log_sigma2
    if reader.layout == "in_out":
        dims = (1, 0) if theta.dim() == 2 else (2, 3, 1, 0)
        theta, ls2 = theta.permute(*dims), ls2.permute(*dims)
    getattr(m, reader.theta).copy_(theta)
    getattr(m, reader.variance).copy_(ls2 / 2 if reader.variance_is == "log_sigma" else ls2)
    bias = next((getattr(m, b) for b in reader.bias_names if isinstance(getattr(m, b, None), torch.Tensor)), None)
    if bias is not None and layer.bias is not None:
        bias.copy_(layer.bias.reshape(bias.shape))
    setattr(m, RULE_ATTR, layer.convention)  # Lasagne's formula: dense without eps, conv with 1e-8


def _load_positional(module: nn.Module, ckpt: LoadedCheckpoint, layers: list[SVDOLayer], spec: str) -> None:
    """Map a Lasagne list (W, b, ls2 per layer; beta, gamma, mean, inv_std per BatchNorm) onto the factory's
    layers in the order ``named_modules()`` lists them, checking every shape.

    Targets are the factory's Linear / Conv2d layers, plain (replaced by svdcompress's LinearSVDO / Conv2dSVDO
    to hold log σ²) or SVDO of any convention, and its BatchNorm modules; each layer is tagged with Lasagne's
    formula (dense without eps, conv with eps 1e-8, clip ±8, keep log α < threshold).
    """
    from .layers import _conv_from, _linear_from

    where = f"{ckpt.path}: the positional Lasagne list does not fit model={spec!r}"
    how = (
        "the list is mapped in order onto the factory's Linear/Conv2d (plain or SVDO) and BatchNorm modules, "
        "as named_modules() lists them"
    )
    starts = {int(layer.theta_key): layer for layer in layers}
    used = {i for s in starts for i in (s, s + 1, s + 2)}
    items: list[tuple[int, SVDOLayer | None]] = sorted(
        [*starts.items(), *((i, None) for i in range(len(ckpt.tensors)) if i not in used)], key=lambda it: it[0]
    )
    targets = [(n, m) for n, m in module.named_modules() if isinstance(m, _BN) or _weight_shape(m) is not None]
    pos, n_layer = 0, 0
    for name, m in targets:
        cls = type(m).__name__
        if isinstance(m, _BN):
            group = items[pos : pos + 4]
            c = m.num_features
            shapes = [tuple(ckpt.tensors[str(i)].shape) for i, _ in group]
            if len(group) < 4 or any(layer is not None for _, layer in group) or any(sh != (c,) for sh in shapes):
                got = f"arrays {group[0][0]}.. of shapes {shapes}" if group else "the end of the list"
                raise CheckpointError(
                    f"{where}: '{name}' ({cls}, {c} features) expects beta, gamma, mean, inv_std of shape ({c},), "
                    f"found {got}; {how}"
                )
            if not (m.affine and m.track_running_stats):
                raise CheckpointError(f"{where}: '{name}' ({cls}) needs affine=True and running statistics; {how}")
            beta, gamma, mean, inv_std = (ckpt.tensors[str(i)].double() for i, _ in group)
            with torch.no_grad():
                m.weight.copy_(gamma)
                m.bias.copy_(beta)
                cast(torch.Tensor, m.running_mean).copy_(mean)
                cast(torch.Tensor, m.running_var).copy_(1.0 / inv_std**2 - m.eps)  # Lasagne keeps 1/sqrt(var + eps)
            pos += 4
            continue
        shape = _weight_shape(m)
        layer = items[pos][1] if pos < len(items) else None
        if layer is None:
            got = (
                f"array {items[pos][0]} (shape {tuple(ckpt.tensors[str(items[pos][0])].shape)})"
                if pos < len(items)
                else f"the end of the list, after {n_layer} layer(s)"
            )
            raise CheckpointError(f"{where}: '{name}' ({cls}, weight {shape}) finds no W, b, ls2 but {got}; {how}")
        if tuple(layer.theta.shape) != shape:
            raise CheckpointError(
                f"{where}: layer {n_layer} of the list (arrays {layer.theta_key}..{int(layer.theta_key) + 2}, W "
                f"{tuple(layer.theta.shape)} in PyTorch layout) does not fit '{name}' ({cls}, weight {shape}); {how}"
            )
        if module_layer(m) is None:  # a plain Linear / Conv2d: an SVDO layer holds the list's log σ²
            if not name:
                raise CheckpointError(f"{where}: the factory returns a single {cls}; wrap it in nn.Sequential")
            new: nn.Module = (
                _linear_from(m, -10.0, 3.0) if isinstance(m, nn.Linear) else _conv_from(cast(nn.Conv2d, m), -10.0, 3.0)
            )
            parent, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent), attr, new)
            m = new
        has_bias = any(isinstance(getattr(m, b, None), torch.Tensor) for b in ("bias", "b", "biases"))
        if not has_bias and layer.bias is not None and bool(layer.bias.any()):
            raise CheckpointError(f"{where}: layer {n_layer} of the list has a non-zero bias but '{name}' has none")
        _store(m, layer)
        pos, n_layer = pos + 1, n_layer + 1
    if pos < len(items):
        raise CheckpointError(
            f"{where}: arrays {items[pos][0]}..{len(ckpt.tensors) - 1} are left over after the factory's "
            f"{len(targets)} layer(s); {how}"
        )
    mapped = {f"{n}." if n else "" for n, _ in targets}
    unmapped = [k for k, _ in module.named_parameters() if not any(k.startswith(t) for t in mapped)]
    if unmapped:
        raise CheckpointError(
            f"{where}: the list holds nothing for the factory's parameter(s) {', '.join(unmapped[:4])}; {how}"
        )


def load_model(
    path: str | os.PathLike[str],
    *,
    model: str | None = None,
    trust_pickle: bool = False,
    input_shape: tuple[int, ...] | None = None,
    require_svdo: bool = False,
    convention: str | None = None,
) -> ResolvedModel:
    """Rebuild the model a checkpoint belongs to.

    Each SVDO layer the file settles the convention of (svdcompress's own checkpoint, a pickled module's classes,
    ``convention``, a Lasagne list) is tagged with it
    (:data:`svdcompress.checkpoint.conventions.RULE_ATTR`), so that masking,
    pruning and export apply that project's formula, eps, clip and comparison, as ``analyze`` counts the file.

    With ``model``, the file's names are matched to the factory's: exactly; with ``/`` read as ``.`` (TensorFlow,
    Chainer); or under one prefix (a Chainer trainer snapshot), integer counters aside. A positional Lasagne list
    is mapped onto the factory's Linear / Conv2d (plain or SVDO) and BatchNorm modules in ``named_modules()``
    order, every shape checked; ``svdcompress.nn.zoo:lenet5`` and ``svdcompress.nn.zoo:lenet300`` build the authors'
    LeNets (their outputs are the logits; the authors' nets end in a softmax).

    Args:
        path: checkpoint file.
        model: ``package.module:factory`` returning an ``nn.Module`` whose state_dict the file holds.
        trust_pickle: allow a whole pickled model (runs code from the file).
        input_shape: per-example input shape, if the checkpoint does not record one.
        require_svdo: refuse a checkpoint without SVDO layers (what every CLI command does), before building
            anything (with ``model``: unless the factory's live model holds some, numenta's VDropCentralData).
            Off by default: a plain checkpoint is a valid starting point for ``sparsify``.
        convention: the project the file comes from, when its names fit several (see :func:`svdcompress.analyze`).

    Raises:
        NoSVDOLayersError: ``require_svdo`` and no SVDO layer in the file (the same message as ``analyze``).
        CheckpointError / SvdcompressError: with the option that fixes it named.
    """
    ckpt = load_checkpoint(path, trust_pickle=trust_pickle)
    layers, missing = _check_weights(ckpt, require_svdo and model is None, convention)
    shape = input_shape
    if shape is None and isinstance(ckpt.meta.get("input_shape"), list):
        shape = tuple(int(d) for d in ckpt.meta["input_shape"])
    if model is not None:
        factory = _import_factory(model)
        module = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
        if not isinstance(module, nn.Module):
            raise InvalidInputError(f"model={model!r} returned {type(module).__name__}, not a torch.nn.Module")
        if ckpt.source == "lasagne-npy":
            _load_positional(module, ckpt, layers, model)
        else:
            _tag(module, layers, _load_state(module, ckpt))
        if missing is not None and require_svdo:
            from ..checkpoint.analysis import live_layers

            try:
                live_layers(module, convention)
            except NoSVDOLayersError:
                raise missing from None
        return ResolvedModel(module.eval(), shape, ckpt, "factory")
    if ckpt.arch is not None:
        from .zoo import build

        try:
            module = build(ckpt.arch, **(ckpt.meta.get("arch_kwargs") or {}))
        except (ValueError, TypeError) as e:
            raise CheckpointError(
                f"{ckpt.path}: records architecture {ckpt.arch!r} that this svdcompress cannot "
                f"build ({e}); pass model=package.module:factory"
            ) from None
        _tag(module, layers, _load_state(module, ckpt))
        return ResolvedModel(module.eval(), shape, ckpt, "svdcompress", dict(ckpt.meta))
    if ckpt.module is not None:
        _tag(ckpt.module, layers, {k: k for k in ckpt.module.state_dict()})
        return ResolvedModel(ckpt.module.eval(), shape, ckpt, "pickle")
    if ckpt.source == "lasagne-npy":
        raise CheckpointError(
            f"{ckpt.path}: is a positional Lasagne list (W, b, ls2 per layer, no names, no architecture). Pass "
            "model=package.module:factory: the list is mapped onto its Linear/Conv2d and BatchNorm modules in "
            "order, every shape checked (svdcompress.nn.zoo:lenet5 and svdcompress.nn.zoo:lenet300 are the authors' "
            "LeNets)"
        )
    raise CheckpointError(
        f"{ckpt.path}: holds weights but no architecture. Pass model=package.module:factory (a function "
        "returning the nn.Module), or trust_pickle=True if the file is a whole pickled model you trust"
    )
