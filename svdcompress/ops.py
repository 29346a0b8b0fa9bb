"""Small modules that pruned models contain besides torch's own layers."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["InputGather"]


class InputGather(nn.Module):
    """Keep only the input features some weight reads: ``x.flatten(1)[:, index]``.

    Placed in front of a pruned MLP so that the model keeps its original input shape
    while its first layer reads only the live pixels. ``index`` is a sorted int64 buffer.
    """

    def __init__(self, index: torch.Tensor, in_features: int) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.index: torch.Tensor
        self.register_buffer("index", index.to(torch.int64).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.index_select(x.flatten(1), 1, self.index)  # (N, len(index))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, kept={self.index.numel()}"
