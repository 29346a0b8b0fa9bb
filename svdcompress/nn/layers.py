"""Sparse Variational Dropout training layers (Molchanov, Ashukha, Vetrov, ICML 2017).

Each weight has a Gaussian posterior N(theta, sigma^2). The layers store ``weight``
(theta) and ``log_sigma2`` (the additive reparameterisation), train with the local
reparameterisation trick, and in eval mode compute deterministically with
``theta * (log_alpha < threshold)``.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import DEFAULT_THRESHOLD
from ..checkpoint.conventions import SVDCOMPRESS, keep_rule, log_alpha
from ..errors import InvalidInputError, UnsupportedOpError

__all__ = [
    "DEFAULT_THRESHOLD",
    "LOG_ALPHA_EPS",
    "Conv2dSVDO",
    "ELBOLoss",
    "LinearSVDO",
    "SVDOBase",
    "SVDOModule",
    "example_noise",
    "kl_divergence",
    "kl_of",
    "kl_weight_schedule",
    "log_alpha_of",
    "sparsify",
    "standard_normal",
    "svdo_layers",
]

LOG_ALPHA_EPS = 1e-8
"""Added to theta^2 before the log, so that a weight of exactly 0 has a finite log alpha."""

_K1, _K2, _K3 = 0.63576, 1.87320, 1.48695
_LOG_ALPHA_CLIP = 8.0


def log_alpha_of(theta: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    """log alpha = log sigma^2 - log(theta^2 + eps), unclipped. Same shape as ``theta``.

    svdcompress's own convention (:data:`svdcompress.checkpoint.conventions.SVDCOMPRESS`, eps :data:`LOG_ALPHA_EPS`).
    """
    return log_alpha(theta, log_sigma2, SVDCOMPRESS)


_NOISE_SEEDS: contextvars.ContextVar[tuple[torch.Tensor, list[int]] | None] = contextvars.ContextVar(
    "svdcompress_noise_seeds", default=None
)


@contextlib.contextmanager
def example_noise(seeds: torch.Tensor) -> Iterator[None]:
    """Draw every SVDO layer's training noise from per-example seeds, inside the ``with`` block.

    Example ``b`` of a batch gets, in each layer call, noise that depends only on ``seeds[b]`` and on the order of
    the call within the block: the same whichever process, batch or position the example lands in. That makes a
    run reproducible across data-parallel layouts (a batch split over processes draws exactly the noise of the
    whole batch on one process). It costs one generator per example and call: for tests and audits, not speed.

    Args:
        seeds: int64 tensor (batch,), e.g. the examples' indices in the data set.

    Raises:
        InvalidInputError: ``seeds`` is not a 1-D integer tensor, or a layer's noise has a leading dimension
            other than ``len(seeds)`` (a layer called on flattened (batch × time, ...) inputs).
    """
    if seeds.dim() != 1 or seeds.is_floating_point() or seeds.is_complex():
        raise InvalidInputError(
            f"example_noise: seeds must be a 1-D integer tensor (one per example), got {seeds.dtype} "
            f"of shape {tuple(seeds.shape)}; pass e.g. the examples' indices"
        )
    token = _NOISE_SEEDS.set((seeds.detach().cpu().to(torch.int64), [0]))
    try:
        yield
    finally:
        _NOISE_SEEDS.reset(token)


def standard_normal(shape: tuple[int, ...], like: torch.Tensor, what: str) -> torch.Tensor:
    """N(0, 1) noise of ``shape`` (leading dimension: the batch), from :func:`example_noise`'s seeds when set."""
    state = _NOISE_SEEDS.get()
    if state is None:
        return torch.randn(shape, dtype=like.dtype, device=like.device)
    seeds, calls = state
    if not shape or shape[0] != seeds.numel():
        raise InvalidInputError(
            f"example_noise: {what} draws noise of shape {shape} but {seeds.numel()} seeds were given; "
            "the noise's leading dimension must be the batch (call the layer on (batch, ...) inputs)"
        )
    calls[0] += 1
    out = torch.empty(shape, dtype=like.dtype)
    for b, seed in enumerate(seeds.tolist()):
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + calls[0]) % (1 << 63))
        out[b] = torch.randn(shape[1:], generator=g, dtype=like.dtype)
    return out.to(like.device)


