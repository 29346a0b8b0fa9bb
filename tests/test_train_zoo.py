"""benchmarks/train_zoo.py: a run stopped after an epoch and resumed is the uninterrupted run, bit for bit; under
torchrun (two processes) it trains the same net."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_zoo.py"


def _import_train_zoo():
    # benchmarks/ is not a package and pytest runs with --import-mode=importlib: load the script by path.
    spec = importlib.util.spec_from_file_location("train_zoo", _SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tz = _import_train_zoo()


def _loader(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiny learnable stand-in for Fashion-MNIST: 240 train (200 + 40 held out), 40 test images."""
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    n = 240 if split == "train" else 40
    y = torch.randint(0, 10, (n,), generator=g)
    x = 0.3 * torch.rand(n, 1, 28, 28, generator=g)
    x[torch.arange(n), 0, y, y] += 1.0  # a class-dependent pixel, so accuracy moves
    return x, y


def _argv(out: Path, *extra: str) -> list[str]:
    return [
        "--arch", "lenet300", "--data", "fashion-mnist", "--val-size", "40", "--batch", "50",
        "--dense-epochs", "3", "--dense-patience", "2", "--svdo-epochs", "2", "--kl-warmup-epochs", "1",
        "--threads", "1", "--log-step-losses", "--out-dir", str(out), *extra,
    ]  # fmt: skip


def _curve(out: Path) -> list[dict]:
    log = json.loads((out / "lenet300-fashion-mnist-log.json").read_text())
    return [{k: v for k, v in r.items() if k not in ("seconds", "epoch_seconds", "cpu_seconds")} for r in log["epochs"]]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("whole")
    assert tz.main(_argv(out), loader=_loader) == 0
    return out


@pytest.mark.parametrize("stop_after", [1, 4])  # inside the dense phase; first SVDO epoch (3 dense epochs before)
def test_resume_is_bit_for_bit(uninterrupted: Path, tmp_path: Path, stop_after: int) -> None:
    assert tz.main(_argv(tmp_path, "--stop-after-epochs", str(stop_after)), loader=_loader) == 0
    state = tmp_path / "lenet300-fashion-mnist-state.pt"
    assert state.exists() and not (tmp_path / "lenet300-fashion-mnist-log.json").exists()
    st = torch.load(state, weights_only=True)  # everything in the state is safe-loadable
    assert len(st["book"]["log"]) == stop_after
    # Perturb every global RNG the way another process would: the state must restore them.
    torch.manual_seed(999)
    assert tz.main(["--resume", str(state)], loader=_loader) == 0

    whole, resumed = _curve(uninterrupted), _curve(tmp_path)
    assert [r["phase"] for r in whole] == ["dense"] * 3 + ["svdo"] * 2
    assert resumed == whole  # same step losses, accuracies, compression: the same run
    for name in ("dense", "svdo"):
        a = _weights(uninterrupted / f"lenet300-fashion-mnist-{name}.pt")
        b = _weights(tmp_path / f"lenet300-fashion-mnist-{name}.pt")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.load(state, weights_only=True)["book"]["phase"] == "done"


def test_log_reports_splits_dense_curve_and_commit(uninterrupted: Path) -> None:
    log = json.loads((uninterrupted / "lenet300-fashion-mnist-log.json").read_text())
    prov = log["provenance"]
    assert (prov["train_size"], prov["val_size"], prov["test_size"]) == (200, 40, 40)
    assert prov["git_commit"] != "HEAD" and prov["schedule"] == "linear" and prov["lr_decay_frac"] == 1.0
    assert all("val_acc" in r and "test_acc" in r for r in log["epochs"])
    dense = log["dense"]
    assert dense["epochs"] == prov["dense_epochs"] and dense["kept_epoch"] == dense["best_epoch"]
    best = max(r["val_acc"] for r in log["epochs"] if r["phase"] == "dense")
    assert dense["val_acc"] == best  # the kept dense net is the best one on validation
    assert log["epochs"][-1]["lr_end"] == 0.0  # linear to 0 over the whole run


