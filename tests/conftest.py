"""Shared fixtures. Tests make their own small data; nothing is downloaded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from svdcompress.svdo import ELBOLoss, LinearSVDO

torch.set_num_threads(1)


class TinySVDO(nn.Module):
    """20-32-16-4 SVDO MLP, small enough to train in a second."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = LinearSVDO(20, 32)
        self.act1 = nn.ReLU()
        self.fc2 = LinearSVDO(32, 16)
        self.act2 = nn.ReLU()
        self.fc3 = LinearSVDO(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))


def make_blobs(n: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four Gaussian classes in 20-D where only the first 6 features carry signal."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    centers = torch.randn(4, 6, generator=g) * 2.5
    x = torch.randn(n, 20, generator=g)
    x[:, :6] += centers[y]
    return x, y


@pytest.fixture(scope="session")
def trained_tiny() -> TinySVDO:
    """A TinySVDO trained with the ELBO for a few hundred steps, so log α is really spread."""
    torch.manual_seed(0)
    x, y = make_blobs()
    model = TinySVDO()
    # A small N makes the KL term strong, so the layers sparsify within the short run.
    loss_fn = ELBOLoss(model, train_size=200, warmup_steps=100)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(400):
        idx = torch.randint(0, len(x), (64,), generator=torch.Generator().manual_seed(step))
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