def kl_of(theta: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    """Approximate KL(q || log-uniform prior) of one weight tensor, summed (log alpha clipped to ±8)."""
    la = log_alpha_of(theta, log_sigma2).clamp(-_LOG_ALPHA_CLIP, _LOG_ALPHA_CLIP)
    neg_kl = _K1 * torch.sigmoid(_K2 + _K3 * la) - 0.5 * F.softplus(-la) - _K1
    return -neg_kl.sum()


class SVDOBase(nn.Module):
    """What every SVDO layer has: one or more (θ, log σ²) pairs, a threshold and the KL term.

    :class:`SVDOModule` holds one pair (``weight``, ``log_sigma2``); ``LSTMSVDO`` one per weight matrix.
    """

    threshold: float

    def svdo_pairs(self) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """``(name of θ, θ, log σ²)`` per weight tensor with a posterior."""
        raise NotImplementedError

    def masks(self, threshold: float | None = None) -> dict[str, torch.Tensor]:
        """Boolean keep-mask per weight tensor (named as in :meth:`svdo_pairs`)."""
        thr = self.threshold if threshold is None else threshold
        return {name: keep_rule(log_alpha_of(w, s2), w, thr) for name, w, s2 in self.svdo_pairs()}

    def kl(self) -> torch.Tensor:
        """Approximate KL(q || log-uniform prior), summed over the layer's weights."""
        return torch.stack([kl_of(w, s2) for _, w, s2 in self.svdo_pairs()]).sum()


class SVDOModule(SVDOBase):
    """Behaviour shared by the single-weight SVDO layers: log alpha, the mask, the KL term."""

    weight: nn.Parameter
    log_sigma2: nn.Parameter
    bias: nn.Parameter | None

    def _init_svdo(self, log_sigma2_init: float, threshold: float) -> None:
        self.log_sigma2 = nn.Parameter(torch.full_like(self.weight, log_sigma2_init))
        self.threshold = float(threshold)

    def svdo_pairs(self) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        return [("weight", self.weight, self.log_sigma2)]

    @property
    def log_alpha(self) -> torch.Tensor:
        """Unclipped log alpha per weight, shaped like ``weight``."""
        return log_alpha_of(self.weight, self.log_sigma2)

    def mask(self, threshold: float | None = None) -> torch.Tensor:
        """Boolean keep-mask: True where log alpha < threshold (and theta != 0; see ``keep_rule``)."""
        thr = self.threshold if threshold is None else threshold
        return keep_rule(self.log_alpha, self.weight, thr)

    def masked_weight(self, threshold: float | None = None) -> torch.Tensor:
        return self.weight * self.mask(threshold).to(self.weight.dtype)

    def kl(self) -> torch.Tensor:
        """Approximate KL(q || log-uniform prior), summed over the layer's weights."""
        return kl_of(self.weight, self.log_sigma2)

    def _noisy(self, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        # Local reparameterisation: sample pre-activations, not weights.
        eps = standard_normal(tuple(mean.shape), mean, type(self).__name__)
        return mean + torch.sqrt(var + 1e-8) * eps


class LinearSVDO(SVDOModule):
    """Linear layer with a per-weight dropout rate. ``weight`` is theta, shape (out, in)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        threshold: float = DEFAULT_THRESHOLD,
        log_sigma2_init: float = -10.0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self._init_svdo(log_sigma2_init, threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.linear(x, self.masked_weight(), self.bias)
        mean = F.linear(x, self.weight, self.bias)  # (batch, out)
        var = F.linear(x * x, torch.exp(self.log_sigma2))  # (batch, out)
        return self._noisy(mean, var)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, threshold={self.threshold}"
        )


class Conv2dSVDO(SVDOModule):
    """2-D convolution with a per-weight dropout rate. ``weight`` is theta, (out, in/groups, kh, kw)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        threshold: float = DEFAULT_THRESHOLD,
        log_sigma2_init: float = -10.0,
    ) -> None:
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = (kh, kw)
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kh, kw))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self._init_svdo(log_sigma2_init, threshold)

    def _conv(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._conv(x, self.masked_weight(), self.bias)
        mean = self._conv(x, self.weight, self.bias)  # (batch, out, h, w)
        var = self._conv(x * x, torch.exp(self.log_sigma2), None)
        return self._noisy(mean, var)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
            f"bias={self.bias is not None}, threshold={self.threshold}"
        )


def svdo_layers(model: nn.Module) -> Iterator[tuple[str, SVDOBase]]:
    """Yield ``(qualified_name, layer)`` for every SVDO layer in ``model`` (``LSTMSVDO`` included)."""
    for name, module in model.named_modules():
        if isinstance(module, SVDOBase):
            yield name, module


def kl_divergence(model: nn.Module) -> torch.Tensor:
    """Total approximate KL of all SVDO layers in ``model`` (a scalar tensor)."""
    terms = [layer.kl() for _, layer in svdo_layers(model)]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