def test_resume_refuses_other_settings_and_a_finished_run_is_left_alone(uninterrupted: Path) -> None:
    state = uninterrupted / "lenet300-fashion-mnist-state.pt"
    with pytest.raises(SystemExit, match=r"--lr 0\.01"):
        tz.main(["--resume", str(state), "--lr", "0.01"], loader=_loader)
    with pytest.raises(SystemExit, match="--resume"):
        tz.main(_argv(uninterrupted), loader=_loader)  # a fresh start over an existing state
    before = (uninterrupted / "lenet300-fashion-mnist-svdo.pt").stat().st_mtime_ns
    assert tz.main(["--resume", str(state)], loader=_loader) == 0
    assert (uninterrupted / "lenet300-fashion-mnist-svdo.pt").stat().st_mtime_ns == before


def test_init_from_a_dense_checkpoint_keeps_its_stopping_point(uninterrupted: Path, tmp_path: Path) -> None:
    dense = uninterrupted / "lenet300-fashion-mnist-dense.pt"
    argv = [*_argv(tmp_path), "--init-from", str(dense), "--svdo-epochs", "1"]
    assert tz.main(argv, loader=_loader) == 0
    log = json.loads((tmp_path / "lenet300-fashion-mnist-log.json").read_text())
    whole = json.loads((uninterrupted / "lenet300-fashion-mnist-log.json").read_text())
    assert [r["phase"] for r in log["epochs"]] == ["svdo"]
    assert log["dense"]["stopped"] == "loaded" and log["dense"]["epochs"] == whole["dense"]["epochs"]
    assert log["provenance"]["dense_val_acc"] == whole["provenance"]["dense_val_acc"]


def test_dense_ref_is_the_comparison_while_svdo_starts_from_the_short_run(uninterrupted: Path, tmp_path: Path) -> None:
    """--dense-ref: SVDO starts from this run's 1-epoch dense net; the dense figures are the reference net's."""
    ref = uninterrupted / "lenet300-fashion-mnist-dense.pt"
    argv = [*_argv(tmp_path), "--dense-epochs", "1", "--dense-patience", "0", "--svdo-epochs", "1"]
    assert tz.main([*argv, "--dense-ref", str(ref)], loader=_loader) == 0
    log = json.loads((tmp_path / "lenet300-fashion-mnist-log.json").read_text())
    whole = json.loads((uninterrupted / "lenet300-fashion-mnist-log.json").read_text())
    prov = log["provenance"]
    assert [r["phase"] for r in log["epochs"]] == ["dense", "svdo"]
    assert prov["dense_ref"] == str(ref) and prov["start_dense_epochs"] == 1
    assert prov["dense_val_acc"] == whole["provenance"]["dense_val_acc"]  # the reference's, measured again
    assert prov["dense_test_acc"] == whole["provenance"]["dense_test_acc"]
    assert prov["dense_epochs"] == whole["provenance"]["dense_epochs"]
    assert prov["start_dense_val_acc"] == log["epochs"][0]["val_acc"]  # the net SVDO started from


def _torchrun_worker(rank: int, port: int, out: str) -> None:
    # What torchrun sets for each process (env:// rendezvous).
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    assert tz.main(_short_argv(Path(out)), loader=_loader) == 0


def _short_argv(out: Path) -> list[str]:
    return [*_argv(out), "--dense-epochs", "2", "--dense-patience", "0", "--svdo-epochs", "1"]


def test_under_torchrun_two_processes_train_the_same_dense_net_and_rank_0_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes (gloo) split each batch of 50: the dense phase, which has no noise, ends at the weights of the
    one-process run (up to float rounding); the SVDO phase runs and rank 0 writes the outputs once."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert tz.main(_short_argv(one), loader=_loader) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    # Spawned, not forked: a fork of the test process, whose other threads may hold locks, can hang. The children
    # import _torchrun_worker by its module name (tests.test_train_zoo): the checkout goes on their path.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    mp.spawn(_torchrun_worker, args=(port, str(two)), nprocs=2, join=True)
    a = _weights(one / "lenet300-fashion-mnist-dense.pt")
    b = _weights(two / "lenet300-fashion-mnist-dense.pt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    log = json.loads((two / "lenet300-fashion-mnist-log.json").read_text())
    assert [r["phase"] for r in log["epochs"]] == ["dense"] * 2 + ["svdo"]
    assert log["provenance"]["train_size"] == 200  # the KL is spread over the whole set, not a shard
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
