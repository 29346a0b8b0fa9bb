"""SVDO layers and ELBOLoss under DistributedDataParallel: two CPU processes (gloo) on halves of a global batch get
the loss and the gradients of one process on the whole batch.

The noise is made comparable with ``example_noise``: every example draws its noise from its own seed (its index in
the data set), so example 5 gets the same noise on rank 1 of two as on the single process. The comparison is then
exact up to float summation order, noise included, and it would catch a KL counted once per process (the
gradients of a KL / N weighed twice are checked to differ by far more than the tolerance).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from svdcompress.nn.layers import ELBOLoss, example_noise, sparsify

WORLD, BATCH, SEQ, VOCAB, TRAIN_SIZE = 2, 8, 5, 20, 40


class _Net(nn.Module):
    """Embedding → LSTM → Linear, made SVDO: every new layer kind, noise in each."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 6)
        self.conv = nn.Conv1d(6, 6, 3, padding=1)
        self.lstm = nn.LSTM(6, 8, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.emb(idx).transpose(1, 2)).transpose(1, 2)
        out, _ = self.lstm(torch.relu(h))
        return self.fc(out[:, -1])


def _setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = sparsify(_Net(), log_sigma2_init=-2.0)  # visible noise: σ ≈ 0.37 · |θ|-sized weights
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
    return net.train(), x, x[:, 0] % 3


def _step(net: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, train_size: int) -> torch.Tensor:
    loss_fn = ELBOLoss(net, train_size=train_size)
    with example_noise(ids):
        loss = loss_fn(net(x), y)
    loss.backward()
    assert loss_fn.step == 1  # the KL warm-up counts global steps: one forward per process per step
    return loss.detach()


def _grads(net: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        out[name.removeprefix("module.")] = p.grad.detach().clone()
    return out


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        net, x, y = _setup()
        ddp = DistributedDataParallel(net)
        shard = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        ids = torch.arange(BATCH)[shard]
        loss = _step(ddp, x[shard], y[shard], ids, TRAIN_SIZE)  # ELBOLoss over the DDP wrapper, unchanged
        dist.all_reduce(loss)
        if rank == 0:  # only rank 0 writes
            torch.save({"loss": loss / WORLD, "grads": _grads(ddp)}, out)
        del ddp  # its reducer's hooks and buffers go before the group does
        # Both ranks leave together: a rank tearing gloo down while its peer still talks was seen to abort
        # ("terminate called without an active exception") once in CI.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ddp_on_two_processes_equals_one_process_on_the_global_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "rank0.pt"
    # Spawned, not forked: a fork of this process, whose other threads (numba's, OpenMP's) may hold locks, hung in
    # CI. The spawned processes import _worker by its module name (tests.test_ddp under pytest's importlib mode):
    # put the checkout on the path they inherit.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    got = torch.load(out, weights_only=True)

    net, x, y = _setup()
    ids = torch.arange(BATCH)
    ref_loss = _step(net, x, y, ids, TRAIN_SIZE)
    ref = _grads(net)
    torch.testing.assert_close(got["loss"], ref_loss, rtol=1e-5, atol=1e-6)
    assert set(got["grads"]) == set(ref) and any(k.startswith("lstm.log_sigma2") for k in ref)
    for name, g in ref.items():
        torch.testing.assert_close(got["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)

    # The comparison can tell: the KL counted once per process (as if it were summed over two ranks) moves the
    # log σ² gradients far beyond the tolerance.
    net2, _, _ = _setup()
    _step(net2, x, y, ids, TRAIN_SIZE // WORLD)
    twice = _grads(net2)
    diff = max(float((twice[n] - ref[n]).abs().max()) for n in ref if "log_sigma2" in n)
    assert diff > 1e-2, diff