def kl_weight_schedule(step: int, warmup_steps: int) -> float:
    """Linear KL warm-up from 0 to 1 over ``warmup_steps`` optimisation steps."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, step / warmup_steps)


class ELBOLoss(nn.Module):
    """Negative ELBO per example: cross-entropy + kl_weight * KL / N.

    Under ``torch.nn.parallel.DistributedDataParallel`` use it unchanged on every process, with ``train_size`` the
    size of the *whole* training set (not of one process's shard) and equal per-process batches (what
    ``DistributedSampler`` gives): each process adds the full KL / N to the mean cross-entropy of its own batch,
    and DDP averages the gradients, so the step's gradient is that of (mean cross-entropy over the global batch) +
    KL / N, the KL counted once per global step. Dividing the KL by the number of processes, or passing the
    shard's size as ``train_size``, would count it 1/P or P times. ``model`` may be the DDP wrapper or the
    module inside it. Seed each process differently (or use :func:`example_noise`), so that the processes draw
    different noise.

    Args:
        model: the network whose SVDO layers supply the KL term.
        train_size: N, the number of training examples (the KL is spread over them); under DDP the global N.
        warmup_steps: steps over which the KL weight rises linearly from 0 to 1 (counted per ``forward`` in
            training mode: once per global step on every process).

    Example:
        >>> from svdcompress.nn.zoo import lenet300
        >>> net = lenet300(svdo=True)
        >>> loss_fn = ELBOLoss(net, train_size=60000, warmup_steps=100)
        >>> x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
        >>> loss = loss_fn(net(x), y)
        >>> loss.shape
        torch.Size([])
    """

    def __init__(self, model: nn.Module, train_size: int, warmup_steps: int = 0) -> None:
        super().__init__()
        self.model = model
        self.train_size = int(train_size)
        self.warmup_steps = int(warmup_steps)
        self.step = 0

    @property
    def kl_weight(self) -> float:
        return kl_weight_schedule(self.step, self.warmup_steps)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, target)
        kl = kl_divergence(self.model)  # a DDP wrapper's named_modules() reach the layers of the module inside
        loss = ce + self.kl_weight * kl / self.train_size
        if self.training:
            self.step += 1
        return loss


def _linear_from(m: nn.Linear, log_sigma2_init: float, threshold: float) -> LinearSVDO:
    new = LinearSVDO(m.in_features, m.out_features, m.bias is not None, threshold, log_sigma2_init)
    with torch.no_grad():
        new.weight.copy_(m.weight)
        if m.bias is not None and new.bias is not None:
            new.bias.copy_(m.bias)
    return new


def _conv_from(m: nn.Conv2d, log_sigma2_init: float, threshold: float) -> Conv2dSVDO:
    if not isinstance(m.padding, (int, tuple)) or m.padding_mode != "zeros":
        raise UnsupportedOpError(
            f"sparsify: Conv2d with padding={m.padding!r}, padding_mode={m.padding_mode!r} "
            "is not supported; use numeric zero padding"
        )
    k = m.kernel_size
    new = Conv2dSVDO(
        m.in_channels,
        m.out_channels,
        (k[0], k[1]),
        m.stride,  # type: ignore[arg-type]  # torch types stride as tuple[int, ...]
        m.padding,  # type: ignore[arg-type]  # same
        m.dilation,  # type: ignore[arg-type]  # same
        m.groups,
        m.bias is not None,
        threshold,
        log_sigma2_init,
    )
    with torch.no_grad():
        new.weight.copy_(m.weight)
        if m.bias is not None and new.bias is not None:
            new.bias.copy_(m.bias)
    return new


def sparsify(model: nn.Module, log_sigma2_init: float = -10.0, threshold: float = DEFAULT_THRESHOLD) -> nn.Module:
    """Swap every ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d``, ``nn.Embedding`` and ``nn.LSTM`` in ``model`` for
    its SVDO layer, in place.

    theta starts at the pretrained weight and log sigma^2 at ``log_sigma2_init``, so
    the model initially computes what it computed before (log alpha is far below the
    threshold). Returns ``model`` for chaining.

    Raises:
        UnsupportedOpError: a layer with options the SVDO layers do not have (non-zero padding modes, a
            bidirectional LSTM or one with ``proj_size``, an embedding with ``max_norm``); the message names it.
    """
    from .sequence import conv1d_from, embedding_from, lstm_from

    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            setattr(model, name, _linear_from(child, log_sigma2_init, threshold))
        elif isinstance(child, nn.Conv2d):
            setattr(model, name, _conv_from(child, log_sigma2_init, threshold))
        elif isinstance(child, nn.Conv1d):
            setattr(model, name, conv1d_from(child, log_sigma2_init, threshold, name))
        elif isinstance(child, nn.Embedding):
            setattr(model, name, embedding_from(child, log_sigma2_init, threshold, name))
        elif isinstance(child, nn.LSTM):
            setattr(model, name, lstm_from(child, log_sigma2_init, threshold, name))
        else:
            sparsify(child, log_sigma2_init, threshold)
    return model
